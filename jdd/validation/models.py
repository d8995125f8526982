"""Network checks: the architecture exists, its keyword arguments are the module's, it takes
the dataset's images, and a checkpoint folder's card.json says it was built for this setting.

Shapes are checked with `jax.eval_shape` (a trace, no FLOPs and no memory for weights), so a
ConvNet too deep for 28-pixel images or a flattening head fed another resolution is refused
before any data is read.
"""

from __future__ import annotations

import dataclasses
import functools
import os

from jdd.errors import ConfigError
from jdd.validation.fields import fail, missing


@functools.lru_cache(maxsize=None)
def _registry():
  from jdd import models
  return models


def module(prefix: str, arch, kwargs, num_classes: int):
  """Builds the Flax module of `prefix.arch` / `prefix.kwargs` (no weights)."""
  models = _registry()
  if arch not in models.REGISTRY:
    raise fail(f"{prefix}.arch", arch, f"one of {list(models.REGISTRY)}",
               "no such architecture in jdd.models")
  kwargs = dict(kwargs or {})
  try:
    return models.build_model(arch, num_classes, **kwargs)
  except TypeError as e:
    fields = _module_fields(arch, num_classes)
    raise fail(f"{prefix}.kwargs", kwargs, f"keyword arguments of {arch}: {fields}",
               str(e).split("\n")[0]) from None


def _module_fields(arch: str, num_classes: int) -> list[str]:
  models = _registry()
  try:
    cls = type(models.build_model(arch, num_classes))
  except Exception:  # an arch whose builder needs kwargs: list nothing rather than guess
    return []
  return sorted(f.name for f in dataclasses.fields(cls)
                if f.name not in ("parent", "name", "num_classes") and f.init)


def variable_shapes(prefix: str, model, image_shape, dataset: str):
  """The shapes of `model`'s variables at `image_shape`; refuses a network that cannot take
  those images (too small for its depth, a flattening head of another size, ...)."""
  import jax
  models = _registry()
  try:
    return jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0),
                                                        tuple(image_shape)))
  except Exception as e:  # flax/jax raise shape errors of many kinds
    h, w, c = image_shape
    raise ConfigError(f"{prefix}: {type(model).__name__} ({prefix}.arch, {prefix}.kwargs) "
                      f"cannot take the {h}x{w}x{c} images of {dataset}: "
                      f"{_first_line(e)}; valid: a network (or kwargs, e.g. fewer layers) "
                      "for that image size") from None


def applies_at(prefix: str, model, variables, resolution: int, channels: int, what: str):
  """Refuses a model whose variables (made at the dataset's size) cannot run at
  `resolution` (FADRM's lower-resolution stages)."""
  import jax
  import jax.numpy as jnp
  x = jax.ShapeDtypeStruct((1, resolution, resolution, channels), jnp.float32)
  try:
    jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
  except Exception as e:
    raise ConfigError(f"{what}={resolution}: the {prefix} network ({type(model).__name__}) "
                      f"cannot run at {resolution}x{resolution}: {_first_line(e)}; valid: "
                      "the dataset's image size for networks with a flattening head "
                      "(convnet), or a network with global pooling") from None


def card(prefix: str, folder: str, expect: dict, dataset: str) -> dict:
  """Reads `folder/card.json` and refuses a checkpoint made for another setting."""
  from jdd import checkpoint
  path = os.path.join(folder, "card.json")
  field = f"{prefix}.checkpoint"
  if not os.path.isdir(folder):
    raise missing(field, folder, "a teacher folder (variables/ + card.json) written by a jdd run "
               "(W/teacher, W/teachers/<name>) or a third_party converter, or '' to train one "
               "here", "no such folder")
  if not os.path.isfile(path):
    raise missing(field, folder, "a folder holding card.json and variables/ (W/teacher of a "
               "finished run, or a converter's output), or '' to train one here",
               "it has no card.json")
  try:
    found = checkpoint.read_json(path)
  except (OSError, ValueError) as e:
    raise fail(field, folder, "a folder with a readable card.json",
               f"{path} cannot be read ({e})") from None
  for key in ("arch", "kwargs", "num_classes", "image_shape"):
    if found.get(key) != expect[key]:
      raise fail(field, folder, f"a checkpoint with {key}={expect[key]!r} (this config), or "
                 f"set {prefix}.arch/kwargs to match it, or '' to train one here",
                 f"its card.json has {key}={found.get(key)!r}")
  made_for = found.get("dataset")
  if dataset != "image_folder" and made_for and made_for != dataset:
    raise fail(field, folder, f"a checkpoint trained on {dataset}, or '' to train one here",
               f"its card.json says it was trained on {made_for!r}")
  return found


def _first_line(e: BaseException) -> str:
  lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
  return f"{type(e).__name__}: {lines[0][:240] if lines else ''}"
