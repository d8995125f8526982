"""EDGE through the driver (offline smoke), its export, caption synthesis and bad-input errors.

The end-to-end tests are marked slow: the smoke run compiles about a dozen programs (MiniLM
buckets, the encoder's pretraining step, VAE and U-Net steps, the EDGE step, the sampler, the
evaluator), about 2.5 CPU-minutes, well over the default suite's budget; the rest take seconds.
"""

import hashlib
import json
import os

import numpy as np
import pytest

from jdd import caption_synthesis as cs
from jdd import run as run_lib
from jdd.config import load_config, override
from jdd.data.captions import load_image, read_train_annotations
from jdd.evaluation.retrieval import METRICS
from jdd.methods import edge
from jdd.loop import SimulatedInterruption

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def smoke_config(data_root, **extra):
  c = load_config(os.path.join(ROOT, "configs/edge_shapes.py:smoke"))
  return override(c, **{"dataset.root": str(data_root), **extra})


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
  base = tmp_path_factory.mktemp("edge")
  work = str(base / "w")
  results = run_lib.run(smoke_config(base / "data"), work)
  return base, work, results


def check_smoke_results(work, backend, pairs=6, finetune_steps=3) -> dict:
  """The smoke's results.json: method, backend, both pair sets scored, fine-tuning steps."""
  on_disk = json.load(open(os.path.join(work, "results.json")))
  assert on_disk["method"] == "edge" and on_disk["backend"] == backend
  for name in ("distilled_edge", f"random_{pairs}"):
    assert on_disk[name]["num_pairs"] == pairs
    for block in ("test", "reference_protocol_best_test"):
      for m in METRICS:
        cell = on_disk[name]["summary"][block][m]
        assert 0.0 <= cell["mean"] <= 100.0 and cell["std"] >= 0.0
  assert on_disk["edge"]["finetune_steps"] == finetune_steps
  return on_disk


@pytest.mark.slow
def test_smoke_end_to_end_results(smoke_run):
  _, work, results = smoke_run
  on_disk = check_smoke_results(work, "offline")
  assert on_disk["edge"]["setup"]["scaling_factor"] > 0
  for stage in ("edge_vae", "edge_unet", "edge_finetune"):
    assert os.path.isdir(os.path.join(work, "checkpoints", stage))
  assert results["distilled_edge"]["summary"] == on_disk["distilled_edge"]["summary"]


@pytest.mark.slow
def test_export_reloads_through_captions(smoke_run):
  _, work, _ = smoke_run
  edir = os.path.join(work, "export")
  manifest = json.load(open(os.path.join(edir, "manifest.json")))
  pairs = read_train_annotations(os.path.join(edir, manifest["annotation"]), 30)
  assert len(pairs) == manifest["num_pairs"] == 6 and pairs.num_images == 6
  assert list(pairs.captions) == manifest["prompts"]          # k = 1: the prompt captions
  cfg = smoke_config("unused")
  for rel, entry in manifest["files"].items():
    blob = open(os.path.join(edir, rel), "rb").read()
    assert len(blob) == entry["bytes"] and hashlib.sha256(blob).hexdigest() == entry["sha256"]
  img = load_image(os.path.join(edir, pairs.image_paths[0]), 32, "uint8")
  assert img.shape == (32, 32, 3) and img.std() > 0
  assert os.path.exists(os.path.join(edir, "grid.png"))
  b = manifest["budget"]
  assert (b["unique_images"], b["captions_per_image"], b["pairs"]) == (6, 1, 6)
  assert b["image_bytes"] == sum(v["bytes"] for r, v in manifest["files"].items()
                                 if r.startswith("images/"))
  # The query captions are the seeded draw, recorded.
  assert manifest["seed"] == cfg.edge.sample_seed
  n_captions = 40 * 5
  np.testing.assert_array_equal(manifest["query_caption_ids"],
                                edge.draw_queries(n_captions, 6, manifest["seed"]))


