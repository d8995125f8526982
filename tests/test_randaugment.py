"""The references' train transform (jdd.data.randaugment) against the torchvision ops it
follows, built here with the same parameters, pixel for pixel; and its draws."""

import math

import numpy as np
import pytest
from PIL import Image

from jdd.data import randaugment as ra

F = pytest.importorskip("torchvision.transforms.functional")
InterpolationMode = pytest.importorskip("torchvision.transforms").InterpolationMode


def image(seed, height=37, width=45):
  """Random pixels plus a smooth ramp, so histograms and edges are both non-trivial."""
  rng = np.random.default_rng(seed)
  ramp = np.linspace(30, 200, width)[None, :, None] + np.linspace(0, 40, height)[:, None, None]
  x = ramp + rng.normal(0, 25, (height, width, 3))
  return Image.fromarray(np.clip(x, 0, 255).astype(np.uint8))


def torchvision_op(img, op, arg, fill=128):
  """The torchvision functional op on a PIL image, as torchvision's RandAugment applies it, with
  the reference's bilinear resampling and grey fill."""
  bilinear = InterpolationMode.BILINEAR
  if op == "Identity":
    return img
  if op == "AutoContrast":
    return F.autocontrast(img)
  if op == "Equalize":
    return F.equalize(img)
  if op == "Brightness":
    return F.adjust_brightness(img, arg)
  if op == "Sharpness":
    return F.adjust_sharpness(img, arg)
  if op == "ShearX":
    return F.affine(img, angle=0.0, translate=[0, 0], scale=1.0,
                    shear=[math.degrees(math.atan(arg)), 0.0], interpolation=bilinear,
                    fill=fill, center=[0, 0])
  if op == "ShearY":
    return F.affine(img, angle=0.0, translate=[0, 0], scale=1.0,
                    shear=[0.0, math.degrees(math.atan(arg))], interpolation=bilinear,
                    fill=fill, center=[0, 0])
  if op == "TranslateX":
    return F.affine(img, angle=0.0, translate=[int(arg), 0], scale=1.0, shear=[0.0, 0.0],
                    interpolation=bilinear, fill=fill)
  if op == "TranslateY":
    return F.affine(img, angle=0.0, translate=[0, int(arg)], scale=1.0, shear=[0.0, 0.0],
                    interpolation=bilinear, fill=fill)
  if op == "Rotate":
    return F.rotate(img, arg, interpolation=bilinear, fill=fill)
  raise AssertionError(op)


@pytest.mark.parametrize("op", ra.OPS_LORS)
@pytest.mark.parametrize("magnitude", [5.0, 2.0, 9.0])
def test_each_op_equals_torchvision(op, magnitude):
  for seed, (h, w) in enumerate([(37, 45), (24, 24), (50, 31)]):
    img = image(seed, h, w)
    for negative in (False, True):
      arg = ra.op_argument(op, magnitude, negative)
      got = np.asarray(ra.apply_op(img, op, arg))
      want = np.asarray(torchvision_op(img, op, arg))
      np.testing.assert_array_equal(got, want, err_msg=f"{op} M={magnitude} neg={negative}")


def test_reference_magnitudes():
  # BLIP's level_to_args at M = 5 of 10: the enhancements are the identity there.
  assert ra.op_argument("Brightness", 5.0, False) == pytest.approx(1.0)
  assert ra.op_argument("Sharpness", 5.0, True) == pytest.approx(1.0)
  assert ra.op_argument("ShearX", 5.0, False) == pytest.approx(0.15)
  assert ra.op_argument("ShearY", 5.0, True) == pytest.approx(-0.15)
  assert ra.op_argument("TranslateX", 5.0, True) == pytest.approx(-5.0)
  assert ra.op_argument("Rotate", 5.0, False) == pytest.approx(15.0)
  assert ra.op_argument("Equalize", 5.0, True) == 0.0
  assert "AutoContrast" in ra.OPS_LORS and "AutoContrast" not in ra.OPS_REPBLEND
  assert len(ra.OPS_LORS) == 10 and len(ra.OPS_REPBLEND) == 9
  img = image(3)
  for op in ("Brightness", "Sharpness"):
    np.testing.assert_array_equal(np.asarray(ra.apply_op(img, op, 1.0)), np.asarray(img))


