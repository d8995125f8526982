"""Retrieval evaluation: train a fresh retrieval model on a set of pairs, report IR/TR@1/5/10.

Reference protocol (shared/research/multimodal_dd_methods.md §6; `src/epoch.py` of RepBlend and
LoRS `evaluate_only.py`): a fresh `CLIPModel_full` (pretrained encoder, random heads, tau 0.07)
is trained on the N pairs with SGD (momentum 0.9, coupled weight decay 5e-4), the learned student
learning rates per modality, a x0.1 step at epoch Epoch // 2 + 1, for Epoch + 1 epochs of
ceil(N / 128) batches, each batch the first min(128, N) indices of a fresh permutation, loss WBCE
against the (learned) similarity S[B, B]. Test recall is computed at every `eval_every` epochs and
the reference reports the evaluation point with the best *test* r_mean. That is the `'lors'`
protocol; MTT-VL's and EDGE's evaluators are the `'mttvl'` and `'edge'` protocols
(`jdd.evaluation.retrieval_protocols`, `evaluate.protocol`).

jdd differs on purpose (research §6, DESIGN.md "honest evaluation"):

* the evaluation point is selected on the **val** split and the test recalls at that point are
  the headline; the protocol's own number (best test r_mean over its evaluation points, or the
  final epoch's test) is reported beside it as `reference_protocol_best_test` /
  `reference_protocol_final_epoch_test`, labelled as such;
* several evaluation seeds, each its own fresh heads, batch order and dropout, reported as
  mean +- std (sample std, `jdd.evaluation.stats`);
* every random draw is `fold_in` of the seed, so a rerun reproduces the numbers.

`evaluate_pairs` scores any set of pairs: a distilled set (with its learned S and learning
rates) or random / herding subsets of real pairs, the baselines every table reports.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jdd.data import augment as augment_lib
from jdd.data.pipeline import Rows
from jdd.evaluation import retrieval_protocols as protocols
from jdd.evaluation import stats
from jdd.evaluation.retrieval_metrics import retrieval_metrics, score_matrix
from jdd.loop import host_rng
from jdd.models.retrieval import RetrievalModel
from jdd.objectives.contrastive import infonce_loss, logit_scale, wbce_loss

METRICS = ("img_r1", "img_r5", "img_r10", "txt_r1", "txt_r5", "txt_r10", "r_mean")


@dataclasses.dataclass(frozen=True)
class EvalSplitData:
  """What scoring one split needs: image inputs (pixels or frozen features), text embeddings,
  and BLIP's index maps."""

  images: np.ndarray
  texts: np.ndarray
  txt2img: np.ndarray
  img2txt: Sequence[np.ndarray]


@dataclasses.dataclass(frozen=True)
class PairSet:
  """Training pairs: image inputs (N, ...) and text embeddings (N, D), optionally the soft
  similarity targets (N, N) and per-modality learning rates (a distilled set's learned ones)."""

  images: np.ndarray
  texts: np.ndarray
  similarity: np.ndarray | None = None
  lr_image: float | None = None
  lr_text: float | None = None

  def __post_init__(self):
    if len(self.images) != len(self.texts):
      raise ValueError(f"{len(self.images)} images but {len(self.texts)} texts")
    if self.similarity is not None and np.shape(self.similarity) != (len(self.texts),) * 2:
      raise ValueError(f"similarity must be ({len(self.texts)}, {len(self.texts)}), got "
                       f"{np.shape(self.similarity)}")


def _sgd(weight_decay: float, momentum: float) -> optax.GradientTransformation:
  """torch SGD: g += wd * p; buf = m * buf + g (no dampening). The -lr is applied outside so
  the (learned) learning rates stay runtime arguments and nothing recompiles per set."""
  return optax.chain(optax.add_decayed_weights(weight_decay), optax.trace(decay=momentum))


def augment_images(key: jax.Array, images: jax.Array) -> jax.Array:
  """The 'edge' protocol's train augmentation on a (normalised) pixel batch: per image, a
  RandomResizedCrop back to the input size (scale 0.5-1) and a horizontal flip."""
  kc, kf = jax.random.split(key)
  out = augment_lib.random_resized_crop(kc, images, images.shape[1:3],
                                        scale=protocols.AUGMENT_SCALE, per_image=True)
  return augment_lib.random_flip(kf, out, per_image=True)