def test_oracle_path_returns_the_real_pairs(tmp_path):
  """The oracle through the export writer and reader gives back exactly the real pairs of the
  query captions (normalised real pixels, the cached caption embeddings), so it must score like
  a random real subset: a generated export with noise images goes in, real pairs come out."""
  import ml_collections
  from jdd.data.captions import CLIP_MEAN, CLIP_STD, load_caption_dataset
  from jdd.data.shapes_captions import ensure_shapes_captions, shapes_captions_config
  from jdd.loop import RunContext
  from jdd.models.retrieval import RetrievalModel, normalize_images
  from jdd.stages import edge_export
  from jdd.stages.image_text import Evaluator
  path = ensure_shapes_captions(str(tmp_path / "data"), train=12, val=4, test=4, image_size=16)
  data = load_caption_dataset(ml_collections.ConfigDict(shapes_captions_config(path)))
  config = ml_collections.ConfigDict(dict(seed=0, log_every=1, checkpoint_every=1,
                                          text_encoder=dict(path="minilm")))
  ctx = RunContext.standalone(config, str(tmp_path / "w"), {}, data=data)
  ids = np.array([7, 0, 33, 58])
  noise = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
  caps = [[data.train.captions[i]] for i in ids]
  edge_export.write_pairs(ctx, "export", noise, caps, {
      "method": "edge", "seed": 0, "query_caption_ids": ids.tolist(),
      "prompts": [c[0] for c in caps]})
  oracle = edge_export.oracle_export(ctx)
  assert oracle["method"] == "oracle_real_queries" and oracle["num_pairs"] == 4
  # One embedding per distinct caption string, as a text encoder gives (captions repeat).
  rng = np.random.default_rng(1)
  table = {c: rng.normal(size=5).astype("f4") for c in dict.fromkeys(data.train.captions)}
  texts = {"train": np.stack([table[c] for c in data.train.captions])}
  ev = Evaluator(RetrievalModel(None, 8, train_backbone=True), {}, {}, {})
  pairs = edge_export.exported_pairs(ctx, ev, oracle, texts, name="oracle")
  real = data.load_images("train", data.train.image_index[ids], dtype="uint8")
  np.testing.assert_array_equal(pairs.images, normalize_images(real, CLIP_MEAN, CLIP_STD))
  np.testing.assert_array_equal(pairs.texts, texts["train"][ids])
  again = edge_export.exported_pairs(ctx, ev, export_manifest := json.load(open(
      os.path.join(ctx.workdir, "export", "manifest.json"))), texts)
  assert export_manifest["query_caption_ids"] == ids.tolist()
  np.testing.assert_array_equal(again.texts, pairs.texts)        # same captions, other pixels
  assert not np.array_equal(again.images, pairs.images)


@pytest.mark.slow
def test_oracle_and_no_finetune_checks(smoke_run):
  """The oracle holds the REAL train images of the export's query captions, with the export's
  captions, written and read back through the same path; the ablation samples the same queries
  with the pretrained U-Net. Both are scored and compared with the random subset."""
  base, work, results = smoke_run
  from jdd.stages.image_text import load_data
  data = load_data(smoke_config(base / "data"))
  export_m = json.load(open(os.path.join(work, "export", "manifest.json")))
  oracle_m = json.load(open(os.path.join(work, "oracle", "manifest.json")))
  assert oracle_m["query_caption_ids"] == export_m["query_caption_ids"]
  got = read_train_annotations(os.path.join(work, "oracle", oracle_m["annotation"]), 30)
  assert list(got.captions) == export_m["prompts"]
  real = data.load_images("train", data.train.image_index[export_m["query_caption_ids"]],
                          dtype="uint8")
  for i, rel in enumerate(got.image_paths):                # PNG round trip: the real pixels
    np.testing.assert_array_equal(load_image(os.path.join(work, "oracle", rel), 32, "uint8"),
                                  real[i])
  ablation = json.load(open(os.path.join(work, "no_finetune", "manifest.json")))
  assert ablation["query_caption_ids"] == export_m["query_caption_ids"]
  assert ablation["files"] != export_m["files"]            # other U-Net weights, other pixels
  for name in ("oracle_real_queries", "edge_no_finetune"):
    assert results[name]["num_pairs"] == 6
  pairs = {(c["a"], c["b"]) for c in results["comparisons"]}
  assert {("distilled_edge", "random_6"), ("oracle_real_queries", "random_6"),
          ("edge_no_finetune", "random_6"), ("distilled_edge", "edge_no_finetune")} <= pairs
  assert results["protocol"]["name"] == "edge" and results["model"]["train_backbone"]
  assert os.path.exists(os.path.join(work, "eval", "curves.png"))


@pytest.mark.slow
def test_resume_after_interruption_is_bit_exact(smoke_run, tmp_path):
  base, work, results = smoke_run
  resumed = str(tmp_path / "w")
  # Ticks: encoder 1, VAE 2, U-Net 2, then fine-tune step 2 (checkpointed at 2) -> interrupt.
  with pytest.raises(SimulatedInterruption):
    run_lib.run(smoke_config(base / "data", **{"debug.interrupt_after": 7}), resumed)
  assert not os.path.exists(os.path.join(resumed, "export", "manifest.json"))
  again = run_lib.run(smoke_config(base / "data"), resumed)
  m0 = json.load(open(os.path.join(work, "export", "manifest.json")))
  m1 = json.load(open(os.path.join(resumed, "export", "manifest.json")))
  assert m0["files"] == m1["files"]                    # identical PNG bytes and captions
  for name in ("distilled_edge", "random_6"):
    assert again[name]["summary"] == results[name]["summary"]


