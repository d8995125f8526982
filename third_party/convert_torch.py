"""Command line: a PyTorch checkpoint file -> a jdd teacher folder (Orbax variables + card.json).

    python -m third_party.convert_torch --arch resnet18 --checkpoint ckpt.pth --out teachers/r18 \
        --layout sre2l --preset cifar100_sre2l --kwargs '{"stem": "cifar"}'

The folder it writes is what `jdd.stages.teachers.load_teacher` reads (set `teacher.checkpoint=DIR`):

    DIR/variables   Orbax StandardCheckpointer of {'params', 'batch_stats'}
    DIR/card.json   {arch, kwargs, num_classes, image_shape, mean, std, dataset,
                     source: {file, sha256, layout, naming}}

Checkpoint layouts of the reference code (shared/research/unimodal_dd_methods.md §3.1, §4.3,
§5.2, §7.3), chosen with `--layout` (the default `auto` accepts any of them):

    torchvision  a bare state dict (`torch.save(model.state_dict())`, torchvision's hub files)
    fadrm        a bare state dict, kuangliu names for ResNets (`--naming kuangliu`)
    sre2l        {'state_dict': ..., 'acc', 'epoch'} with DataParallel's `module.` prefixes
                 (SRe2L's CIFAR squeeze and INFER/UFC's `pretrained/<ds>/<arch>_E200/ckpt.pth`)
    tiny         {'model': ..., 'optimizer', 'lr_scheduler', 'epoch', 'args'} (the torchvision
                 classification reference script SRe2L's Tiny-ImageNet teacher is trained with)

Files are read with `torch.load(weights_only=True)`, which refuses arbitrary pickled objects;
`argparse.Namespace` (the `args` of a Tiny checkpoint) is allowed as well. `.safetensors` files
are read with safetensors. The conversion is strict (`third_party.torch_to_flax`): a checkpoint
that does not fit the architecture exits with status 2 and the list of missing, unexpected and
mis-shaped keys, and nothing is written.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from third_party.torch_to_flax import (CheckpointMismatchError, PREFIXES, WRAPPER_KEYS,
                                       convert_state_dict, unwrap_state_dict)

# Normalisation, dataset, classes and input size of the references' teachers (spec §3.2, §4.3,
# §5.2). SRe2L's CIFAR-100 code normalises with the CIFAR-10 constants; INFER and FADRM use the
# CIFAR-100 ones; FADRM's Tiny-ImageNet teachers use the ImageNet constants, SRe2L's its own.
_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_CIFAR10 = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
_CIFAR100 = ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))
_TINY_SRE2L = ((0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262))
PRESETS: dict[str, dict[str, Any]] = {
    "imagenet": {"dataset": "imagenet1k", "num_classes": 1000, "image_size": (224, 224),
                 "mean": _IMAGENET[0], "std": _IMAGENET[1]},
    "cifar10": {"dataset": "cifar10", "num_classes": 10, "image_size": (32, 32),
                "mean": _CIFAR10[0], "std": _CIFAR10[1]},
    "cifar100": {"dataset": "cifar100", "num_classes": 100, "image_size": (32, 32),
                 "mean": _CIFAR100[0], "std": _CIFAR100[1]},
    "cifar100_sre2l": {"dataset": "cifar100", "num_classes": 100, "image_size": (32, 32),
                       "mean": _CIFAR10[0], "std": _CIFAR10[1]},
    "tiny_sre2l": {"dataset": "tiny_imagenet", "num_classes": 200, "image_size": (64, 64),
                   "mean": _TINY_SRE2L[0], "std": _TINY_SRE2L[1]},
    "tiny_fadrm": {"dataset": "tiny_imagenet", "num_classes": 200, "image_size": (64, 64),
                   "mean": _IMAGENET[0], "std": _IMAGENET[1]},
}

LAYOUTS = ("auto", "torchvision", "fadrm", "sre2l", "tiny")
_LAYOUT_WRAPPER = {"sre2l": "state_dict", "tiny": "model"}


class LayoutError(ValueError):
  """The checkpoint object is not in the layout `--layout` names."""


def sha256_of(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def load_checkpoint_file(path: str, allow_pickle: bool = False) -> Any:
  """The object stored in a `.pth`/`.pt`/`.bin` (torch) or `.safetensors` file."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"checkpoint {path!r} does not exist")
  if path.endswith(".safetensors"):
    from safetensors.numpy import load_file
    return load_file(path)
  import torch
  if allow_pickle:
    return torch.load(path, map_location="cpu", weights_only=False)
  try:
    with torch.serialization.safe_globals([argparse.Namespace]):
      return torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # torch raises UnpicklingError with its own explanation
    raise ValueError(
        f"torch.load(weights_only=True) refused {path!r}: {str(e).splitlines()[0]}\n"
        "The file pickles more than tensors. If you trust where it came from, rerun with "
        "--allow-pickle.") from e


