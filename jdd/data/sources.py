"""Where each image-classification dataset comes from, and how it is read into
`jdd.data.classification.ClassificationData`.

Where data comes from:

* `fashion_mnist`: IDX files (Debian `dataset-fashion-mnist`, or `cfg.data_dir`), else tfds.
* `cifar10`, `cifar100`: a prepared tfds directory; jdd never downloads, because tfds' download
  retries hang for minutes on an offline machine.
* `imagenet1k`: prepared tfds `imagenet2012` (built from the manual tars). 1.28 M training
  images do not fit in memory as arrays, so its train split is a `StreamingSplit` (decoded on
  the fly) unless `max_train` asks for a small materialised subset.
* `tiny_imagenet`: the official `tiny-imagenet-200` folder. Its labelled `val/` is used as the
  TEST split, as the references do; validation is carved from train.
* `image_folder`: any `{train,test[,val]}/<class>/*.png|jpg` tree.

A missing dataset raises `DatasetNotFoundError` at once, naming every place jdd looked and how
to obtain the data; no code path here opens a network connection.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import gzip
import io
import itertools
import os
import pathlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
from PIL import Image

from jdd.data.classification import (CIFAR10_CLASSES, DEFAULT_VAL_SIZE, FASHION_MNIST_CLASSES,
                                     NORMALIZATION, ClassificationData, DatasetNotFoundError,
                                     Split, _opt, _per_class, balanced_subset,
                                     carve_validation)

# Module-level so tests (and unusual installs) can point it elsewhere.
FASHION_MNIST_DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")


@dataclasses.dataclass(frozen=True, eq=False)
class StreamingSplit:
    """A split too large to hold as uint8 arrays (ImageNet-1K train: ~190 GB at 224x224).

    `records()` yields (encoded image, label, unique name) in a fixed order; `decode` turns the
    encoded bytes into a uint8 HWC array of `image_shape`. `exclude` holds the names carved out
    for validation, so train and validation stay disjoint without rewriting the source.
    """

    num_examples: int
    image_shape: tuple[int, int, int]
    records: Callable[[], Iterable[tuple[bytes, int, str]]]
    decode: Callable[[bytes], np.ndarray]
    exclude: frozenset[str] = frozenset()

    def __len__(self) -> int:
        return self.num_examples - len(self.exclude)

    def _kept(self) -> Iterator[tuple[bytes, int, str]]:
        return (r for r in self.records() if r[2] not in self.exclude)

    def batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Decoded (images, labels) batches in record order; the last one may be short."""
        records = self._kept()
        while chunk := list(itertools.islice(records, batch_size)):
            yield _decode_chunk(chunk, self.decode, self.image_shape)

    def take_per_class(self, per_class: int, num_classes: int) -> Split:
        """The first `per_class` images of every class in record order (random-subset baselines)."""
        return self._take(per_class, num_classes)[0]

    def _take(self, per_class: int, num_classes: int) -> tuple[Split, frozenset[str]]:
        counts, names = np.zeros(num_classes, np.int64), []

        def wanted() -> Iterator[tuple[bytes, int, str]]:
            for record in self._kept():
                if len(names) == per_class * num_classes:
                    return
                if counts[record[1]] < per_class:
                    counts[record[1]] += 1
                    names.append(record[2])
                    yield record

        split = _materialise(wanted(), per_class * num_classes, self.decode, self.image_shape)
        return split, frozenset(names)


