"""Distilled sets jdd did not make, read into one of two shapes: a classification set
(uint8 images + class labels) or a set of image-text pairs.

Why: the field's sets live in each reference's own layout, and comparing them needs one reader
per layout in front of one protocol (`jdd eval`, docs/evaluation.md). The formats, detected from
the path or named with `--format`:

    jdd_export    jdd's own W/export/ (manifest.json + .npy files): a classification set
                  (images.npy uint8, labels.npy, stored soft labels) or image-text pairs
                  (images.npy CLIP-normalised float32, texts.npy embeddings, similarity, lrs.json)
    portable      the framework-neutral folder `jdd export` writes (docs/export_format.md)
    decoupled     the decoupled references' image folder: new<c>/class<c>_id<i>.<ext>
                  (SRe2L, CDA, INFER, FADRM recover output; SRe2L writes new%03d and
                  class%03d_id%03d.jpg); no label file: soft labels come from a teacher
    reference_pt  the trajectory-matching references' distilled_<it>.pt (LoRS; RepBlend keeps
                  its layout): a torch.save'd dict with 'image' (N, 3, H, W, CLIP-normalised),
                  'text' (N, D embeddings), 'similarity_mat' (N, N), optionally
                  'similarity_params' [a, L, R], 'syn_lr_img', 'syn_lr_txt'. MTT-VL's files
                  have no similarity (identity is used). Read with torch, an optional extra.
    image_folder  one sub-folder of images per class (sub-folder names = class names, or
                  class indices)
    captions      an image-caption set: images plus one JSON list of {"image": relative path,
                  "caption": str or [str, ...]} (EDGE's export, any caption set)

Every reader refuses what it cannot read with a message that says what to fix.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import re

import numpy as np
from PIL import Image

from jdd.errors import ConfigError

FORMATS = ("jdd_export", "portable", "decoupled", "reference_pt", "image_folder", "captions")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
DECOUPLED_DIR = re.compile(r"^new(\d+)$")
DECOUPLED_FILE = re.compile(r"^class(\d+)_id(\d+)\.\w+$")


@dataclasses.dataclass
class ClassSet:
  """A classification set: uint8 (N, H, W, C) images, class-major, and int32 labels."""
  images: np.ndarray
  labels: np.ndarray
  format: str
  path: str
  label_file: str | None = None      # stored soft labels that came with the set (jdd export)
  config: dict | None = None         # the config that made the set, when it says
  notes: list = dataclasses.field(default_factory=list)
  budget_ipc: int | None = None      # images per class the set's budget pays for, when it says
                                     # (INFER: 10 real images + compensators -> 35 instances)

  @property
  def ipc(self) -> int:
    """The random subsets' images per class: the set's budget when it states one, else its
    images per class (which must then be equal)."""
    if self.budget_ipc:
      return int(self.budget_ipc)
    counts = np.bincount(self.labels)
    if len(set(counts[counts > 0].tolist())) != 1:
      raise ConfigError(f"{self.path}: classes hold {counts.tolist()} images; the random-subset "
                        "comparison needs the same number per class")
    return int(counts.max())


@dataclasses.dataclass
class PairSet:
  """Image-text pairs: CLIP-normalised float32 (N, H, W, 3) images, and either text embeddings
  (N, D) or captions to encode; the learned similarity (N, N) and student learning rates when
  the method learned them."""
  images: np.ndarray
  format: str
  path: str
  texts: np.ndarray | None = None
  captions: list | None = None
  similarity: np.ndarray | None = None
  lr_image: float | None = None
  lr_text: float | None = None
  extra: dict = dataclasses.field(default_factory=dict)
  notes: list = dataclasses.field(default_factory=list)

  def __len__(self) -> int:
    return int(len(self.images))


def detect(path: str) -> str:
  """The format of `path` (module docstring), or a ConfigError listing what was looked for."""
  if os.path.isfile(path):
    if path.endswith((".pt", ".pth")):
      return "reference_pt"
    raise ConfigError(f"--set {path}: a file must be a reference .pt; a set is otherwise a folder")
  if not os.path.isdir(path):
    raise ConfigError(f"--set {path} does not exist")
  if os.path.isfile(os.path.join(path, "format.json")):
    return "portable"
  if os.path.isfile(os.path.join(path, "manifest.json")):
    return "jdd_export"
  subdirs = [d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d))]
  if subdirs and all(DECOUPLED_DIR.match(d) for d in subdirs):
    return "decoupled"
  if glob.glob(os.path.join(path, "*.json")):
    return "captions"
  if subdirs:
    return "image_folder"
  raise ConfigError(f"--set {path}: no known layout (manifest.json, format.json, new<c>/ "
                    "folders, a captions .json, or one sub-folder per class); name it with "
                    f"--format, one of {list(FORMATS)}")


def dataset_of(path: str, fmt: str) -> str | None:
  """The dataset a jdd export (or portable folder) names, if it does."""
  name = "jdd_manifest.json" if fmt == "portable" else "manifest.json"
  manifest = json.load(open(os.path.join(path, name)))
  return manifest.get("dataset") or (manifest.get("config") or {}).get("dataset", {}).get("name")


def read(path: str, fmt: str | None = None, *, image_shape=None, class_names=()):
  """The set at `path` as a ClassSet or a PairSet. `image_shape` (H, W, C) is the dataset's:
  classification images are converted to its channels and resized to its size (noted)."""
  fmt = fmt or detect(path)
  if fmt not in FORMATS:
    raise ConfigError(f"--format {fmt!r}: use one of {list(FORMATS)}")
  if fmt == "reference_pt":
    return read_reference_pt(path)
  if fmt == "jdd_export":
    return read_jdd_export(path)
  if fmt == "portable":
    from jdd.judge import portable
    return portable.read(path)
  if fmt == "captions":
    return read_captions(path)
  if fmt == "decoupled":
    return read_decoupled(path, image_shape)
  return read_image_folder(path, image_shape, class_names)


# ------------------------------------------------------------------------ classification
def load_image(path: str, image_shape, notes: list | None = None) -> np.ndarray:
  """uint8 (H, W, C) in the dataset's shape: channels converted, size resized (bilinear)."""
  img = Image.open(path)
  if image_shape is None:
    return np.asarray(img.convert("RGB"))
  h, w, c = image_shape
  img = img.convert("L" if c == 1 else "RGB")
  if img.size != (w, h):
    if notes is not None and not any(n.startswith("resized") for n in notes):
      notes.append(f"resized from {img.size[1]}x{img.size[0]} to {h}x{w} (bilinear)")
    img = img.resize((w, h), Image.BILINEAR)
  arr = np.asarray(img, np.uint8)
  return arr[..., None] if arr.ndim == 2 else arr


