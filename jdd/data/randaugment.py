"""The image-text references' train transform, on the host: RandomResizedCrop, horizontal flip
and BLIP's RandomAugment, every draw from a generator derived from the run's keys.

Reference: `create_dataset` in `data/__init__.py` of silicx/LoRS_Distill and
zhangxin-xd/RepBlend (MTT-VL's is LoRS's), with BLIP's `RandomAugment` in their
`data/randaugment.py` (shared/research/multimodal_dd_methods.md §2.3). Experts are trained, and
the distilled images initialised, through

    RandomResizedCrop(224, scale=(0.5, 1), bicubic) -> RandomHorizontalFlip()
    -> RandomAugment(N=2, M=5, ops) -> ToTensor -> Normalize(CLIP mean, std)

unless the reference's `--no_aug` is given (none of the published scripts gives it; the
buffers' folder has no `_NoAug` suffix). RandomAugment, as the reference runs it: N op names
drawn uniformly WITH replacement from the list; each fires with probability 0.5; the magnitude M
(out of 10) sets Brightness/Sharpness factor M/10 * 1.8 + 0.1 (1.0 at M = 5: both are the
identity there), shear M/10 * 0.3, translation M/10 * 10 px, rotation M/10 * 30 degrees, the last
three with a random sign and grey (128) fill; Identity, AutoContrast and Equalize take no
magnitude. LoRS and MTT-VL use 10 ops (`OPS_LORS`), RepBlend the same without AutoContrast
(`OPS_REPBLEND`).

Why on the host, in the loader's threads: the crop is cut from the original, variable-size image
and resized with PIL's antialiased bicubic, as torchvision does to the reference's PIL images;
on the device this would need a fixed-size padded copy of every original and a port of PIL's
resampling. Each op is the torchvision functional op on a PIL image with the reference's
parameters: `F.resized_crop`, `F.hflip`, `F.affine` (shear given as the angle atan(level) about
the top-left corner, as torchvision's RandAugment does; translation), `F.rotate` (about the
image centre), `F.autocontrast`, `F.equalize`, `F.adjust_brightness`, `F.adjust_sharpness`,
with bilinear resampling (the reference's OpenCV default). `tests/test_randaugment.py` builds
each torchvision op and compares, pixel for pixel.

Deliberate differences from the reference code:

* The reference's ops are OpenCV ports: warps in OpenCV's fixed-point bilinear arithmetic
  (1/32-pixel weights), rotation about (W/2, H/2) in pixel-index coordinates (half a pixel off
  the image centre), shear and translation with the opposite sign convention (immaterial: the
  sign is drawn at random). jdd follows torchvision / PIL, so warped pixels differ by a few grey
  levels, mostly at edges.
* The reference's AutoContrast casts the channel minimum through `np.int8`, which wraps for
  minima above 127 and then whitens the channel; jdd uses PIL's autocontrast (torchvision's).
* Every draw comes from a NumPy generator seeded from the run's keys, one per image, instead of
  the global NumPy / torch state of DataLoader workers, so a resumed run replays the same
  augmentation and the thread count does not change it. The reference draws the sign of a
  shear / translation / rotation only when the op fires; jdd draws one per slot always (same
  distribution).
* The reference's Flickr loader caches post-augmentation tensors (`lru_cache(100)`, research
  weakness 12), so a cached image repeats its augmentation; not reproduced.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

MAX_LEVEL = 10.0
OPS_LORS = ("Identity", "AutoContrast", "Brightness", "Sharpness", "Equalize", "ShearX",
            "ShearY", "TranslateX", "TranslateY", "Rotate")
OPS_REPBLEND = tuple(op for op in OPS_LORS if op != "AutoContrast")
OPS_BY_REFERENCE = {"lors": OPS_LORS, "mttvl": OPS_LORS, "repblend": OPS_REPBLEND}
SIGNED = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
# torchvision's RandomResizedCrop gives up after this many rejected boxes.
_RRC_TRIES = 10


@dataclasses.dataclass(frozen=True)
class TrainTransform:
  """The train transform's settings; the defaults are the references' at `size`."""

  size: int
  scale: tuple[float, float] = (0.5, 1.0)
  ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
  flip: bool = True
  ops: tuple[str, ...] = OPS_LORS
  num_ops: int = 2
  magnitude: float = 5.0
  prob: float = 0.5
  fill: int = 128

  def __post_init__(self):
    unknown = [op for op in self.ops if op not in OPS_LORS]
    if unknown or not self.ops:
      raise ValueError(f"RandomAugment ops must be a non-empty subset of {OPS_LORS}, got "
                       f"{self.ops!r}")
    if not (0 < self.scale[0] <= self.scale[1] <= 1 and 0 < self.ratio[0] <= self.ratio[1]):
      raise ValueError(f"RandomResizedCrop needs 0 < scale min <= max <= 1 and 0 < ratio min <= "
                       f"max, got scale={self.scale}, ratio={self.ratio}")
    if not 0 <= self.magnitude <= MAX_LEVEL or self.num_ops < 0 or not 0 <= self.prob <= 1:
      raise ValueError(f"RandomAugment needs 0 <= magnitude <= {MAX_LEVEL:g}, num_ops >= 0 and "
                       f"0 <= prob <= 1; got {self.magnitude}, {self.num_ops}, {self.prob}")


@dataclasses.dataclass(frozen=True)
class Draw:
  """What one image's transform drew: the crop box (top, left, height, width) in the original
  image, the flip, and the ops that fired with their signed arguments."""

  box: tuple[int, int, int, int]
  flip: bool
  ops: tuple[tuple[str, float], ...]


def crop_box(rng: np.random.Generator, height: int, width: int, scale=(0.5, 1.0),
             ratio=(3.0 / 4.0, 4.0 / 3.0)) -> tuple[int, int, int, int]:
  """RandomResizedCrop's box, drawn as torchvision's `get_params` draws it: up to ten (area,
  log-aspect) tries, the first that fits wins, offsets uniform; else the centre crop with the
  aspect ratio clamped into `ratio`."""
  area = height * width
  log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
  for _ in range(_RRC_TRIES):
    target_area = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(log_lo, log_hi))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return top, left, h, w
  in_ratio = width / height
  if in_ratio < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    h, w = height, int(round(height * max(ratio)))
  else:
    h, w = height, width
  return (height - h) // 2, (width - w) // 2, h, w


def op_argument(op: str, magnitude: float, negative: bool) -> float:
  """The reference's level-to-argument map (module docstring) at `magnitude` of 10."""
  level = magnitude / MAX_LEVEL
  if op in ("Brightness", "Sharpness"):
    return level * 1.8 + 0.1
  value = {"ShearX": 0.3, "ShearY": 0.3, "TranslateX": 10.0, "TranslateY": 10.0,
           "Rotate": 30.0}.get(op)
  if value is None:
    return 0.0
  return -level * value if negative else level * value