def make_train_step(model: RetrievalModel, *, loss: str, features: bool, weight_decay: float,
                    momentum: float, temperature: float | None = None, augment: bool = False):
  """`step(params, opt_state, frozen, images, texts, sim, rng, lr_img, lr_txt)` (jit it once).
  `augment` draws `augment_images` from `rng` (pixels only: cached features cannot be cropped)."""
  opt = _sgd(weight_decay, momentum)
  if loss not in ("wbce", "infonce"):
    raise ValueError(f"loss must be 'wbce' or 'infonce', got {loss!r}")
  if augment and features:
    raise ValueError("evaluate.augment crops and flips pixels, but this evaluator trains on "
                     "frozen-backbone features: set model.train_backbone=True (EDGE's evaluator "
                     "trains the NFNet) or choose a protocol without augmentation")

  def loss_fn(params, frozen, images, texts, sim, rng):
    if augment:
      rng, akey = jax.random.split(rng)
      images = augment_images(akey, images)
    logits = model.logits(params, frozen, images, texts, features=features, train=True,
                          rng=rng, temperature=temperature)
    if loss == "wbce":
      return wbce_loss(logits, sim)
    return infonce_loss(logits)

  def step(params, opt_state, frozen, images, texts, sim, rng, lr_img, lr_txt):
    value, grads = jax.value_and_grad(loss_fn)(params, frozen, images, texts, sim, rng)
    updates, opt_state = opt.update(grads, opt_state, params)
    scaled = {"image": jax.tree.map(lambda u: -lr_img * u, updates["image"]),
              "text": jax.tree.map(lambda u: -lr_txt * u, updates["text"])}
    return optax.apply_updates(params, scaled), opt_state, value

  return opt, step


_COMPILED: dict = {}


def _cached(kind: str, model: RetrievalModel, build, **kw):
  """One jitted function per (model object, settings): every evaluation seed, baseline set and
  expert reuses the compilation instead of re-jitting a fresh closure per call."""
  key = (kind, id(model), tuple(sorted(kw.items())))
  hit = _COMPILED.get(key)
  if hit is None or hit[0] is not model:
    hit = (model, build(model, **kw))
    _COMPILED[key] = hit
  return hit[1]


def compiled_train_step(model: RetrievalModel, **kw):
  """`make_train_step` with the step jitted, cached per model and settings: (opt, step)."""
  kw = {"temperature": None, "augment": False, **kw}   # one cache entry per actual setting

  def build(m, **k):
    opt, step = make_train_step(m, **k)
    return opt, jax.jit(step)
  return _cached("train_step", model, build, **kw)


def make_embedders(model: RetrievalModel, *, features: bool):
  """Jitted (image, text) embedding functions; build once per model, reuse at every eval point."""
  img_fn = jax.jit(lambda p, f, x: model.image_embed(p, f, x, features=features))
  txt_fn = jax.jit(lambda p, t: model.text_embed(p, t))
  return img_fn, txt_fn


def embed_split(embedders, params, frozen, split: EvalSplitData, batch_size: int = 256):
  """Image and text embeddings of a whole split, batched (last batch padded: one compile)."""
  img_fn, txt_fn = embedders

  def batched(fn, arr):
    out = []
    for s in range(0, len(arr), batch_size):
      x = np.asarray(arr[s:s + batch_size])
      rows = len(x)
      if rows < batch_size and len(arr) > batch_size:
        x = np.concatenate([x, np.repeat(x[-1:], batch_size - rows, 0)])
      out.append(np.asarray(fn(jnp.asarray(x)))[:rows])
    return np.concatenate(out)

  u = batched(lambda x: img_fn(params, frozen, x), split.images)
  v = batched(lambda t: txt_fn(params, t), split.texts)
  return u, v


def score_split(model, embedders, params, frozen, split: EvalSplitData) -> dict:
  u, v = embed_split(embedders, params, frozen, split)
  scores = score_matrix(u, v, float(logit_scale(model.temperature)))
  return retrieval_metrics(scores, split.txt2img, split.img2txt)


def epoch_batches(batching: str, n: int, sched: protocols.Schedule, ekey: jax.Array):
  """The index arrays of one epoch. 'first': batch i is the first `batch` indices of its own
  permutation (fold_in(ekey, i), the LoRS/RepBlend SimilarityDataloader); 'shuffle' /
  'drop_last': one permutation of the epoch (from fold_in(ekey, batches), a key no batch uses)
  cut into consecutive batches, the last one partial or dropped (a torch DataLoader)."""
  b = sched.batch
  if batching == "first":
    return [np.asarray(jax.random.permutation(jax.random.fold_in(jax.random.fold_in(ekey, i), 0),
                                              n))[:b] for i in range(sched.batches)]
  perm = np.asarray(jax.random.permutation(jax.random.fold_in(ekey, sched.batches), n))
  return [perm[i * b:(i + 1) * b] for i in range(sched.batches)]


