"""Config files, their variants, and the checks that catch a mistyped key early.

Configs are Python files under `configs/` with `get_config(arg=None) -> ConfigDict`. The
argument after a colon picks a variant: `configs/sre2l_cifar100.py:smoke` or
`configs/sre2l_cifar100.py:ipc=10,smoke`. Every returned config is locked, so assigning a
field that does not exist fails at once (with ml_collections' "did you mean" hint) instead of
being silently ignored half-way through a GPU run.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import os

import ml_collections


def parse_arg(arg: str | None) -> dict:
  """Parses `a=1,b=x,smoke` into {'a': 1, 'b': 'x', 'smoke': True}."""
  out = {}
  if not arg:
    return out
  for part in arg.split(","):
    part = part.strip()
    if not part:
      continue
    if "=" in part:
      key, value = part.split("=", 1)
      try:
        out[key.strip()] = ast.literal_eval(value.strip())
      except (ValueError, SyntaxError):
        out[key.strip()] = value.strip()
    else:
      out[part] = True
  return out


def check_variant_keys(args: dict, known: set[str], config_name: str) -> None:
  unknown = sorted(set(args) - known)
  if unknown:
    raise ValueError(
        f"{config_name}: unknown variant option(s) {unknown}; this config accepts "
        f"{sorted(known)} (e.g. `--config {config_name}.py:{sorted(known)[0]}=...`).")


def load_config(spec: str) -> ml_collections.ConfigDict:
  """Loads `path.py[:arg]` the way `--config` does, for notebooks and tests."""
  path, _, arg = spec.partition(":")
  if not os.path.exists(path):
    raise FileNotFoundError(f"config file {path!r} does not exist")
  module_spec = importlib.util.spec_from_file_location(
      "jdd_config_" + os.path.basename(path).removesuffix(".py"), path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def override(config: ml_collections.ConfigDict, **dotted) -> ml_collections.ConfigDict:
  """`override(cfg, **{'recover.iterations': 5})`: the notebook twin of `--config.x.y=v`.

  Raises KeyError naming the bad key when a path does not exist.
  """
  for dotted_key, value in dotted.items():
    node = config
    parts = dotted_key.split(".")
    for i, part in enumerate(parts):
      if part not in node:
        where = ".".join(parts[:i]) or "<root>"
        raise KeyError(
            f"config key {dotted_key!r} does not exist: {where} has no field {part!r}; "
            f"its fields are {sorted(node.keys())}")
      if i == len(parts) - 1:
        with node.ignore_type() if value is None or node[part] is None else (
            contextlib.nullcontext()):
          node[part] = value
      else:
        node = node[part]
  return config


def finalize(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Locks a config so that mistyped fields fail loudly."""
  config.lock()
  return config
