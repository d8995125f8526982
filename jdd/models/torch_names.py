"""Flax variable paths <-> PyTorch state-dict keys, for converting third-party weights.

jdd's modules are named after their PyTorch originals so that conversion is a mechanical rename
(the strict converter is `jdd/convert.py`, numpy only; the torch-side CLIs are in `third_party/`). The rule:
a Flax path ('params', 'layer1_0', 'conv1', 'kernel') becomes the torch key 'layer1.0.conv1.weight'
by joining the module names with '.', turning every `_<digits>` inside a module name into
`.<digits>` (torch's numeric Sequential/ModuleList indices), and renaming the leaf:

    params/kernel -> weight     params/scale -> weight     params/bias -> bias
    batch_stats/mean -> running_mean     batch_stats/var -> running_var
    params/embedding -> weight

Model-specific differences (e.g. jdd's `downsample_conv` for torch's `downsample.0`) are given as
a dict of exact module-name replacements applied after that rule.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

LEAVES = {
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("params", "embedding"): "weight",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}

_INDEX = re.compile(r"_(\d+)(?=_|$)")


def module_key(name: str) -> str:
  """'layer1_0' -> 'layer1.0'; 'features_3_conv_0_0' -> 'features.3.conv.0.0'."""
  return _INDEX.sub(r".\1", name)


def default_torch_key(path: tuple[str, ...], renames: Mapping[str, str] | None = None) -> str:
  """The torch key of a Flax variable path under the rule in the module docstring."""
  collection, *modules, leaf = path
  if (collection, leaf) not in LEAVES:
    raise KeyError(f"no torch name for Flax leaf {'/'.join(path)}")
  parts = []
  for m in modules:
    m = module_key(m)
    parts.append(renames.get(m, m) if renames else m)
  return ".".join(parts + [LEAVES[(collection, leaf)]])