def _class_set(files: list[tuple[int, str]], fmt: str, path: str, image_shape) -> ClassSet:
  if not files:
    raise ConfigError(f"--set {path}: no images ({', '.join(IMAGE_EXTS)}) found")
  files = sorted(files)   # class-major, as jdd's sets are
  notes = []
  images = np.stack([load_image(f, image_shape, notes) for _, f in files])
  return ClassSet(images, np.asarray([c for c, _ in files], np.int32), fmt, path, notes=notes)


def read_decoupled(path: str, image_shape=None) -> ClassSet:
  files = []
  for d in sorted(os.listdir(path)):
    m = DECOUPLED_DIR.match(d)
    if not m:
      continue
    for name in sorted(os.listdir(os.path.join(path, d))):
      f = DECOUPLED_FILE.match(name)
      if not name.lower().endswith(IMAGE_EXTS):
        continue
      if not f or int(f.group(1)) != int(m.group(1)):
        raise ConfigError(f"{os.path.join(path, d, name)}: in {d}/ the files must be named "
                          f"class{int(m.group(1)):03d}_id<i>.<ext> (the references' layout)")
      files.append((int(m.group(1)), os.path.join(path, d, name)))
  return _class_set(files, "decoupled", path, image_shape)


def read_image_folder(path: str, image_shape=None, class_names=()) -> ClassSet:
  subdirs = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
  names = [str(n) for n in class_names]
  if names and all(d in names for d in subdirs):
    index = {d: names.index(d) for d in subdirs}
  elif all(d.isdigit() for d in subdirs):
    index = {d: int(d) for d in subdirs}
  else:
    raise ConfigError(f"--set {path}: sub-folders {subdirs[:5]}... are neither the dataset's "
                      f"class names {names[:5]}... nor class indices; rename them")
  files = [(index[d], os.path.join(path, d, f)) for d in subdirs
           for f in sorted(os.listdir(os.path.join(path, d))) if f.lower().endswith(IMAGE_EXTS)]
  return _class_set(files, "image_folder", path, image_shape)