def test_whole_transform_equals_torchvision_composition():
  """Crop + bicubic resize + flip + the drawn ops, vs torchvision's functional ops in that
  order with the same parameters (RandomResizedCrop, RandomHorizontalFlip, the op list)."""
  t = ra.TrainTransform(size=24)
  for seed in range(12):
    img = image(seed, 40 + seed, 52 - seed)
    d = ra.draw(np.random.default_rng(seed), img.height, img.width, t)
    top, left, h, w = d.box
    want = F.resized_crop(img, top, left, h, w, [24, 24], InterpolationMode.BICUBIC)
    if d.flip:
      want = F.hflip(want)
    for op, arg in d.ops:
      want = torchvision_op(want, op, arg)
    np.testing.assert_array_equal(np.asarray(ra.apply(img, d, t)), np.asarray(want))


def test_crop_box_follows_get_params():
  t = ra.TrainTransform(size=8)
  rng = np.random.default_rng(0)
  for _ in range(300):
    top, left, h, w = ra.crop_box(rng, 40, 60, t.scale, t.ratio)
    assert 0 <= top <= 40 - h and 0 <= left <= 60 - w
    # Rounding to whole pixels moves area and aspect slightly off the sampled ranges.
    assert 0.5 * 0.9 <= h * w / 2400 <= 1.0
    assert 0.75 * 0.9 <= w / h <= 4 / 3 * 1.1
  # No box of a 1 x 50 image fits the ratio range: torchvision's centre-crop fallback.
  assert ra.crop_box(np.random.default_rng(1), 1, 50, t.scale, t.ratio) == (0, 24, 1, 1)


def test_draws_are_seeded_and_follow_the_reference_rates():
  t = ra.TrainTransform(size=8, ops=ra.OPS_REPBLEND)
  a = [ra.draw(np.random.default_rng(s), 30, 30, t) for s in range(2000)]
  b = [ra.draw(np.random.default_rng(s), 30, 30, t) for s in range(2000)]
  assert a == b
  fired = [op for d in a for op, _ in d.ops]
  assert abs(len(fired) / (2 * len(a)) - 0.5) < 0.03           # each slot fires with p 0.5
  counts = {op: fired.count(op) for op in ra.OPS_REPBLEND}
  assert "AutoContrast" not in fired and min(counts.values()) > 0.6 * len(fired) / 9
  assert abs(np.mean([d.flip for d in a]) - 0.5) < 0.04
  signs = [arg < 0 for d in a for op, arg in d.ops if op in ra.SIGNED]
  assert abs(np.mean(signs) - 0.5) < 0.05


def test_bad_settings_are_refused():
  with pytest.raises(ValueError, match="subset"):
    ra.TrainTransform(size=8, ops=("Solarize",))
  with pytest.raises(ValueError, match="scale"):
    ra.TrainTransform(size=8, scale=(0.0, 1.0))
  with pytest.raises(ValueError, match="magnitude"):
    ra.TrainTransform(size=8, magnitude=11)
  with pytest.raises(ValueError, match="unknown"):
    ra.apply_op(image(0), "Posterize", 4)


@pytest.mark.parametrize("field,value,says", [
    ("ops", "blip", "train_transform.ops"), ("magnitude", 12.0, "train_transform.magnitude"),
    ("min_scale", 0.0, "train_transform.min_scale"), ("num_ops", -1, "train_transform.num_ops")])
def test_config_checks_name_the_train_transform_field(field, value, says):
  """A bad train_transform stops the run before any data is read, naming the field, but only
  where something uses the transform."""
  from jdd.config import load_config
  from jdd.errors import ConfigError
  from jdd.validation import image_text, refusing
  config = load_config("configs/lors_flickr.py")       # experts.augment=True
  config.train_transform[field] = value
  with pytest.raises(ConfigError, match=says.replace(".", r"\.")), refusing():
    image_text.static(config)
  config.experts.augment = config.distill.init_augment = False
  with refusing():
    image_text.static(config)