def train_and_score(model: RetrievalModel, backbone_variables: dict, pairs: PairSet,
                    splits: Mapping[str, EvalSplitData], cfg, seed: int, *, features: bool,
                    progress: Callable[[int, dict], None] | None = None) -> dict:
  """One evaluation seed: train a fresh model on `pairs`, score `splits` at each eval point.

  `cfg` is the `evaluate` block: its protocol fields (`jdd.evaluation.retrieval_protocols`:
  batch_size, batching, shared_lr, momentum, weight_decay, lr_step, augment, extra_epoch, grid,
  reference), epochs (the reference's Epoch), eval_every, loss ('wbce' | 'infonce') and
  lr_image / lr_text (used when the pair set carries none).
  Returns per-eval-point metrics, the val-selected test metrics and the protocol's number.
  """
  cfg = protocols.complete(cfg)
  protocols.check(cfg)
  key = jax.random.fold_in(jax.random.key(int(seed)), 0)
  frozen = None if model.train_backbone else backbone_variables
  params = model.init(jax.random.fold_in(key, 0), backbone_variables, pairs.texts.shape[-1])
  opt, step = compiled_train_step(model, loss=str(cfg.loss), features=features,
                                  weight_decay=float(cfg.weight_decay),
                                  momentum=float(cfg.momentum), augment=bool(cfg.augment))
  embedders = _cached("embedders", model, make_embedders, features=features)
  opt_state = opt.init(params)
  n = len(pairs.texts)
  sched = protocols.schedule(cfg, n)
  lr_img, lr_txt = protocols.learning_rates(cfg, pairs.lr_image, pairs.lr_text)
  sim = (np.eye(n, dtype=np.float32) if pairs.similarity is None
         else np.asarray(pairs.similarity, np.float32))
  # Streamed rows (jdd.data.pipeline.Rows) stay lazy: each batch reads its own images.
  images = pairs.images if isinstance(pairs.images, Rows) else np.asarray(pairs.images)
  texts = np.asarray(pairs.texts, np.float32)
  points = []
  scored = set(sched.points)
  for epoch in range(sched.epochs_run):
    factor = sched.factor(epoch)
    ekey = jax.random.fold_in(key, 1 + epoch)
    loss_sum = 0.0
    for i, idx in enumerate(epoch_batches(str(cfg.batching), n, sched, ekey)):
      bkey = jax.random.fold_in(ekey, i)
      params, opt_state, value = step(
          params, opt_state, frozen, jnp.asarray(images[idx]), jnp.asarray(texts[idx]),
          jnp.asarray(sim[np.ix_(idx, idx)]), jax.random.fold_in(bkey, 1),
          jnp.float32(lr_img * factor), jnp.float32(lr_txt * factor))
      loss_sum += float(value)
    if not np.isfinite(loss_sum):
      raise FloatingPointError(f"retrieval evaluation (seed {seed}): loss became {loss_sum} at "
                               f"epoch {epoch}; lower the learning rates (image {lr_img}, "
                               f"text {lr_txt})")
    if epoch in scored:
      point = {"epoch": epoch, "train_loss": loss_sum / max(1, sched.batches)}
      for name, split in splits.items():
        point[name] = score_split(model, embedders, params, frozen, split)
      points.append(point)
      if progress is not None:
        progress(epoch + 1, {"loss": point["train_loss"],
                             **{f"{s}_r_mean": point[s]["r_mean"] for s in splits}})
  return select(points, str(cfg.reference))


def select(points: Sequence[dict], reference: str = "best_test") -> dict:
  """Val-selected test metrics, and the protocol's own number, labelled: the best test r_mean
  over the points ('best_test') or the last point's test ('final_epoch_test')."""
  out: dict[str, Any] = {"points": list(points)}
  if "val" in points[0]:
    best = max(points, key=lambda p: (p["val"]["r_mean"], -p["epoch"]))
    out["selected_epoch"] = best["epoch"]
    out["val"] = best["val"]
    if "test" in best:
      out["test"] = best["test"]
  if "test" in points[0]:
    if reference == "final_epoch_test":
      ref = points[-1]
    else:
      ref = max(points, key=lambda p: (p["test"]["r_mean"], -p["epoch"]))
    out[protocols.reference_key(reference)] = {"epoch": ref["epoch"], **ref["test"]}
  return out


REFERENCE_KEYS = tuple(protocols.reference_key(r) for r in protocols.REFERENCES)


