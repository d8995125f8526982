"""The references' squeeze (teacher training) recipes, for any jdd architecture.

    from jdd.configs.teacher_recipes import apply_recipe
    apply_recipe(c, "mobilenet_v2", "cifar100")   # fills c.teacher (arch, kwargs, optimiser...)

    python -m jdd.main --config configs/sre2l_cifar100.py --workdir runs/x \
        --config.teacher.arch=densenet121 --config.teacher.kwargs.variant=cifar ...

`recipe(arch, dataset, reference=None)` returns the `config.teacher` block of one recipe (a
`jdd.configs.classification.teacher`; shared/research/unimodal_dd_methods.md §3.2, §4.3, §5.2):

  sre2l  CIFAR-10/100: 200 epochs, SGD lr 0.1, momentum 0.9, wd 5e-4, cosine, bs 128,
         RandomCrop(32, 4) + flip (SRe2L `squeeze_cifar.py`; INFER's CIFAR teachers come from
         the same recipe family, "Diversity-Driven-Synthesis" [assumed, not read]).
         Tiny-ImageNet: 50 epochs, SGD lr 0.2, momentum 0.9, wd 1e-4, bs 256, cosine after 5
         linear warm-up epochs (torchvision reference recipe, "rn18_E50").
  fadrm  CIFAR-10/100: 200 epochs, Adam lr 1e-3 (no weight decay), bs 512, cosine.
         Tiny-ImageNet: 50 epochs, SGD lr 0.01 (momentum 0.9, wd 5e-4, bs 256: [unverified],
         the spec gives only epochs and lr). CV-DD's `squeeze.py` is the probable source; the
         spec marks it [unverified that FADRM's checkpoints are exactly these].

The default reference is the one whose papers use that architecture as a CIFAR/Tiny teacher:
FADRM's kuangliu-only nets (DenseNet-121, ShuffleNetV2) take `fadrm`, the rest `sre2l`.
Architectures are built in their CIFAR layout (`stem='cifar'` or `variant='cifar'`, whichever
the module has), as every CIFAR/Tiny teacher of the references is.

Deliberate differences: jdd's supervised step has no CutMix and no label smoothing (the CV-DD
squeeze uses CutMix + smoothing 0.1), and crops are RandomCrop(pad 4) + flip at every
resolution. ImageNet-1k has no squeeze recipe here: every reference uses torchvision's
IMAGENET1K_V1 weights, so convert those (`python -m third_party.convert_torch --preset
imagenet`, docs/teachers.md).
"""

from __future__ import annotations

import dataclasses

import ml_collections

from jdd import models
from jdd.configs.classification import teacher

SMALL_DATASETS = ("cifar10", "cifar100", "tiny_imagenet")
REFERENCES = ("sre2l", "fadrm")
FADRM_DEFAULT = ("densenet121", "shufflenet_v2_x0_5", "shufflenet_v2_x1_0")

# Each recipe's fields; the rest are `classification.TEACHER_DEFAULTS`' (no checkpoint,
# momentum 0.9, no warm-up, lr_per_epoch False, RandomCrop(pad 4) + flip), shared by all.
_RECIPES = {
    ("sre2l", "cifar"): dict(epochs=200, batch_size=128, optimizer="sgd", lr=0.1,
                             weight_decay=5e-4),
    ("sre2l", "tiny"): dict(epochs=50, batch_size=256, optimizer="sgd", lr=0.2,
                            weight_decay=1e-4, warmup_epochs=5),
    # torch Adam(lr=1e-3) without weight decay is AdamW with weight_decay=0.
    ("fadrm", "cifar"): dict(epochs=200, batch_size=512, optimizer="adamw", lr=1e-3,
                             weight_decay=0.0),
    ("fadrm", "tiny"): dict(epochs=50, batch_size=256, optimizer="sgd", lr=0.01,
                            weight_decay=5e-4),
}


def cifar_kwargs(arch: str) -> dict:
  """Model kwargs selecting `arch`'s CIFAR layout: whichever of `stem`/`variant` it has."""
  fields = {f.name for f in dataclasses.fields(models.build_model(arch, 10))}
  if "stem" in fields:
    return {"stem": "cifar"}
  if "variant" in fields:
    return {"variant": "cifar"}
  return {}


def default_reference(arch: str) -> str:
  return "fadrm" if arch in FADRM_DEFAULT else "sre2l"


def recipe(arch: str, dataset: str, reference: str | None = None) -> ml_collections.ConfigDict:
  """`config.teacher` fields for squeezing `arch` on `dataset` as `reference` does."""
  if arch not in models.REGISTRY:
    raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(models.REGISTRY)}")
  if dataset not in SMALL_DATASETS:
    raise ValueError(
        f"no squeeze recipe for {dataset!r}: the references train teachers only on "
        f"{SMALL_DATASETS}; for ImageNet-1k they use torchvision's IMAGENET1K_V1 weights, "
        "which `python -m third_party.convert_torch --preset imagenet` converts.")
  reference = reference or default_reference(arch)
  if reference not in REFERENCES:
    raise ValueError(f"reference must be one of {REFERENCES}, got {reference!r}")
  family = "tiny" if dataset == "tiny_imagenet" else "cifar"
  return teacher(arch, cifar_kwargs(arch), **_RECIPES[(reference, family)])


def apply_recipe(config: ml_collections.ConfigDict, arch: str, dataset: str,
                 reference: str | None = None) -> ml_collections.ConfigDict:
  """Replaces `config.teacher`'s training fields by the recipe's (in place; returns config)."""
  r = recipe(arch, dataset, reference)
  with config.unlocked():
    for key, value in r.items():
      config.teacher[key] = value
  return config
