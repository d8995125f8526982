"""What a dataset holds (classes, image shape, images per class after jdd's split policy),
known before any of it is read.

The checks of `jdd.validation` compare a config with these facts so that an IPC the data cannot
serve, or a teacher built for 32x32x3 images on 28x28x1 ones, is refused in seconds instead of
after a teacher has trained. Facts come from

* a table of the datasets jdd knows by name (their published split sizes; ImageNet-1K's
  smallest class has 732 training images), put through the same split policy as the loaders
  (`jdd.data.classification`: validation carved per class from train, then `max_train`);
* a listing of the class folders (`image_folder`; names and file counts only, no decoding);
* the generation sizes of `shapes_captions`, and the Karpathy splits of Flickr30K and COCO;
* after loading (`from_classification_data`, `from_caption_data`), the data itself: the run
  checks again with exact numbers before anything trains, for datasets the table cannot know
  (a custom IDX folder, an existing caption folder).

A `None` fact means "not known before loading"; the checks that need it wait for the second
pass.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from jdd.data.classification import DEFAULT_VAL_SIZE, NORMALIZATION, SUPPORTED_DATASETS
from jdd.errors import ConfigError

# name -> (classes, native (H, W, C), training images of the smallest class)
CLASSIFICATION_TABLE = {
    "fashion_mnist": (10, (28, 28, 1), 6000),
    "cifar10": (10, (32, 32, 3), 5000),
    "cifar100": (100, (32, 32, 3), 500),
    "tiny_imagenet": (200, (64, 64, 3), 500),
    "imagenet1k": (1000, (224, 224, 3), 732),
}
# Datasets whose loader resizes to `dataset.image_size`; the others have one size.
RESIZABLE = ("tiny_imagenet", "image_folder")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")

# Karpathy splits (BLIP's JSON): train images and captions, val and test images.
CAPTION_TABLE = {
    "flickr30k": (29000, 145000, 1014, 1000),
    "coco": (113287, 566747, 5000, 5000),
}
SHAPES_CAPTIONS_PER_IMAGE = 5


@dataclasses.dataclass(frozen=True)
class ClassificationFacts:
  name: str
  num_classes: int
  image_shape: tuple[int, int, int]
  train_per_class: int | None   # the fewest training images of a class after the split
  train_images: int | None
  mean: tuple[float, ...]
  std: tuple[float, ...]
  streamed: bool                # ImageNet-1K's train split without max_train
  how: str                      # where the numbers come from, for messages


@dataclasses.dataclass(frozen=True)
class CaptionFacts:
  name: str
  train_images: int | None
  train_captions: int | None
  image_size: int
  how: str


def _opt(dc, name, default=None):
  v = dc.get(name, default) if hasattr(dc, "get") else getattr(dc, name, default)
  return default if v is None or v == "" or (v == 0 and not isinstance(v, bool)) else v


def _per_class(total: int, num_classes: int, field: str) -> int:
  if 0 < total < num_classes:
    raise ConfigError.field(f"dataset.{field}", total, f"0 (the default) or at least "
                            f"{num_classes}", f"it is split evenly over {num_classes} classes")
  return total // num_classes


def _listed_folder(dc) -> tuple[int, tuple[int, ...] | None, bool, str]:
  """(classes, per-class train file counts, has val/, how) of an image_folder tree; counts
  are None when the folder is not there (the loader then says where to put it)."""
  root = _opt(dc, "data_dir")
  train = os.path.join(root, "train") if root else None
  if not train or not os.path.isdir(train):
    return 0, None, False, ""
  classes = sorted(d for d in os.listdir(train) if os.path.isdir(os.path.join(train, d)))
  counts = tuple(sum(1 for f in os.listdir(os.path.join(train, c))
                     if f.lower().endswith(IMAGE_EXTENSIONS)) for c in classes)
  return len(classes), counts, os.path.isdir(os.path.join(root, "val")), f"listing of {train}"


def classification(dc) -> ClassificationFacts | None:
  """The facts of `config.dataset` without reading the data; None when they are unknown
  (an image folder that is not there yet)."""
  name = dc.name
  if name not in SUPPORTED_DATASETS:
    raise ConfigError.field("dataset.name", name, f"one of {list(SUPPORTED_DATASETS)}")
  size = int(_opt(dc, "image_size", 0))
  if name == "image_folder":
    if size <= 0:
      raise ConfigError.field("dataset.image_size", dc.get("image_size"), "a size in pixels "
                              "> 0", "image_folder resizes every image to a square of this side")
    num_classes, counts, has_val, how = _listed_folder(dc)
    if counts is None:
      return None
    if num_classes < 2:
      raise ConfigError.field("dataset.data_dir", dc.data_dir, "a folder whose train/ holds one "
                              "sub-folder per class (at least 2)", f"{how} found {num_classes}")
    shape, smallest = (size, size, 3), min(counts)
  else:
    num_classes, shape, smallest = CLASSIFICATION_TABLE[name]
    how, has_val = f"jdd's table of {name}", False
    if name in RESIZABLE and size:
      shape = (size, size, shape[2])
    elif size and size != shape[0]:
      raise ConfigError.field("dataset.image_size", size, f"0 or {shape[0]} (the dataset's "
                              "size)", f"{name} images are {shape[0]}x{shape[1]}, and its loader "
                              "does not resize")
  mean, std = NORMALIZATION[name]
  mean, std = tuple(_opt(dc, "mean", mean)), tuple(_opt(dc, "std", std))
  for field, value in (("mean", mean), ("std", std)):
    if len(value) != shape[2]:
      raise ConfigError.field(f"dataset.{field}", value, f"{shape[2]} value(s), one per channel",
                              f"{name} images have {shape[2]} channel(s)")
  per_class, total, note = _split(dc, name, num_classes, smallest, has_val)
  return ClassificationFacts(name, num_classes, shape, per_class, total, mean, std,
                             streamed=name == "imagenet1k" and not _opt(dc, "max_train"),
                             how=f"{how}: {smallest} per class{note}")


def _split(dc, name: str, num_classes: int, smallest: int,
           has_val: bool) -> tuple[int, int, str]:
  """(training images of the smallest class, training images, how) after carving validation
  and applying max_train, as the loaders do."""
  max_train, max_test = _opt(dc, "max_train"), _opt(dc, "max_test")
  per_class, note = smallest, ""
  if not has_val:
    default = DEFAULT_VAL_SIZE if name == "imagenet1k" else min(DEFAULT_VAL_SIZE,
                                                                 smallest * num_classes // 10)
    val_size = int(_opt(dc, "val_size", default))
    if name == "imagenet1k" and max_test is not None:
      val_size = min(val_size, int(max_test))
    val_per_class = _per_class(val_size, num_classes, "val_size")
    if val_per_class >= smallest:
      raise ConfigError.field("dataset.val_size", val_size, f"less than "
                              f"{smallest * num_classes} ({smallest} per class)",
                              f"validation is carved from train, and a class of {name} has "
                              f"{smallest} training images")
    per_class -= val_per_class
    note += f", less {val_per_class} for validation"
  if max_train is not None:
    per_class = min(per_class, _per_class(int(max_train), num_classes, "max_train"))
    note += f", at most {int(max_train) // num_classes} with max_train={max_train}"
  if max_test is not None:
    _per_class(int(max_test), num_classes, "max_test")
  return per_class, per_class * num_classes, note


def from_classification_data(data) -> ClassificationFacts:
  """The facts of a loaded dataset (exact: per-class counts of its train split)."""
  train = data.train
  streamed = not hasattr(train, "images")
  if streamed:
    per_class = None
  else:
    counts = np.bincount(np.asarray(train.labels), minlength=data.num_classes)
    per_class = int(counts.min())
  return ClassificationFacts(data.name, int(data.num_classes), tuple(data.image_shape),
                             per_class, len(train), tuple(data.mean), tuple(data.std), streamed,
                             f"the loaded {data.name}")


def captions(dc) -> CaptionFacts | None:
  """Image-text facts without reading the annotations; None when unknown (an existing
  folder of another dataset)."""
  name, size = dc.name, int(dc.image_size)
  if name == "shapes_captions":
    if not dc.get("generate"):
      return None
    n = int(dc.sizes.train)
    return CaptionFacts(name, n, n * SHAPES_CAPTIONS_PER_IMAGE, size,
                        f"dataset.sizes.train={n} generated images")
  if name in CAPTION_TABLE:
    images, texts, _, _ = CAPTION_TABLE[name]
    return CaptionFacts(name, images, texts, size, f"the Karpathy split of {name}")
  return None


def from_caption_data(data) -> CaptionFacts:
  return CaptionFacts(data.name, int(data.train.num_images), len(data.train),
                      int(data.image_size), f"the loaded {data.name}")
