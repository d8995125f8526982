"""jdd.xla_setup: the XLA flags jdd's commands set before JAX starts."""

import os
import subprocess
import sys

from jdd import xla_setup


def test_apply_adds_the_flag_once_and_keeps_the_users():
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  assert xla_setup.apply(env)
  assert env["XLA_FLAGS"] == "--xla_force_host_platform_device_count=2 " + xla_setup.YNN_OFF
  assert not xla_setup.apply(env)            # already there: unchanged
  assert env["XLA_FLAGS"].count("ynn_fusion_type") == 1
  mine = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=eltwise"}
  assert not xla_setup.apply(mine)           # the user's own value wins
  assert mine["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=eltwise"
  off = {"JDD_XLA_DEFAULTS": "0"}
  assert not xla_setup.apply(off) and "XLA_FLAGS" not in off


def test_apply_skips_a_jaxlib_it_was_not_measured_on(monkeypatch):
  monkeypatch.setattr(xla_setup, "_jaxlib_version", lambda: "0.11.0")
  env = {}
  assert not xla_setup.apply(env) and "XLA_FLAGS" not in env


def test_the_installed_xla_accepts_the_flag():
  """XLA aborts on a flag it does not know: a fresh process with jdd's flags must run a
  convolution and its gradient (and the test process itself runs with them, via conftest)."""
  assert xla_setup.YNN_OFF in os.environ.get("XLA_FLAGS", "")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["JAX_PLATFORMS"] = "cpu"
  code = ("from jdd import xla_setup; assert xla_setup.apply(); import jax, jax.numpy as jnp;"
          "f = lambda w: jax.lax.conv(jnp.ones((1, 3, 8, 8)), w, (1, 1), 'SAME').sum();"
          "print(float(jax.grad(f)(jnp.ones((4, 3, 3, 3))).sum()))")
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  # d/dw of the summed SAME output of an all-ones 8 x 8 input: 7 or 8 valid rows (columns) per
  # kernel offset, (4 x 49 + 4 x 56 + 64) = 484 per (out, in) channel pair, 4 x 3 pairs.
  assert float(out.stdout.split()[-1]) == 484 * 12
