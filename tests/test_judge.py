"""jdd as a judge of sets it did not make: the readers of every layout, the portable export and
its documented loaders, `jdd eval` end to end (a smoke here; the issue's 10-minute runs are
`slow`), and bad input.

The sets are built by the tests: real Fashion-MNIST images in the decoupled references' layout
(new<c>/class<c>_id<i>.jpg), a LoRS-format distilled_<it>.pt written with torch, jdd exports
written by the drivers' own export functions.
"""

import json
import os
import re
import subprocess
import sys
import types

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")


def _cli(*args, timeout=900):
  return subprocess.run([sys.executable, "-m", "jdd.cli", *args], cwd=ROOT, env=ENV,
                        capture_output=True, text=True, timeout=timeout)


def _summary(stdout: str) -> dict:
  last = stdout.strip().splitlines()[-1]
  assert last.startswith("summary: "), stdout[-2000:]
  return dict(kv.split("=", 1) for kv in last[len("summary: "):].split())


# ----------------------------------------------------------------------------- set builders
def _fashion_images(per_class: int, seed: int = 0):
  from jdd.config import load_config
  from jdd.data import load_classification
  data = load_classification(load_config(os.path.join(ROOT, "configs/sre2l_fashion_mnist.py"))
                             .dataset)
  rng = np.random.default_rng(seed)
  idx = np.concatenate([rng.choice(np.flatnonzero(data.train.labels == c), per_class,
                                   replace=False) for c in range(10)])
  return data.train.images[idx], data.train.labels[idx]


def write_decoupled(folder, images, labels, ext=".png"):
  """SRe2L's recover layout: new%03d/class%03d_id%03d.<ext>."""
  from PIL import Image
  counts = {}
  for im, y in zip(images, labels):
    i = counts.setdefault(int(y), 0)
    counts[int(y)] += 1
    d = os.path.join(folder, f"new{int(y):03d}")
    os.makedirs(d, exist_ok=True)
    Image.fromarray(im[..., 0]).save(os.path.join(d, f"class{int(y):03d}_id{i:03d}{ext}"))


def write_lors_pt(path, images_nhwc, texts, rank=2, alpha=3.0, lr=(0.1, 0.1)):
  """The dict LoRS's distill_tesla_lors.py saves as distilled_<it>.pt."""
  torch = pytest.importorskip("torch")
  n = len(texts)
  a, left, right = torch.ones(n), torch.randn(n, rank), torch.zeros(n, rank)
  torch.save({"image": torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2))),
              "text": torch.from_numpy(np.asarray(texts, np.float32)),
              "similarity_params": [a, left, right],
              "similarity_mat": torch.diag(a) + left @ right.t() * alpha / rank,
              "syn_lr_img": torch.tensor(lr[0]), "syn_lr_txt": torch.tensor(lr[1])}, path)


def _ctx(config, workdir, data):
  from jdd.loop import RunContext, make_keys
  return RunContext.standalone(config, workdir, make_keys(int(config.seed)), data)


def classification_export(workdir, with_soft=True):
  """W/export written by the classification driver's export step (a 2-per-class set)."""
  from jdd.config import load_config
  from jdd.drivers.classification import export_set
  from jdd.labels.source import LabelSource
  from jdd.stages.distilled import DistilledSet, recover_dir
  from jdd import checkpoint, reporting
  config = load_config(os.path.join(ROOT, "configs/sre2l_fashion_mnist.py:smoke"))
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (20, 28, 28, 1), dtype=np.uint8)
  labels = np.repeat(np.arange(10, dtype=np.int32), 2)
  d = recover_dir(workdir)
  os.makedirs(d)
  checkpoint.atomic_save_npy(os.path.join(d, "labels.npy"), labels)
  checkpoint.atomic_save_npy(os.path.join(d, "images.npy"), images)
  reporting.save_png(os.path.join(d, "grid.png"), reporting.image_grid(images, nrow=2))
  files = ()
  if with_soft:
    path = os.path.join(workdir, "labels", "distilled", "soft_labels.npy")
    os.makedirs(os.path.dirname(path))
    checkpoint.atomic_save_npy(path, rng.normal(size=(3, 2, 10, 10)).astype(np.float16))
    files = (path,)
  data = types.SimpleNamespace(name="fashion_mnist", num_classes=10, mean=(0.286,),
                               std=(0.353,))
  export_set(_ctx(config, workdir, data), DistilledSet(images, labels),
             LabelSource("stored", None, files=files, description="stored: test labels"))
  return os.path.join(workdir, "export"), images, labels


