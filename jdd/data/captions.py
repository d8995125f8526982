"""Image-caption retrieval datasets in the Karpathy-split JSON layout of BLIP / LAVIS.

Reference: the `flickr30k_train` / `flickr30k_retrieval_eval` / `coco_train` /
`coco_retrieval_eval` datasets of zhangxin-xd/RepBlend and silicx/LoRS_Distill (both from
BLIP's `data/`), and their `create_dataset` test transform. Facts carried over:

* Files. `flickr30k_{train,val,test}.json` and `coco_karpathy_{train,val,test}.json` in one
  annotation directory. Train: a list with ONE ENTRY PER CAPTION,
  `{"image": rel_path, "caption": str, "image_id": str}`; val/test: one entry per image,
  `{"image": rel_path, "caption": [str, ...]}` (COCO has a few images with 6 captions).
  Image paths are `os.path.join(image_root, entry["image"])`, so `image_root` is the folder that
  CONTAINS `flickr30k-images/` (Flickr) or `train2014/` and `val2014/` (COCO).
* Train images get a dense index in order of first appearance of their `image_id`.
* Eval captions are flattened image by image; `txt2img[t]` is the image of caption `t` and
  `img2txt[i]` the captions of image `i`, as in BLIP's retrieval datasets.
* `pre_caption`: lower-case; each of `. ! " ( ) * # : ; ~` becomes a space; runs of 2+
  whitespace characters become one space; strip trailing newlines, then spaces; keep the first
  `max_words` space-separated words.
* Word limits (`REFERENCE_MAX_WORDS`): RepBlend 60 for Flickr train/eval and COCO train, 30 for
  COCO eval; LoRS 30 everywhere.
* Test transform: PIL `convert('RGB')`, bicubic resize to (image_size, image_size) ignoring the
  aspect ratio (torchvision's Resize on a PIL image is PIL's `resize`), `/255`, then CLIP's
  mean/std. The references use image_size 224.

Deliberate differences:

* Paths come only from the config (`ann_dir`, `image_root`); RepBlend overwrote its CLI paths
  with placeholders. jdd never downloads (COCO's reference constructors call `download_url`).
* A missing file raises `DatasetNotFoundError` listing every missing path and where it goes.
* Images are read on request: `CaptionDataset.files(split)` is the split's streaming reader
  (`jdd.data.pipeline.ImageFiles`: per batch, in threads, test or train transform), and
  `load_images` reads a whole index list at once (small sets only). The train transform
  (RandomResizedCrop + flip + RandomAugment) is `jdd.data.randaugment`; the references'
  `lru_cache` of post-augmentation tensors (weakness 12) is not reproduced.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from jdd.data.classification import DatasetNotFoundError

# CLIP's statistics, used by all three references although the encoder is an ImageNet NFNet.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
REFERENCE_IMAGE_SIZE = 224

# Annotation file stem per dataset name; a split's file is f"{stem}_{split}.json".
ANNOTATION_STEMS = {
    "flickr30k": "flickr30k",
    "coco": "coco_karpathy",
    "shapes_captions": "shapes_captions",
}
SPLITS = ("train", "val", "test")

# (train, eval) word limits of `pre_caption` in each reference codebase.
REFERENCE_MAX_WORDS: dict[str, dict[str, tuple[int, int]]] = {
    "repblend": {"flickr30k": (60, 60), "coco": (60, 30)},
    "lors": {"flickr30k": (30, 30), "coco": (30, 30)},
}
# jdd's own dataset has short captions; 30 never truncates them.
_DEFAULT_MAX_WORDS = (30, 30)

_HOW_TO_GET = {
    "flickr30k": (
        "put flickr30k_train.json, flickr30k_val.json and flickr30k_test.json (BLIP/LAVIS "
        "Karpathy splits, storage.googleapis.com/sfr-vision-language-research/datasets/) in "
        "{ann_dir}, and the Flickr30K jpgs in {image_root}/flickr30k-images/ (the JSON 'image' "
        "fields read 'flickr30k-images/<id>.jpg')."),
    "coco": (
        "put coco_karpathy_train.json, coco_karpathy_val.json and coco_karpathy_test.json "
        "(BLIP/LAVIS Karpathy splits, storage.googleapis.com/sfr-vision-language-research/"
        "datasets/) in {ann_dir}, and the COCO 2014 images in {image_root}/train2014/ and "
        "{image_root}/val2014/ (Karpathy val/test and 'restval' train images are in val2014/)."),
    "shapes_captions": (
        "generate it offline with `python -m jdd.data.shapes_captions --out DIR` (or "
        "jdd.data.shapes_captions.ensure_shapes_captions) and set ann_dir and image_root to "
        "the directory it prints."),
}

_PUNCTUATION = re.compile(r"[.!\"()*#:;~]")
_MULTI_SPACE = re.compile(r"\s{2,}")


def pre_caption(caption: str, max_words: int) -> str:
  """BLIP's caption cleaning, step for step (module docstring).

  Only runs of two or more whitespace characters are collapsed, so a single tab or newline
  between words survives, and the truncation splits on ' ' only: both as in the reference,
  because the cached text embeddings depend on the exact string.
  """
  caption = _PUNCTUATION.sub(" ", caption.lower())
  caption = _MULTI_SPACE.sub(" ", caption)
  caption = caption.rstrip("\n").strip(" ")
  words = caption.split(" ")
  if len(words) > max_words:
    caption = " ".join(words[:max_words])
  return caption


@dataclasses.dataclass(frozen=True, eq=False)
class TrainPairs:
  """The train split: one (image, caption) pair per caption, images indexed densely."""

  image_paths: tuple[str, ...]  # relative to image_root, one per distinct image_id
  image_ids: tuple[str, ...]
  image_index: np.ndarray  # int32 (num_captions,): the image of each caption
  captions: tuple[str, ...]  # cleaned

  @property
  def num_images(self) -> int:
    return len(self.image_paths)

  def __len__(self) -> int:
    return len(self.captions)


@dataclasses.dataclass(frozen=True, eq=False)
class EvalSplit:
  """A val/test split: images, their flattened captions and BLIP's index maps."""

  image_paths: tuple[str, ...]
  captions: tuple[str, ...]
  txt2img: np.ndarray  # int32 (num_captions,)
  img2txt: tuple[np.ndarray, ...]  # per image, int32 caption indices (5, or 6 in COCO)

  @property
  def num_images(self) -> int:
    return len(self.image_paths)


