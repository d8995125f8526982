"""The streaming caption-image pipeline (jdd.data.pipeline): rows read per batch equal the
whole-split loader, draws do not depend on threads or prefetching, features are encoded into a
memory-mapped file, and a killed and resumed expert training on augmented, streamed batches
gives the same snapshots as an uninterrupted one."""

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

from jdd.data import pipeline
from jdd.data.captions import load_caption_dataset
from jdd.data.randaugment import TrainTransform
from jdd.loop import RunContext, SimulatedInterruption
from jdd.models.retrieval import RetrievalModel, encode_features, feature_encoder
from jdd.stages import experts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE, FEAT, TEXT = 16, 8, 6


class TinyBackbone(nn.Module):
  """A conv and a mean pool: the pipeline is under test here, not the NFNet (which compiles for
  tens of seconds on 2 cores)."""

  @nn.compact
  def __call__(self, x, train=False):
    return jnp.mean(nn.gelu(nn.Conv(FEAT, (3, 3), strides=(2, 2))(x)), axis=(1, 2))


def tiny_model():
  backbone = TinyBackbone()
  variables = jax.jit(backbone.init)(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)))
  return RetrievalModel(backbone, FEAT, train_backbone=False, dropout=0.1), variables


def write_flickr_like(root, n_train=8, n_eval=3, caps=3, seed=0):
  """A Karpathy-layout caption dataset of JPEGs of varied sizes (the crop needs originals)."""
  rng = np.random.default_rng(seed)
  ann, img_root = os.path.join(root, "ann"), os.path.join(root, "img")
  os.makedirs(os.path.join(img_root, "flickr30k-images"))
  os.makedirs(ann)

  def picture(name):
    h, w = int(rng.integers(26, 36)), int(rng.integers(26, 36))
    x = np.linspace(0, 255, w)[None, :, None] + rng.normal(0, 40, (h, w, 3))
    rel = f"flickr30k-images/{name}.jpg"
    Image.fromarray(np.clip(x, 0, 255).astype(np.uint8)).save(os.path.join(img_root, rel),
                                                               quality=90)
    return rel

  train = [{"image": picture(f"t{i}"), "caption": f"picture {i} caption {c}",
            "image_id": str(i)} for i in range(n_train) for c in range(caps)]
  # one entry per caption, images interleaved like the real file
  train = sorted(train, key=lambda e: (e["caption"][-1], e["image_id"]))
  for split in ("val", "test"):
    entries = [{"image": picture(f"{split}{i}"), "caption": [f"{split} {i} {c}"
                                                             for c in range(caps)]}
               for i in range(n_eval)]
    with open(os.path.join(ann, f"flickr30k_{split}.json"), "w") as f:
      json.dump(entries, f)
  with open(os.path.join(ann, "flickr30k_train.json"), "w") as f:
    json.dump(train, f)
  return {"name": "flickr30k", "ann_dir": ann, "image_root": img_root, "image_size": SIZE}


@pytest.fixture(scope="module")
def dataset_cfg(tmp_path_factory):
  return write_flickr_like(str(tmp_path_factory.mktemp("flickr_like")))


def test_rows_read_per_batch_equal_the_whole_split_loader(dataset_cfg):
  data = load_caption_dataset(dataset_cfg)
  want = data.load_images("train", dtype="float32")               # the tested test transform
  for cache_mb in (0, 16):
    files = load_caption_dataset({**dataset_cfg, "cache_mb": cache_mb, "threads": 3}).files(
        "train")
    rows = pipeline.pixel_rows(files)
    assert rows.shape == want.shape and len(rows) == data.train.num_images
    np.testing.assert_array_equal(rows[[5, 1, 5]], want[[5, 1, 5]])
    np.testing.assert_array_equal(rows[2], want[2])
    np.testing.assert_array_equal(rows[-2:], want[-2:])
    np.testing.assert_array_equal(np.asarray(rows), want)
    np.testing.assert_array_equal(rows[2:], want[2:])              # cached rows read again
    assert (files._cache is not None) == (cache_mb > 0)
  with pytest.raises(IndexError):
    rows[[len(rows)]]


