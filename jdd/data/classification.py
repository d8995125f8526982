"""Image-classification datasets behind one interface.

Teacher training (squeeze), random-subset baselines and student evaluation all need the same
thing: uint8 NHWC arrays with int32 labels, a validation split for model selection that is
disjoint from the test split (DESIGN.md, convention 10), and the normalisation constants the
reference code used. Every dataset is therefore turned into a `ClassificationData` of three
`Split`s, and every policy that could silently change a number (how validation is carved, how
smoke runs subsample) lives here, once, deterministic in `val_seed`.

Where each dataset comes from (tfds, IDX files, image folders) is `jdd.data.sources`; this
module holds the containers, the normalisation, the split policy and the entry point.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

# Per-channel constants in [0, 1] pixel units, exactly as the reference code normalises.
NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    # Standard Fashion-MNIST statistics of the training set (mean 0.2860, std 0.3530).
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    # SRe2L's CIFAR-100 code reuses the CIFAR-10 constants, so jdd does too. INFER and FADRM use
    # the true CIFAR-100 statistics (0.5071, 0.4867, 0.4408) / (0.2675, 0.2565, 0.2761); set
    # cfg.mean / cfg.std to reproduce those.
    "cifar100": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "imagenet1k": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    # SRe2L's Tiny-ImageNet constants (FADRM uses the ImageNet ones instead).
    "tiny_imagenet": ((0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262)),
    "image_folder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")
DEFAULT_VAL_SIZE = 5000


class DatasetNotFoundError(FileNotFoundError):
    """The data is not on this machine; the message says where jdd looked and how to get it."""


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
    """One materialised split; validated on construction so shape bugs surface at load time."""

    images: np.ndarray  # uint8 (N, H, W, C)
    labels: np.ndarray  # int32 (N,)

    def __post_init__(self):
        i, y = self.images, self.labels
        if i.dtype != np.uint8 or i.ndim != 4 or y.dtype != np.int32 or y.shape != i.shape[:1]:
            raise ValueError(f"need uint8 NHWC images and int32 (N,) labels, got {i.dtype} "
                             f"{i.shape} and {y.dtype} {y.shape}")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])


@dataclasses.dataclass(frozen=True, eq=False)
class ClassificationData:
    """A dataset ready for training: three splits plus how to normalise them."""

    name: str
    num_classes: int
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train: Any  # a Split, or a jdd.data.sources.StreamingSplit (ImageNet-1K)
    val: Split
    test: Split
    val_source: str

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.test.image_shape)


# ----------------------------------------------------------------------------- normalisation
def normalize(images, mean, std):
    """Pixels in [0, 255] (uint8, or float after augmentation) to the references' input space.

    Written with array methods and numpy constants only, so it works on numpy arrays, jax
    arrays and tracers alike without importing jax here.
    """
    mean = np.asarray(mean, np.float32)
    std = np.asarray(std, np.float32)
    x = images.astype(np.float32) if hasattr(images, "astype") else np.asarray(images, np.float32)
    return (x / np.float32(255.0) - mean) / std


def denormalize(x, mean, std):
    """Back to [0, 1] pixel units; not clipped, so optimised images show where they overshoot."""
    mean = np.asarray(mean, np.float32)
    std = np.asarray(std, np.float32)
    return x * std + mean

# ----------------------------------------------------------------------------- selection
def _per_class(total: int, num_classes: int, what: str) -> int:
    if 0 < total < num_classes:
        raise ValueError(f"{what}={total} is smaller than the number of classes "
                         f"({num_classes}); use 0 or at least {num_classes}")
    return total // num_classes


def carve_validation(labels: np.ndarray, val_size: int, num_classes: int,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class-balanced (val_idx, train_idx), both sorted: val_size // num_classes per class.

    A seeded permutation picks the images, so the split depends only on (labels, val_size,
    seed): re-running, resuming, or changing max_train never moves an image across the line.
    """
    per_class = _per_class(val_size, num_classes, "val_size")
    perm = np.random.default_rng(seed).permutation(len(labels))
    permuted = labels[perm]
    chosen = []
    for c in range(num_classes):
        members = perm[permuted == c]
        if len(members) <= per_class:
            raise ValueError(f"class {c} has {len(members)} training images; cannot carve "
                             f"{per_class} for validation and keep any for training")
        chosen.append(members[:per_class])
    val_idx = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)
    keep = np.ones(len(labels), bool)
    keep[val_idx] = False
    return val_idx, np.flatnonzero(keep)


def balanced_subset(labels: np.ndarray, indices: np.ndarray, max_size: int | None,
                    num_classes: int, seed: int) -> np.ndarray:
    """At most max_size of `indices`, max_size // num_classes per class, for smoke runs."""
    if max_size is None or max_size >= len(indices):
        return indices
    per_class = _per_class(max_size, num_classes, "max_train/max_test")
    perm = np.random.default_rng([seed, 1]).permutation(indices)
    permuted = labels[perm]
    return np.sort(np.concatenate([perm[permuted == c][:per_class] for c in range(num_classes)]))


# ----------------------------------------------------------------------------- config fields
def _opt(cfg, name: str, default: Any = None) -> Any:
    if isinstance(cfg, Mapping) or callable(getattr(cfg, "get", None)):
        value = cfg.get(name, default)
    else:
        value = getattr(cfg, name, default)
    # ConfigDicts hold typed fields, so configs spell "not set" as 0 or "" rather than None.
    return default if value is None or (value == 0 and not isinstance(value, bool)) or value == "" else value


# ----------------------------------------------------------------------------- entry point
SUPPORTED_DATASETS = ("fashion_mnist", "cifar10", "cifar100", "imagenet1k", "tiny_imagenet",
                      "image_folder")


def load_classification(cfg) -> ClassificationData:
    """Load `cfg.name` with the shared split policy (see the module docstring)."""
    from jdd.data import sources  # the loaders build this module's containers
    name = _opt(cfg, "name")
    if name not in SUPPORTED_DATASETS:
        raise ValueError(f"unknown classification dataset {name!r}; supported: "
                         f"{', '.join(SUPPORTED_DATASETS)}")
    return sources.LOADERS[name](cfg)
