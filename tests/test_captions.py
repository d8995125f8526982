"""Caption JSON loading, pre_caption, image transform, and the shapes_captions generator."""

import hashlib
import json
import os

import numpy as np
import pytest
from PIL import Image

from jdd.data import DatasetNotFoundError, captions, shapes_captions
from jdd.data.captions import load_caption_dataset, pre_caption


@pytest.mark.parametrize("raw,max_words,want", [
    ("A Dog's  ball!!", 30, "a dog's ball"),
    ("Hello,World.  Foo(bar)", 30, "hello,world foo bar"),  # commas survive
    ("  leading ~~~ trailing.\n", 30, "leading trailing"),
    ("x:y;z#w*v\"u", 30, "x y z w v u"),
    ("a\tb c", 30, "a\tb c"),  # a single tab is not collapsed...
    ("a\tb c d", 2, "a\tb c"),  # ...and truncation splits on spaces only
    ("One two three four", 2, "one two"),
    ("one  two\n\nthree", 3, "one two three"),
    ("", 5, ""),
])
def test_pre_caption(raw, max_words, want):
  assert pre_caption(raw, max_words) == want


def _write_image(path, seed, size=(12, 9)):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  rng = np.random.default_rng(seed)
  Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)).save(path)


@pytest.fixture
def coco_like(tmp_path):
  ann, root = tmp_path / "ann", tmp_path / "coco"
  ann.mkdir()
  long_caption = " ".join(f"w{i}" for i in range(70))
  train = [
      {"image": "train2014/a.jpg", "caption": "A cat.", "image_id": "coco_1"},
      {"image": "val2014/b.jpg", "caption": "A DOG!", "image_id": "coco_2"},
      {"image": "train2014/a.jpg", "caption": long_caption, "image_id": "coco_1"},
      {"image": "val2014/b.jpg", "caption": "dog (running)", "image_id": "coco_2"},
  ]
  val = [{"image": "val2014/b.jpg", "caption": ["one", "two"]}]
  test = [{"image": "val2014/c.jpg", "caption": ["c1", "c2", "c3", "c4", "c5"]},
          {"image": "val2014/d.jpg", "caption": ["d1", "d2", "d3", "d4", "d5", long_caption]}]
  for split, data in (("train", train), ("val", val), ("test", test)):
    (ann / f"coco_karpathy_{split}.json").write_text(json.dumps(data))
  for i, rel in enumerate(["train2014/a.jpg", "val2014/b.jpg", "val2014/c.jpg",
                           "val2014/d.jpg"]):
    _write_image(str(root / rel), i)
  return {"name": "coco", "ann_dir": str(ann), "image_root": str(root), "image_size": 8,
          "reference": "repblend"}


def test_loader_reads_karpathy_layout(coco_like):
  ds = load_caption_dataset(coco_like)
  assert ds.max_words == (60, 30)  # RepBlend: COCO train 60, eval 30
  tr = ds.train
  assert tr.image_paths == ("train2014/a.jpg", "val2014/b.jpg")
  assert tr.image_ids == ("coco_1", "coco_2")
  assert tr.image_index.tolist() == [0, 1, 0, 1]
  assert tr.captions[:2] == ("a cat", "a dog") and tr.captions[3] == "dog running"
  assert len(tr.captions[2].split(" ")) == 60
  te = ds.test
  assert te.num_images == 2 and len(te.captions) == 11
  assert te.txt2img.tolist() == [0] * 5 + [1] * 6
  assert [t.tolist() for t in te.img2txt] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9, 10]]
  assert len(te.captions[10].split(" ")) == 30
  assert ds.val.captions == ("one", "two")
  lors = load_caption_dataset({**coco_like, "reference": "lors"})
  assert lors.max_words == (30, 30) and len(lors.train.captions[2].split(" ")) == 30
  explicit = load_caption_dataset({**coco_like, "max_words": 5, "max_words_eval": 4})
  assert explicit.max_words == (5, 4)


def test_image_transform_matches_torchvision(coco_like):
  torch = pytest.importorskip("torch")
  from torchvision import transforms as T
  from torchvision.transforms import InterpolationMode
  ds = load_caption_dataset(coco_like)
  got = ds.load_images("test", [1, 0])
  assert got.shape == (2, 8, 8, 3) and got.dtype == np.float32
  tf = T.Compose([T.Resize((8, 8), interpolation=InterpolationMode.BICUBIC), T.ToTensor(),
                  T.Normalize(captions.CLIP_MEAN, captions.CLIP_STD)])
  for k, i in enumerate([1, 0]):
    with Image.open(ds.image_path("test", i)) as im:
      want = tf(im.convert("RGB")).permute(1, 2, 0).numpy()
    np.testing.assert_allclose(got[k], want, rtol=1e-5, atol=1e-5)
  raw = ds.load_images("train", None, dtype="uint8")
  assert raw.dtype == np.uint8 and raw.shape == (2, 8, 8, 3)
  with pytest.raises(IndexError):
    ds.load_images("val", [1])
  del torch


