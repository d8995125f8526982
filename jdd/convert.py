"""PyTorch `state_dict` -> jdd Flax variables, for any jdd network that names its torch keys.

numpy only (torch tensors are accepted by duck typing, never imported), so jdd's own loaders
(e.g. `jdd.models.bert.load_bert` reading safetensors) and the torch-side command-line
converters in `third_party/` share this one strict implementation.

Every convertible jdd model module defines `torch_key(path, naming) -> str`, which maps a Flax
variable path (collection first: ('params', 'layer1_0', 'conv1', 'kernel')) to the key that
network's PyTorch original uses ('layer1.0.conv1.weight'). `jdd.models.torch_key_fn(arch, naming)`
returns it. Leaf layouts are converted by the Flax leaf's name and rank:

    kernel, rank 4   torch (O, I/groups, kh, kw) -> Flax (kh, kw, I/groups, O)
    kernel, rank 2   torch Linear (out, in)      -> Flax Dense (in, out)
    everything else  copied as is (BN scale/bias/mean/var, biases, embeddings, gains)

A name map may return `(key, fn)` instead of a key to convert a leaf its own way.

The checks are strict because a silently half-loaded teacher produces plausible-looking but
wrong distilled images: every Flax leaf must find its torch key with the right shape, and every
torch key must be used (`num_batches_tracked` buffers excepted). Otherwise
`CheckpointMismatchError` lists the missing, unexpected and mis-shaped keys.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

IGNORED_SUFFIXES = ("num_batches_tracked",)
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net")
PREFIXES = ("module.", "_orig_mod.")


class CheckpointMismatchError(ValueError):
  """The checkpoint does not fit the architecture; the message lists every offending key."""

  def __init__(self, arch: str, missing, unexpected, misshaped):
    self.missing, self.unexpected, self.misshaped = list(missing), list(unexpected), list(misshaped)
    lines = [f"checkpoint does not fit architecture {arch!r}:"]
    def block(title, items):
      if items:
        shown = items[:20]
        lines.append(f"  {title} ({len(items)}): " + ", ".join(shown)
                     + (f", ... (+{len(items) - 20})" if len(items) > 20 else ""))
    block("missing keys", self.missing)
    block("unexpected keys", self.unexpected)
    block("mis-shaped keys", [f"{k} expected {e} got {g}" for k, e, g in self.misshaped])
    lines.append("  check --arch, --num-classes and the model kwargs (e.g. stem, width_mult), "
                 "and --naming for the layout the checkpoint was saved in.")
    super().__init__("\n".join(lines))


def unwrap_state_dict(obj: Any) -> dict[str, np.ndarray]:
  """The bare state dict inside a checkpoint object, as float numpy arrays.

  Handles torchvision/FADRM bare dicts, SRe2L/INFER `{'state_dict': ...}` (with DataParallel's
  `module.` prefixes), Tiny-ImageNet `{'model': ...}` and `torch.compile`'s `_orig_mod.`.
  """
  while isinstance(obj, Mapping):
    inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
    if inner is None:
      break
    obj = inner
  if not isinstance(obj, Mapping):
    raise ValueError(f"expected a state dict (a mapping of names to tensors), got {type(obj)}")
  out = {}
  for key, value in obj.items():
    for prefix in PREFIXES:
      while key.startswith(prefix):
        key = key[len(prefix):]
    if hasattr(value, "detach"):  # a torch tensor
      value = value.detach().cpu().float().numpy() if value.is_floating_point() else \
          value.detach().cpu().numpy()
    out[key] = np.asarray(value)
  return out


def flatten(tree, prefix=()):
  """(path tuple, leaf) for every leaf of a nested mapping."""
  if isinstance(tree, Mapping):
    for k, v in tree.items():
      yield from flatten(v, prefix + (str(k),))
  else:
    yield prefix, tree


def _unflatten(flat):
  root: dict = {}
  for path, value in flat.items():
    node = root
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = value
  return root


def default_transform(path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
  if path[-1] == "kernel" and value.ndim == 4:
    return np.transpose(value, (2, 3, 1, 0))
  if path[-1] == "kernel" and value.ndim == 2:
    return value.T
  return value


def convert_state_dict(template: Mapping, state_dict: Mapping[str, np.ndarray],
                       torch_key: Callable[[tuple[str, ...]], Any], arch: str = "?") -> dict:
  """Flax variables shaped like `template` (arrays or ShapeDtypeStructs) from `state_dict`."""
  flat = {}
  missing, misshaped, used = [], [], set()
  for path, leaf in flatten(template):
    mapped = torch_key(path)
    key, fn = mapped if isinstance(mapped, tuple) else (mapped, None)
    if key not in state_dict:
      missing.append(key)
      continue
    used.add(key)
    value = (fn or (lambda v: default_transform(path, v)))(np.asarray(state_dict[key]))
    if tuple(value.shape) != tuple(leaf.shape):
      misshaped.append((key, tuple(leaf.shape), tuple(value.shape)))
      continue
    flat[path] = value.astype(np.dtype(leaf.dtype))
  unexpected = sorted(k for k in state_dict if k not in used
                      and not k.endswith(IGNORED_SUFFIXES))
  if missing or unexpected or misshaped:
    raise CheckpointMismatchError(arch, missing, unexpected, misshaped)
  return _unflatten(flat)


def to_state_dict(variables: Mapping, torch_key: Callable[[tuple[str, ...]], Any]) -> dict:
  """The inverse for the default transforms: jdd variables -> torch-named numpy arrays."""
  out = {}
  for path, leaf in flatten(variables):
    mapped = torch_key(path)
    key = mapped[0] if isinstance(mapped, tuple) else mapped
    value = np.asarray(leaf)
    if path[-1] == "kernel" and value.ndim == 4:
      value = np.transpose(value, (3, 2, 0, 1))
    elif path[-1] == "kernel" and value.ndim == 2:
      value = value.T
    out[key] = value
  return out
