"""Stable Diffusion 1.x networks and CLIP towers owned by jdd, and the loader for folders
written by `third_party/convert_diffusers.py`.

A converted folder holds `card.json` (written last: its presence marks a complete folder) and one
Orbax `variables/` per component:

    OUT/card.json             {arch: 'jdd-diffusion', components: {name: {class, config,
                               source: {file, sha256, format, ignored}}}, scheduler: {...}}
    OUT/<name>/variables      {'params': ...} for component <name> (unet, vae, text_encoder, clip)

`load_components(OUT)` returns {name: Component(model, variables, config)}; torch is never
imported here (the conversion from PyTorch files happens in third_party/).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import numpy as np

from jdd.models.diffusion import clip, unet, vae
from jdd.models.diffusion.schedulers import ScheduleConfig

CARD_ARCH = "jdd-diffusion"
# component class name -> (config class, module class, template function, torch_key)
CLASSES: dict[str, tuple[Any, Any, Any, Any]] = {
    "UNet2DConditionModel": (unet.UNetConfig, unet.UNet2DConditionModel, unet.param_template,
                             unet.torch_key),
    "AutoencoderKL": (vae.VAEConfig, vae.AutoencoderKL, vae.param_template, vae.torch_key),
    "CLIP": (clip.CLIPConfig, clip.CLIP, clip.param_template, clip.torch_key),
}


@dataclasses.dataclass(frozen=True)
class Component:
  model: Any
  variables: Any
  config: Any


def config_from_card(cls_name: str, d: dict) -> Any:
  """Rebuild a config dataclass from the card's `dataclasses.asdict` form."""
  if cls_name == "CLIP":
    tower = lambda t: None if t is None else clip.TowerConfig(**t)
    return clip.CLIPConfig(tower(d["text"]), tower(d["vision"]), d["projection_dim"],
                           d["logit_scale"])
  config_cls = CLASSES[cls_name][0]
  return config_cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def load_components(path: str, names: tuple[str, ...] | None = None) -> dict[str, Component]:
  """The components of a converted folder (all, or those in `names`), variables as numpy."""
  import orbax.checkpoint as ocp
  card_path = os.path.join(path, "card.json")
  if not os.path.exists(card_path):
    raise FileNotFoundError(f"{path} has no card.json; convert weights with "
                            "`python -m third_party.convert_diffusers`")
  with open(card_path) as f:
    card = json.load(f)
  if card.get("arch") != CARD_ARCH:
    raise ValueError(f"{card_path} describes arch {card.get('arch')!r}, not {CARD_ARCH!r}")
  out = {}
  ckptr = ocp.StandardCheckpointer()
  for name, entry in card["components"].items():
    if names is not None and name not in names:
      continue
    cls_name = entry["class"]
    config = config_from_card(cls_name, entry["config"])
    _, module_cls, template_fn, _ = CLASSES[cls_name]
    variables = ckptr.restore(os.path.abspath(os.path.join(path, name, "variables")),
                              template_fn(config))
    out[name] = Component(module_cls(config), jax.tree.map(np.asarray, variables), config)
  missing = set(names or ()) - set(out)
  if missing:
    raise KeyError(f"{path} has no component(s) {sorted(missing)}; it has "
                   f"{sorted(card['components'])}")
  return out


def load_schedule(path: str) -> ScheduleConfig:
  with open(os.path.join(path, "card.json")) as f:
    card = json.load(f)
  return ScheduleConfig.from_dict(card.get("scheduler") or {})
