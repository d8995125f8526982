"""The portable export: any jdd export as a framework-neutral folder, and back.

Why: the references' sets cannot be moved between codebases (LoRS and RepBlend save torch
pickles of BERT embeddings with no readable caption, FADRM's soft labels need a patched torch
to load, EDGE's are unreleased). This folder needs nothing but a PNG reader and NumPy's `.npy`
reader (a documented header and the raw array bytes); docs/export_format.md specifies it and
shows a NumPy and a PyTorch loader, both run by tests/test_judge.py.

    format.json          what the folder holds: kind, method, dataset, item count, classes,
                         image shape, normalisation, and how to read every file
    images/000000.png    one PNG per item: the uint8 pixels students train on (classification),
                         or the learned images de-normalised, clipped and rounded (image-text)
    labels.txt           classification: the class of image i on line i
    captions.txt         caption sets: caption i on line i
    nearest_captions.json embedding-space sets (texts.npy): each synthetic text's 3 nearest
                         real training captions by cosine, for a person to read (needs the
                         run's workdir: its config and caption embeddings)
    soft_labels.json     stored soft labels: how the array is indexed and the keys and settings
                         that regenerate its crops, flips and mixes
    learned.json         image-text: the learned student learning rates and the similarity's
                         alpha (S itself is arrays/similarity*.npy)
    arrays/<name>.npy    every array of the jdd export, byte for byte (float images, labels,
                         soft labels, text embeddings, similarity factors, compensators)
    files/<name>         the export's other files as they are (grids, lrs.json, records)
    jdd_manifest.json    the source export's manifest (its byte table)
    manifest.json        this folder's byte table (bytes + sha256 of every file), written last

`to_jdd_export` rebuilds a jdd export from the folder (images and labels from the PNGs and
labels.txt, the rest from arrays/ and files/), so a round trip gives the same arrays and the
same byte counts in the manifest.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
from PIL import Image

from jdd import checkpoint, export
from jdd.errors import ConfigError

FORMAT = "dd-portable/1"


def _png(path: str, image: np.ndarray) -> None:
  Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(path)


def read_png(path: str) -> np.ndarray:
  return np.atleast_3d(np.asarray(Image.open(path)))


def _key_data(seed: int) -> dict:
  """The uint32 words of every purpose key of `seed` (jdd.loop.make_keys)."""
  import jax
  from jdd.loop import make_keys
  return {k: np.asarray(jax.random.key_data(v)).tolist() for k, v in make_keys(seed).items()}


def _nearest_captions(workdir: str | None, texts: np.ndarray, k: int = 3) -> dict | None:
  if not workdir or not os.path.exists(os.path.join(workdir, "config.json")):
    return None
  import glob
  import ml_collections
  from jdd.stages import image_text
  config = ml_collections.ConfigDict(checkpoint.read_json(os.path.join(workdir, "config.json")))
  cache = config.text_encoder.cache_dir or os.path.join(workdir, "text_cache")
  found = sorted(glob.glob(os.path.join(cache, f"{config.dataset.name}_train-*.npy")))
  if not found:
    return None
  real = np.load(found[-1])
  captions = list(image_text.load_data(config).train.captions)
  unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
  sims = unit(np.asarray(texts, np.float32)) @ unit(real.astype(np.float32)).T
  top = np.argsort(-sims, axis=1)[:, :k]
  return {"how": f"cosine similarity of each synthetic text embedding to the {len(real)} real "
                 "training caption embeddings of the run's text encoder; the 3 nearest",
          "nearest": [[{"caption": captions[j], "cosine": round(float(sims[i, j]), 4)}
                       for j in row] for i, row in enumerate(top)]}


def write(src: str, out: str, workdir: str | None = None) -> dict:
  """Writes the export at `src` (a jdd W/export) as a portable folder `out`; returns its
  manifest. `workdir` (the run's) adds the nearest real captions of embedding-space sets."""
  export.recover(src)
  problems = export.verify(src)
  if problems:
    raise ConfigError(f"{src} is not a complete jdd export: {problems[:3]}")
  manifest = export.read_manifest(src)
  if os.path.exists(out):
    raise ConfigError(f"--out {out} exists; choose a new folder")
  tmp = out + ".tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(os.path.join(tmp, "arrays"))
  table = manifest["export"]["files"]
  for name in table:
    dest = os.path.join(tmp, "arrays" if name.endswith(".npy") and "/" not in name else "files",
                        name)
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    shutil.copyfile(os.path.join(src, name), dest)
  shutil.copyfile(os.path.join(src, export.MANIFEST), os.path.join(tmp, "jdd_manifest.json"))
  config = manifest.get("config") or {}
  fmt = {"format": FORMAT, "method": manifest.get("method"),
         "dataset": manifest.get("dataset") or config.get("dataset", {}).get("name"),
         "source": {"format": manifest["export"]["format"], "jdd_version":
                    manifest.get("jdd_version")},
         "arrays": sorted(n for n in table if n.endswith(".npy") and "/" not in n)}
  os.makedirs(os.path.join(tmp, "images"))
  if "texts.npy" in table:
    _write_pairs(src, tmp, fmt, manifest, workdir)
  elif "images.npy" in table:
    _write_classification(src, tmp, fmt, manifest)
  else:
    _write_captions(src, tmp, fmt, manifest)
  export.save_json(tmp, "format.json", fmt)
  entries = export.file_entries(tmp)
  mf = {"format": FORMAT, "files": entries,
        "total_bytes": int(sum(e["bytes"] for e in entries.values()))}
  export.save_json(tmp, "manifest.json", mf)
  os.rename(tmp, out)
  return mf


def _write_classification(src, tmp, fmt, manifest) -> None:
  images = np.load(os.path.join(src, "images.npy"))
  labels = np.load(os.path.join(src, "labels.npy"))
  for i, im in enumerate(images):
    _png(os.path.join(tmp, "images", f"{i:06d}.png"), im)
  with open(os.path.join(tmp, "labels.txt"), "w") as f:
    f.write("".join(f"{int(y)}\n" for y in labels))
  config = manifest.get("config") or {}
  fmt.update(kind="classification", num_items=int(len(images)),
             num_classes=manifest.get("num_classes"), ipc=manifest.get("ipc"),
             image_shape=list(images.shape[1:]), images_dtype=str(images.dtype),
             labels_dtype=str(labels.dtype), normalisation=manifest.get("normalisation"),
             read={"images/%06d.png": "uint8 pixels (grayscale PNG: one channel), item order",
                   "labels.txt": "one integer class per line, item order"})
  if "soft_labels.npy" in manifest["export"]["files"]:
    soft = np.load(os.path.join(src, "soft_labels.npy"), mmap_mode="r")
    seed = int(config.get("seed", 0))
    export.save_json(tmp, "soft_labels.json", {
        "array": "arrays/soft_labels.npy", "shape": list(soft.shape), "dtype": str(soft.dtype),
        "index": "[epoch, batch, row, class]: the teachers' logits on row `row` of batch "
                 "`batch` of epoch `epoch` of the student's training, after its crop, flip and "
                 "mix (FKD); the rows of batch k of epoch e are the items "
                 "jdd.labels.fkd.batch_indices(keys['relabel_order'], e, k, ...)",
        "description": manifest.get("soft_labels"),
        "seed": seed, "keys": _key_data(seed),
        "keys_how": "jax.random.fold_in(jax.random.key(seed), index of the purpose in "
                    "jdd.loop.KEY_NAMES), as uint32 key data; crops, flips and mixes of "
                    "(epoch, batch) derive from keys['relabel_aug'], batch order from "
                    "keys['relabel_order']",
        "relabel": config.get("relabel"),
        "evaluate": {k: (config.get("evaluate") or {}).get(k)
                     for k in ("epochs", "batch_size", "temperature")}})


def _write_pairs(src, tmp, fmt, manifest, workdir) -> None:
  table = manifest["export"]["files"]
  uint8 = (np.load(os.path.join(src, "images_uint8.npy")) if "images_uint8.npy" in table
           else None)
  texts = np.load(os.path.join(src, "texts.npy"))
  if uint8 is not None:
    for i, im in enumerate(uint8):
      _png(os.path.join(tmp, "images", f"{i:06d}.png"), im)
  lrs = manifest.get("lrs", {})
  export.save_json(tmp, "learned.json", {"lr_image": lrs.get("lr_image"),
                                         "lr_text": lrs.get("lr_text"),
                                         "sim_alpha": manifest.get("sim_alpha")})
  near = _nearest_captions(workdir, texts)
  if near:
    export.save_json(tmp, "nearest_captions.json", near)
  fmt.update(kind="image_text", num_items=int(len(texts)), text_dim=int(texts.shape[-1]),
             image_shape=list(uint8.shape[1:]) if uint8 is not None else None,
             normalisation={"mean": [0.48145466, 0.4578275, 0.40821073],
                            "std": [0.26862954, 0.26130258, 0.27577711]},
             nearest_captions=bool(near),
             read={"arrays/images.npy": "float32 (N, H, W, 3), CLIP-normalised: what was learned",
                   "images/%06d.png": "the same, de-normalised, clipped and rounded",
                   "arrays/texts.npy": "float32 (N, D) text-encoder embeddings",
                   "arrays/similarity.npy": "(N, N) learned similarity S from its factors "
                                            "(similarity_matrix.npy when S is learned whole; "
                                            "neither: identity)",
                   "learned.json": "learned student learning rates per modality"})


def _write_captions(src, tmp, fmt, manifest) -> None:
  from jdd.judge import sets
  s = sets.read_captions(src)
  for i, im in enumerate(s.images):
    _png(os.path.join(tmp, "images", f"{i:06d}.png"), im)
  with open(os.path.join(tmp, "captions.txt"), "w") as f:
    f.write("".join(c.replace("\n", " ") + "\n" for c in s.captions))
  fmt.update(kind="captions", num_items=len(s.captions), image_shape=list(s.images.shape[1:]),
             read={"images/%06d.png": "uint8 RGB", "captions.txt": "caption i on line i"})


# ------------------------------------------------------------------------------ reading
def read(path: str):
  """A portable folder as the set `jdd eval` evaluates (`jdd.judge.sets`)."""
  from jdd.judge import sets
  fmt = json.load(open(os.path.join(path, "format.json")))
  if fmt.get("format") != FORMAT:
    raise ConfigError(f"{path}/format.json: format {fmt.get('format')!r}, expected {FORMAT}")
  n = int(fmt["num_items"])
  if fmt["kind"] == "classification":
    images = np.stack([read_png(os.path.join(path, "images", f"{i:06d}.png")) for i in range(n)])
    labels = np.loadtxt(os.path.join(path, "labels.txt"), dtype=np.int32, ndmin=1)
    soft = os.path.join(path, "arrays", "soft_labels.npy")
    src = json.load(open(os.path.join(path, "jdd_manifest.json")))
    return sets.ClassSet(images.astype(np.uint8), labels, "portable", path,
                         label_file=soft if os.path.exists(soft) else None,
                         config=src.get("config"), budget_ipc=src.get("ipc"))
  if fmt["kind"] == "image_text":
    learned = json.load(open(os.path.join(path, "learned.json")))
    return sets.PairSet(np.load(os.path.join(path, "arrays", "images.npy")), "portable", path,
                        texts=np.load(os.path.join(path, "arrays", "texts.npy")),
                        similarity=sets.similarity(os.path.join(path, "arrays")),
                        lr_image=learned.get("lr_image"), lr_text=learned.get("lr_text"))
  images = np.stack([read_png(os.path.join(path, "images", f"{i:06d}.png")) for i in range(n)])
  captions = open(os.path.join(path, "captions.txt")).read().splitlines()
  return sets.PairSet(images, "portable", path, captions=captions, extra={"uint8": True})


def to_jdd_export(path: str, workdir: str) -> dict:
  """Rebuilds W/export from a portable folder (module docstring); returns its manifest."""
  problems = _verify(path)
  if problems:
    raise ConfigError(f"{path}: {problems[:3]}")
  fmt = json.load(open(os.path.join(path, "format.json")))
  source = json.load(open(os.path.join(path, "jdd_manifest.json")))
  n = int(fmt["num_items"])
  with export.staged(workdir) as out:
    for name in fmt["arrays"]:
      shutil.copyfile(os.path.join(path, "arrays", name), os.path.join(out, name))
    if fmt["kind"] == "classification":
      images = np.stack([read_png(os.path.join(path, "images", f"{i:06d}.png"))
                         for i in range(n)]).astype(fmt["images_dtype"])
      labels = np.loadtxt(os.path.join(path, "labels.txt"), dtype=fmt["labels_dtype"], ndmin=1)
      export.save_npy(out, "images", images)
      export.save_npy(out, "labels", labels)
    files = os.path.join(path, "files")
    for folder, _, names in os.walk(files):
      for name in names:
        rel = os.path.relpath(os.path.join(folder, name), files)
        os.makedirs(os.path.dirname(os.path.join(out, rel)), exist_ok=True)
        shutil.copyfile(os.path.join(folder, name), os.path.join(out, rel))
    out.manifest = lambda entries: {k: v for k, v in source.items() if k != "export"}
  return export.read_manifest(export.export_dir(workdir))


def _verify(path: str) -> list[str]:
  if not os.path.exists(os.path.join(path, "manifest.json")):
    return ["manifest.json is missing (an unfinished copy?)"]
  table = json.load(open(os.path.join(path, "manifest.json")))["files"]
  on_disk = {k: v for k, v in export.file_entries(path).items() if k != "manifest.json"}
  return [f"{k}: differs from the manifest" for k in sorted(set(table) | set(on_disk))
          if table.get(k) != on_disk.get(k)]
