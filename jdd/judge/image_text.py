"""`jdd eval` of image-text pairs jdd did not make: one fixed retrieval recipe for every method
and encoder, the same-count random-pair baseline, and compute beside accuracy.

Why: DD-Ranking has no image-text scores, and each image-text paper evaluates with its own
evaluator (LoRS trains the NFNet, RepBlend freezes it, MTT-VL shares one learning rate) and picks
the best test epoch. Here the recipe is one config, `configs/eval_retrieval.py` (the default of
`jdd eval` on a caption dataset): the LoRS/RepBlend evaluator (`evaluate.protocol='lors'`: SGD
momentum 0.9, weight decay 5e-4, x0.1 at half, Epoch + 1 epochs, WBCE against the set's
similarity, the set's learned learning rates) on a frozen image backbone with a projection head
per modality, `evaluate.seeds` seeds, the epoch selected on val. The set is compared with
random real pairs of the *same count* (`evaluate.draws` draws; again at the set's learned
learning rates with S = I when it has them), paired over seeds with the interval and verdict
of `jdd.evaluation.retrieval_report`. Every function called is the trajectory driver's
(`jdd.stages.image_text`); nothing is re-implemented.

What a set must match: its text embeddings come from the run's text encoder (dimension checked;
an image-caption set is encoded here), and its images have the evaluator's size (a reference
.pt at 224 px needs `--override dataset.image_size=224`, the paper data and encoder).
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

import jdd
from jdd import checkpoint
from jdd.data.captions import CLIP_MEAN, CLIP_STD, pre_caption
from jdd.errors import ConfigError
from jdd.evaluation import retrieval
from jdd.judge import compute
from jdd.judge.classification import summary_line
from jdd.judge.sets import PairSet
from jdd.loop import RunContext
from jdd.models.retrieval import encode_features
from jdd.stages import image_text

NAME = "distilled_set"


def prepare_config(config, s: PairSet, *, epochs=None, seeds=None, draws=None):
  config = config.copy_and_resolve_references()
  config.unlock()
  config.evaluate.baselines = (f"random_{len(s)}",)
  if epochs is not None:
    config.evaluate.epochs = int(epochs)
    config.evaluate.eval_every = max(1, int(epochs) // 5)
  if seeds is not None:
    config.evaluate.seeds = int(seeds)
  if draws is not None:
    config.evaluate.draws = int(draws)
  config.lock()
  return config


def _images(s: PairSet, size: int) -> np.ndarray:
  """The set's images as the evaluator reads them: CLIP-normalised float32 at `size`."""
  if s.extra.get("uint8"):   # an image-caption set: the test transform (bicubic resize)
    x = np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BICUBIC))
                  for im in s.images]).astype(np.float32) / 255.0
    return (x - np.asarray(CLIP_MEAN, np.float32)) / np.asarray(CLIP_STD, np.float32)
  if s.images.shape[1:3] != (size, size):
    raise ConfigError(f"{s.path}: images are {s.images.shape[1]}x{s.images.shape[2]} px, the "
                      f"evaluator's dataset.image_size is {size}: add --override "
                      f"dataset.image_size={s.images.shape[1]} (and the matching data/encoder)")
  return np.asarray(s.images, np.float32)


def _texts(ctx: RunContext, s: PairSet, dim: int) -> np.ndarray:
  if s.texts is None:   # captions: encoded by the run's text encoder, the references' cleaning
    from jdd import text_features
    tc = ctx.config.text_encoder
    path = image_text.offline_text_encoder_path() if tc.path == "minilm" else tc.path
    enc = text_features.TextEncoder(path, pooling=tc.pooling, batch_size=int(tc.batch_size))
    words = ctx.data.max_words[0]
    return np.asarray(enc.encode([pre_caption(c, words) for c in s.captions]), np.float32)
  if s.texts.shape[-1] != dim:
    raise ConfigError(f"{s.path}: text embeddings are {s.texts.shape[-1]}-d, the run's text "
                      f"encoder gives {dim}-d: evaluate with the encoder that made the set "
                      "(--override text_encoder.path=...)")
  return np.asarray(s.texts, np.float32)


def evaluate(s: PairSet, config, workdir: str) -> dict:
  clock = compute.Clock()
  data = image_text.load_data(config)
  with compute.open_run(config, workdir, data,
                        f"{s.format} set {s.path}: {len(s)} pairs on {data.name}") as ctx:
    enc = image_text.encoders(ctx)
    ev = image_text.evaluator(ctx, enc)
    images = _images(s, int(config.dataset.image_size))
    texts = _texts(ctx, s, enc.texts["train"].shape[-1])
    if ev.features:
      images = encode_features(ev.model, ev.backbone_vars, images)
    pairs = retrieval.PairSet(images, texts, s.similarity, s.lr_image, s.lr_text)
    results = image_text.results_header(ctx, enc, ev.model)
    results.update(method=f"{s.format} set", set=os.path.abspath(s.path), format=s.format,
                   notes=s.notes, jdd_version=jdd.__version__)
    results[NAME] = {"pairs_budget": len(s), "learned_similarity": s.similarity is not None,
                     **image_text.evaluate_named(ctx, ev, NAME, pairs)}
    results.update(image_text.evaluate_baselines(ctx, ev, enc.texts, learned=pairs))
    image_text.finish_results(ctx, results, [NAME])
    results["compute"] = clock.report(ctx.mesh.shape["data"])
    checkpoint.atomic_write_json(os.path.join(workdir, "results.json"), results)
  return results


def print_summary(results: dict) -> None:
  image_text.print_summary(results)
  for note in results.get("notes", []):
    print(f"note: {note}")
  print(compute.line(results["compute"]))
  test = results[NAME]["summary"]["test"]
  fields = {"format": results["format"], "dataset": results["dataset"],
            "pairs": results[NAME]["num_pairs"], "r_mean": test["r_mean"]["mean"],
            "r_mean_std": test["r_mean"]["std"]}
  randoms = [k for k in results if k.startswith("random_") and "summary" in results[k]]
  if randoms:
    fields["random_r_mean"] = results[randoms[0]]["summary"]["test"]["r_mean"]["mean"]
  comp = next((c for c in results.get("comparisons", []) if c["a"] == NAME), None)
  if comp:
    fields.update(difference=comp["mean"], verdict=comp["verdict"])
  fields.update(wall_s=results["compute"]["wall_seconds"],
                device_hours=results["compute"]["device_hours"])
  print(summary_line(fields), flush=True)