def _is_tensor_dict(obj: Any) -> bool:
  return isinstance(obj, Mapping) and bool(obj) and all(
      hasattr(v, "shape") for v in obj.values())


def detect_layout(obj: Any) -> str:
  """'sre2l', 'tiny' or 'bare' (torchvision and FADRM files look alike)."""
  if isinstance(obj, Mapping):
    for layout, key in _LAYOUT_WRAPPER.items():
      if isinstance(obj.get(key), Mapping):
        return layout
    if _is_tensor_dict(obj):
      return "bare"
    other = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
    if other is not None:  # e.g. {'model_state_dict': ...}, {'net': ...}: auto only
      return f"wrapped:{other}"
  raise LayoutError(
      f"unrecognised checkpoint: expected a state dict or a dict holding one under one of "
      f"{WRAPPER_KEYS}, got {type(obj).__name__}"
      + (f" with keys {sorted(map(str, obj))[:10]}" if isinstance(obj, Mapping) else ""))


def _suggest(found: str) -> str:
  if found == "bare":
    return "--layout torchvision/fadrm or "
  return f"--layout {found} or " if found in _LAYOUT_WRAPPER else ""


def extract_state_dict(obj: Any, layout: str = "auto") -> tuple[dict[str, np.ndarray], str]:
  """(bare numpy state dict, the layout found); an explicit `layout` must match the file."""
  if layout not in LAYOUTS:
    raise LayoutError(f"--layout must be one of {LAYOUTS}, got {layout!r}")
  found = detect_layout(obj)
  if layout == "auto":
    return unwrap_state_dict(obj), found
  if layout in ("torchvision", "fadrm"):
    if found != "bare":
      wrapper = _LAYOUT_WRAPPER.get(found, found.partition(":")[2])
      raise LayoutError(
          f"--layout {layout} expects a bare state dict (names -> tensors), but the file wraps "
          f"it under {wrapper!r} (the {found} layout); use {_suggest(found)}--layout auto")
    prefixed = [k for k in obj if str(k).startswith(PREFIXES)]
    if prefixed:
      raise LayoutError(
          f"--layout {layout} expects torch module names, but {len(prefixed)} keys carry a "
          f"DataParallel/compile prefix (e.g. {prefixed[0]!r}); use --layout auto")
    return unwrap_state_dict(obj), layout
  key = _LAYOUT_WRAPPER[layout]
  if found != layout:
    what = ("a bare state dict" if found == "bare" else
            f"a dict wrapping it under {_LAYOUT_WRAPPER.get(found, found.partition(':')[2])!r}")
    keys = sorted(map(str, obj))[:6]
    raise LayoutError(
        f"--layout {layout} expects a dict with the state dict under {key!r}, but the file is "
        f"{what} (first keys: {keys}); use {_suggest(found)}--layout auto")
  return unwrap_state_dict(obj[key]), layout