def pairs_export(workdir, n=6, size=8, dim=16, texts=None):
  """W/export written by the trajectory-matching export (LoRS, low-rank S, learned lrs)."""
  from jdd.config import load_config
  from jdd.methods import lors
  from jdd.stages.distill import export_set
  config = load_config(os.path.join(ROOT, "configs/lors_shapes.py:smoke"))
  rng = np.random.default_rng(2)
  params = {"images": rng.normal(size=(n, size, size, 3)).astype(np.float32),
            "texts": (rng.normal(size=(n, dim)).astype(np.float32) if texts is None
                      else np.asarray(texts, np.float32)),
            "sim": {"diag": np.ones(n, np.float32),
                    "left": rng.normal(size=(n, 2)).astype(np.float32),
                    "right": rng.normal(size=(n, 2)).astype(np.float32)},
            "lr_image": np.float32(0.05), "lr_text": np.float32(0.2)}
  export_set(_ctx(config, workdir, None), lors.SPEC, params, config.distill)
  return os.path.join(workdir, "export"), params


# ------------------------------------------------------------------------------- readers
def test_decoupled_layout_reads_class_major_with_real_images(tmp_path):
  from jdd.judge import sets
  images, labels = _fashion_images(3)
  order = np.random.default_rng(0).permutation(len(labels))   # written in any order
  write_decoupled(tmp_path / "set", images[order], labels[order])
  assert sets.detect(str(tmp_path / "set")) == "decoupled"
  s = sets.read(str(tmp_path / "set"), image_shape=(28, 28, 1))
  assert s.format == "decoupled" and s.ipc == 3 and s.images.dtype == np.uint8
  np.testing.assert_array_equal(s.labels, np.repeat(np.arange(10), 3))
  # PNG is lossless: the images come back exactly, class by class
  for c in range(10):
    got = {im.tobytes() for im in s.images[s.labels == c]}
    assert got == {im.tobytes() for im in images[labels == c]}


def test_decoupled_layout_resizes_and_refuses_misnamed_files(tmp_path):
  from PIL import Image
  from jdd.errors import ConfigError
  from jdd.judge import sets
  d = tmp_path / "set" / "new000"
  d.mkdir(parents=True)
  Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(d / "class000_id000.jpg")
  s = sets.read(str(tmp_path / "set"), image_shape=(28, 28, 1))
  assert s.images.shape == (1, 28, 28, 1) and "resized from 32x32 to 28x28" in s.notes[0]
  Image.fromarray(np.zeros((28, 28), np.uint8)).save(d / "class001_id000.png")
  with pytest.raises(ConfigError, match="must be named class000_id<i>"):
    sets.read(str(tmp_path / "set"), image_shape=(28, 28, 1))


def test_image_folder_by_class_names_and_unequal_classes(tmp_path):
  from PIL import Image
  from jdd.errors import ConfigError
  from jdd.judge import sets
  names = ("a", "b", "c")
  for k, name in enumerate(names):
    (tmp_path / name).mkdir()
    for i in range(2 if k else 1):
      Image.fromarray(np.full((4, 4), k, np.uint8)).save(tmp_path / name / f"{i}.png")
  s = sets.read(str(tmp_path), "image_folder", image_shape=(4, 4, 1), class_names=names)
  np.testing.assert_array_equal(s.labels, [0, 1, 1, 2, 2])
  with pytest.raises(ConfigError, match="same number per class"):
    s.ipc
  with pytest.raises(ConfigError, match="neither the dataset's class names"):
    sets.read(str(tmp_path), "image_folder", image_shape=(4, 4, 1), class_names=("x", "y"))