def _read_json_list(path: str) -> list:
  with open(path, encoding="utf-8") as f:
    data = json.load(f)
  if not isinstance(data, list):
    raise ValueError(f"{path}: expected a JSON list of annotation entries, got {type(data)}")
  return data


def _require(entry: Any, keys: Sequence[str], path: str, i: int) -> None:
  if not isinstance(entry, Mapping) or any(k not in entry for k in keys):
    raise ValueError(f"{path}: entry {i} must be an object with keys {list(keys)}, got {entry!r}")


def read_train_annotations(path: str, max_words: int) -> TrainPairs:
  """A train JSON (one entry per caption) as `TrainPairs`."""
  entries = _read_json_list(path)
  dense: dict[str, int] = {}
  paths: list[str] = []
  index = np.empty(len(entries), np.int32)
  captions = []
  for i, entry in enumerate(entries):
    _require(entry, ("image", "caption", "image_id"), path, i)
    image_id = str(entry["image_id"])
    if image_id not in dense:
      dense[image_id] = len(paths)
      paths.append(entry["image"])
    elif paths[dense[image_id]] != entry["image"]:
      # The reference keys images by image_id only; two files under one id would silently
      # pair captions with the wrong picture.
      raise ValueError(f"{path}: image_id {image_id!r} names both {paths[dense[image_id]]!r} "
                       f"and {entry['image']!r}")
    index[i] = dense[image_id]
    captions.append(pre_caption(entry["caption"], max_words))
  return TrainPairs(image_paths=tuple(paths), image_ids=tuple(dense), image_index=index,
                    captions=tuple(captions))


def read_eval_annotations(path: str, max_words: int) -> EvalSplit:
  """A val/test JSON (one entry per image with a caption list) as an `EvalSplit`."""
  entries = _read_json_list(path)
  paths, captions, txt2img, img2txt = [], [], [], []
  for i, entry in enumerate(entries):
    _require(entry, ("image", "caption"), path, i)
    if not isinstance(entry["caption"], list) or not entry["caption"]:
      raise ValueError(f"{path}: entry {i} needs a non-empty caption list (eval layout); a "
                       "train file has one string per entry")
    paths.append(entry["image"])
    first = len(captions)
    for caption in entry["caption"]:
      captions.append(pre_caption(caption, max_words))
      txt2img.append(i)
    img2txt.append(np.arange(first, len(captions), dtype=np.int32))
  return EvalSplit(image_paths=tuple(paths), captions=tuple(captions),
                   txt2img=np.asarray(txt2img, np.int32), img2txt=tuple(img2txt))


