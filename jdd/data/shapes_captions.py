"""shapes_captions: an image-caption retrieval dataset that jdd renders itself, offline.

Flickr30K and COCO cannot be downloaded here, yet every image-text method (expert training,
distillation, retrieval evaluation) needs captioned images to run end to end. This module draws
scenes of 1-3 coloured shapes and writes five captions per image in exactly the Karpathy JSON
layout of `jdd.data.captions` (train: one entry per caption with `image_id`; val/test: one entry
per image with a caption list), so the same loader reads it (`name='shapes_captions'`).

Design for a useful difficulty: retrieval must be learnable (far above chance) but not
trivially perfect. So a scene has 6 colours x 5 shapes x 2 sizes x positions x 3 backgrounds,
colours and shapes repeat across images, and most captions mention only some attributes ("a
red shape", "two objects on a black background", "a circle to the left of a square"). Many
images therefore satisfy a given caption; `ambiguity_ceiling` measures the recall an ideal
retriever would reach knowing exactly which captions each image satisfies, an upper bound
for any model: on the default 200 test images (seed 0) TR@1/5/10 = 80/96/100 % and
IR@1/5/10 = 32/59/73 %, against chance of 0.5/2.5/5 %.

Every caption is generated from a structured claim (objects with partial attributes, count,
background, one spatial relation) stored in `scenes.json`, which is what the ceiling checks.
Generation is deterministic: image `i` of a split depends only on (seed, split, i), so growing a
split keeps the existing images. The output directory name encodes every argument, the whole
tree is built in a temporary directory with a `DONE` marker written last and then renamed into
place, and a rerun with the same arguments reuses it.

No reference code: this dataset is jdd's own.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

VERSION = 1
STEM = "shapes_captions"
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
DEFAULT_SIZES = {"train": 2000, "val": 200, "test": 200}
CAPTIONS_PER_IMAGE = 5

COLOURS = {
    "red": (215, 40, 40), "green": (40, 165, 60), "blue": (45, 85, 215),
    "yellow": (235, 205, 40), "purple": (135, 60, 175), "orange": (245, 135, 30),
}
COLOUR_WORDS = {"red": ["red"], "green": ["green"], "blue": ["blue"], "yellow": ["yellow"],
                "purple": ["purple", "violet"], "orange": ["orange"]}
SHAPES = ("circle", "square", "triangle", "diamond", "cross")
SHAPE_WORDS = {"circle": ["circle", "disk", "round shape", "dot"],
               "square": ["square", "box", "block"], "triangle": ["triangle"],
               "diamond": ["diamond", "rhombus"], "cross": ["cross", "plus sign"]}
GENERIC_WORDS = ["shape", "object", "figure", "thing"]
SIZES = {"small": (0.09, 0.13), "large": (0.17, 0.23)}
SIZE_WORDS = {"small": ["small", "little", "tiny"], "large": ["large", "big"]}
BACKGROUNDS = {"white": (245, 245, 240), "gray": (125, 125, 125), "black": (20, 20, 25)}
BACKGROUND_WORDS = {"white": ["white", "light"], "gray": ["gray", "grey"],
                    "black": ["black", "dark"]}
COUNT_WORDS = {1: ["one", "a single"], 2: ["two"], 3: ["three"]}
RELATIONS = ("left of", "right of", "above", "below")
RELATION_MARGIN = 0.05  # centres must differ by this much (image fraction) along the axis
_SUPERSAMPLE = 4


# ----------------------------------------------------------------------------- scenes
def sample_scene(rng: np.random.Generator) -> dict:
  """1-3 non-overlapping shapes on a background, coordinates as fractions of the image."""
  background = str(rng.choice(list(BACKGROUNDS)))
  n = int(rng.choice([1, 2, 3], p=[0.3, 0.4, 0.3]))
  while True:
    objects = []
    for _ in range(n):
      size = str(rng.choice(list(SIZES)))
      r = float(rng.uniform(*SIZES[size]))
      for _ in range(100):
        x, y = (float(v) for v in rng.uniform(r + 0.02, 1 - r - 0.02, size=2))
        if all(math.hypot(x - o["x"], y - o["y"]) >= r + o["r"] + 0.03 for o in objects):
          break
      else:
        break  # no room: resample the whole scene
      jitter = rng.integers(-15, 16, size=3)
      objects.append({"colour": str(rng.choice(list(COLOURS))), "shape": str(rng.choice(SHAPES)),
                      "size": size, "x": round(x, 4), "y": round(y, 4), "r": round(r, 4),
                      "jitter": [int(j) for j in jitter]})
    if len(objects) == n:
      return {"background": background, "objects": objects}


def render_scene(scene: dict, image_size: int) -> Image.Image:
  """Draw at 4x resolution and box-filter down, for anti-aliased but deterministic edges."""
  big = image_size * _SUPERSAMPLE
  im = Image.new("RGB", (big, big), BACKGROUNDS[scene["background"]])
  draw = ImageDraw.Draw(im)
  for o in scene["objects"]:
    colour = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(COLOURS[o["colour"]], o["jitter"]))
    cx, cy, r = o["x"] * big, o["y"] * big, o["r"] * big
    if o["shape"] == "circle":
      draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif o["shape"] == "square":
      h = 0.85 * r
      draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=colour)
    elif o["shape"] == "triangle":
      draw.polygon([(cx, cy - r), (cx - 0.95 * r, cy + 0.75 * r), (cx + 0.95 * r, cy + 0.75 * r)],
                   fill=colour)
    elif o["shape"] == "diamond":
      draw.polygon([(cx, cy - r), (cx + 0.8 * r, cy), (cx, cy + r), (cx - 0.8 * r, cy)],
                   fill=colour)
    elif o["shape"] == "cross":
      w = 0.33 * r
      draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=colour)
      draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=colour)
    else:
      raise ValueError(f"unknown shape {o['shape']!r}")
  return im.resize((image_size, image_size), Image.BOX)


def relation(a: dict, b: dict) -> str | None:
  """The relation of object a to b along their dominant axis, if clear enough to state."""
  dx, dy = b["x"] - a["x"], b["y"] - a["y"]
  if abs(dx) >= abs(dy):
    return None if abs(dx) < RELATION_MARGIN else ("left of" if dx > 0 else "right of")
  return None if abs(dy) < RELATION_MARGIN else ("above" if dy > 0 else "below")


def _holds(rel: str, a: dict, b: dict) -> bool:
  """Whether 'a <rel> b' is true (lenient: any clear offset along that axis, not dominance)."""
  dx, dy = b["x"] - a["x"], b["y"] - a["y"]
  return {"left of": dx > RELATION_MARGIN, "right of": -dx > RELATION_MARGIN,
          "above": dy > RELATION_MARGIN, "below": -dy > RELATION_MARGIN}[rel]


# ----------------------------------------------------------------------------- captions
def _pick(rng: np.random.Generator, words: Sequence[str]) -> str:
  return str(words[int(rng.integers(len(words)))])


def _article(phrase: str) -> str:
  return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _noun_phrase(rng, obj: dict, colour: bool, shape: bool, size: bool) -> tuple[str, dict]:
  """'a big red circle' style phrase mentioning only the chosen attributes, and its claim."""
  words = []
  if size:
    words.append(_pick(rng, SIZE_WORDS[obj["size"]]))
  if colour:
    words.append(_pick(rng, COLOUR_WORDS[obj["colour"]]))
  words.append(_pick(rng, SHAPE_WORDS[obj["shape"]]) if shape else _pick(rng, GENERIC_WORDS))
  claim = {"colour": obj["colour"] if colour else None, "shape": obj["shape"] if shape else None,
           "size": obj["size"] if size else None}
  return _article(" ".join(words)), claim


def _partial_phrase(rng, obj: dict) -> tuple[str, dict]:
  colour, shape = rng.random() < 0.75, rng.random() < 0.75
  if not (colour or shape):
    colour = True
  return _noun_phrase(rng, obj, colour, shape, rng.random() < 0.3)


def _caption(rng, scene: dict) -> tuple[str, dict] | None:
  """One caption of a random template and the claim it makes, or None if it does not apply."""
  objs, bg = scene["objects"], scene["background"]
  n = len(objs)
  claim: dict[str, Any] = {"objects": [], "count": None, "background": None, "relation": None}
  kind = str(rng.choice(["single", "count", "relation", "list", "background"],
                        p=[0.25, 0.15, 0.25, 0.15, 0.2]))
  if kind == "single":
    text, desc = _partial_phrase(rng, objs[int(rng.integers(n))])
    prefix = _pick(rng, ["", "a picture of ", "an image with ", "there is ", "this shows "])
    claim["objects"] = [desc]
    return prefix + text, claim
  if kind == "count":
    claim["count"] = n
    noun = _pick(rng, ["shapes", "objects", "figures"]) if n > 1 else \
        _pick(rng, ["shape", "object", "figure"])
    text = f"{_pick(rng, COUNT_WORDS[n])} {noun}"
    if rng.random() < 0.5:
      phrase, desc = _partial_phrase(rng, objs[int(rng.integers(n))])
      claim["objects"] = [desc]
      text = f"{text}, one of them {phrase}" if n > 1 else \
          f"{_pick(rng, COUNT_WORDS[1])} {phrase.split(' ', 1)[1]}"
    elif rng.random() < 0.5:
      claim["background"] = bg
      text += f" on a {_pick(rng, BACKGROUND_WORDS[bg])} background"
    return text, claim
  if kind == "relation":
    if n < 2:
      return None
    i, j = (int(v) for v in rng.permutation(n)[:2])
    rel = relation(objs[i], objs[j])
    if rel is None:
      return None
    (ta, da), (tb, db) = _partial_phrase(rng, objs[i]), _partial_phrase(rng, objs[j])
    claim["objects"], claim["relation"] = [da, db], [0, 1, rel]
    phrase = {"left of": ["to the left of", "left of"], "right of": ["to the right of",
                                                                    "right of"],
              "above": ["above", "over"], "below": ["below", "under", "beneath"]}[rel]
    return f"{ta} {_pick(rng, phrase)} {tb}", claim
  if kind == "list":
    if n < 2:
      return None
    order = sorted(range(n), key=lambda k: objs[k]["x"])
    phrases = []
    for k in order:
      text, desc = _noun_phrase(rng, objs[k], True, True, rng.random() < 0.25)
      phrases.append(text)
      claim["objects"].append(desc)
    claim["count"] = n
    text = ", ".join(phrases[:-1]) + " and " + phrases[-1]
    if rng.random() < 0.4 and all(objs[order[k + 1]]["x"] - objs[order[k]]["x"] > RELATION_MARGIN
                                  for k in range(n - 1)):
      claim["relation"] = [0, n - 1, "left of"]  # only the outer pair is checked
      return "from left to right " + text, claim
    return text, claim
  # background
  claim["background"] = bg
  bgw = _pick(rng, BACKGROUND_WORDS[bg])
  text, desc = _partial_phrase(rng, objs[int(rng.integers(n))])
  claim["objects"] = [desc]
  if rng.random() < 0.5:
    return f"{text} on a {bgw} background", claim
  return f"a {bgw} background with {text}", claim


def scene_captions(rng: np.random.Generator, scene: dict,
                   k: int = CAPTIONS_PER_IMAGE) -> list[tuple[str, dict]]:
  """k distinct captions of the scene (distinct strings), with their claims."""
  out: dict[str, dict] = {}
  for _ in range(1000):
    made = _caption(rng, scene)
    if made is not None and made[0] not in out:
      out[made[0]] = made[1]
      if len(out) == k:
        return list(out.items())
  raise RuntimeError(f"could not write {k} distinct captions for scene {scene}")


def satisfies(scene: dict, claim: dict) -> bool:
  """Whether the scene makes the claim true (distinct objects for distinct descriptions)."""
  objs = scene["objects"]
  if claim["count"] is not None and len(objs) != claim["count"]:
    return False
  if claim["background"] is not None and scene["background"] != claim["background"]:
    return False
  descs = claim["objects"]
  for perm in itertools.permutations(range(len(objs)), len(descs)):
    if all(v is None or objs[p][key] == v
           for d, p in zip(descs, perm) for key, v in d.items()):
      rel = claim["relation"]
      if rel is None or _holds(rel[2], objs[perm[rel[0]]], objs[perm[rel[1]]]):
        return True
  return False


# ----------------------------------------------------------------------------- writing
def dataset_dirname(train: int, val: int, test: int, image_size: int, seed: int) -> str:
  return f"{STEM}-v{VERSION}-seed{seed}-{image_size}px-{train}-{val}-{test}"


def _generate(out: str, sizes: dict[str, int], image_size: int, seed: int) -> None:
  scenes_meta: dict[str, list] = {}
  for split, count in sizes.items():
    os.makedirs(os.path.join(out, "images", split))
    entries, metas = [], []
    for i in range(count):
      rng = np.random.default_rng([seed, SPLIT_CODES[split], i])
      scene = sample_scene(rng)
      captions = scene_captions(rng, scene)
      rel = f"images/{split}/{i:06d}.png"
      render_scene(scene, image_size).save(os.path.join(out, rel), format="PNG", optimize=False)
      if split == "train":
        entries.extend({"image": rel, "caption": c, "image_id": f"{split}_{i:06d}"}
                       for c, _ in captions)
      else:
        entries.append({"image": rel, "caption": [c for c, _ in captions]})
      metas.append({"image": rel, **scene, "claims": [claim for _, claim in captions]})
    with open(os.path.join(out, f"{STEM}_{split}.json"), "w") as f:
      json.dump(entries, f, indent=0)
    scenes_meta[split] = metas
  with open(os.path.join(out, "scenes.json"), "w") as f:
    json.dump(scenes_meta, f)


def _args_record(sizes: dict[str, int], image_size: int, seed: int) -> dict:
  return {"version": VERSION, "sizes": sizes, "image_size": image_size, "seed": seed}


def ensure_shapes_captions(root: str, *, train: int = DEFAULT_SIZES["train"],
                           val: int = DEFAULT_SIZES["val"], test: int = DEFAULT_SIZES["test"],
                           image_size: int = 64, seed: int = 0) -> str:
  """The dataset directory under `root` for these arguments, generated once.

  Returns `root/<name encoding every argument>`; use it as both `ann_dir` and `image_root`.
  A directory of that name without a matching `DONE` record is never silently reused.
  """
  sizes = {"train": int(train), "val": int(val), "test": int(test)}
  if min(sizes.values()) < 1 or image_size < 8:
    raise ValueError(f"need >= 1 image per split and image_size >= 8, got {sizes}, {image_size}")
  record = _args_record(sizes, int(image_size), int(seed))
  path = os.path.join(os.path.abspath(root), dataset_dirname(**sizes, image_size=image_size,
                                                             seed=seed))
  if os.path.exists(path):
    _check_done(path, record)
    return path
  os.makedirs(root, exist_ok=True)
  tmp = tempfile.mkdtemp(dir=root, prefix=f".{os.path.basename(path)}.tmp-")
  try:
    _generate(tmp, sizes, int(image_size), int(seed))
    with open(os.path.join(tmp, "DONE"), "w") as f:  # last file written
      json.dump(record, f, sort_keys=True)
      f.flush()
      os.fsync(f.fileno())
    try:
      os.rename(tmp, path)  # atomic; fails if another process finished first
    except OSError:
      if not os.path.exists(path):
        raise
  finally:
    if os.path.exists(tmp):
      shutil.rmtree(tmp)
  _check_done(path, record)
  return path


def _check_done(path: str, record: dict) -> None:
  done = os.path.join(path, "DONE")
  if not os.path.isfile(done):
    raise RuntimeError(f"{path} exists but has no DONE marker: it was not written by "
                       "ensure_shapes_captions (or by another version); remove it to regenerate")
  with open(done) as f:
    found = json.load(f)
  if found != record:
    raise RuntimeError(f"{path} was generated with {found}, not {record}; remove it to "
                       "regenerate")


def shapes_captions_config(path: str, image_size: int | None = None) -> dict:
  """The `jdd.data.captions.load_caption_dataset` config fields for a generated directory."""
  with open(os.path.join(path, "DONE")) as f:
    record = json.load(f)
  return {"name": STEM, "ann_dir": path, "image_root": path,
          "image_size": int(image_size or record["image_size"])}


# ----------------------------------------------------------------------------- ambiguity
def ambiguity_ceiling(path: str, split: str = "test") -> dict[str, float]:
  """Expected recalls (%) of an ideal retriever that knows which captions each image satisfies.

  With m_t images satisfying caption t, the posterior that image i is t's source is
  [i satisfies t] / m_t under a uniform prior, and ranking by it is optimal in both directions.
  IR: the m_t satisfying images tie, so the true one is in the top K with probability
  min(1, K / m_t). TR: captions are ranked by 1/m_t among those image i satisfies, ties broken
  at random; the probability that one of i's own captions reaches the top K is computed exactly
  over the tie groups. No model beats these numbers on average; chance is K / num_images (IR)
  and about 5K / num_captions (TR).
  """
  with open(os.path.join(path, "scenes.json")) as f:
    scenes = json.load(f)[split]
  claims = [(i, c) for i, s in enumerate(scenes) for c in s["claims"]]
  match = np.array([[satisfies(s, c) for _, c in claims] for s in scenes])  # (images, texts)
  owner = np.array([i for i, _ in claims])
  if not match[owner, np.arange(len(claims))].all():
    raise AssertionError("a caption does not hold for its own image: generator bug")
  m = match.sum(0)
  out = {}
  for k in (1, 5, 10):
    out[f"img_r{k}"] = 100.0 * float(np.mean(np.minimum(1.0, k / m)))
    tr = []
    for i in range(len(scenes)):
      sat = np.flatnonzero(match[i])
      before = 0
      for count in sorted(set(m[sat].tolist())):  # most specific captions first
        group = sat[m[sat] == count]
        own = int((owner[group] == i).sum())
        if own:
          slots = k - before
          p = 0.0 if slots <= 0 else 1.0 - (
              math.comb(len(group) - own, slots) / math.comb(len(group), slots)
              if slots < len(group) else 0.0)
          tr.append(p)
          break
        before += len(group)
    out[f"txt_r{k}"] = 100.0 * float(np.mean(tr))
  return out


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True, help="parent directory; prints the dataset path")
  for split, n in DEFAULT_SIZES.items():
    parser.add_argument(f"--{split}", type=int, default=n, help=f"images in {split}")
  parser.add_argument("--image_size", type=int, default=64)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--ceiling", action="store_true",
                      help="also print the ambiguity ceiling of the test split")
  a = parser.parse_args(argv)
  path = ensure_shapes_captions(a.out, train=a.train, val=a.val, test=a.test,
                                image_size=a.image_size, seed=a.seed)
  print(path)
  if a.ceiling:
    print(json.dumps({k: round(v, 2) for k, v in ambiguity_ceiling(path).items()}))


if __name__ == "__main__":
  main()
