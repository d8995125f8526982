"""Jittable image augmentations whose randomness is a function of a key alone.

Decoupled distillation (SRe2L, INFER, FADRM) augments in two places: the recover loop
(one crop box, one flip and one roll for the whole synthetic batch, as torchvision does when
handed a batched tensor) and FKD relabelling (a crop and a flip per image, then one CutMix or
Mixup per batch). The reference code stores every crop box, flip bit, permutation and bbox
next to the teacher logits so that the student can replay them. Here every draw is a pure
function of a PRNG key, so `augment_for_relabel(relabel_key(base, epoch, batch), x, cfg)`
rebuilds the exact batch the teacher saw, and only the logits ever need storing (or none,
when the teacher runs online).

Conventions:
  * images are NHWC floating point in normalised pixel space;
  * every output has a static shape: a crop box is data, not a shape, so nothing recompiles
    when it changes;
  * Python hyperparameters (sizes, scales, `per_image`) are static; bind them with
    `functools.partial` before `jax.jit`;
  * boxes are `[top, left, height, width]` (torchvision's `(i, j, h, w)`), float32 holding
    integers, so per-image boxes stack into one `(N, 4)` array.

Deliberate differences from the reference code:
  * resizing is bilinear with half-pixel centres and no antialias, i.e. what
    `torch.nn.functional.interpolate(..., align_corners=False, antialias=False)` does to the
    cropped tensor. It is a two-tap gather, not `jax.image.scale_and_translate`: translating
    the full image would blend in pixels lying just outside the crop (and renormalise at the
    image edge), whereas torch crops first and clamps at the crop's own edge. SRe2L's FKD
    relabel resizes PIL images, which antialiases when shrinking; that is not reproduced.
  * the crop box arithmetic runs in float32 instead of Python doubles, so a sample that
    lands within float32 rounding of a .5 boundary can round differently from torchvision.
  * integer draws (crop offsets, CutMix centre) are floor(u * n) of one uniform, which has
    torch.randint's distribution up to float32 granularity and compiles far faster than
    `jax.random.randint` with traced bounds.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp

Array = jax.Array

DEFAULT_SCALE = (0.08, 1.0)
DEFAULT_RATIO = (3.0 / 4.0, 4.0 / 3.0)
# torchvision's RandomResizedCrop gives up after this many rejected tries.
_RRC_TRIES = 10


def relabel_key(base_key: Array, epoch, batch) -> Array:
    """The key of one FKD (epoch, batch): teacher and student both derive it, never store it."""
    return jax.random.fold_in(jax.random.fold_in(base_key, epoch), batch)


def normalized_zero(mean: Sequence[float], std: Sequence[float]) -> Array:
    """Where a black pixel lands after normalisation.

    torchvision pads the unnormalised image with 0 before `Normalize`, so in normalised space
    the padding of `RandomCrop(padding=p)` is (0 - mean) / std per channel, not 0.
    """
    mean = jnp.asarray(mean, jnp.float32)
    std = jnp.asarray(std, jnp.float32)
    return -mean / std


def _check_images(images, name: str = "images") -> None:
    if getattr(images, "ndim", None) != 4:
        raise ValueError(f"{name} must be NHWC (4 dims), got shape {getattr(images, 'shape', None)}")


def _check_range(pair, name: str) -> tuple[float, float]:
    if len(pair) != 2:
        raise ValueError(f"{name} must be a (min, max) pair, got {pair!r}")
    lo, hi = float(pair[0]), float(pair[1])
    if lo > hi:
        raise ValueError(f"{name} must be (min, max) with min <= max, got {pair!r}")
    return lo, hi


# --------------------------------------------------------------------------- crop boxes


def _fallback_box(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int, int, int]:
    """torchvision's centre crop after ten rejections; static because the shapes are."""
    in_ratio = width / height
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop_box(key: Array, height: int, width: int, scale=DEFAULT_SCALE,
                            ratio=DEFAULT_RATIO) -> Array:
    """One RandomResizedCrop box, drawn as torchvision's `get_params` draws it.

    All ten (area, log-aspect) tries are drawn at once and the first that fits is kept, which
    has the distribution of the sequential loop (the tries are i.i.d.) without a data-dependent
    Python loop. Rounding is half-to-even, like Python's `round`. If no try fits, the box is
    the centre crop with the aspect ratio clamped into `ratio`.
    """
    scale = _check_range(scale, "scale")
    ratio = _check_range(ratio, "ratio")
    height, width = int(height), int(width)
    # One draw feeds everything: 10 area fractions, 10 log-aspects, then the two offsets.
    u = jax.random.uniform(key, (2 * _RRC_TRIES + 2,), jnp.float32)
    target_area = (height * width) * (scale[0] + (scale[1] - scale[0]) * u[:_RRC_TRIES])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = jnp.exp(log_lo + (log_hi - log_lo) * u[_RRC_TRIES:2 * _RRC_TRIES])
    w = jnp.round(jnp.sqrt(target_area * aspect))
    h = jnp.round(jnp.sqrt(target_area / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits & (jnp.cumsum(fits) == 1)
    found = jnp.any(fits)

    fb_top, fb_left, fb_h, fb_w = _fallback_box(height, width, ratio)
    h = jnp.where(found, jnp.sum(jnp.where(first, h, 0.0)), fb_h)
    w = jnp.where(found, jnp.sum(jnp.where(first, w, 0.0)), fb_w)
    # Offsets uniform in {0..H-h} and {0..W-w}, like torch.randint(0, H - h + 1).
    top = jnp.minimum(jnp.floor(u[-2] * (height - h + 1)), height - h)
    left = jnp.minimum(jnp.floor(u[-1] * (width - w + 1)), width - w)
    top = jnp.where(found, top, fb_top)
    left = jnp.where(found, left, fb_left)
    return jnp.stack([top, left, h, w]).astype(jnp.float32)


# --------------------------------------------------------------------------- resize


def _linear_taps(start, length, out_size: int):
    """Source indices and weights of torch's align_corners=False linear interpolation.

    A source coordinate left of the first pixel centre is clamped to it, and the right
    neighbour is clamped to the crop's last pixel, both measured inside the crop.
    """
    length = jnp.asarray(length, jnp.float32)
    start = jnp.asarray(start, jnp.float32).astype(jnp.int32)
    step = length / out_size
    src = (jnp.arange(out_size, dtype=jnp.float32) + 0.5) * step - 0.5
    src = jnp.maximum(src, 0.0)
    lo = jnp.floor(src)
    frac = src - lo
    lo = lo.astype(jnp.int32)
    hi = jnp.minimum(lo + 1, length.astype(jnp.int32) - 1)
    return start + lo, start + hi, 1.0 - frac, frac


def _crop_resize(images: Array, box: Array, out_hw: tuple[int, int]) -> Array:
    """Crop-and-resize of a (..., H, W, C) stack sharing one box."""
    out_h, out_w = out_hw
    top, left, h, w = box[0], box[1], box[2], box[3]
    dtype = images.dtype
    x = images.astype(jnp.promote_types(dtype, jnp.float32))
    # Indices outside the image come back NaN ("fill"), so an invalid box is loud, not clamped.
    r0, r1, wr0, wr1 = _linear_taps(top, h, out_h)
    x = (jnp.take(x, r0, axis=-3, mode="fill") * wr0[:, None, None]
         + jnp.take(x, r1, axis=-3, mode="fill") * wr1[:, None, None])
    c0, c1, wc0, wc1 = _linear_taps(left, w, out_w)
    x = (jnp.take(x, c0, axis=-2, mode="fill") * wc0[:, None]
         + jnp.take(x, c1, axis=-2, mode="fill") * wc1[:, None])
    return x.astype(dtype)


def _out_hw(out_hw) -> tuple[int, int]:
    if isinstance(out_hw, int):
        return out_hw, out_hw
    if len(out_hw) != 2:
        raise ValueError(f"out_hw must be an int or (height, width), got {out_hw!r}")
    return int(out_hw[0]), int(out_hw[1])


def resized_crop(images: Array, box: Array, out_hw) -> Array:
    """Crop `box` out of each image and resize it bilinearly to `out_hw`.

    `box` is one `(4,)` box shared by the batch or an `(N, 4)` box per image. Differentiable
    with respect to `images` (the recover loop needs gradients through it).
    """
    _check_images(images)
    out_hw = _out_hw(out_hw)
    box = jnp.asarray(box)
    if box.shape == (4,):
        return _crop_resize(images, box, out_hw)
    if box.shape == (images.shape[0], 4):
        return jax.vmap(lambda x, b: _crop_resize(x, b, out_hw))(images, box)
    raise ValueError(f"box must have shape (4,) or ({images.shape[0]}, 4), got {box.shape}")


def random_resized_crop(key: Array, images: Array, out_hw, scale=DEFAULT_SCALE,
                        ratio=DEFAULT_RATIO, per_image: bool = False) -> Array:
    """RandomResizedCrop on a batch.

    per_image=False draws one box for the whole batch, which is what torchvision does to the
    batched tensor in SRe2L's recover loop; per_image=True draws image n's box from
    `split(key, N)[n]`, as FKD relabel does per sample.
    """
    return _random_resized_crop(key, images, out_hw, scale, ratio, per_image)[0]


def _random_resized_crop(key, images, out_hw, scale, ratio, per_image):
    _check_images(images)
    _, height, width, _ = images.shape
    if per_image:
        keys = jax.random.split(key, images.shape[0])
        box = jax.vmap(lambda k: random_resized_crop_box(k, height, width, scale, ratio))(keys)
    else:
        box = random_resized_crop_box(key, height, width, scale, ratio)
    return resized_crop(images, box, out_hw), box


# --------------------------------------------------------------------------- flips, shifts


def _flip_mask(key: Array, n: int, per_image: bool) -> Array:
    # torchvision flips when torch.rand(1) < p, p = 0.5.
    if per_image:
        return jax.random.uniform(key, (n,)) < 0.5
    return jnp.broadcast_to(jax.random.uniform(key, ()) < 0.5, (n,))


def _apply_flip(images: Array, flip: Array) -> Array:
    return jnp.where(flip[:, None, None, None], images[:, :, ::-1, :], images)


def random_flip(key: Array, images: Array, per_image: bool = False) -> Array:
    """Horizontal flip with probability 1/2, once for the batch or independently per image."""
    _check_images(images)
    return _apply_flip(images, _flip_mask(key, images.shape[0], per_image))


def random_roll(key: Array, images: Array, max_shift: int, symmetric: bool = False) -> Array:
    """SRe2L's jitter: one wrap-around shift (dy, dx) for the whole batch.

    The ImageNet and CIFAR recover scripts draw `randint(0, J)` (inclusive) per axis, so
    shifts are never negative; the Tiny script draws `randint(-J, J)`. dy is drawn first and
    rolls the height axis, as `torch.roll(x, (off1, off2), dims=(2, 3))` does in NCHW.
    """
    _check_images(images)
    max_shift = int(max_shift)
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")
    lo = -max_shift if symmetric else 0
    shift = jax.random.randint(key, (2,), lo, max_shift + 1)
    return jnp.roll(images, (shift[0], shift[1]), axis=(1, 2))


def random_crop_with_padding(key: Array, images: Array, padding: int, per_image: bool = True,
                             *, pad_value) -> Array:
    """RandomCrop(size, padding) with constant padding: pad, then cut an H x W window.

    `pad_value` is per channel (or a scalar) in the images' own space: for torchvision's zero
    padding of normalised data pass `normalized_zero(mean, std)`. The window offsets
    (top, left) are uniform in {0..2p}, drawn top first like torchvision's `get_params`.
    """
    return _random_crop_with_padding(key, images, padding, per_image, pad_value)[0]


def _random_crop_with_padding(key, images, padding, per_image, pad_value):
    _check_images(images)
    padding = int(padding)
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    n, height, width, channels = images.shape
    pad_value = jnp.broadcast_to(jnp.asarray(pad_value, images.dtype), (channels,))
    padded = jnp.broadcast_to(pad_value, (n, height + 2 * padding, width + 2 * padding, channels))
    padded = padded.at[:, padding:padding + height, padding:padding + width, :].set(images)
    shape = (n, 2) if per_image else (2,)
    offsets = jax.random.randint(key, shape, 0, 2 * padding + 1)
    if not per_image:
        offsets = jnp.broadcast_to(offsets, (n, 2))

    def window(x, off):
        return jax.lax.dynamic_slice(x, (off[0], off[1], 0), (height, width, channels))

    return jax.vmap(window)(padded, offsets), offsets


# --------------------------------------------------------------------------- mixing


def cutmix_params(key: Array, batch: int, height: int, width: int, alpha: float = 1.0):
    """One CutMix draw for a batch: (perm, lam_drawn, box, lam_adjusted).

    Follows the `rand_bbox` of SRe2L/FKD: cut sides int(H*sqrt(1-lam)) and
    int(W*sqrt(1-lam)), a centre uniform over pixels, half-sides `cut // 2` on both sides of
    it, clipped to the image. The clipped box can be smaller than the drawn area, so
    `lam_adjusted = 1 - box_area / (H*W)` is the fraction of each image actually kept.
    `box` is int32 `[top, left, bottom, right]` (exclusive ends): FKD's stored
    (bbx1, bby1, bbx2, bby2), whose first pair indexes NCHW dim 2 (rows) although the
    reference names it W.
    Keys: split(key, 3) -> (permutation, lambda, centre), the order FKD draws them.
    """
    k_perm, k_lam, k_centre = jax.random.split(key, 3)
    perm = jax.random.permutation(k_perm, batch)
    lam = jax.random.beta(k_lam, alpha, alpha)
    cut = jnp.sqrt(1.0 - lam)
    cut_h = (height * cut).astype(jnp.int32)
    cut_w = (width * cut).astype(jnp.int32)
    size = jnp.array([height, width], jnp.int32)
    centre = jnp.minimum(jnp.floor(jax.random.uniform(k_centre, (2,)) * size).astype(jnp.int32),
                         size - 1)
    cy, cx = centre[0], centre[1]
    top = jnp.clip(cy - cut_h // 2, 0, height)
    bottom = jnp.clip(cy + cut_h // 2, 0, height)
    left = jnp.clip(cx - cut_w // 2, 0, width)
    right = jnp.clip(cx + cut_w // 2, 0, width)
    box = jnp.stack([top, left, bottom, right]).astype(jnp.int32)
    lam_adjusted = 1.0 - ((bottom - top) * (right - left)).astype(jnp.float32) / (height * width)
    return perm, lam, box, lam_adjusted


def paste_box(images: Array, perm: Array, box: Array) -> Array:
    """Replace `box` ([top, left, bottom, right]) of image n with the same region of image perm[n]."""
    _, height, width, _ = images.shape
    rows = jnp.arange(height)
    cols = jnp.arange(width)
    inside = (((rows >= box[0]) & (rows < box[2]))[:, None]
              & ((cols >= box[1]) & (cols < box[3]))[None, :])
    return jnp.where(inside[None, :, :, None], images[perm], images)


def cutmix(key: Array, images: Array, alpha: float = 1.0):
    """CutMix on a batch -> (mixed, perm, lam, box), `lam` adjusted to the clipped box area.

    The raw Beta(alpha, alpha) draw (what FKD stores as `lam`) is `cutmix_params(...)[1]`
    for the same key; the distilled label is the teacher's output on `mixed`, so neither
    lambda enters the relabel loss.
    """
    _check_images(images)
    n, height, width, _ = images.shape
    perm, _, box, lam_adjusted = cutmix_params(key, n, height, width, alpha)
    return paste_box(images, perm, box), perm, lam_adjusted, box


def mixup_params(key: Array, batch: int, alpha: float = 0.8):
    """One Mixup draw: (perm, lam). Keys: split(key, 2) -> (permutation, lambda)."""
    k_perm, k_lam = jax.random.split(key)
    return jax.random.permutation(k_perm, batch), jax.random.beta(k_lam, alpha, alpha)


def mixup(key: Array, images: Array, alpha: float = 0.8):
    """Mixup on inputs -> (lam * x + (1 - lam) * x[perm], perm, lam)."""
    _check_images(images)
    perm, lam = mixup_params(key, images.shape[0], alpha)
    lam_x = lam.astype(images.dtype)
    return lam_x * images + (1 - lam_x) * images[perm], perm, lam


# --------------------------------------------------------------------------- FKD pipeline

_MISSING = object()
CROPS = ("rrc", "pad_crop", "none")
MIXES = ("cutmix", "mixup", "none")


def _field(cfg: Any, name: str, default: Any = _MISSING) -> Any:
    """Read a field from a ConfigDict, a dict or any attribute holder."""
    if isinstance(cfg, Mapping) or hasattr(cfg, "__getitem__"):
        try:
            return cfg[name]
        except (KeyError, AttributeError, TypeError):
            pass
    if hasattr(cfg, name):
        return getattr(cfg, name)
    if default is _MISSING:
        raise KeyError(f"augmentation config has no field {name!r}")
    return default


def augment_for_relabel(key: Array, images: Array, cfg: Any, *, pad_value=None,
                        return_params: bool = False):
    """The FKD per-(epoch, batch) augmentation: crop and flip per image, then one batch mix.

    Fields of `cfg` (ConfigDict, dict or attributes):
      crop: 'rrc' (RandomResizedCrop back to the input size, scale `crop_scale`, ratio
            `crop_ratio` defaulting to (3/4, 4/3)), 'pad_crop' (RandomCrop with `crop_padding`
            pixels of `pad_value`), or 'none';
      flip: bool, horizontal flip per image;
      mix: 'cutmix' | 'mixup' | 'none', with Beta parameter `mix_alpha`.
    Keys: `k_crop, k_flip, k_mix = jax.random.split(key, 3)`, always all three, so turning
    one stage off leaves the draws of the others unchanged. Read the config outside `jit`
    (bind it with `functools.partial`); the result is then a pure function of (key, images).

    Replay guarantee: the draws (boxes, offsets, flips, permutation, lambdas, CutMix box) are
    bit-identical wherever the key is the same; the pixels are bit-identical when the same
    compiled function replays them, and equal to float rounding (~1e-7) between different
    programs (eager vs jit, or a teacher step vs a student step that XLA fuses differently).

    With return_params=True also returns a dict of what was drawn (boxes or offsets, flip
    bits, permutation, lambda, CutMix box), e.g. to export labels in the FKD layout.
    """
    _check_images(images)
    crop = _field(cfg, "crop")
    mix = _field(cfg, "mix")
    flip = bool(_field(cfg, "flip"))
    if crop not in CROPS:
        raise ValueError(f"cfg.crop must be one of {CROPS}, got {crop!r}")
    if mix not in MIXES:
        raise ValueError(f"cfg.mix must be one of {MIXES}, got {mix!r}")
    if crop == "pad_crop" and pad_value is None:
        raise ValueError("crop='pad_crop' needs pad_value (per-channel, normalised space); "
                         "see normalized_zero(mean, std)")

    n, height, width, _ = images.shape
    k_crop, k_flip, k_mix = jax.random.split(key, 3)
    params: dict[str, Array] = {}
    x = images
    if crop == "rrc":
        scale = tuple(_field(cfg, "crop_scale"))
        ratio = tuple(_field(cfg, "crop_ratio", DEFAULT_RATIO))
        x, params["crop_box"] = _random_resized_crop(k_crop, x, (height, width), scale, ratio,
                                                     per_image=True)
    elif crop == "pad_crop":
        padding = int(_field(cfg, "crop_padding"))
        x, params["crop_offset"] = _random_crop_with_padding(k_crop, x, padding, True, pad_value)
    if flip:
        params["flip"] = _flip_mask(k_flip, n, per_image=True)
        x = _apply_flip(x, params["flip"])
    if mix == "cutmix":
        alpha = float(_field(cfg, "mix_alpha"))
        perm, lam, box, lam_adjusted = cutmix_params(k_mix, n, height, width, alpha)
        x = paste_box(x, perm, box)
        params.update(perm=perm, lam=lam, mix_box=box, lam_adjusted=lam_adjusted)
    elif mix == "mixup":
        alpha = float(_field(cfg, "mix_alpha"))
        x, perm, lam = mixup(k_mix, x, alpha)
        params.update(perm=perm, lam=lam)
    return (x, params) if return_params else x