def test_reference_pt_keys_are_lors_s(tmp_path):
  torch = pytest.importorskip("torch")
  from jdd.errors import ConfigError
  from jdd.judge import sets
  images = np.random.default_rng(0).normal(size=(5, 8, 8, 3)).astype(np.float32)
  texts = np.random.default_rng(1).normal(size=(5, 12)).astype(np.float32)
  write_lors_pt(tmp_path / "distilled_100.pt", images, texts, lr=(0.03, 0.4))
  s = sets.read(str(tmp_path / "distilled_100.pt"))
  assert s.format == "reference_pt" and len(s) == 5
  np.testing.assert_array_equal(s.images, images)
  np.testing.assert_array_equal(s.texts, texts)
  a, left, right = s.extra["similarity_params"]
  np.testing.assert_allclose(s.similarity, np.diag(a) + left @ right.T * 3.0 / 2, atol=1e-6)
  assert s.lr_image == pytest.approx(0.03) and s.lr_text == pytest.approx(0.4)
  torch.save({"images": torch.zeros(1)}, tmp_path / "bad.pt")
  with pytest.raises(ConfigError, match="'image' and 'text'"):
    sets.read(str(tmp_path / "bad.pt"))


def test_caption_set_reads_images_and_first_captions(tmp_path):
  from PIL import Image
  from jdd.judge import sets
  (tmp_path / "images").mkdir()
  entries = []
  for i in range(3):
    Image.fromarray(np.full((6, 6, 3), i, np.uint8)).save(tmp_path / "images" / f"{i}.png")
    entries.append({"image": f"images/{i}.png", "caption": [f"caption {i}", "other"]})
  json.dump(entries, open(tmp_path / "captions.json", "w"))
  s = sets.read(str(tmp_path))
  assert s.format == "captions" and s.captions == ["caption 0", "caption 1", "caption 2"]
  assert s.images.shape == (3, 6, 6, 3) and s.images[2].max() == 2


# ---------------------------------------------------------------------- portable export
def test_portable_round_trip_classification(tmp_path):
  from jdd import export
  from jdd.judge import portable, sets
  src, images, labels = classification_export(str(tmp_path / "W"))
  before = export.read_manifest(src)
  mf = portable.write(src, str(tmp_path / "P"))
  assert "manifest.json" not in mf["files"] and "images/000019.png" in mf["files"]
  soft = json.load(open(tmp_path / "P" / "soft_labels.json"))
  assert soft["shape"] == [3, 2, 10, 10] and set(soft["keys"]) >= {"relabel_aug",
                                                                  "relabel_order"}
  back = portable.to_jdd_export(str(tmp_path / "P"), str(tmp_path / "W2"))
  after_dir = str(tmp_path / "W2" / "export")
  assert export.verify(after_dir) == []
  assert ({k: v["bytes"] for k, v in back["export"]["files"].items()}
          == {k: v["bytes"] for k, v in before["export"]["files"].items()})
  for name in ("images.npy", "labels.npy", "soft_labels.npy"):
    a, b = np.load(os.path.join(src, name)), np.load(os.path.join(after_dir, name))
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(a, b)
  assert back["bytes"] == before["bytes"]
  # and `jdd eval` reads the portable folder as the same set
  s = sets.read(str(tmp_path / "P"))
  np.testing.assert_array_equal(s.images, images)
  np.testing.assert_array_equal(s.labels, labels)


def test_portable_round_trip_image_text(tmp_path):
  from jdd import export
  from jdd.judge import portable, sets
  src, params = pairs_export(str(tmp_path / "W"))
  before = export.read_manifest(src)
  portable.write(src, str(tmp_path / "P"))
  assert json.load(open(tmp_path / "P" / "learned.json"))["lr_text"] == pytest.approx(0.2)
  back = portable.to_jdd_export(str(tmp_path / "P"), str(tmp_path / "W2"))
  assert ({k: v["bytes"] for k, v in back["export"]["files"].items()}
          == {k: v["bytes"] for k, v in before["export"]["files"].items()})
  for name in before["export"]["files"]:
    if name.endswith(".npy"):
      np.testing.assert_array_equal(np.load(os.path.join(src, name)),
                                    np.load(str(tmp_path / "W2" / "export" / name)))
  s = sets.read(str(tmp_path / "P"))
  np.testing.assert_array_equal(s.images, params["images"])
  np.testing.assert_array_equal(s.texts, params["texts"])
  assert s.similarity.shape == (6, 6) and s.lr_image == pytest.approx(0.05)