def test_subset_is_lazy_and_composes(dataset_cfg):
  data = load_caption_dataset(dataset_cfg)
  base = pipeline.pixel_rows(data.files("train"))
  reads = []
  counting = pipeline.Rows(lambda r: (reads.append(np.array(r)), base[r])[1], len(base),
                           base.row_shape, base.dtype)
  view = counting.subset(data.train.image_index)          # one row per caption
  assert reads == [] and len(view) == len(data.train)
  sub = view.subset(np.array([4, 0]))
  assert reads == []
  np.testing.assert_array_equal(sub[:], base[data.train.image_index[[4, 0]]])
  np.testing.assert_array_equal(reads[0], data.train.image_index[[4, 0]])
  np.testing.assert_array_equal(sub.base_rows(), data.train.image_index[[4, 0]])


def test_augmented_batches_depend_on_seeds_only(dataset_cfg):
  t = TrainTransform(size=SIZE)
  rows = np.array([0, 3, 3, 7, 1])
  seeds = pipeline.image_seeds(np.random.default_rng(4), len(rows))
  one = load_caption_dataset({**dataset_cfg, "threads": 1}).files("train")
  four = load_caption_dataset({**dataset_cfg, "threads": 4}).files("train")
  a, b = one.augmented(rows, seeds, t), four.augmented(rows, seeds, t)
  np.testing.assert_array_equal(a, b)
  assert a.dtype == np.float32 and a.shape == (5, SIZE, SIZE, 3)
  # Row 3 twice with different seeds: different crops; the test transform differs from both.
  assert np.abs(a[1] - a[2]).max() > 0
  assert np.abs(a[1] - one.normalized([3])[0]).max() > 0
  with pytest.raises(ValueError, match="one seed per row"):
    one.augmented(rows, seeds[:2], t)
  with pytest.raises(ValueError, match="px"):
    one.augmented(rows, seeds, TrainTransform(size=SIZE * 2))


def test_prefetcher_returns_fn_of_each_step_and_seeks():
  calls = []

  def fn(s):
    calls.append(s)
    return s * s

  with pipeline.Prefetcher(fn, end=10, depth=2) as ahead:
    assert [ahead.get(s) for s in range(4)] == [0, 1, 4, 9]
    assert sorted(ahead._ahead) == [4, 5]             # at most `depth` steps ahead
    assert ahead.get(8) == 64                         # a seek: computed now, queue restarted
    assert sorted(ahead._ahead) == [9]                # never past `end`
    assert ahead.get(9) == 81
  assert {0, 1, 2, 3, 8, 9} <= set(calls) <= {0, 1, 2, 3, 4, 5, 8, 9}


def test_encode_to_file_equals_encoding_in_memory(dataset_cfg, tmp_path):
  data = load_caption_dataset(dataset_cfg)
  model, variables = tiny_model()
  path = str(tmp_path / "features" / "train.npy")
  rows = pipeline.encode_to_file(feature_encoder(model, variables),
                                 pipeline.pixel_rows(data.files("train")), path, batch_size=3)
  want = encode_features(model, variables, data.load_images("train", dtype="uint8"),
                         batch_size=3, mean=data.files("train").mean, std=data.files("train").std)
  np.testing.assert_allclose(np.asarray(rows), want, rtol=1e-6, atol=1e-6)
  assert isinstance(rows.source, np.memmap) and sorted(os.listdir(tmp_path / "features")) == [
      "train.npy"]


def _train(data, model, variables, texts, workdir, key, interrupt_after=0):
  config = ml_collections.ConfigDict(dict(
      seed=0, log_every=1000, checkpoint_every=1000,
      experts=dict(num_experts=2, epochs=3, keep_epochs=2, batch_size=8, lr_image=0.1,
                   lr_text=0.1, momentum=0.0, weight_decay=0.0, shard="", augment=True,
                   parallel=0),
      train_transform=dict(ops="lors", num_ops=2, magnitude=5.0, min_scale=0.5, flip=True),
      debug=dict(interrupt_after=interrupt_after)))
  ctx = RunContext.standalone(config, workdir, {"experts": key}, data)
  return experts.train_experts(ctx, model, variables, pipeline.pixel_rows(data.files("train")),
                               texts, data.train.image_index, features=False)