def test_missing_files_are_all_listed(tmp_path):
  cfg = {"name": "flickr30k", "ann_dir": str(tmp_path / "ann"),
         "image_root": str(tmp_path / "flickr")}
  with pytest.raises(DatasetNotFoundError) as e:
    load_caption_dataset(cfg)
  msg = str(e.value)
  for split in ("train", "val", "test"):
    assert os.path.join(cfg["ann_dir"], f"flickr30k_{split}.json") in msg
  assert cfg["image_root"] in msg and "flickr30k-images/" in msg
  with pytest.raises(DatasetNotFoundError, match="image_root"):
    load_caption_dataset({"name": "flickr30k", "ann_dir": str(tmp_path)})


def test_wrong_image_root_is_caught(coco_like, tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(DatasetNotFoundError) as e:
    load_caption_dataset({**coco_like, "image_root": str(tmp_path / "empty")})
  assert os.path.join(str(tmp_path / "empty"), "train2014/a.jpg") in str(e.value)
  assert "val2014" in str(e.value)


def test_malformed_annotations(coco_like):
  path = os.path.join(coco_like["ann_dir"], "coco_karpathy_test.json")
  with open(path, "w") as f:
    json.dump([{"image": "val2014/c.jpg", "caption": "not a list"}], f)
  with pytest.raises(ValueError, match="caption list"):
    load_caption_dataset(coco_like)


def _tree_digest(path):
  h = hashlib.sha256()
  for dirpath, dirnames, files in sorted(os.walk(path)):
    dirnames.sort()
    for name in sorted(files):
      full = os.path.join(dirpath, name)
      h.update(os.path.relpath(full, path).encode())
      with open(full, "rb") as f:
        h.update(f.read())
  return h.hexdigest()


def test_generator_is_deterministic_and_reused(tmp_path):
  sizes = {"train": 12, "val": 3, "test": 4}
  a = shapes_captions.ensure_shapes_captions(str(tmp_path / "a"), **sizes, image_size=16)
  b = shapes_captions.ensure_shapes_captions(str(tmp_path / "b"), **sizes, image_size=16)
  assert os.path.basename(a) == os.path.basename(b)
  assert _tree_digest(a) == _tree_digest(b)  # same seed -> identical bytes
  stamp = os.stat(os.path.join(a, "DONE")).st_mtime_ns
  assert shapes_captions.ensure_shapes_captions(str(tmp_path / "a"), **sizes, image_size=16) == a
  assert os.stat(os.path.join(a, "DONE")).st_mtime_ns == stamp  # reused, not regenerated
  assert not [n for n in os.listdir(tmp_path / "a") if n.startswith(".")]  # no temp left
  other = shapes_captions.ensure_shapes_captions(str(tmp_path / "a"), **sizes, image_size=16,
                                                 seed=1)
  assert other != a and _tree_digest(other) != _tree_digest(a)
  # A directory with the right name but other contents is refused, not reused.
  with open(os.path.join(a, "DONE"), "w") as f:
    json.dump({"version": -1}, f)
  with pytest.raises(RuntimeError, match="generated with"):
    shapes_captions.ensure_shapes_captions(str(tmp_path / "a"), **sizes, image_size=16)


def test_generated_dataset_loads_with_five_captions(tmp_path, capsys):
  shapes_captions.main(["--out", str(tmp_path), "--train", "10", "--val", "3", "--test", "4",
                        "--image_size", "16"])
  path = capsys.readouterr().out.strip()
  ds = load_caption_dataset(shapes_captions.shapes_captions_config(path))
  assert (ds.train.num_images, ds.val.num_images, ds.test.num_images) == (10, 3, 4)
  assert len(ds.train) == 50 and np.bincount(ds.train.image_index).tolist() == [5] * 10
  for split in (ds.val, ds.test):
    assert [len(t) for t in split.img2txt] == [5] * split.num_images
  for i in range(ds.train.num_images):
    caps = [c for c, j in zip(ds.train.captions, ds.train.image_index) if j == i]
    assert len(set(caps)) == 5
  images = ds.load_images("test", dtype="uint8")
  assert images.shape == (4, 16, 16, 3) and images.std() > 10  # not blank


def test_generator_ambiguity_ceiling(tmp_path):
  # Test images depend only on (seed, split, index), so this is the default test split.
  path = shapes_captions.ensure_shapes_captions(str(tmp_path), train=1, val=1, test=200)
  ceiling = shapes_captions.ambiguity_ceiling(path, "test")  # also checks every claim holds
  assert 10 * 0.5 < ceiling["img_r1"] < 60  # far above chance (0.5 %), far from perfect
  assert 10 * 0.5 < ceiling["txt_r1"] < 95
  assert ceiling["img_r10"] < 90
  assert all(ceiling[f"img_r{k}"] <= ceiling[f"img_r{k2}"] for k, k2 in ((1, 5), (5, 10)))