def _key_kwargs(arch: str, template: Mapping, naming: str | None) -> dict[str, Any]:
  """Extra arguments a model's torch_key needs that follow from the model's shapes.

  The DD ConvNet's classifier reorders torch's (C, H, W) flattening, which needs the final
  feature-map side: fc inputs / channels of the last conv.
  """
  if arch != "convnet":
    return {}
  params = template["params"]
  convs = sorted(k for k in params if k.startswith("conv"))
  channels = params[convs[-1]]["kernel"].shape[-1]
  side = int(round((params["fc"]["kernel"].shape[0] // channels) ** 0.5))
  return {"feature_hw": side}


def default_naming(arch: str) -> str | None:
  """The naming an arch's torch_key uses when none is given (recorded in the card)."""
  import inspect
  from jdd import models
  param = inspect.signature(models.REGISTRY[arch][1]).parameters.get("naming")
  return None if param is None or param.default is inspect.Parameter.empty else param.default


def _available_namings(arch: str) -> list[str]:
  from jdd import models
  fn = models.REGISTRY[arch][1]
  namings = getattr(sys.modules.get(getattr(fn, "__module__", ""), None), "NAMINGS", None)
  return sorted(namings) if isinstance(namings, (Mapping, tuple, list, set)) else []


def convert(arch: str, state_dict: Mapping[str, np.ndarray], *, num_classes: int,
            image_shape: Sequence[int], kwargs: Mapping[str, Any] | None = None,
            naming: str | None = None) -> dict:
  """jdd variables of `arch` (numpy leaves) from a bare torch state dict; strict."""
  import jax
  from jdd import models
  model = models.build_model(arch, num_classes, **dict(kwargs or {}))
  template = jax.eval_shape(
      lambda: models.init_variables(model, jax.random.key(0), tuple(image_shape)))
  key_fn = models.torch_key_fn(arch, naming, **_key_kwargs(arch, template, naming))
  try:
    return convert_state_dict(template, state_dict, key_fn, arch)
  except CheckpointMismatchError as e:
    namings = _available_namings(arch)
    if namings:
      e.args = (e.args[0] + f"\n  namings known for {arch}: {', '.join(namings)} "
                f"(this run: {naming or 'the default'})",)
    raise


def write_teacher(out: str, variables: Mapping, card: Mapping, force: bool = False) -> None:
  """DIR/variables then DIR/card.json; the card is written last, so it marks a complete folder."""
  import orbax.checkpoint as ocp
  from jdd import checkpoint
  card_path = os.path.join(out, "card.json")
  if os.path.exists(card_path) and not force:
    raise FileExistsError(f"{out} already holds a teacher (card.json); pass --force to replace it")
  os.makedirs(out, exist_ok=True)
  if os.path.exists(card_path):
    os.remove(card_path)
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(os.path.abspath(os.path.join(out, "variables")), dict(variables), force=True)
  ckptr.wait_until_finished()
  checkpoint.atomic_write_json(card_path, dict(card))


def _floats(values: Sequence[float] | None, name: str, channels: int) -> list[float] | None:
  if values is None:
    return None
  values = [float(v) for v in values]
  if len(values) != channels:
    raise ValueError(f"--{name} needs {channels} values (one per channel), got {len(values)}")
  return values


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m third_party.convert_torch",
      description="Convert a PyTorch checkpoint into a jdd teacher folder (Orbax + card.json).",
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog="presets: " + "; ".join(
          f"{k}: {v['dataset']}, {v['num_classes']} classes, {v['image_size'][0]}px, "
          f"mean {v['mean']}, std {v['std']}" for k, v in PRESETS.items()))
  p.add_argument("--arch", required=True, help="a jdd.models.REGISTRY name, e.g. resnet18")
  p.add_argument("--checkpoint", required=True, help=".pth/.pt/.bin (torch) or .safetensors")
  p.add_argument("--out", required=True, help="output folder (variables/ and card.json)")
  p.add_argument("--naming", default=None,
                 help="torch naming of the checkpoint (resnet*: torchvision | kuangliu); "
                      "default: the arch's usual one")
  p.add_argument("--layout", default="auto", choices=LAYOUTS,
                 help="checkpoint wrapper to expect; auto accepts any")
  p.add_argument("--preset", choices=sorted(PRESETS),
                 help="dataset, classes, size and normalisation of a reference teacher")
  p.add_argument("--num-classes", type=int)
  p.add_argument("--image-size", type=int, nargs="+", metavar="H [W]")
  p.add_argument("--channels", type=int, default=3)
  p.add_argument("--mean", type=float, nargs="+")
  p.add_argument("--std", type=float, nargs="+")
  p.add_argument("--dataset", help="dataset name for the card (jdd dataset.name)")
  p.add_argument("--kwargs", default="{}",
                 help="JSON model kwargs, e.g. '{\"stem\": \"cifar\"}'; must equal the config's "
                      "teacher.kwargs for load_teacher to accept the folder")
  p.add_argument("--allow-pickle", action="store_true",
                 help="torch.load(weights_only=False): only for files you trust")
  p.add_argument("--force", action="store_true", help="replace an existing teacher in --out")
  return p


def resolve_settings(args: argparse.Namespace) -> dict[str, Any]:
  """Preset values, overridden field by field by explicit flags; errors name the flag."""
  preset = PRESETS.get(args.preset, {}) if args.preset else {}
  num_classes = args.num_classes or preset.get("num_classes")
  size = args.image_size or preset.get("image_size")
  mean = args.mean or preset.get("mean")
  std = args.std or preset.get("std")
  dataset = args.dataset or preset.get("dataset")
  missing = [flag for flag, v in (("--num-classes", num_classes), ("--image-size", size),
                                  ("--mean", mean), ("--std", std), ("--dataset", dataset))
             if not v]
  if missing:
    raise ValueError(f"missing {', '.join(missing)} (give them, or a --preset)")
  if len(size) not in (1, 2):
    raise ValueError(f"--image-size takes H or H W, got {size}")
  h, w = (size[0], size[0]) if len(size) == 1 else size
  kwargs = json.loads(args.kwargs)
  if not isinstance(kwargs, dict):
    raise ValueError(f"--kwargs must be a JSON object, got {args.kwargs!r}")
  return {"num_classes": int(num_classes), "image_shape": [int(h), int(w), args.channels],
          "mean": _floats(mean, "mean", args.channels), "std": _floats(std, "std", args.channels),
          "dataset": dataset, "kwargs": kwargs}


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  try:
    from jdd import models
    if args.arch not in models.REGISTRY:
      raise ValueError(f"unknown --arch {args.arch!r}; choose one of {', '.join(models.REGISTRY)}")
    settings = resolve_settings(args)
    obj = load_checkpoint_file(args.checkpoint, args.allow_pickle)
    state_dict, layout = extract_state_dict(obj, args.layout)
    variables = convert(args.arch, state_dict, num_classes=settings["num_classes"],
                        image_shape=settings["image_shape"], kwargs=settings["kwargs"],
                        naming=args.naming)
    card = {"arch": args.arch, "kwargs": settings["kwargs"],
            "num_classes": settings["num_classes"], "image_shape": settings["image_shape"],
            "mean": settings["mean"], "std": settings["std"], "dataset": settings["dataset"],
            "source": {"file": os.path.basename(args.checkpoint),
                       "sha256": sha256_of(args.checkpoint), "layout": layout,
                       "naming": args.naming or default_naming(args.arch)}}
    write_teacher(args.out, variables, card, force=args.force)
  except CheckpointMismatchError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except (ValueError, FileNotFoundError, FileExistsError, json.JSONDecodeError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  n = sum(int(np.prod(np.shape(v))) for v in _leaves(variables))
  print(f"converted {args.checkpoint} ({layout} layout, {len(state_dict)} tensors, {n:,} values) "
        f"-> {args.out}  [{args.arch}, {settings['num_classes']} classes, "
        f"{'x'.join(map(str, settings['image_shape']))}, sha256 {card['source']['sha256'][:12]}]")
  return 0


def _leaves(tree):
  if isinstance(tree, Mapping):
    for v in tree.values():
      yield from _leaves(v)
  else:
    yield tree


if __name__ == "__main__":
  sys.exit(main())