# ----------------------------------------------------------------------------- IDX files
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse an IDX file (gzipped or raw, told apart by content, not by name).

    The format is 2 zero bytes, a type code, the rank, big-endian uint32 dimensions, then the
    data; every part is checked so a truncated download fails here, not as garbage pixels.
    """
    raw = pathlib.Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (magic bytes {raw[:4].hex()})")
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(raw[:header].ljust(header, b"\0"), ">u4", ndim, 4))
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != header + size:
        raise ValueError(f"{path}: IDX payload is {len(raw) - header} bytes, shape {shape} "
                         f"needs {size}")
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


# ----------------------------------------------------------------------------- images
def resize_center_crop(image: Image.Image, resize: int, crop: int) -> np.ndarray:
    """torchvision's Resize(resize) then CenterCrop(crop) on a PIL image, bilinear.

    Matches the PIL path of torchvision (short side to `resize`, long side truncated to
    int(resize * long / short); crop offsets rounded with Python's round), which is the
    ImageNet evaluation transform of every reference.
    """
    w, h = image.size
    short, long = min(w, h), max(w, h)
    new_short, new_long = resize, int(resize * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    if new_w < crop or new_h < crop:
        raise ValueError(f"cannot centre-crop {crop} from {new_w}x{new_h}")
    top = int(round((new_h - crop) / 2.0))
    left = int(round((new_w - crop) / 2.0))
    return np.asarray(image.crop((left, top, left + crop, top + crop)), np.uint8)


def _to_rgb_array(source, size: int | None, resize: int | None = None) -> np.ndarray:
    """Decode a file or bytes to RGB uint8; resize (short side, centre crop) only if needed."""
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
        im = im.convert("RGB")
        if size is not None and (resize is not None or im.size != (size, size)):
            return resize_center_crop(im, resize or size, size)
        return np.asarray(im, np.uint8)


def _decode_imagenet(data: bytes) -> np.ndarray:
    return _to_rgb_array(data, 224, resize=256)


def _decode_many(decode, items: list, shape) -> np.ndarray:
    # PIL releases the GIL while decoding and resizing, so threads give a real speed-up.
    images = np.zeros((len(items), *shape), np.uint8)
    if len(items) < 64:
        arrays = map(decode, items)
    else:
        pool = concurrent.futures.ThreadPoolExecutor(min(16, (os.cpu_count() or 1) + 2))
        with pool:
            arrays = list(pool.map(decode, items, chunksize=32))
    for i, array in enumerate(arrays):
        images[i] = array
    return images


def _decode_chunk(records, decode, shape) -> tuple[np.ndarray, np.ndarray]:
    images = _decode_many(decode, [r[0] for r in records], shape)
    return images, np.asarray([r[1] for r in records], np.int32).reshape(-1)


def _materialise(records: Iterable[tuple[bytes, int, str]], capacity: int, decode,
                 shape) -> Split:
    """Decode a record stream into a preallocated array, holding only one chunk of bytes."""
    images, labels = np.zeros((capacity, *shape), np.uint8), np.zeros(capacity, np.int32)
    records, n = iter(records), 0
    while chunk := list(itertools.islice(records, 1024)):
        if n + len(chunk) > capacity:
            raise ValueError(f"record stream holds more than the expected {capacity} images")
        images[n:n + len(chunk)], labels[n:n + len(chunk)] = _decode_chunk(chunk, decode, shape)
        n += len(chunk)
    return Split(images[:n], labels[:n])


def _list_images(folder: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)


@dataclasses.dataclass(frozen=True)
class _Source:
    """Labels known up front, pixels fetched by index: lets subsetting skip decoding."""

    labels: np.ndarray
    fetch: Callable[[np.ndarray], np.ndarray]

    @staticmethod
    def of_arrays(images: np.ndarray, labels: np.ndarray) -> "_Source":
        return _Source(labels.astype(np.int32), lambda idx: images[idx])

    @staticmethod
    def of_files(paths: list[pathlib.Path], labels: list[int], size: int) -> "_Source":
        return _Source(np.asarray(labels, np.int32),
                       lambda idx: _decode_many(lambda p: _to_rgb_array(p, size),
                                                [paths[i] for i in idx], (size, size, 3)))

    def split(self, idx: np.ndarray) -> Split:
        return Split(np.ascontiguousarray(self.fetch(idx)), self.labels[idx])


def _stats(cfg, key: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    mean, std = NORMALIZATION[key]
    return tuple(_opt(cfg, "mean", mean)), tuple(_opt(cfg, "std", std))


def _assemble(cfg, name: str, class_names: tuple[str, ...], stats: tuple, train: _Source,
              test: _Source, val: _Source | None = None,
              val_origin: str = "") -> ClassificationData:
    """Apply the split policy shared by every in-memory dataset, then decode only what is kept."""
    num_classes = len(class_names)
    for source in (train, test, val):
        if source is not None and len(source.labels) and (
                source.labels.min() < 0 or source.labels.max() >= num_classes):
            raise ValueError(f"{name}: labels outside [0, {num_classes})")
    seed = int(_opt(cfg, "val_seed", 0))
    max_train, max_test = _opt(cfg, "max_train"), _opt(cfg, "max_test")
    train_idx = np.arange(len(train.labels))
    if val is None:
        val_size = int(_opt(cfg, "val_size", min(DEFAULT_VAL_SIZE, len(train.labels) // 10)))
        val_idx, train_idx = carve_validation(train.labels, val_size, num_classes, seed)
        val, val_source = train, (
            f"carved from train ({len(val_idx)} images, {val_size // num_classes} per class, "
            f"seed {seed})" if val_size else "none (val_size=0)")
    else:
        val_idx, val_source = np.arange(len(val.labels)), val_origin
    if max_test is not None and max_test < len(val_idx):
        val_idx = balanced_subset(val.labels, val_idx, max_test, num_classes, seed)
        val_source += f", subsampled to {len(val_idx)} by max_test"
    train_idx = balanced_subset(train.labels, train_idx, max_train, num_classes, seed)
    test_idx = balanced_subset(test.labels, np.arange(len(test.labels)), max_test, num_classes,
                               seed)
    mean, std = stats
    return ClassificationData(name=name, num_classes=num_classes, class_names=class_names,
                              mean=mean, std=std, train=train.split(train_idx),
                              val=val.split(val_idx), test=test.split(test_idx),
                              val_source=val_source)


def _not_found(name: str, looked: list[str], how: str) -> DatasetNotFoundError:
    where = "\n".join(f"  - {p}" for p in looked) or "  - (nowhere: no location configured)"
    return DatasetNotFoundError(f"dataset {name!r} not found. jdd looked in:\n{where}\n"
                                f"How to get it: {how}")


# ----------------------------------------------------------------------------- tfds
def _tfds_default_dir() -> str:
    return os.environ.get("TFDS_DATA_DIR") or os.path.join(
        os.path.expanduser("~"), "tensorflow_datasets")


def _prepared_tfds_builder(tfds_name: str, data_dir: str | None):
    """A builder over already-prepared files, or (None, places looked) — never a download.

    `tfds.builder` only reads local metadata; `is_prepared()` checks for dataset_info.json.
    If a different version than the registered default was prepared, that one is used.
    """
    root = pathlib.Path(data_dir or _tfds_default_dir()) / tfds_name
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        return None, [f"{root} (tensorflow_datasets is not installed)"]
    builder = tfds.builder(tfds_name, data_dir=data_dir)
    if builder.is_prepared():
        return builder, []
    versions = sorted((p.parent for p in root.glob("*/dataset_info.json")),
                      key=lambda v: [int(x) if x.isdigit() else -1 for x in v.name.split(".")])
    if versions:
        return tfds.builder_from_directory(str(versions[-1])), []
    return None, [f"{builder.data_dir} (tfds {tfds_name}, not prepared)"]


def _tfds_arrays(builder, split: str) -> tuple[np.ndarray, np.ndarray]:
    import tensorflow_datasets as tfds
    ex = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1, shuffle_files=False))
    return np.asarray(ex["image"], np.uint8), np.asarray(ex["label"], np.int32)


def _tfds_build_hint(tfds_name: str, data_dir: str | None) -> str:
    target = data_dir or _tfds_default_dir()
    return (f"on a machine with internet run `tfds build {tfds_name} --data_dir {target}` "
            f"(pip install tensorflow-datasets tensorflow), then copy {target}/{tfds_name} to "
            f"this machine and set config data_dir={target}.")


def _load_tfds_small(cfg, name: str) -> ClassificationData:
    data_dir = _opt(cfg, "data_dir")
    builder, looked = _prepared_tfds_builder(name, data_dir)
    if builder is None:
        raise _not_found(name, looked, _tfds_build_hint(name, data_dir))
    # tfds only knows CIFAR's label names once its label file was downloaded with the data.
    class_names = (CIFAR10_CLASSES if name == "cifar10"
                   else tuple(builder.info.features["label"].names))
    train = _Source.of_arrays(*_tfds_arrays(builder, "train"))
    test = _Source.of_arrays(*_tfds_arrays(builder, "test"))
    return _assemble(cfg, name, class_names, _stats(cfg, name), train, test)


# ----------------------------------------------------------------------------- fashion-mnist
_FMNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                 "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _find_idx_files(folder: pathlib.Path) -> dict[str, pathlib.Path] | None:
    found = {stem: next((p for p in (folder / f"{stem}.gz", folder / stem) if p.is_file()), None)
             for pair in _FMNIST_FILES.values() for stem in pair}
    return None if None in found.values() else found


def _fashion_mnist_idx(files: dict[str, pathlib.Path], split: str) -> _Source:
    images_file, labels_file = (files[s] for s in _FMNIST_FILES[split])
    images, labels = read_idx(images_file), read_idx(labels_file)
    # The magic numbers 0x00000803 / 0x00000801 mean uint8 rank 3 / uint8 rank 1.
    if (images.dtype, images.ndim, labels.dtype, labels.ndim) != (np.uint8, 3, np.uint8, 1) or \
            images.shape[1:] != (28, 28) or len(labels) != len(images):
        raise ValueError(f"{images_file}, {labels_file}: expected uint8 (N, 28, 28) images and "
                         f"(N,) labels, got {images.dtype} {images.shape}, {labels.dtype} "
                         f"{labels.shape}")
    return _Source.of_arrays(images[..., None], labels)


def _load_fashion_mnist(cfg) -> ClassificationData:
    data_dir = _opt(cfg, "data_dir")
    folders = []
    if data_dir:
        base = pathlib.Path(data_dir)
        folders += [base, base / "fashion-mnist", base / "fashion_mnist"]
    folders.append(pathlib.Path(FASHION_MNIST_DEBIAN_DIR))
    files = next(filter(None, map(_find_idx_files, folders)), None)
    if files is not None:
        train, test = (_fashion_mnist_idx(files, s) for s in ("train", "test"))
    else:
        builder, tfds_looked = _prepared_tfds_builder("fashion_mnist", data_dir)
        if builder is None:
            raise _not_found(
                "fashion_mnist",
                [f"{f}/{{train,t10k}}-{{images-idx3,labels-idx1}}-ubyte[.gz]" for f in folders]
                + tfds_looked,
                f"`apt-get install dataset-fashion-mnist` (Debian/Ubuntu; installs "
                f"{FASHION_MNIST_DEBIAN_DIR}), or put the four IDX files from "
                "https://github.com/zalandoresearch/fashion-mnist into config data_dir, or "
                + _tfds_build_hint("fashion_mnist", data_dir))
        train, test = (_Source.of_arrays(*_tfds_arrays(builder, s)) for s in ("train", "test"))
    return _assemble(cfg, "fashion_mnist", FASHION_MNIST_CLASSES, _stats(cfg, "fashion_mnist"),
                     train, test)


# ----------------------------------------------------------------------------- imagenet-1k
def _tfds_records(builder, split: str) -> Callable[[], Iterator[tuple[bytes, int, str]]]:
    """Undecoded records: jdd decodes with PIL so pixels match the torchvision references."""

    def records():
        import tensorflow_datasets as tfds
        ds = builder.as_dataset(split=split, shuffle_files=False,
                                decoders={"image": tfds.decode.SkipDecoding()})
        for ex in tfds.as_numpy(ds):
            yield bytes(ex["image"]), int(ex["label"]), ex["file_name"].decode()

    return records


def _load_imagenet(cfg) -> ClassificationData:
    """ImageNet-1K: test = official validation (50k), Resize 256 -> CenterCrop 224.

    Validation is carved from train as the first val_size // 1000 images of each class in the
    prepared record order (tfds shuffles records when it prepares the dataset); a seeded
    permutation would need every training label first, i.e. a pass over ~140 GB. Train is a
    `StreamingSplit` of centre crops (random crops belong to the augmentation), or a
    materialised Split of the first max_train // 1000 per class when max_train is set; max_test
    likewise keeps the first max_test // 1000 per class of the test split. The full test split
    takes ~7.5 GB of memory.
    """
    data_dir = _opt(cfg, "data_dir")
    target = data_dir or _tfds_default_dir()
    manual = pathlib.Path(target) / "downloads" / "manual"
    builder, looked = _prepared_tfds_builder("imagenet2012", data_dir)
    if builder is None:
        tars = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")
        have = ", ".join(t for t in tars if (manual / t).is_file()) or "none"
        raise _not_found("imagenet1k", looked + [f"{manual} (manual tars; found: {have})"],
                         f"ImageNet is never downloaded. Put {' and '.join(tars)} (from "
                         f"image-net.org) into {manual}, run `tfds build imagenet2012 --data_dir "
                         f"{target} --manual_dir {manual}` (hours; ~300 GB of disk) and set "
                         f"config data_dir={target}.")
    class_names = tuple(builder.info.features["label"].names)
    num_classes = len(class_names)
    shape = (224, 224, 3)
    max_train, max_test = _opt(cfg, "max_train"), _opt(cfg, "max_test")

    test = StreamingSplit(builder.info.splits["validation"].num_examples, shape,
                          _tfds_records(builder, "validation"), _decode_imagenet)
    if max_test is None:
        test = _materialise(test.records(), test.num_examples, _decode_imagenet, shape)
    else:
        test = test.take_per_class(_per_class(max_test, num_classes, "max_test"), num_classes)

    train = StreamingSplit(builder.info.splits["train"].num_examples, shape,
                           _tfds_records(builder, "train"), _decode_imagenet)
    val_size = int(_opt(cfg, "val_size", DEFAULT_VAL_SIZE))
    if max_test is not None:
        val_size = min(val_size, max_test)
    val, val_names = train._take(_per_class(val_size, num_classes, "val_size"), num_classes)
    train = dataclasses.replace(train, exclude=val_names)
    if max_train is not None:
        train = train.take_per_class(_per_class(max_train, num_classes, "max_train"), num_classes)
    mean, std = _stats(cfg, "imagenet1k")
    return ClassificationData(
        name="imagenet1k", num_classes=num_classes, class_names=class_names, mean=mean, std=std,
        train=train, val=val, test=test,
        val_source=f"carved from train ({len(val)} images, first {val_size // num_classes} per "
                   "class in the prepared tfds record order)")


# ----------------------------------------------------------------------------- folders
def _load_tiny_imagenet(cfg) -> ClassificationData:
    data_dir = _opt(cfg, "data_dir")
    candidates = [pathlib.Path(data_dir), pathlib.Path(data_dir) / "tiny-imagenet-200"] \
        if data_dir else []
    root = next((c for c in candidates if (c / "wnids.txt").is_file() and (c / "train").is_dir()),
                None)
    if root is None:
        raise _not_found("tiny_imagenet", [f"{c}/wnids.txt, {c}/train/" for c in candidates],
                         "download http://cs231n.stanford.edu/tiny-imagenet-200.zip and unzip it "
                         "so that <data_dir>/tiny-imagenet-200/ holds wnids.txt, words.txt, "
                         "train/<wnid>/images/*.JPEG, val/images/*.JPEG and "
                         "val/val_annotations.txt; then set config data_dir.")
    wnids = sorted(line.strip() for line in (root / "wnids.txt").read_text().splitlines()
                   if line.strip())
    words_file = root / "words.txt"  # "n01443537\tgoldfish, Carassius auratus": keep "goldfish"
    words = dict((w.strip(), text.split(",")[0].strip()) for w, _, text in
                 (line.partition("\t") for line in words_file.read_text().splitlines())) \
        if words_file.is_file() else {}
    class_names = tuple(words.get(w, w) for w in wnids)
    index = {w: i for i, w in enumerate(wnids)}
    size = int(_opt(cfg, "image_size", 64))

    train_paths, train_labels = [], []
    for wnid in wnids:
        folder = root / "train" / wnid / "images"
        files = _list_images(folder) if folder.is_dir() else []
        if not files:
            raise _not_found("tiny_imagenet", [str(folder)], "the train folder is incomplete; "
                             "re-extract tiny-imagenet-200.zip.")
        train_paths += files
        train_labels += [index[wnid]] * len(files)

    annotations = root / "val" / "val_annotations.txt"
    if not annotations.is_file():
        raise _not_found("tiny_imagenet", [str(annotations)],
                         "the official val/ folder (val/images + val_annotations.txt) is used as "
                         "the test split; re-extract tiny-imagenet-200.zip.")
    rows = [line.split("\t")[:2] for line in sorted(annotations.read_text().splitlines())
            if line.strip()]
    if unknown := {wnid for _, wnid in rows} - set(index):
        raise ValueError(f"{annotations}: classes {sorted(unknown)} are not in wnids.txt")
    test_paths = [root / "val" / "images" / fname for fname, _ in rows]
    test_labels = [index[wnid] for _, wnid in rows]
    return _assemble(cfg, "tiny_imagenet", class_names, _stats(cfg, "tiny_imagenet"),
                     _Source.of_files(train_paths, train_labels, size),
                     _Source.of_files(test_paths, test_labels, size))


def _load_image_folder(cfg) -> ClassificationData:
    """Folder-per-class tree; images resized (short side, centre crop) to cfg.image_size, RGB."""
    size = _opt(cfg, "image_size")
    if size is None:
        raise ValueError("image_folder needs config image_size (images are resized to a square "
                         "of that side)")
    data_dir = _opt(cfg, "data_dir")
    root = pathlib.Path(data_dir) if data_dir else None
    how = ("arrange the images as <data_dir>/train/<class>/*.png|jpg|jpeg|bmp and "
           "<data_dir>/test/<class>/..., optionally <data_dir>/val/<class>/..., and set config "
           "data_dir.")
    if root is None or not (root / "train").is_dir() or not (root / "test").is_dir():
        looked = [f"{root}/train/<class>/", f"{root}/test/<class>/"] if root else []
        raise _not_found("image_folder", looked, how)
    classes = sorted(d.name for d in (root / "train").iterdir() if d.is_dir())
    if not classes:
        raise _not_found("image_folder", [f"{root}/train/<class>/"], how)
    index = {c: i for i, c in enumerate(classes)}

    def source(split: str) -> _Source:
        paths, labels = [], []
        for folder in sorted(d for d in (root / split).iterdir() if d.is_dir()):
            if folder.name not in index:
                raise ValueError(f"{folder}: class {folder.name!r} has no train/ folder")
            files = _list_images(folder)
            paths += files
            labels += [index[folder.name]] * len(files)
        if not paths:
            raise _not_found("image_folder", [f"{root}/{split}/<class>/*"], how)
        return _Source.of_files(paths, labels, int(size))

    val = source("val") if (root / "val").is_dir() else None
    return _assemble(cfg, "image_folder", tuple(classes), _stats(cfg, "image_folder"),
                     source("train"), source("test"), val,
                     "official validation split (val/ folder)")


LOADERS: dict[str, Callable[[Any], ClassificationData]] = {
    "fashion_mnist": _load_fashion_mnist,
    "cifar10": lambda cfg: _load_tfds_small(cfg, "cifar10"),
    "cifar100": lambda cfg: _load_tfds_small(cfg, "cifar100"),
    "imagenet1k": _load_imagenet,
    "tiny_imagenet": _load_tiny_imagenet,
    "image_folder": _load_image_folder,
}