def test_portable_nearest_captions_of_synthetic_texts(tmp_path):
  """An embedding-space set exported with its run's workdir names, for each synthetic text,
  the nearest real training captions by cosine (the run's caption embeddings)."""
  from jdd import checkpoint
  from jdd.config import load_config
  from jdd.judge import portable
  from jdd.stages import image_text
  config = load_config(os.path.join(ROOT, "configs/eval_retrieval.py:smoke"))
  config.unlock()
  config.dataset.root = str(tmp_path / "data")
  captions = list(image_text.load_data(config).train.captions)
  work = tmp_path / "W"
  checkpoint.atomic_write_json(str(work / "config.json"), json.loads(config.to_json_best_effort()))
  real = np.random.default_rng(3).normal(size=(len(captions), 16)).astype(np.float32)
  (work / "text_cache").mkdir()
  np.save(work / "text_cache" / "shapes_captions_train-minilm-0.npy", real)
  picks = [5, 17, 2, 40, 33, 8]
  # the synthetic texts sit next to real captions `picks` (scaled: cosine ignores the norm)
  noise = np.random.default_rng(4).normal(size=(6, 16)).astype(np.float32)
  src, _ = pairs_export(str(tmp_path / "V"), texts=3.0 * real[picks] + 0.01 * noise)
  portable.write(src, str(tmp_path / "P"), workdir=str(work))
  near = json.load(open(tmp_path / "P" / "nearest_captions.json"))["nearest"]
  assert [n[0]["caption"] for n in near] == [captions[i] for i in picks]
  assert all(len(n) == 3 and n[0]["cosine"] > 0.99 >= n[1]["cosine"] for n in near)


def test_portable_refuses_a_changed_file(tmp_path, capsys):
  from jdd import cli
  from jdd.errors import ConfigError
  from jdd.judge import portable
  classification_export(str(tmp_path / "W"), with_soft=False)
  assert cli.main(["export", "--workdir", str(tmp_path / "W"), "--out", str(tmp_path / "P")]) == 0
  assert "[jdd export]" in capsys.readouterr().out
  with pytest.raises(SystemExit) as e:   # never over an existing folder
    cli.main(["export", "--workdir", str(tmp_path / "W"), "--out", str(tmp_path / "P")])
  assert e.value.code == 2 and "exists; choose a new folder" in capsys.readouterr().err
  with open(tmp_path / "P" / "labels.txt", "a") as f:
    f.write("3\n")
  with pytest.raises(ConfigError, match="labels.txt: differs from the manifest"):
    portable.to_jdd_export(str(tmp_path / "P"), str(tmp_path / "W2"))


def _doc_blocks():
  text = open(os.path.join(ROOT, "docs", "export_format.md")).read()
  return re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)