def summarise(per_seed: Sequence[dict]) -> dict:
  """Mean and sample std over seeds (`stats.mean_std`) of the val-selected test recalls and of
  the protocol's number, and the mean val / test r_mean curve over seeds."""
  out: dict[str, Any] = {"num_seeds": len(per_seed)}
  for name in ("test", *REFERENCE_KEYS):
    rows = [r[name] for r in per_seed if name in r]
    if rows:
      out[name] = {m: _ms([r[m] for r in rows]) for m in METRICS}
  out["selected_epochs"] = [r.get("selected_epoch") for r in per_seed]
  curve = mean_curve(per_seed)
  if curve:
    out["curve"] = curve
  return out


def _ms(values) -> dict:
  s = stats.mean_std(values)
  return {"mean": s["mean"], "std": s["std"]}


def mean_curve(per_seed: Sequence[dict]) -> dict:
  """{epochs, <split>_r_mean: mean over the seeds that hold `points`} for the curves plot."""
  runs = [r["points"] for r in per_seed if r.get("points")]
  if not runs:
    return {}
  epochs = [p["epoch"] for p in runs[0]]
  out: dict[str, Any] = {"epochs": epochs}
  for split in ("val", "test"):
    if split in runs[0][0]:
      out[f"{split}_r_mean"] = [float(np.mean([pts[i][split]["r_mean"] for pts in runs]))
                                for i in range(len(epochs))]
  return out


# ------------------------------------------------------------------------------ baselines
def random_pairs(num_pairs: int, image_index: np.ndarray, key: jax.Array) -> np.ndarray:
  """Indices of `num_pairs` train captions, one per distinct image (a random real subset)."""
  image_index = np.asarray(image_index)
  rng = host_rng(key)
  images = np.unique(image_index)
  if num_pairs > len(images):
    raise ValueError(f"asked for {num_pairs} pairs but the train split has {len(images)} images")
  chosen = rng.choice(images, num_pairs, replace=False)
  out = []
  for img in chosen:
    caps = np.flatnonzero(image_index == img)
    out.append(int(rng.choice(caps)))
  return np.asarray(out, np.int64)


def herding_pairs(num_pairs: int, image_features: np.ndarray, text_features: np.ndarray,
                  image_index: np.ndarray) -> np.ndarray:
  """Herding on the concatenated, L2-normalised (image, text) features of every caption pair:
  greedily add the pair that keeps the selected mean closest to the full mean (Welling 2009),
  never two captions of one image."""
  def norm(x):
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
  feats = np.concatenate([norm(image_features[np.asarray(image_index)]), norm(text_features)], 1)
  target = feats.mean(0)
  used_images: set[int] = set()
  chosen: list[int] = []
  running = np.zeros_like(target)
  available = np.ones(len(feats), bool)
  for k in range(num_pairs):
    cand = np.flatnonzero(available)
    if cand.size == 0:
      raise ValueError(f"herding ran out of images after {k} pairs")
    err = np.linalg.norm(target - (running[None] + feats[cand]) / (k + 1), axis=1)
    pick = int(cand[np.argmin(err)])
    chosen.append(pick)
    running += feats[pick]
    img = int(image_index[pick])
    used_images.add(img)
    available &= np.asarray(image_index) != img
  return np.asarray(chosen, np.int64)


def evaluate_pairs(model: RetrievalModel, backbone_variables: dict, pairs: PairSet,
                   splits: Mapping[str, EvalSplitData], cfg, seeds: Sequence[int], *,
                   features: bool, on_seed: Callable[[int, dict], None] | None = None,
                   done: Mapping[int, dict] | None = None, progress_factory=None,
                   spread: Callable[[int, Callable[[int], dict]], list] | None = None) -> dict:
  """`train_and_score` over `seeds` (finished seeds in `done` are reused) and their summary.

  `spread(n, compute)` may compute the seeds elsewhere (`jdd.distributed.spread`: seed i on
  process i mod N) and must return [compute(0), ..., compute(n - 1)]; `on_seed` then sees each
  fresh result once all are known (every process alike), instead of as soon as it is known.
  Every result is as JSON holds it (a fresh one, a resumed one and one received from another
  process summarise alike)."""
  from jdd.checkpoint import json_default

  def one(i: int) -> dict:
    seed = seeds[i]
    if done and seed in done:
      return done[seed]
    progress = progress_factory(seed) if progress_factory else None
    r = train_and_score(model, backbone_variables, pairs, splits, cfg, seed, features=features,
                        progress=progress)
    r = json.loads(json.dumps(r, default=json_default))
    if on_seed is not None and spread is None:
      on_seed(seed, r)
    return r

  if spread is None:
    results = [one(i) for i in range(len(seeds))]
  else:
    results = spread(len(seeds), one)
    for seed, r in zip(seeds, results):
      if on_seed is not None and not (done and seed in done):
        on_seed(seed, r)
  return {"per_seed": [{k: v for k, v in r.items() if k != "points"} for r in results],
          "summary": summarise(results)}