def load_image(path: str, image_size: int, dtype: str = "float32",
               mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD) -> np.ndarray:
  """One image as the references' test transform produces it, but HWC.

  `dtype='uint8'` stops after the bicubic resize (for jittable normalisation later);
  'float32' also divides by 255 and applies `mean`/`std`.
  """
  with Image.open(path) as im:
    im = im.convert("RGB").resize((image_size, image_size), Image.BICUBIC)
    pixels = np.asarray(im, np.uint8)
  if dtype == "uint8":
    return pixels
  if dtype != "float32":
    raise ValueError(f"dtype must be 'float32' or 'uint8', got {dtype!r}")
  x = pixels.astype(np.float32) / np.float32(255.0)
  return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


class CaptionDataset:
  """Train pairs plus val/test retrieval splits of one dataset, images loaded on request."""

  def __init__(self, name: str, ann_dir: str, image_root: str, image_size: int,
               train: TrainPairs, val: EvalSplit, test: EvalSplit,
               max_words: tuple[int, int], threads: int = 0, cache_bytes: int | None = None):
    self.name, self.ann_dir, self.image_root = name, ann_dir, image_root
    self.image_size = image_size
    self.train, self.val, self.test = train, val, test
    self.max_words = max_words  # (train, eval), recorded for embedding-cache keys
    self.threads, self.cache_bytes = int(threads), cache_bytes
    self._files: dict[str, Any] = {}

  def files(self, split: str):
    """The split's streaming image reader (`jdd.data.pipeline.ImageFiles`), one per split, so
    its decoded-image cache (small splits only) is shared by every stage of a run."""
    from jdd.data import pipeline
    if split not in self._files:
      data = self.split(split)
      cache = pipeline.DEFAULT_CACHE_BYTES if self.cache_bytes is None else self.cache_bytes
      self._files[split] = pipeline.ImageFiles(
          [os.path.join(self.image_root, p) for p in data.image_paths], self.image_size,
          threads=self.threads, cache_bytes=cache)
    return self._files[split]

  def split(self, split: str) -> TrainPairs | EvalSplit:
    if split not in SPLITS:
      raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return getattr(self, split)

  def image_path(self, split: str, index: int) -> str:
    return os.path.join(self.image_root, self.split(split).image_paths[index])

  def load_images(self, split: str, indices: Sequence[int] | np.ndarray | None = None,
                  dtype: str = "float32", num_threads: int = 4) -> np.ndarray:
    """NHWC images of `split` at `indices` (image indices, not caption indices; all if None).

    Decoding runs in a small thread pool (PIL releases the GIL while decoding and resizing).
    """
    n = self.split(split).num_images
    idx = np.arange(n) if indices is None else np.asarray(indices, np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
      raise IndexError(f"{split} image indices must be in [0, {n}), got {idx.min()}..{idx.max()}")
    paths = [self.image_path(split, int(i)) for i in idx]
    out_dtype = np.uint8 if dtype == "uint8" else np.float32
    out = np.empty((len(paths), self.image_size, self.image_size, 3), out_dtype)
    def fill(k):
      out[k] = load_image(paths[k], self.image_size, dtype)
    if len(paths) <= 1 or num_threads <= 1:
      for k in range(len(paths)):
        fill(k)
    else:
      with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
        list(pool.map(fill, range(len(paths))))
    return out

  def __repr__(self) -> str:
    return (f"CaptionDataset({self.name!r}, train={len(self.train)} captions/"
            f"{self.train.num_images} images, val={self.val.num_images} images/"
            f"{len(self.val.captions)} captions, test={self.test.num_images} images/"
            f"{len(self.test.captions)} captions)")


def _get(cfg: Any, name: str, default: Any = None) -> Any:
  value = cfg.get(name, default) if hasattr(cfg, "get") else getattr(cfg, name, default)
  # ConfigDict fields are typed, so configs write "unset" as 0 or "".
  return default if value is None or value == "" or (value == 0 and not isinstance(value, bool)) \
      else value


def resolve_max_words(name: str, reference: str | None = None,
                      max_words: int | None = None,
                      max_words_eval: int | None = None) -> tuple[int, int]:
  """(train, eval) word limits: explicit values win, else the named reference's, else 30/30."""
  if reference is not None:
    reference = reference.lower()
    if reference not in REFERENCE_MAX_WORDS:
      raise ValueError(f"reference must be one of {tuple(REFERENCE_MAX_WORDS)}, "
                       f"got {reference!r}")
    train, evaluation = REFERENCE_MAX_WORDS[reference].get(name, _DEFAULT_MAX_WORDS)
  else:
    train, evaluation = _DEFAULT_MAX_WORDS
  return int(max_words or train), int(max_words_eval or evaluation)


def annotation_paths(name: str, ann_dir: str) -> dict[str, str]:
  if name not in ANNOTATION_STEMS:
    raise ValueError(f"unknown caption dataset {name!r}; choose one of {tuple(ANNOTATION_STEMS)}")
  stem = ANNOTATION_STEMS[name]
  return {s: os.path.join(ann_dir, f"{stem}_{s}.json") for s in SPLITS}


def load_caption_dataset(cfg: Any) -> CaptionDataset:
  """The dataset named by `cfg.name` from `cfg.ann_dir` and `cfg.image_root` only.

  Config fields: `name` ('flickr30k', 'coco' or 'shapes_captions'), `ann_dir`, `image_root`,
  `image_size` (default 224), `reference` ('repblend' or 'lors': picks the word limits),
  `max_words` / `max_words_eval` (explicit limits, override the reference's), `threads`
  (image decoding threads, 0: one per CPU) and `cache_mb` (keep a split's decoded images
  when they fit in this many MiB; default 512, 0 never).

  Checks every annotation file, the image root and the first image of every split before
  reading anything large, and reports all problems in one `DatasetNotFoundError`.
  """
  name = _get(cfg, "name")
  if name not in ANNOTATION_STEMS:
    raise ValueError(f"cfg.name must be one of {tuple(ANNOTATION_STEMS)}, got {name!r}")
  ann_dir, image_root = _get(cfg, "ann_dir"), _get(cfg, "image_root")
  how = _HOW_TO_GET[name].format(ann_dir=ann_dir or "<ann_dir>",
                                 image_root=image_root or "<image_root>")
  unset = [f for f, v in (("ann_dir", ann_dir), ("image_root", image_root)) if not v]
  if unset:
    raise DatasetNotFoundError(f"caption dataset {name!r}: config field(s) {', '.join(unset)} "
                               f"not set (jdd reads paths only from the config). {how}")
  files = annotation_paths(name, ann_dir)
  missing = [p for p in files.values() if not os.path.isfile(p)]
  if not os.path.isdir(image_root):
    missing.append(image_root + os.sep)
  if missing:
    raise _not_found(name, missing, how)
  max_words = resolve_max_words(name, _get(cfg, "reference"), _get(cfg, "max_words"),
                                _get(cfg, "max_words_eval"))
  train = read_train_annotations(files["train"], max_words[0])
  val = read_eval_annotations(files["val"], max_words[1])
  test = read_eval_annotations(files["test"], max_words[1])
  # A wrong image_root (one level too deep or shallow) is the usual mistake: probe one image
  # per split so it fails here, not thousands of steps later.
  probes = [os.path.join(image_root, s.image_paths[0]) for s in (train, val, test)
            if s.image_paths]
  missing = [p for p in probes if not os.path.isfile(p)]
  if missing:
    raise _not_found(name, missing, how + " (image paths are image_root joined with the JSON "
                     "'image' field)")
  cache_mb = cfg.get("cache_mb", None) if hasattr(cfg, "get") else getattr(cfg, "cache_mb", None)
  return CaptionDataset(name, ann_dir, image_root, int(_get(cfg, "image_size",
                                                            REFERENCE_IMAGE_SIZE)),
                        train, val, test, max_words, threads=int(_get(cfg, "threads", 0)),
                        cache_bytes=None if cache_mb is None else int(cache_mb) << 20)


def _not_found(name: str, missing: list[str], how: str) -> DatasetNotFoundError:
  listing = "\n".join(f"  - {p}" for p in missing)
  return DatasetNotFoundError(f"caption dataset {name!r}: missing\n{listing}\nHow to get it: "
                              f"{how}")
