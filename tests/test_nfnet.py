"""NFNet-L0 against timm `nfnet_l0`, end to end through the timm converter command line.

Each parity test builds the timm network here on random weights, randomising the per-channel
gains (timm starts conv3's at 0, which would hide any mistake in the residual branch), biases and
skip gains, saves the state dict to disk, converts it with `third_party.convert_timm.main(argv)`,
loads the folder with the driver's `jdd.stages.teachers.load_teacher`, and compares in eval mode: pooled
features (or logits) to 1e-4 relative to their largest entry, and the input gradient of
sum(features * v) for a fixed random v to 1e-3. Inputs are sized so that strided stages see odd
sides (40 -> 10, 5, 3, 2 and 72 -> 18, 9, 5, 3), which exercises the ceil-mode average pool of
the downsampling shortcut.
A small NFNet built from timm's own NfCfg checks the options nfnet_l0 does not use (skip-init
gains, gamma inside the activation, TF 'SAME' padding) and the classifier head.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import timm
from safetensors.torch import save_file
from timm.models.nfnet import NfCfg, NormFreeNet

from jdd import models
from jdd.models import nfnet
from jdd.stages.teachers import load_teacher
from third_party import convert_timm
from torch_parity import assert_rel

torch.set_num_threads(2)

TINY_CFG = dict(depths=(1, 1, 1, 1), channels=(32, 64, 96, 128), stem_type="deep_quad",
                stem_chs=16, group_size=8, bottle_ratio=0.25, extra_conv=True, num_features=192,
                act_layer="silu", attn_layer="se", attn_kwargs=dict(rd_ratio=0.25, rd_divisor=8))


def _randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("gain"):  # conv gains (O,1,1,1) and skipinit_gain ()
        p.copy_(0.5 + torch.rand(p.shape, generator=g))
      elif name.endswith("bias"):
        p.copy_(0.1 * torch.randn(p.shape, generator=g))
  return model.eval()


def _convert(tmp_path, torch_model, *flags, fmt="pth", name="ckpt"):
  state = {k: v.contiguous() for k, v in torch_model.state_dict().items()}
  ckpt = str(tmp_path / f"{name}.{fmt}")
  if fmt == "safetensors":
    save_file(state, ckpt)
  else:
    torch.save(state, ckpt)
  out = str(tmp_path / f"{name}_out")
  assert convert_timm.main(["--arch", "nfnet_l0", "--checkpoint", ckpt, "--out", out,
                            *flags]) == 0
  with open(os.path.join(out, "card.json")) as f:
    card = json.load(f)
  return out, card


def _load(out, card):
  expect = {k: card[k] for k in ("arch", "kwargs", "num_classes", "image_shape")}
  return load_teacher(out, expect)


def _compare(torch_fn, model, variables, size, seed=0, batch=2, tol=1e-4, grad_tol=1e-3,
             grad=True):
  """Outputs and the input gradient of sum(out * v), timm vs jdd, in eval mode."""
  g = torch.Generator().manual_seed(seed)
  x = torch.randn(batch, 3, size, size, generator=g)
  if not grad:
    with torch.no_grad():
      want = torch_fn(x).numpy()
    got = jax.jit(lambda a, v: model.apply(v, a))(jnp.asarray(x.numpy().transpose(0, 2, 3, 1)),
                                                  variables)
    assert_rel(np.asarray(got), want, tol, "outputs")
    return
  x.requires_grad_(True)
  want = torch_fn(x)
  v = torch.randn(want.shape, generator=g)
  (want * v).sum().backward()

  def objective(xj, variables):  # variables as an argument: 33M constants would slow XLA down
    out = model.apply(variables, xj, train=False)
    return jnp.sum(out * jnp.asarray(v.numpy())), out

  (_, got), grad = jax.jit(jax.value_and_grad(objective, has_aux=True))(
      jnp.asarray(x.detach().numpy().transpose(0, 2, 3, 1)), variables)
  assert_rel(np.asarray(got), want.detach().numpy(), tol, "outputs")
  assert_rel(np.asarray(grad), x.grad.numpy().transpose(0, 2, 3, 1), grad_tol, "input gradient")


def test_nfnet_l0_matches_timm_through_the_converter(tmp_path):
  tm = _randomise(timm.create_model("nfnet_l0", pretrained=False, num_classes=0), 0)
  out, card = _convert(tmp_path, tm)
  assert card["num_classes"] == 0 and card["dropped_keys"] == []
  assert card["feature_dim"] == 2304 and card["image_shape"] == [224, 224, 3]
  assert card["num_params"] == sum(p.numel() for p in tm.parameters()) == 32_769_488
  assert card["mean"] == list(tm.pretrained_cfg["mean"])
  assert card["std"] == list(tm.pretrained_cfg["std"])
  assert len(card["source"]["sha256"]) == 64
  assert card["config"]["depths"] == [1, 2, 6, 3] and card["config"]["group_size"] == 64
  model, variables, _ = _load(out, card)
  assert set(variables) == {"params"}
  _compare(tm, model, variables, 40)


@pytest.mark.parametrize("variant", ["timm_defaults", "all_options"])
def test_small_nfnet_matches_timm(tmp_path, variant):
  """The configurable small NFNet against timm's NormFreeNet built from the same NfCfg."""
  extra = {"skipinit": True, "gamma_in_act": True, "same_padding": True, "act_layer": "gelu",
           "alpha": 0.3} if variant == "all_options" else {}
  tm = _randomise(NormFreeNet(NfCfg(**{**TINY_CFG, **extra}), num_classes=5), 1)
  kwargs = dict(nfnet.NFNET_TINY)
  if extra:
    kwargs.update(skipinit=True, gamma_in_act=True, same_padding=True, act="gelu", alpha=0.3)
  fmt = "safetensors" if extra else "pth"
  out, card = _convert(tmp_path, tm, "--kwargs", json.dumps(kwargs), fmt=fmt)
  assert card["num_classes"] == 5 and card["feature_dim"] == 192  # inferred from head.fc
  model, variables, _ = _load(out, card)
  if extra:
    skip = variables["params"]["stages_0_0"]["skipinit_gain"]
    assert skip.shape == () and float(skip) == pytest.approx(
        float(tm.stages[0][0].skipinit_gain.detach()))
  _compare(tm, model, variables, 72, seed=2)  # logits; sides 18, 9, 5, 3
  if extra:
    # Features only: --num-classes 0 drops timm's classifier, as timm does for num_classes=0.
    out0, card0 = _convert(tmp_path, tm, "--kwargs", json.dumps(kwargs), "--num-classes", "0",
                           fmt=fmt, name="features")
    assert card0["dropped_keys"] == ["head.fc.bias", "head.fc.weight"]
    model0, variables0, _ = _load(out0, card0)
    _compare(lambda x: tm.forward_head(tm.forward_features(x), pre_logits=True), model0,
             variables0, 40, seed=3, grad=False)  # this network's gradient is checked above


