"""Augmentations: parity with torch, invariants, determinism, and one compile per function.

torch serves only as the reference: the resize is compared with `F.interpolate` on the
cropped tensor, rolls/flips/pads with `torch.roll` / `torch.flip` / `F.pad`. The crop-box
sampler is compared in distribution with a NumPy restatement of torchvision's
RandomResizedCrop.get_params and checked against invariants that hold draw by draw.
"""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from jdd.data import augment as A

KEY = jax.random.key(0)


def _keys(n, seed=0):
    return jax.random.split(jax.random.key(seed), n)


def _images(shape=(4, 16, 16, 3), seed=0):
    # Distinct values, so a shifted/flipped/cropped copy is identified unambiguously.
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _nchw(x):
    return torch.from_numpy(np.asarray(x)).permute(0, 3, 1, 2)


def _nhwc(t):
    return t.permute(0, 2, 3, 1).numpy()


# ------------------------------------------------------------------ RandomResizedCrop box


def _np_rrc_box(rng, height, width, scale, ratio):
    """torchvision's get_params, restated in NumPy (doubles, Python rounding)."""
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = height * width * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(lo, hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < h <= height and 0 < w <= width:
            return rng.integers(0, height - h + 1), rng.integers(0, width - w + 1), h, w
    if width / height < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif width / height > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


@functools.lru_cache(maxsize=None)
def _box_sampler(height, width, scale, ratio):
    return jax.jit(jax.vmap(lambda k: A.random_resized_crop_box(k, height, width, scale, ratio)))


def _jax_boxes(n, height, width, scale, ratio, seed=0):
    return np.asarray(_box_sampler(height, width, scale, ratio)(_keys(n, seed)))


RRC_CASES = [
    (32, 32, (0.08, 1.0), (3 / 4, 4 / 3)),
    (24, 40, (0.08, 1.0), (3 / 4, 4 / 3)),
    (32, 32, (0.5, 1.0), (0.25, 4.0)),     # many rejected tries
    (32, 32, (0.5, 1.0), (1.4, 3.0)),      # all ten tries fail about 30% of the time
    (32, 32, (0.6, 1.0), (1.5, 4.0)),      # all ten tries fail about 85% of the time
]


@pytest.mark.parametrize("height,width,scale,ratio", RRC_CASES)
def test_rrc_box_invariants(height, width, scale, ratio):
    boxes = _jax_boxes(3000, height, width, scale, ratio)
    top, left, h, w = boxes.T
    assert boxes.dtype == np.float32 and np.all(boxes == np.round(boxes))
    assert np.all(top >= 0) and np.all(left >= 0) and np.all(h >= 1) and np.all(w >= 1)
    assert np.all(top + h <= height) and np.all(left + w <= width)
    fallback = np.array(_np_rrc_box(np.random.default_rng(0), height, width, (9.0, 9.0), ratio))
    accepted = ~np.all(boxes == fallback, axis=1)
    area = height * width
    hh, ww = h[accepted], w[accepted]
    # h and w are the roundings of h*, w* with h* w* in scale*area and w*/h* in ratio.
    assert np.all((hh - 0.5) * (ww - 0.5) <= scale[1] * area + 1e-3)
    assert np.all((hh + 0.5) * (ww + 0.5) >= scale[0] * area - 1e-3)
    assert np.all((ww - 0.5) / (hh + 0.5) <= ratio[1] + 1e-6)
    assert np.all((ww + 0.5) / (hh - 0.5) >= ratio[0] - 1e-6)


@pytest.mark.parametrize("height,width,scale,ratio", RRC_CASES)
def test_rrc_box_matches_torchvision_in_distribution(height, width, scale, ratio):
    n = 3000    # the shape of test_rrc_box_invariants, so the sampler compiles once
    ours = _jax_boxes(n, height, width, scale, ratio, seed=1)
    rng = np.random.default_rng(1)
    ref = np.array([_np_rrc_box(rng, height, width, scale, ratio) for _ in range(n)], np.float64)
    for col in range(4):
        a, b = ours[:, col], ref[:, col]
        se = math.sqrt((a.var() + b.var()) / n) + 1e-9
        assert abs(a.mean() - b.mean()) < 5 * se, (col, a.mean(), b.mean())
        for q in (0.1, 0.5, 0.9):
            assert abs(np.quantile(a, q) - np.quantile(b, q)) <= 2 + 0.05 * b.max()
    fb = np.array(_np_rrc_box(rng, height, width, (9.0, 9.0), ratio))
    frac_ours = np.all(ours == fb, axis=1).mean()
    frac_ref = np.all(ref == fb, axis=1).mean()
    assert abs(frac_ours - frac_ref) < 0.04


@pytest.mark.parametrize("height,width,expected", [
    (32, 32, (0, 0, 32, 32)),     # aspect within ratio: the whole image
    (20, 60, (0, 16, 20, 27)),    # too wide: w = round(20 * 4/3) = 27, centred
    (60, 20, (16, 0, 27, 20)),    # too tall: h = round(20 / (3/4)) = 27, centred
])
def test_rrc_box_impossible_scale_falls_back_to_centre_crop(height, width, expected):
    boxes = _jax_boxes(50, height, width, (2.0, 3.0), (3 / 4, 4 / 3))
    np.testing.assert_array_equal(boxes, np.tile(np.array(expected, np.float32), (50, 1)))
    assert _np_rrc_box(np.random.default_rng(0), height, width, (2.0, 3.0), (3 / 4, 4 / 3)) == expected


def test_rrc_box_deterministic_and_key_dependent():
    a = _jax_boxes(3000, 32, 32, (0.08, 1.0), (3 / 4, 4 / 3), seed=5)
    np.testing.assert_array_equal(a, _jax_boxes(3000, 32, 32, (0.08, 1.0), (3 / 4, 4 / 3), seed=5))
    assert len({tuple(b) for b in a[:20]}) > 15


def test_rrc_box_rejects_bad_ranges():
    with pytest.raises(ValueError):
        A.random_resized_crop_box(KEY, 32, 32, scale=(1.0, 0.5))
    with pytest.raises(ValueError):
        A.random_resized_crop_box(KEY, 32, 32, ratio=(2.0,))


# ------------------------------------------------------------------ resize


_resized_crop = jax.jit(A.resized_crop, static_argnums=2)


def _torch_resized_crop(x, box, out_hw):
    top, left, h, w = (int(v) for v in box)
    crop = _nchw(x)[..., top:top + h, left:left + w]
    return _nhwc(F.interpolate(crop, size=out_hw, mode="bilinear", align_corners=False,
                               antialias=False))


@pytest.mark.parametrize("box,out_hw", [
    ((3, 5, 10, 7), (16, 16)),      # upsample, interior crop
    ((0, 0, 20, 24), (9, 13)),      # downsample the whole image
    ((2, 1, 15, 20), (40, 33)),     # upsample, non-integer factors
    ((4, 4, 11, 9), (5, 3)),        # downsample interior crop
    ((19, 23, 1, 1), (4, 4)),       # one pixel in the corner
    ((5, 0, 15, 24), (15, 24)),     # crop with no resize
    ((7, 6, 6, 12), (18, 5)),       # up in one axis, down in the other
])
def test_resized_crop_matches_torch_interpolate(box, out_hw):
    x = _images((3, 20, 24, 3), seed=1)
    ours = _resized_crop(jnp.asarray(x), jnp.array(box, jnp.float32), out_hw)
    assert ours.shape == (3,) + out_hw + (3,)
    np.testing.assert_allclose(ours, _torch_resized_crop(x, box, out_hw), atol=1e-5, rtol=0)


def test_resized_crop_per_image_boxes_match_torch():
    x = _images((4, 20, 24, 2), seed=2)
    boxes = np.array([(3, 5, 10, 7), (0, 0, 20, 24), (2, 1, 15, 20), (12, 20, 8, 4)], np.float32)
    ours = np.asarray(_resized_crop(jnp.asarray(x), jnp.asarray(boxes), (11, 13)))
    for n in range(4):
        ref = _torch_resized_crop(x[n:n + 1], boxes[n], (11, 13))[0]
        np.testing.assert_allclose(ours[n], ref, atol=1e-5, rtol=0)


def test_resized_crop_is_differentiable_and_validates():
    x = jnp.asarray(_images((2, 8, 8, 3)))
    box = jnp.array([1.0, 2.0, 5.0, 4.0])
    g = jax.jit(jax.grad(lambda im: A.resized_crop(im, box, (8, 8)).sum()))(x)
    # Each output pixel's weights sum to one: total gradient = number of output values.
    np.testing.assert_allclose(g.sum(), 2 * 8 * 8 * 3, rtol=1e-5)
    assert np.all(np.asarray(g)[:, :1] == 0) and np.all(np.asarray(g)[:, 6:] == 0)
    with pytest.raises(ValueError):
        A.resized_crop(x, jnp.zeros((3, 4)), (8, 8))
    with pytest.raises(ValueError):
        A.resized_crop(x[0], box, (8, 8))
    # A box reaching outside the image is loud (NaN), not silently clamped.
    assert np.isnan(np.asarray(A.resized_crop(x, jnp.array([4.0, 0.0, 8.0, 8.0]), (8, 8)))).any()


def test_random_resized_crop_shared_and_per_image_boxes():
    x = jnp.asarray(_images((3, 16, 20, 3)))

    @jax.jit
    def run(k, x):
        shared = A.random_resized_crop(k, x, (8, 8), per_image=False)
        ref_shared = A.resized_crop(x, A.random_resized_crop_box(k, 16, 20), (8, 8))
        per = A.random_resized_crop(k, x, (8, 8), scale=(0.2, 0.9), per_image=True)
        keys = jax.random.split(k, 3)
        ref_per = [A.resized_crop(x[n:n + 1], A.random_resized_crop_box(keys[n], 16, 20, (0.2, 0.9)),
                                  (8, 8))[0] for n in range(3)]
        return shared, ref_shared, per, jnp.stack(ref_per)

    shared, ref_shared, per, ref_per = run(KEY, x)
    np.testing.assert_allclose(shared, ref_shared, atol=1e-6)
    np.testing.assert_allclose(per, ref_per, atol=1e-6)
    assert not np.allclose(per[0], per[1])


# ------------------------------------------------------------------ flips, rolls, pad-crop


def _which_roll(out, x, shifts):
    hits = [s for s in shifts
            if np.array_equal(out, _nhwc(torch.roll(_nchw(x), shifts=s, dims=(2, 3))))]
    assert len(hits) == 1, hits
    return hits[0]


@pytest.mark.parametrize("symmetric", [False, True])
def test_random_roll_equals_torch_roll(symmetric):
    x = _images()
    j = 2
    lo = -j if symmetric else 0
    candidates = [(a, b) for a in range(-j, j + 1) for b in range(-j, j + 1)]
    seen = set()
    for k in _keys(120):
        seen.add(_which_roll(np.asarray(A.random_roll(k, jnp.asarray(x), j, symmetric)), x,
                             candidates))
    assert seen == {(a, b) for a in range(lo, j + 1) for b in range(lo, j + 1)}


@pytest.mark.parametrize("per_image", [False, True])
def test_random_flip_equals_torch_flip(per_image):
    x = _images()
    flipped = _nhwc(torch.flip(_nchw(x), dims=(3,)))
    patterns = set()
    for k in _keys(40):
        out = np.asarray(A.random_flip(k, jnp.asarray(x), per_image))
        bits = []
        for n in range(len(x)):
            same, flip = np.array_equal(out[n], x[n]), np.array_equal(out[n], flipped[n])
            assert same != flip
            bits.append(flip)
        patterns.add(tuple(bits))
    if per_image:
        assert len(patterns) > 4
    else:
        assert patterns == {(False,) * 4, (True,) * 4}


def _torch_pad(x, p, pad_value):
    t = _nchw(x)
    chans = [F.pad(t[:, c:c + 1], (p, p, p, p), mode="constant", value=float(v))
             for c, v in enumerate(pad_value)]
    return _nhwc(torch.cat(chans, dim=1))


@pytest.mark.parametrize("per_image", [True, False])
def test_pad_crop_equals_torch_pad_and_slice(per_image):
    x = _images()
    p, size = 2, x.shape[1]
    pad_value = np.array([-1.5, 0.25, 2.0], np.float32)
    padded = _torch_pad(x, p, pad_value)
    offsets = set()
    for k in _keys(40):
        out = np.asarray(A.random_crop_with_padding(k, jnp.asarray(x), p, per_image,
                                                    pad_value=pad_value))
        found = []
        for n in range(len(x)):
            hits = [(i, j) for i in range(2 * p + 1) for j in range(2 * p + 1)
                    if np.array_equal(out[n], padded[n, i:i + size, j:j + size])]
            assert len(hits) == 1
            found.append(hits[0])
        if not per_image:
            assert len(set(found)) == 1
        offsets.update(found)
    every = {(i, j) for i in range(2 * p + 1) for j in range(2 * p + 1)}
    assert offsets == every if per_image else len(offsets) >= 15


def test_pad_value_is_black_before_normalisation():
    mean, std = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
    x01 = np.random.default_rng(3).uniform(size=(2, 6, 6, 3)).astype(np.float32)
    # torchvision: pad the [0, 1] image with 0, then Normalize.
    ref = (_nhwc(F.pad(_nchw(x01), (3, 3, 3, 3), value=0.0)) - np.array(mean)) / np.array(std)
    xn = (x01 - np.array(mean, np.float32)) / np.array(std, np.float32)
    out = np.asarray(A.random_crop_with_padding(KEY, jnp.asarray(xn), 3, per_image=False,
                                                pad_value=A.normalized_zero(mean, std)))
    hits = [(i, j) for i in range(7) for j in range(7)
            if np.allclose(out, ref[:, i:i + 6, j:j + 6], atol=1e-5)]
    assert len(hits) == 1


# ------------------------------------------------------------------ CutMix, Mixup


def test_cutmix_box_and_lambda_semantics():
    x = _images()
    areas = []
    for k in _keys(60):
        mixed, perm, lam, box = A.cutmix(k, jnp.asarray(x), alpha=1.0)
        mixed, perm, box = np.asarray(mixed), np.array(perm), np.asarray(box)
        top, left, bottom, right = box
        assert sorted(perm) == list(range(4))
        assert 0 <= top <= bottom <= 16 and 0 <= left <= right <= 16
        np.testing.assert_allclose(lam, 1 - (bottom - top) * (right - left) / (16 * 16), atol=1e-6)
        # torch reference: in-place paste of the permuted region.
        ref = torch.tensor(x).permute(0, 3, 1, 2).clone()
        ref[:, :, top:bottom, left:right] = _nchw(x)[perm][:, :, top:bottom, left:right]
        np.testing.assert_array_equal(mixed, _nhwc(ref))
        inside = np.zeros((16, 16), bool)
        inside[top:bottom, left:right] = True
        np.testing.assert_array_equal(mixed[:, ~inside], x[:, ~inside])
        # rand_bbox: unclipped sides are 2 * (int(side * sqrt(1 - lam_drawn)) // 2).
        _, lam_drawn, box2, lam_adj = A.cutmix_params(k, 4, 16, 16, 1.0)
        np.testing.assert_array_equal(box, box2)
        np.testing.assert_allclose(lam_adj, lam)
        cut_h = int(16 * math.sqrt(1 - float(lam_drawn)))
        if 0 < top and bottom < 16:
            assert bottom - top == 2 * (cut_h // 2)
        assert bottom - top <= 2 * (cut_h // 2)
        areas.append(float(lam_drawn))
    assert 0.35 < np.mean(areas) < 0.65    # Beta(1, 1) has mean 1/2


def test_mixup_is_convex_combination():
    x = _images()
    lams = []
    for k in _keys(30):
        mixed, perm, lam = A.mixup(k, jnp.asarray(x), alpha=0.8)
        perm = np.array(perm)
        assert sorted(perm) == list(range(4)) and 0.0 <= float(lam) <= 1.0
        ref = float(lam) * _nchw(x) + (1 - float(lam)) * _nchw(x)[perm]
        np.testing.assert_allclose(mixed, _nhwc(ref), atol=1e-6)
        lams.append(float(lam))
    assert len(set(lams)) == 30


# ------------------------------------------------------------------ jit: one trace, same values


def _relabel_cfg(crop="rrc", flip=True, mix="cutmix"):
    cfg = ml_collections.ConfigDict()
    cfg.crop, cfg.crop_scale, cfg.crop_padding = crop, (0.08, 1.0), 4
    cfg.flip, cfg.mix, cfg.mix_alpha = flip, mix, 1.0 if mix == "cutmix" else 0.8
    return cfg


PAD = np.array([-2.0, -1.0, 0.5], np.float32)
JIT_CASES = {
    "box": lambda k, x: A.random_resized_crop_box(k, 16, 16),
    "rrc_shared": functools.partial(A.random_resized_crop, out_hw=(10, 10), per_image=False),
    "rrc_per_image": functools.partial(A.random_resized_crop, out_hw=(10, 10), per_image=True),
    "flip": functools.partial(A.random_flip, per_image=True),
    "roll": functools.partial(A.random_roll, max_shift=3, symmetric=True),
    "pad_crop": functools.partial(A.random_crop_with_padding, padding=4, pad_value=PAD),
    "cutmix": A.cutmix,
    "mixup": A.mixup,
    "relabel_rrc": functools.partial(A.augment_for_relabel, cfg=_relabel_cfg()),
    "relabel_pad_mixup": functools.partial(A.augment_for_relabel, cfg=_relabel_cfg("pad_crop", True, "mixup"),
                                           pad_value=PAD),
}


@pytest.mark.parametrize("name", sorted(JIT_CASES))
def test_compiles_once_and_matches_eager(name):
    fn = JIT_CASES[name]

    def traced_once(k, x):
        return fn(k, x)

    chex.clear_trace_counter()
    jitted = jax.jit(chex.assert_max_traces(traced_once, n=1))
    x = jnp.asarray(_images((4, 16, 16, 3)))
    for k in _keys(3, seed=7):
        chex.assert_trees_all_close(jitted(k, x), fn(k, x), atol=1e-5)


# ------------------------------------------------------------------ FKD relabel pipeline


def test_relabel_replays_exactly_from_keys():
    x = jnp.asarray(_images((4, 16, 16, 3)))
    base = jax.random.key(42)
    cfg = _relabel_cfg()
    fn = jax.jit(functools.partial(A.augment_for_relabel, cfg=cfg, return_params=True))
    a, pa = fn(A.relabel_key(base, 3, 5), x)
    b, pb = fn(A.relabel_key(base, 3, 5), x)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, fn(A.relabel_key(base, 3, 6), x)[0])
    assert not np.array_equal(a, fn(A.relabel_key(base, 4, 5), x)[0])
    # Eagerly, from a plain dict: the same draws exactly; pixels equal up to float
    # rounding, since XLA may fuse the bilinear arithmetic differently in another program.
    c, pc = A.augment_for_relabel(A.relabel_key(base, 3, 5), x, cfg.to_dict(), return_params=True)
    chex.assert_trees_all_equal(pa, pc)
    np.testing.assert_allclose(a, c, atol=1e-5, rtol=0)


def test_relabel_params_rebuild_the_batch_and_key_order():
    x = jnp.asarray(_images((4, 16, 16, 3)))
    cfg = _relabel_cfg()
    out, p = A.augment_for_relabel(KEY, x, cfg, return_params=True)
    # FKD-style replay from the stored parameters gives the same batch.
    replay = A.resized_crop(x, p["crop_box"], (16, 16))
    replay = jnp.where(p["flip"][:, None, None, None], replay[:, :, ::-1], replay)
    replay = A.paste_box(replay, p["perm"], p["mix_box"])
    np.testing.assert_array_equal(out, replay)
    # Documented key order: split(key, 3) -> crop, flip, mix; stages do not shift each other.
    k_crop, _, k_mix = jax.random.split(KEY, 3)
    crop_only = A.augment_for_relabel(KEY, x, _relabel_cfg("rrc", False, "none"))
    np.testing.assert_array_equal(
        crop_only, A.random_resized_crop(k_crop, x, (16, 16), (0.08, 1.0), per_image=True))
    _, p2 = A.augment_for_relabel(KEY, x, _relabel_cfg("none", False, "cutmix"), return_params=True)
    np.testing.assert_array_equal(p2["mix_box"], p["mix_box"])
    np.testing.assert_array_equal(p2["perm"], A.cutmix(k_mix, x)[1])


def test_relabel_rejects_bad_configs():
    x = jnp.asarray(_images((2, 8, 8, 3)))
    with pytest.raises(ValueError, match="crop"):
        A.augment_for_relabel(KEY, x, _relabel_cfg(crop="center"))
    with pytest.raises(ValueError, match="mix"):
        A.augment_for_relabel(KEY, x, _relabel_cfg(mix="cutout"))
    with pytest.raises(ValueError, match="pad_value"):
        A.augment_for_relabel(KEY, x, _relabel_cfg(crop="pad_crop"))
    with pytest.raises(KeyError, match="flip"):
        A.augment_for_relabel(KEY, x, {"crop": "none", "mix": "none"})
    with pytest.raises(ValueError):
        A.augment_for_relabel(KEY, x[0], _relabel_cfg())
    # crop='none' without mixing or flips is the identity.
    np.testing.assert_array_equal(
        A.augment_for_relabel(KEY, x, {"crop": "none", "flip": False, "mix": "none"}), x)