def draw(rng: np.random.Generator, height: int, width: int, t: TrainTransform) -> Draw:
  """One image's draws, in a fixed order: crop box, flip, then per slot (op, fire, sign)."""
  box = crop_box(rng, height, width, t.scale, t.ratio)
  flip = bool(rng.random() < 0.5) if t.flip else False
  ops = []
  for _ in range(t.num_ops):
    op = t.ops[int(rng.integers(0, len(t.ops)))]
    fires = rng.random() <= t.prob      # the reference skips when random() > prob
    negative = rng.random() < 0.5
    if fires:
      ops.append((op, op_argument(op, t.magnitude, negative)))
  return Draw(box, flip, tuple(ops))


def _affine(img: Image.Image, inverse: Sequence[float], fill: int) -> Image.Image:
  """PIL's affine warp; `inverse` maps output (x, y) to input (a x + b y + c, d x + e y + f)."""
  return img.transform(img.size, Image.Transform.AFFINE, tuple(inverse),
                       Image.Resampling.BILINEAR, fillcolor=(fill,) * len(img.getbands()))


def apply_op(img: Image.Image, op: str, arg: float, fill: int = 128) -> Image.Image:
  """One RandomAugment op on an RGB PIL image, as the torchvision functional op (docstring)."""
  if op == "Identity":
    return img
  if op == "AutoContrast":
    return ImageOps.autocontrast(img)
  if op == "Equalize":
    return ImageOps.equalize(img)
  if op in ("Brightness", "Sharpness") and arg == 1.0:
    return img          # the references' M = 5: a blend with weight 1 returns the image itself
  if op == "Brightness":
    return ImageEnhance.Brightness(img).enhance(arg)
  if op == "Sharpness":
    return ImageEnhance.Sharpness(img).enhance(arg)
  if op in ("ShearX", "ShearY"):
    # Shear as the angle atan(level) about the top-left corner (torchvision's RandAugment).
    angle = math.radians(math.degrees(math.atan(arg)))
    if op == "ShearX":
      return _affine(img, (1.0, math.tan(angle), 0.0, 0.0, 1.0, 0.0), fill)
    return _affine(img, (1.0, 0.0, 0.0, math.sin(angle) / math.cos(angle), 1.0, 0.0), fill)
  if op == "TranslateX":
    return _affine(img, (1.0, 0.0, -arg, 0.0, 1.0, 0.0), fill)
  if op == "TranslateY":
    return _affine(img, (1.0, 0.0, 0.0, 0.0, 1.0, -arg), fill)
  if op == "Rotate":
    return img.rotate(arg, Image.Resampling.BILINEAR, expand=False,
                      fillcolor=(fill,) * len(img.getbands()))
  raise ValueError(f"unknown RandomAugment op {op!r}; choose from {OPS_LORS}")


def apply(img: Image.Image, d: Draw, t: TrainTransform) -> Image.Image:
  """The train transform of one RGB PIL image for the draws `d` (uint8 out, before ToTensor)."""
  top, left, h, w = d.box
  img = img.crop((left, top, left + w, top + h)).resize((t.size, t.size),
                                                         Image.Resampling.BICUBIC)
  if d.flip:
    img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
  for op, arg in d.ops:
    img = apply_op(img, op, arg, t.fill)
  return img


def transform_file(path: str, seed: int, t: TrainTransform) -> np.ndarray:
  """The train transform of the image at `path`, all draws from `default_rng(seed)`: uint8 HWC."""
  rng = np.random.default_rng(seed)
  with Image.open(path) as im:
    img = im.convert("RGB")
  return np.asarray(apply(img, draw(rng, img.height, img.width, t), t), np.uint8)
