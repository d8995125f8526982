"""Command line: a diffusers Stable Diffusion folder and/or a transformers CLIP folder -> a jdd
diffusion folder (Orbax per component + card.json), read by `jdd.models.diffusion.load_components`.

    python -m third_party.convert_diffusers --diffusers ~/hf/stable-diffusion-v1-5 \
        --clip ~/hf/clip-vit-base-patch32 --out weights/sd15

`--diffusers` is a pipeline folder with unet/, vae/ and text_encoder/ subfolders, each holding a
config.json and weights (diffusion_pytorch_model.safetensors / model.safetensors, or the .bin
pickles; fp16 `*.fp16.*` variants are used when they are the only ones). Its
scheduler/scheduler_config.json, when present, is recorded in the card. `--clip` is a
transformers folder (CLIPModel, CLIPTextModelWithProjection or CLIPVisionModelWithProjection)
saved as component `clip`. Safetensors are read with `safetensors.numpy`; torch is imported only
for a .bin, with `torch.load(weights_only=True)`.

Reference layouts: diffusers' `UNet2DConditionModel` / `AutoencoderKL` and transformers' CLIP
state dicts. Key normalisation (listed in the card under `source.ignored` / `source.renamed`):
the non-learned `position_ids` buffers are dropped; transformers 5's bare `CLIPTextModel` keys
(no 'text_model.' prefix) get the prefix back. The conversion itself is the strict generic one
(`third_party.torch_to_flax.convert_state_dict`): a checkpoint that does not fit its config.json
exits with status 2 and the lists of missing, unexpected and mis-shaped keys, and nothing is
written for any component.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

import numpy as np

from third_party.torch_to_flax import CheckpointMismatchError, convert_state_dict, \
    unwrap_state_dict

WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "model.safetensors",
                "diffusion_pytorch_model.fp16.safetensors", "model.fp16.safetensors",
                "diffusion_pytorch_model.bin", "pytorch_model.bin",
                "diffusion_pytorch_model.fp16.bin", "pytorch_model.fp16.bin")
# subfolder of a diffusers pipeline -> jdd component class
PIPELINE_PARTS = {"unet": "UNet2DConditionModel", "vae": "AutoencoderKL", "text_encoder": "CLIP"}
_TEXT_BARE = ("embeddings.", "encoder.", "final_layer_norm.")


def find_weights(folder: str) -> str:
  for name in WEIGHT_NAMES:
    path = os.path.join(folder, name)
    if os.path.exists(path):
      return path
  files = sorted(os.listdir(folder))[:10] if os.path.isdir(folder) else "no folder"
  raise FileNotFoundError(f"{folder} holds none of {WEIGHT_NAMES[:2]} (or .bin / .fp16 "
                          f"variants); files: {files}")


def read_state_dict(path: str) -> tuple[dict[str, np.ndarray], str]:
  """(numpy state dict, format) of a weights file."""
  if path.endswith(".safetensors"):
    from safetensors.numpy import load_file
    return {k: np.asarray(v) for k, v in load_file(path).items()}, "safetensors"
  import torch
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # torch says what it refused
    raise ValueError(f"torch.load(weights_only=True) refused {path}: "
                     f"{str(e).splitlines()[0]}") from e
  return unwrap_state_dict(obj), "torch"


def normalize_keys(state_dict: dict[str, np.ndarray], cls_name: str, config
                   ) -> tuple[dict[str, np.ndarray], list[str], list[str]]:
  """(state dict in jdd's reference layout, ignored keys, renamed keys)."""
  ignored = sorted(k for k in state_dict if k.endswith("position_ids"))
  out = {k: v for k, v in state_dict.items() if k not in ignored}
  renamed = []
  if cls_name == "CLIP" and config.text is not None and config.vision is None and \
      not any(k.startswith("text_model.") for k in out):
    fixed = {}
    for k, v in out.items():
      if k.startswith(_TEXT_BARE):
        renamed.append(k)
        k = "text_model." + k
      fixed[k] = v
    out = fixed
  return out, ignored, renamed


def read_config(folder: str, cls_name: str):
  from jdd.models.diffusion import clip, unet, vae
  path = os.path.join(folder, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{folder} has no config.json")
  with open(path) as f:
    d = json.load(f)
  if cls_name == "UNet2DConditionModel":
    return unet.UNetConfig.from_dict(d)
  if cls_name == "AutoencoderKL":
    return vae.VAEConfig.from_dict(d)
  return clip.CLIPConfig.from_dict(d)


def convert_component(folder: str, cls_name: str):
  """(numpy {'params'}, config, card entry) for one component folder; strict."""
  from jdd.models import diffusion
  from jdd.models.bert import sha256_file
  config = read_config(folder, cls_name)
  weights = find_weights(folder)
  raw, fmt = read_state_dict(weights)
  state_dict, ignored, renamed = normalize_keys(raw, cls_name, config)
  _, _, template_fn, torch_key = diffusion.CLASSES[cls_name]
  params = convert_state_dict(template_fn(config), state_dict, torch_key, arch=cls_name)
  entry = {"class": cls_name, "config": config.to_dict(),
           "source": {"file": os.path.relpath(weights, os.path.dirname(folder)),
                      "sha256": sha256_file(weights), "format": fmt, "ignored": ignored,
                      "renamed": len(renamed)}}
  return params, config, entry


def convert(diffusers_dir: str | None, clip_dir: str | None) -> tuple[dict, dict]:
  """({component: params}, card) for the given folders; raises before anything is written."""
  if not diffusers_dir and not clip_dir:
    raise ValueError("give --diffusers and/or --clip")
  params, card = {}, {"components": {}, "scheduler": None}
  if diffusers_dir:
    for part, cls_name in PIPELINE_PARTS.items():
      sub = os.path.join(diffusers_dir, part)
      if not os.path.isdir(sub):
        raise FileNotFoundError(f"{diffusers_dir} has no {part}/ folder")
      params[part], _, card["components"][part] = convert_component(sub, cls_name)
    sched = os.path.join(diffusers_dir, "scheduler", "scheduler_config.json")
    if os.path.exists(sched):
      with open(sched) as f:
        card["scheduler"] = json.load(f)
  if clip_dir:
    params["clip"], _, card["components"]["clip"] = convert_component(clip_dir, "CLIP")
  return params, card


def write_folder(out: str, params: dict, card: dict, force: bool = False) -> None:
  import orbax.checkpoint as ocp
  from jdd import checkpoint
  from jdd.models.diffusion import CARD_ARCH
  card_path = os.path.join(out, "card.json")
  if os.path.exists(card_path) and not force:
    raise FileExistsError(f"{out} already holds a converted model (card.json); pass --force")
  os.makedirs(out, exist_ok=True)
  if os.path.exists(card_path):
    os.remove(card_path)
  ckptr = ocp.StandardCheckpointer()
  for name, p in params.items():
    ckptr.save(os.path.abspath(os.path.join(out, name, "variables")), p, force=True)
  ckptr.wait_until_finished()
  checkpoint.atomic_write_json(card_path, {"arch": CARD_ARCH, **card})


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m third_party.convert_diffusers",
                              description="Convert diffusers / CLIP checkpoints for jdd.")
  p.add_argument("--diffusers", help="pipeline folder with unet/, vae/, text_encoder/")
  p.add_argument("--clip", help="transformers CLIP folder (config.json + weights)")
  p.add_argument("--out", required=True, help="output folder")
  p.add_argument("--force", action="store_true", help="replace an existing folder's contents")
  return p


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  try:
    params, card = convert(args.diffusers, args.clip)
    write_folder(args.out, params, card, force=args.force)
  except (CheckpointMismatchError, ValueError, FileNotFoundError, FileExistsError,
          json.JSONDecodeError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  for name, entry in card["components"].items():
    n = sum(int(np.prod(np.shape(v))) for v in _leaves(params[name]))
    print(f"{name}: {entry['class']} {n:,} values from {entry['source']['file']} "
          f"({entry['source']['format']}, sha256 {entry['source']['sha256'][:12]})")
  print(f"-> {args.out}")
  return 0


def _leaves(tree):
  if isinstance(tree, dict):
    for v in tree.values():
      yield from _leaves(v)
  else:
    yield tree


if __name__ == "__main__":
  sys.exit(main())
