"""Command line: a timm checkpoint -> a jdd model folder (Orbax variables + card.json).

    python -m third_party.convert_timm --arch nfnet_l0 --checkpoint nfnet_l0_ra2-45c6688d.pth \
        --out encoders/nfnet_l0 --num-classes 0

Reads timm's released `.pth` (a bare state dict), a Hugging Face hub `model.safetensors`, or a
timm training checkpoint (`{'state_dict', 'state_dict_ema', ...}`; `--ema` takes the EMA
weights). The conversion is strict (`third_party.torch_to_flax` with `jdd.models.nfnet.torch_key`):
a checkpoint that does not fit exits with status 2, lists the missing, unexpected and mis-shaped
keys, and writes nothing. The folder is the layout `jdd.stages.teachers.load_teacher` and the converter of
`third_party.convert_torch` use:

    DIR/variables   Orbax StandardCheckpointer of {'params'} (NFNet has no BatchNorm)
    DIR/card.json   {arch, kwargs, num_classes, image_shape, mean, std, dataset, config,
                     pretrained_cfg, feature_dim, num_params, dropped_keys,
                     source: {file, sha256, layout, naming}}

`--num-classes` defaults to the checkpoint's classifier (1000 for `nfnet_l0.ra2_in1k`). With
`--num-classes 0` (the references' `timm.create_model(..., num_classes=0)`, a 2304-d feature
extractor) the checkpoint's `head.fc.*` is dropped, as timm drops it, and the card lists the
dropped keys; nothing else is ever dropped. Input size, mean and std come from timm's pretrained
config of the arch (`jdd.models.nfnet.PRETRAINED_CFG`) unless given.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from third_party.convert_torch import (LayoutError, convert, extract_state_dict,
                                       load_checkpoint_file, sha256_of, write_teacher)
from third_party.torch_to_flax import CheckpointMismatchError, unwrap_state_dict

# jdd arch -> (timm pretrained tag whose preprocessing the card records, classifier key prefix).
TIMM_ARCHS = {"nfnet_l0": ("nfnet_l0.ra2_in1k", "head.fc.")}
_NOT_CONFIG = ("parent", "name", "dtype", "num_classes")


def select_state_dict(obj: Any, ema: bool) -> tuple[dict[str, np.ndarray], str]:
  """The bare numpy state dict (and its layout) of a timm checkpoint object."""
  if ema:
    if not (isinstance(obj, Mapping) and isinstance(obj.get("state_dict_ema"), Mapping)):
      keys = sorted(map(str, obj))[:8] if isinstance(obj, Mapping) else type(obj).__name__
      raise LayoutError(f"--ema needs a timm training checkpoint with 'state_dict_ema'; "
                        f"this file has {keys}")
    return unwrap_state_dict(obj["state_dict_ema"]), "timm_train_ema"
  return extract_state_dict(obj, "auto")


def split_head(state_dict: Mapping[str, np.ndarray], prefix: str,
               num_classes: int | None) -> tuple[dict[str, np.ndarray], int, list[str]]:
  """(state dict to convert, number of classes, dropped classifier keys).

  None infers the classes from the checkpoint's classifier; 0 drops that classifier.
  """
  head = sorted(k for k in state_dict if k.startswith(prefix))
  if num_classes is None:
    weight = state_dict.get(prefix + "weight")
    num_classes = int(weight.shape[0]) if weight is not None else 0
  if num_classes == 0 and head:
    return {k: v for k, v in state_dict.items() if k not in head}, 0, head
  return dict(state_dict), int(num_classes), []


def model_config(arch: str, num_classes: int, kwargs: Mapping[str, Any]) -> dict[str, Any]:
  """Every architecture attribute of the built module (defaults included), JSON-ready."""
  from jdd import models
  model = models.build_model(arch, num_classes, **dict(kwargs))
  out = {}
  for f in dataclasses.fields(model):
    if f.name in _NOT_CONFIG:
      continue
    value = getattr(model, f.name)
    out[f.name] = list(value) if isinstance(value, (tuple, list)) else value
  return out


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m third_party.convert_timm",
      description="Convert a timm checkpoint into a jdd model folder (Orbax + card.json).")
  p.add_argument("--arch", required=True, choices=sorted(TIMM_ARCHS))
  p.add_argument("--checkpoint", required=True, help=".pth/.bin (torch) or .safetensors")
  p.add_argument("--out", required=True, help="output folder (variables/ and card.json)")
  p.add_argument("--num-classes", type=int,
                 help="classifier size; default: the checkpoint's; 0: features only (drops "
                      "head.fc)")
  p.add_argument("--image-size", type=int, nargs="+", metavar="H [W]",
                 help="default: timm's pretrained input size (224 for nfnet_l0)")
  p.add_argument("--mean", type=float, nargs=3, help="default: timm's pretrained mean")
  p.add_argument("--std", type=float, nargs=3, help="default: timm's pretrained std")
  p.add_argument("--dataset", default="imagenet1k", help="dataset name for the card")
  p.add_argument("--kwargs", default="{}",
                 help="JSON model kwargs for a non-default layout, e.g. "
                      "'{\"depths\": [1, 1, 1, 1], ...}' (see jdd.models.nfnet.NFNet)")
  p.add_argument("--ema", action="store_true",
                 help="take 'state_dict_ema' from a timm training checkpoint")
  p.add_argument("--allow-pickle", action="store_true",
                 help="torch.load(weights_only=False): only for files you trust")
  p.add_argument("--force", action="store_true", help="replace an existing folder in --out")
  return p


def main(argv: Sequence[str] | None = None) -> int:
  from jdd.models.nfnet import PRETRAINED_CFG
  args = build_parser().parse_args(argv)
  tag, head_prefix = TIMM_ARCHS[args.arch]
  pcfg = PRETRAINED_CFG[tag]
  try:
    kwargs = json.loads(args.kwargs)
    if not isinstance(kwargs, dict):
      raise ValueError(f"--kwargs must be a JSON object, got {args.kwargs!r}")
    size = args.image_size or list(pcfg["input_size"][1:])
    if len(size) not in (1, 2):
      raise ValueError(f"--image-size takes H or H W, got {size}")
    image_shape = [int(size[0]), int(size[-1]), 3]
    obj = load_checkpoint_file(args.checkpoint, args.allow_pickle)
    state_dict, layout = select_state_dict(obj, args.ema)
    state_dict, num_classes, dropped = split_head(state_dict, head_prefix, args.num_classes)
    variables = convert(args.arch, state_dict, num_classes=num_classes, image_shape=image_shape,
                        kwargs=kwargs)
    config = model_config(args.arch, num_classes, kwargs)
    n = int(sum(np.size(v) for v in _leaves(variables)))
    card = {"arch": args.arch, "kwargs": kwargs, "num_classes": num_classes,
            "image_shape": image_shape,
            "mean": list(args.mean or pcfg["mean"]), "std": list(args.std or pcfg["std"]),
            "dataset": args.dataset, "config": config,
            "feature_dim": _feature_dim(variables["params"]),
            "pretrained_cfg": {"tag": tag, **{k: list(v) if isinstance(v, tuple) else v
                                              for k, v in pcfg.items()}},
            "num_params": n, "dropped_keys": dropped,
            "source": {"file": os.path.basename(args.checkpoint),
                       "sha256": sha256_of(args.checkpoint), "layout": layout,
                       "naming": "timm"}}
    write_teacher(args.out, variables, card, force=args.force)
  except CheckpointMismatchError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except (ValueError, FileNotFoundError, FileExistsError) as e:  # JSONDecodeError included
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"converted {args.checkpoint} ({layout}, {len(state_dict)} tensors, {n:,} values) -> "
        f"{args.out}  [{args.arch}, {num_classes} classes"
        + (f", dropped {', '.join(dropped)}" if dropped else "")
        + f", sha256 {card['source']['sha256'][:12]}]")
  return 0


def _feature_dim(params: Mapping) -> int:
  """Width of the pooled feature: the final conv's outputs, or the last block's."""
  if "final_conv" in params:
    return int(np.shape(params["final_conv"]["bias"])[0])
  last = sorted((k for k in params if k.startswith("stages_")),
                key=lambda k: tuple(int(i) for i in k.split("_")[1:]))[-1]
  return int(np.shape(params[last]["conv3"]["bias"])[0])


def _leaves(tree):
  if isinstance(tree, Mapping):
    for v in tree.values():
      yield from _leaves(v)
  else:
    yield tree


if __name__ == "__main__":
  sys.exit(main())