def test_drop_path_matches_timm_and_is_train_only(tmp_path):
  """Rate 1 at the last of two blocks drops its residual deterministically, so timm's train
  mode is comparable; lower rates draw per-sample masks from the 'dropout' rng only."""
  cfg = dict(TINY_CFG, depths=(2,), channels=(32,), num_features=0)
  tm = _randomise(NormFreeNet(NfCfg(**cfg), num_classes=0, drop_path_rate=1.0), 4)
  kwargs = dict(depths=(2,), channels=(32,), stem_chs=16, group_size=8, num_features=0)
  model = nfnet.NFNet(**kwargs, drop_path_rate=1.0)
  template = jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0), (24, 24, 3)))
  from third_party.torch_to_flax import convert_state_dict
  variables = convert_state_dict(template, {k: v.numpy() for k, v in tm.state_dict().items()},
                                 nfnet.torch_key, "nfnet_l0")
  x = torch.randn(3, 3, 24, 24, generator=torch.Generator().manual_seed(5))
  xj = jnp.asarray(x.numpy().transpose(0, 2, 3, 1))
  tm.train()
  with torch.no_grad():
    want_train = tm(x).numpy()
  tm.eval()
  with torch.no_grad():
    want_eval = tm(x).numpy()
  assert np.abs(want_train - want_eval).max() > 1e-3 * np.abs(want_eval).max()
  # Jitted: op by op the NFNet compiles hundreds of tiny programs.
  got = jax.jit(lambda v, a: model.apply(v, a, train=True, rngs={"dropout": jax.random.key(0)}))(
      variables, xj)
  assert_rel(got, want_train, 1e-4, "train mode, drop-path rate 1")
  assert_rel(jax.jit(model.apply)(variables, xj), want_eval, 1e-4, "eval mode ignores drop path")

  half = nfnet.NFNet(**kwargs, drop_path_rate=0.6)
  sample = jax.jit(lambda v, a, k: half.apply(v, a, train=True, rngs={"dropout": k}))
  draw = lambda k: np.asarray(sample(variables, xj, jax.random.key(k)))
  np.testing.assert_array_equal(draw(1), draw(1))
  assert any(np.abs(draw(1) - draw(k)).max() > 0 for k in range(2, 6))
  with pytest.raises(Exception, match="dropout"):
    half.apply(variables, xj, train=True)