def test_missing_sd_folder_says_what_to_put_where(tmp_path):
  c = load_config(os.path.join(ROOT, "configs/edge_flickr.py:pairs=200"))
  sd = str(tmp_path / "sd15")
  c = override(c, **{"edge.sd_path": sd, "edge.tokenizer_path": sd + "/tokenizer"})
  with pytest.raises(FileNotFoundError) as e:
    run_lib.run(c, str(tmp_path / "w"))
  msg = str(e.value)
  for part in (os.path.join(sd, "card.json"), "vocab.json", "merges.txt", "convert_diffusers",
               "configs/edge_shapes.py"):
    assert part in msg
  assert not os.path.exists(tmp_path / "w")           # stopped before anything was written


def test_configs():
  for name in ("edge_flickr", "edge_coco"):
    c = load_config(os.path.join(ROOT, f"configs/{name}.py:pairs=500"))
    assert (c.edge.backend, c.edge.lr, c.edge.batch_size, c.edge.epochs) == ("sd", 1e-3, 128, 10)
    assert (c.edge.sampler.scheduler, c.edge.sampler.steps, c.edge.sampler.guidance_scale,
            c.edge.sampler.size) == ("pndm", 50, 7.5, 512)
    assert c.edge.pairs == 500 and tuple(c.evaluate.baselines) == ("random_500",)
    ref = load_config(os.path.join(ROOT, f"configs/{name}.py:reference"))
    assert (ref.edge.unet_input, ref.edge.clip_input, ref.edge.vae_input) == ("clean", "raw",
                                                                              "clip")
    assert load_config(os.path.join(ROOT, f"configs/{name}.py:smoke")).edge.backend == "offline"
    with pytest.raises(ValueError, match="pairs must be"):
      load_config(os.path.join(ROOT, f"configs/{name}.py:pairs=300"))
  c = load_config(os.path.join(ROOT, "configs/edge_shapes.py"))
  assert c.edge.pairs == 100 and c.edge.backend == "offline"
  assert tuple(c.evaluate.baselines) == ("random_100",)


# ------------------------------------------------------------------ caption synthesis
CAPTIONS = ["a red circle", "a red disc", "a blue square", "a blue box", "a green star",
            "a red circle"]


def _request(k, **kw):
  text = np.array([[1, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0, 0.9, 0.1], [0, 0, 1], [1, 0, 0]],
                  np.float32)
  return cs.SynthesisRequest(images=np.zeros((2, 4, 4, 3), np.uint8),
                             prompts=[CAPTIONS[0], CAPTIONS[2]], prompt_ids=np.array([0, 2]),
                             k=k, train_captions=CAPTIONS, train_text=text, **kw)


def test_text_neighbours_paraphrase_by_retrieval():
  out = cs.synthesize("text_neighbours", _request(3))
  # The prompt first, then the nearest DISTINCT strings (the duplicate 'a red circle' skipped).
  assert out == [["a red circle", "a red disc", "a blue square"],
                 ["a blue square", "a blue box", "a red disc"]]
  assert cs.synthesize("prompt", _request(1)) == [["a red circle"], ["a blue square"]]
  with pytest.raises(ValueError, match="one caption per image"):
    cs.synthesize("prompt", _request(2))
  with pytest.raises(ValueError, match="not one of"):
    cs.synthesize("gpt-4o-mini", _request(2))


def test_image_retrieval_reads_the_image():
  # Image 0 looks like a star, image 1 like a box: the retrieved captions follow the image.
  embed = lambda imgs: np.array([[0, 0, 1], [0, 0.2, 1.0]], np.float32)[:len(imgs)]
  joint = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0.3, 1], [0, 0, 1], [1, 0, 0]],
                   np.float32)
  out = cs.synthesize("image_retrieval", _request(2, image_embed=embed, train_joint=joint))
  assert out == [["a red circle", "a green star"], ["a blue square", "a blue box"]]
  b = cs.budget(100, 2, 1000, 50)
  assert (b["unique_images"], b["pairs"], b["image_bytes"]) == (100, 200, 1000)


def test_bad_synthesizer_fails_before_any_work(tmp_path):
  c = load_config(os.path.join(ROOT, "configs/edge_flickr.py"))
  for name in ("gpt-4o-mini", "image_retrieval"):   # unknown; offline-only on the 'sd' backend
    with pytest.raises(ValueError, match="edge.synthesizer"):
      run_lib.run(override(c, **{"edge.synthesizer": name}), str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w")