def test_killed_and_resumed_augmented_experts_equal_uninterrupted(dataset_cfg, tmp_path):
  """Frozen backbone on streamed, augmented pixels (the reference RepBlend buffers): 24 captions
  in batches of 8 is 3 steps per epoch; the kill lands inside expert 0's second epoch, with
  batches already prefetched, and the resumed run reads with another thread count."""
  model, variables = tiny_model()
  key = jax.random.key(11)
  texts = np.random.default_rng(0).normal(size=(24, TEXT)).astype(np.float32)
  ref = _train(load_caption_dataset({**dataset_cfg, "threads": 3}), model, variables, texts,
               str(tmp_path / "ref"), key)
  assert "train transform" in ref.meta["info"]["inputs"] and ref.epochs == [0, 1, 2]
  work = str(tmp_path / "work")
  with pytest.raises(SimulatedInterruption):
    _train(load_caption_dataset({**dataset_cfg, "threads": 3}), model, variables, texts, work,
           key, interrupt_after=4)
  assert experts.ExpertStore(os.path.join(work, "experts")).done() == []
  got = _train(load_caption_dataset({**dataset_cfg, "threads": 1}), model, variables, texts,
               work, key)
  for e in (0, 1):
    for m in ("image", "text"):
      np.testing.assert_array_equal(got.trajectory(e)[m], ref.trajectory(e)[m])
      assert np.abs(ref.trajectory(e)[m][2] - ref.trajectory(e)[m][1]).max() > 0
  # Each expert its own heads, order and augmentation.
  assert np.abs(ref.trajectory(0)["image"][1] - ref.trajectory(1)["image"][1]).max() > 0


_DEVICES = r"""
import json, os, sys, jax, numpy as np
sys.path.insert(0, sys.argv[1])
import tests.test_experts as te, tests.test_pipeline as tp
from jdd.data.captions import load_caption_dataset
work, out = sys.argv[2], sys.argv[3]
feats, texts, idx = te.toy_pairs()
f = te.train(te.tiny_model(), feats, texts, idx, te.expert_cfg(num_experts=4, parallel=4),
             os.path.join(work, "f"), jax.random.key(3))
data = load_caption_dataset(tp.write_flickr_like(os.path.join(work, "data")))
model, variables = tp.tiny_model()
p = tp._train(data, model, variables, np.random.default_rng(0).normal(size=(24, 6)).astype(
    np.float32), os.path.join(work, "p"), jax.random.key(11))
arrays = {f"{k}{e}{m}": s.trajectory(e)[m] for k, s in (("f", f), ("p", p))
          for e in s.done() for m in ("image", "text")}
np.savez(out, **arrays)
done = lambda s, e: json.load(open(os.path.join(s.root, "done", f"expert{e:03d}.json")))
print(json.dumps({"devices": len(jax.devices()), "feature": done(f, 0)["devices"],
                  "pixel": done(p, 0)["devices"]}))
"""


@pytest.mark.slow  # two processes compiling the expert programs: about 2 CPU-minutes
def test_experts_spread_over_devices(tmp_path):
  """4 fake CPU devices: feature experts shard the expert axis (one expert per device), pixel
  experts shard each batch; the trajectories equal one device's to float rounding."""
  outs, records = [], []
  for n in (1, 4):
    env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} "
                                    f"--xla_force_host_platform_device_count={n}",
               JAX_PLATFORMS="cpu")
    out = tmp_path / f"traj{n}.npz"
    r = subprocess.run([sys.executable, "-c", _DEVICES, ROOT, str(tmp_path / f"w{n}"), str(out)],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    records.append(json.loads(r.stdout.strip().splitlines()[-1]))
    outs.append(np.load(out))
  assert records[0] == {"devices": 1, "feature": 1, "pixel": 1}
  assert records[1] == {"devices": 4, "feature": 4, "pixel": 4}
  assert sorted(outs[0]) == sorted(outs[1]) and len(outs[0]) == 12
  for k in outs[0]:
    np.testing.assert_allclose(outs[0][k], outs[1][k], atol=1e-5, err_msg=k)