def test_wrong_checkpoint_lists_the_keys(tmp_path, capsys):
  tm = _randomise(NormFreeNet(NfCfg(**TINY_CFG), num_classes=0), 6)
  ckpt = str(tmp_path / "tiny.pth")
  torch.save(tm.state_dict(), ckpt)
  out = str(tmp_path / "out")
  # The small network's file offered as the full nfnet_l0.
  assert convert_timm.main(["--arch", "nfnet_l0", "--checkpoint", ckpt, "--out", out]) == 2
  err = capsys.readouterr().err
  assert "missing keys" in err and "stages.1.1.conv1.weight" in err
  assert "mis-shaped keys" in err
  assert "final_conv.weight expected (1, 1, 1536, 2304) got (1, 1, 128, 192)" in err
  assert not os.path.exists(os.path.join(out, "card.json"))
  # The right layout plus one stray tensor: only that key is reported.
  state = dict(tm.state_dict(), **{"stages.0.0.bogus.weight": torch.zeros(3)})
  torch.save(state, ckpt)
  argv = ["--arch", "nfnet_l0", "--checkpoint", ckpt, "--out", out,
          "--kwargs", json.dumps(nfnet.NFNET_TINY)]
  assert convert_timm.main(argv) == 2
  err = capsys.readouterr().err
  assert "unexpected keys (1): stages.0.0.bogus.weight" in err and "missing" not in err
  assert convert_timm.main(argv[:-2] + ["--kwargs", "[1]"]) == 2
  assert "JSON object" in capsys.readouterr().err


def test_registry_shapes_and_pretrained_cfg():
  model = models.build_model("nfnet_l0", 0)
  feats, variables = jax.eval_shape(
      lambda x: model.init_with_output(jax.random.key(0), x), jnp.zeros((2, 64, 64, 3)))
  assert feats.shape == (2, 2304) and feats.dtype == jnp.float32
  params = variables["params"]
  assert set(variables) == {"params"}
  assert params["stages_2_0"]["conv2"]["kernel"].shape == (3, 3, 64, 384)  # 6 groups of 64
  assert params["stages_3_2"]["attn_last"]["fc1"]["kernel"].shape == (1, 1, 1536, 384)
  assert params["stem"]["conv1"]["gain"].shape == (16,)
  head = models.build_model("nfnet_l0", 1000)
  logits = jax.eval_shape(lambda: head.init_with_output(jax.random.key(0),
                                                        jnp.zeros((1, 32, 32, 3)))[0])
  assert logits.shape == (1, 1000)
  want = timm.create_model("nfnet_l0", pretrained=False).pretrained_cfg
  got = nfnet.PRETRAINED_CFG["nfnet_l0.ra2_in1k"]
  for key in ("input_size", "test_input_size", "crop_pct", "test_crop_pct", "interpolation",
              "mean", "std", "num_classes", "pool_size"):
    assert tuple(np.atleast_1d(got[key])) == tuple(np.atleast_1d(want[key])), key
  assert got["file"] in want["url"]
  assert nfnet.torch_key(("params", "head_fc", "kernel")) == "head.fc.weight"
  key, fn = nfnet.torch_key(("params", "stages_1_0", "downsample", "conv", "gain"))
  assert key == "stages.1.0.downsample.conv.gain" and fn(np.ones((4, 1, 1, 1))).shape == (4,)
  with pytest.raises(ValueError, match="NHWC"):
    model.init(jax.random.key(0), jnp.zeros((64, 64, 3)))