def test_documented_loaders_run(tmp_path):
  """Both loaders of docs/export_format.md, as written, on a classification and a pair set;
  the PyTorch one in a process that never imports jdd."""
  numpy_loader, torch_loader = _doc_blocks()
  src, images, labels = classification_export(str(tmp_path / "W"))
  from jdd.judge import portable
  portable.write(src, str(tmp_path / "P"))
  psrc, params = pairs_export(str(tmp_path / "V"))
  portable.write(psrc, str(tmp_path / "Q"))
  ns = {}
  exec(numpy_loader, ns)
  fmt, got, got_labels, arrays = ns["load_portable"](str(tmp_path / "P"))
  np.testing.assert_array_equal(got, images)
  np.testing.assert_array_equal(got_labels, labels)
  assert arrays["soft_labels"].shape == (3, 2, 10, 10)
  pytest.importorskip("torch")
  script = torch_loader + f"""
import sys
ds = PortableSet({str(tmp_path / 'P')!r})
x, y = ds[3]
assert "jdd" not in sys.modules
loader = torch.utils.data.DataLoader(ds, batch_size=8)
xs, ys = next(iter(loader))
images, texts, s, learned = load_pairs({str(tmp_path / 'Q')!r})
print(len(ds), tuple(x.shape), int(y), tuple(xs.shape), tuple(images.shape), tuple(texts.shape),
      tuple(s.shape), learned["lr_image"])
"""
  out = subprocess.run([sys.executable, "-c", script], env=dict(os.environ, PYTHONPATH=""),
                       cwd=str(tmp_path), capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  fields = out.stdout.strip()
  assert fields.startswith(f"20 (1, 28, 28) {int(labels[3])} (8, 1, 28, 28) (6, 3, 8, 8) (6, 16) "
                           "(6, 6) 0.05"), fields


# --------------------------------------------------------------------------- jdd eval
def test_eval_smoke_on_the_decoupled_layout(tmp_path):
  """`jdd eval` end to end at smoke scale (the tests' Fashion-MNIST smoke config: 2000 train
  images, 500 val/test, a one-epoch teacher; 2 student epochs, 1 seed, 1 draw)."""
  images, labels = _fashion_images(2)
  write_decoupled(str(tmp_path / "set"), images, labels, ext=".jpg")
  out = _cli("eval", "--set", str(tmp_path / "set"), "--dataset", "fashion_mnist",
             "--config", "configs/sre2l_fashion_mnist.py:smoke", "--epochs", "2", "--seeds", "1",
             "--draws", "1", "--workdir", str(tmp_path / "W"))
  assert out.returncode == 0, out.stderr[-3000:]
  assert "distilled - random (95% interval)" in out.stdout
  fields = _summary(out.stdout)
  assert fields["format"] == "decoupled" and fields["ipc"] == "2"
  assert 0.0 <= float(fields["test_top1_mean"]) <= 100.0
  results = json.load(open(tmp_path / "W" / "results.json"))
  assert results["labels"] == "online" and results["compute"]["wall_seconds"] > 0
  assert float(fields["test_top1_mean"]) == pytest.approx(
      results["distilled"]["test_top1_mean"], abs=1e-4)
  assert results["evaluation"]["plan"]["distilled"]["total_steps"] == (
      results["evaluation"]["plan"]["random_subset"]["total_steps"])


@pytest.mark.parametrize("args,message", [
    (["--set", "{tmp}", "--dataset", "mnist"], "--dataset 'mnist'"),
    (["--set", "{tmp}", "--dataset", "fashion_mnist", "--override", "evaluate.epoch=3"],
     "evaluate.epoch"),
    (["--set", "{tmp}", "--dataset", "fashion_mnist", "--override", "evaluate.epochs"],
     "write FIELD=VALUE"),
    (["--set", "{tmp}/x.txt", "--dataset", "fashion_mnist"], "a file must be a reference .pt"),
    (["--set", "{tmp}/empty", "--dataset", "fashion_mnist"], "no known layout"),
    (["--set", "{tmp}/dec", "--dataset", "fashion_mnist"], "no images"),
])
def test_eval_bad_input_exits_2_with_one_message(tmp_path, capsys, args, message):
  """In process (the exit path is `jdd.errors.reported`, as for `jdd run`); the subprocess
  case below checks the same through the command line."""
  from jdd import cli
  (tmp_path / "dec" / "new000").mkdir(parents=True)
  (tmp_path / "empty").mkdir()
  (tmp_path / "x.txt").write_text("x")
  with pytest.raises(SystemExit) as e:
    cli.main(["eval", *[a.replace("{tmp}", str(tmp_path)) for a in args]])
  err = capsys.readouterr().err
  assert e.value.code == 2 and message in err and "Traceback" not in err, err


def test_eval_bad_input_on_the_command_line():
  out = _cli("eval", "--set", "/nonexistent/set", "--dataset", "fashion_mnist", timeout=120)
  assert out.returncode == 2 and "--set /nonexistent/set does not exist" in out.stderr
  assert "Traceback" not in out.stderr


def test_run_is_the_pipeline_command():
  out = _cli("run", "--config", "configs/sre2l_fashion_mnist.py:smok", "--workdir", "/tmp/x",
             timeout=120)
  assert out.returncode == 2 and "unknown variant option(s) ['smok']" in out.stderr


@pytest.mark.slow
def test_eval_decoupled_fashion_mnist_done_when(tmp_path):
  """The issue's command: real Fashion-MNIST images, 10 per class, SRe2L layout,
  `jdd eval --set DIR --dataset fashion_mnist --epochs 20` (10 minutes on 2 cores is the goal;
  timed outside the test, docs/evaluation.md, as no test asserts a time)."""
  images, labels = _fashion_images(10)
  write_decoupled(str(tmp_path / "set"), images, labels, ext=".jpg")
  out = _cli("eval", "--set", str(tmp_path / "set"), "--dataset", "fashion_mnist", "--epochs",
             "20", "--workdir", str(tmp_path / "W"), timeout=3600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "soft labels, no augmentation" in out.stdout and "DD-Ranking scores" in out.stdout
  fields = _summary(out.stdout)
  assert 10.0 < float(fields["test_top1_mean"]) <= 100.0 and fields["ipc"] == "10"


@pytest.mark.slow
def test_eval_lors_pt_shapes_captions_done_when(tmp_path):
  """A LoRS-format .pt of 20 real pairs of the offline caption data (images through the test
  transform, captions through MiniLM), `jdd eval --set X.pt --dataset shapes_captions
  --epochs 20` with the fixed retrieval recipe, within 10 minutes."""
  from jdd import text_features
  from jdd.config import load_config
  from jdd.data.captions import pre_caption
  from jdd.stages import image_text
  config = load_config(os.path.join(ROOT, "configs/eval_retrieval.py"))
  config.unlock()
  config.dataset.root = str(tmp_path / "data")
  data = image_text.load_data(config)
  caps = np.random.default_rng(0).choice(len(data.train), 20, replace=False)
  images = data.files("train").normalized(data.train.image_index[caps])
  enc = text_features.TextEncoder(image_text.offline_text_encoder_path(), pooling="auto")
  texts = enc.encode([pre_caption(data.train.captions[i], data.max_words[0]) for i in caps])
  write_lors_pt(tmp_path / "distilled_300.pt", images, texts)
  out = _cli("eval", "--set", str(tmp_path / "distilled_300.pt"), "--dataset",
             "shapes_captions", "--epochs", "20", "--override",
             f"dataset.root={tmp_path / 'data'}", "--workdir", str(tmp_path / "W"), timeout=3600)
  assert out.returncode == 0, out.stderr[-3000:]
  fields = _summary(out.stdout)
  assert fields["format"] == "reference_pt" and fields["pairs"] == "20"
  assert 0.0 < float(fields["r_mean"]) <= 100.0 and "random_r_mean" in fields


@pytest.mark.slow
def test_eval_lors_pt_smoke(tmp_path):
  """The image-text path of `jdd eval` at smoke scale (a minute of CPU: MiniLM and the NFNet
  compile dominate), with the encoder left at its initialisation (pretrain.epochs=0)."""
  from jdd import text_features
  from jdd.config import load_config
  from jdd.data.captions import pre_caption
  from jdd.stages import image_text
  config = load_config(os.path.join(ROOT, "configs/eval_retrieval.py:smoke"))
  config.unlock()
  config.dataset.root = str(tmp_path / "data")
  data = image_text.load_data(config)
  caps = np.arange(6)
  images = data.files("train").normalized(data.train.image_index[caps])
  enc = text_features.TextEncoder(image_text.offline_text_encoder_path(), pooling="auto")
  texts = enc.encode([pre_caption(data.train.captions[i], data.max_words[0]) for i in caps])
  write_lors_pt(tmp_path / "d.pt", images, texts)
  out = _cli("eval", "--set", str(tmp_path / "d.pt"), "--dataset", "shapes_captions",
             "--config", "configs/eval_retrieval.py:smoke", "--override",
             f"dataset.root={tmp_path / 'data'}", "--override", "pretrain.epochs=0",
             "--epochs", "2", "--seeds", "1", "--draws", "1", "--workdir", str(tmp_path / "W"))
  assert out.returncode == 0, out.stderr[-3000:]
  fields = _summary(out.stdout)
  assert fields["pairs"] == "6" and "r_mean" in fields and "device_hours" in fields


# ------------------------------------------------------------------------------ reproduce
def test_reproduction_page_is_generated_from_the_cells():
  from jdd.judge import reproduce
  with open(reproduce.DOC, encoding="utf-8") as f:
    assert f.read() == reproduce.render(), (
        "docs/reproduction.md is stale: run `python -m jdd.judge.reproduce --write-doc`")


def test_reproduce_list_names_every_cell_and_each_config_loads(capsys):
  from jdd import cli
  from jdd.judge.cells import CELLS, by_id
  assert cli.main(["reproduce", "--list"]) == 0
  out = capsys.readouterr().out
  assert len(by_id()) == len(CELLS) >= 80
  for c in CELLS:
    assert re.search(rf"^{re.escape(c.id)}\s+{re.escape(c.config)}\s", out, re.M), c.id
    assert os.path.exists(os.path.join(ROOT, c.config.partition(":")[0])), c.config
    assert all(v[1] is None or v[1] > 0 for v in c.paper.values())


def test_verdicts_against_a_hand_computation():
  """LoRS Flickr-500 with jdd at the paper's protocol 0.6 IR@1 (LoRS_Distill #7's number):
  10.0 ± 0.2 allows 0.4, so -9.4 is 'below'; TR@1 15.5 ± 0.7 allows 1.4, 16.8 is within."""
  from jdd.judge import reproduce
  from jdd.judge.cells import RECALLS, by_id
  cell = by_id()["lors-flickr30k-500"]
  ref = {m: {"mean": cell.paper[m][0]} for m in RECALLS}
  ref["img_r1"] = {"mean": 0.6}
  ref["txt_r1"] = {"mean": 16.8}
  ref["txt_r10"] = {"mean": 53.7 + 0.7}     # 2 x 0.3 = 0.6: just above
  test = {m: {"mean": v["mean"] - 1.0} for m, v in ref.items()}
  results = {"distilled_lors": {"summary": {"test": test, "reference_protocol_best_test": ref}}}
  rows = {r["metric"]: r for r in reproduce.verdict_rows(cell, results)}
  assert rows["IR@1"]["verdict"] == "below" and rows["IR@1"]["difference"] == pytest.approx(-9.4)
  assert rows["IR@1"]["tolerance"] == pytest.approx(0.4)
  assert rows["TR@1"]["verdict"] == "within tolerance"
  assert rows["TR@10"]["verdict"] == "above" and rows["TR@10"]["jdd_headline"] == pytest.approx(
      53.4)
  table = reproduce.verdict_table(cell, list(rows.values()))
  assert "verdict: 4 within tolerance, 1 above, 1 below" in table
  # classification: the final-epoch number is the paper's protocol; no ± -> 1 point
  cell = by_id()["sre2l-cifar100-ipc10"]
  rows = reproduce.verdict_rows(cell, {"distilled": {
      "test_top1_mean": 30.0, "reference_protocol_final_epoch_test_top1_mean": 30.8}})
  assert rows[0]["verdict"] == "within tolerance" and "no ±" in rows[0]["tolerance_basis"]
  # an offline cell's reference is jdd's recorded headline, so the headline is compared
  cell = by_id()["offline-repblend-shapes"]
  summary = {"test": {"r_mean": {"mean": 20.51}},
             "reference_protocol_best_test": {"r_mean": {"mean": 21.26}}}
  row, = reproduce.verdict_rows(cell, {"distilled_repblend": {"summary": summary}})
  assert row["jdd"] == pytest.approx(20.51) and row["verdict"] == "within tolerance"


def test_reproduce_dry_run_and_unknown_cell(capsys):
  from jdd import cli
  assert cli.main(["reproduce", "offline-repblend-shapes", "--dry-run"]) == 0
  assert "jdd run --config configs/repblend_shapes.py" in capsys.readouterr().out
  with pytest.raises(SystemExit) as e:
    cli.main(["reproduce", "repblend-flickr"])
  err = capsys.readouterr().err
  assert e.value.code == 2 and "did you mean ['repblend-flickr30k-100'" in err


@pytest.mark.slow
def test_reproduce_an_offline_cell_prints_the_verdict_table(tmp_path):
  """`jdd reproduce offline-repblend-shapes` (3 min on an idle 2-core machine): the pipeline,
  then the verdict table against jdd's recorded measurement."""
  out = _cli("reproduce", "offline-repblend-shapes", "--workdir", str(tmp_path / "W"),
             "--override", f"dataset.root={tmp_path / 'data'}", timeout=1200)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "== offline-repblend-shapes:" in out.stdout and "\nverdict: " in out.stdout
  rows = json.load(open(tmp_path / "W" / "reproduction.json"))["rows"]
  assert [r["metric"] for r in rows] == ["r_mean"]