def read_jdd_export(path: str):
  manifest = json.load(open(os.path.join(path, "manifest.json")))
  if os.path.exists(os.path.join(path, "texts.npy")):
    lrs = json.load(open(os.path.join(path, "lrs.json")))
    return PairSet(np.load(os.path.join(path, "images.npy")), "jdd_export", path,
                   texts=np.load(os.path.join(path, "texts.npy")),
                   similarity=similarity(path),
                   lr_image=lrs.get("lr_image"), lr_text=lrs.get("lr_text"),
                   extra={"method": manifest.get("method")})
  if os.path.isdir(os.path.join(path, "annotations")):
    return read_captions(path)
  if not os.path.exists(os.path.join(path, "images.npy")):
    raise ConfigError(f"{path}/manifest.json is a jdd export without images.npy or texts.npy")
  label_file = os.path.join(path, "soft_labels.npy")
  return ClassSet(np.load(os.path.join(path, "images.npy")),
                  np.load(os.path.join(path, "labels.npy")).astype(np.int32), "jdd_export", path,
                  label_file=label_file if os.path.exists(label_file) else None,
                  config=manifest.get("config"), budget_ipc=manifest.get("ipc"))


def similarity(folder: str) -> np.ndarray | None:
  """S of an image-text export: similarity.npy (from low-rank factors), or the learned full
  matrix (similarity_matrix.npy); None (identity) when the method learns none."""
  for name in ("similarity.npy", "similarity_matrix.npy"):
    if os.path.exists(os.path.join(folder, name)):
      return np.load(os.path.join(folder, name))
  return None


# ------------------------------------------------------------------------------ image-text
def read_reference_pt(path: str) -> PairSet:
  """A LoRS / RepBlend / MTT-VL `distilled_<it>.pt` (module docstring)."""
  try:
    import torch
  except ImportError as e:
    raise ConfigError(f"--set {path}: reading a reference .pt needs PyTorch: pip install torch "
                      "(CPU wheels suffice; jdd uses it only to read the file)") from e
  ckpt = torch.load(path, map_location="cpu", weights_only=True)
  if not isinstance(ckpt, dict) or "image" not in ckpt or "text" not in ckpt:
    keys = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
    raise ConfigError(f"--set {path}: a reference .pt holds a dict with 'image' and 'text' "
                      f"(LoRS / RepBlend distilled_<it>.pt); this one has {keys}")
  as_np = lambda t: t.detach().cpu().float().numpy()
  images = as_np(ckpt["image"])
  if images.ndim != 4 or images.shape[1] != 3:
    raise ConfigError(f"--set {path}: 'image' must be (N, 3, H, W), got {images.shape}")
  sim = ckpt.get("similarity_mat")
  lr = lambda k: None if ckpt.get(k) is None else float(as_np(torch.as_tensor(ckpt[k])))
  extra = {"keys": sorted(ckpt)}
  if "similarity_params" in ckpt:
    extra["similarity_params"] = [as_np(p) for p in ckpt["similarity_params"]]
  return PairSet(np.ascontiguousarray(images.transpose(0, 2, 3, 1)), "reference_pt", path,
                 texts=as_np(ckpt["text"]), similarity=None if sim is None else as_np(sim),
                 lr_image=lr("syn_lr_img"), lr_text=lr("syn_lr_txt"), extra=extra,
                 notes=[] if sim is not None else ["no similarity_mat: identity (MTT-VL)"])


def read_captions(path: str) -> PairSet:
  """Images + a JSON list of {"image", "caption"} (the first caption of a list is the pair's;
  the file may sit in the folder or in annotations/). Images are read at their size as
  uint8 here and resized and normalised for the evaluator by `jdd eval`."""
  jsons = sorted(glob.glob(os.path.join(path, "*.json")) +
                 glob.glob(os.path.join(path, "annotations", "*.json")))
  jsons = [j for j in jsons if os.path.basename(j) not in ("manifest.json", "format.json")]
  if len(jsons) != 1:
    raise ConfigError(f"--set {path}: an image-caption set has exactly one captions .json "
                      f"(in the folder or annotations/), found {jsons}")
  entries = json.load(open(jsons[0]))
  if not isinstance(entries, list) or not all(isinstance(e, dict) and "image" in e
                                              and "caption" in e for e in entries):
    raise ConfigError(f"{jsons[0]}: must be a list of {{'image': path, 'caption': str}}")
  captions = [e["caption"][0] if isinstance(e["caption"], list) else e["caption"]
              for e in entries]
  base = os.path.dirname(jsons[0])
  if os.path.basename(base) == "annotations":
    base = os.path.dirname(base)
  paths = [os.path.join(base, e["image"]) for e in entries]
  missing = [p for p in paths if not os.path.exists(p)]
  if missing:
    raise ConfigError(f"{jsons[0]}: {len(missing)} images missing, e.g. {missing[0]}")
  images = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
  return PairSet(np.stack(images), "captions", path, captions=captions,
                 extra={"annotation": jsons[0], "uint8": True})
