"""The image-text driver end to end (offline smoke) and its bad-input errors."""

import json
import os

import pytest

from jdd import run as run_lib
from jdd.config import load_config, override
from jdd.data.classification import DatasetNotFoundError
from jdd.evaluation.retrieval import METRICS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def smoke_config(tmp_path, **extra):
  c = load_config(os.path.join(ROOT, "configs/experts_shapes.py:smoke"))
  return override(c, **{"dataset.root": str(tmp_path / "data"), **extra})


# Minutes on 2 cores; the experts' stages are covered by test_experts.py and test_pipeline.py.
@pytest.mark.slow
def test_experts_shapes_smoke_end_to_end(tmp_path):
  work = str(tmp_path / "w")
  results = run_lib.run(smoke_config(tmp_path), work)
  on_disk = json.load(open(os.path.join(work, "results.json")))
  assert on_disk["method"] == "experts"
  for name in ("random_20", "full_train"):
    summary = on_disk[name]["summary"]
    for block in ("test", "reference_protocol_best_test"):
      for m in METRICS:
        cell = summary[block][m]
        assert 0.0 <= cell["mean"] <= 100.0 and cell["std"] >= 0.0
    assert summary["num_seeds"] == 2
    assert set(summary["curve"]) == {"epochs", "val_r_mean", "test_r_mean"}
  # The random subset is drawn twice (different keys), each draw trained with both seeds.
  rand = on_disk["random_20"]
  assert rand["draws"] == rand["summary"]["num_draws"] == 2
  assert rand["summary"]["num_runs"] == 4 and len(rand["seed_r_mean"]) == 2
  draws = [d["per_seed"][0]["test"]["r_mean"] for d in rand["per_draw"]]
  assert rand["seed_r_mean"][0] == pytest.approx(sum(draws) / 2)
  assert on_disk["comparisons"] == []                     # no distilled set to compare
  assert os.path.getsize(os.path.join(work, "eval", "curves.png")) > 0
  assert on_disk["protocol"]["name"] == "lors"
  assert on_disk["full_train"]["num_pairs"] == 600        # 120 images x 5 captions
  ex = on_disk["experts"]
  assert ex["finished"] == ex["num_experts"] == 2 and ex["epochs_stored"] == [0, 1, 2]
  assert os.path.exists(os.path.join(work, "experts", "image.npy"))
  # A second run in the same workdir resumes everything and reproduces the numbers.
  again = run_lib.run(smoke_config(tmp_path), work)
  assert again["random_20"]["summary"] == results["random_20"]["summary"]


def test_missing_flickr_says_what_to_put_where(tmp_path):
  c = load_config(os.path.join(ROOT, "configs/experts_shapes.py:smoke"))
  c = override(c, **{"dataset.name": "flickr30k", "dataset.generate": False,
                     "dataset.ann_dir": str(tmp_path / "ann"),
                     "dataset.image_root": str(tmp_path / "img")})
  with pytest.raises(DatasetNotFoundError) as e:
    run_lib.run(c, str(tmp_path / "w"))
  msg = str(e.value)
  assert "flickr30k_train.json" in msg and str(tmp_path / "ann") in msg


def test_unknown_baseline_and_encoder_errors(tmp_path):
  c = smoke_config(tmp_path, **{"text_encoder.path": str(tmp_path / "nope")})
  with pytest.raises(FileNotFoundError, match="text_encoder.path"):
    run_lib.run(c, str(tmp_path / "w1"))
  c = smoke_config(tmp_path, **{"image_encoder.checkpoint": str(tmp_path / "enc")})
  with pytest.raises(FileNotFoundError, match="card.json"):
    run_lib.run(c, str(tmp_path / "w2"))
  assert run_lib.driver_of(c).__name__ == "jdd.drivers.trajectory"
