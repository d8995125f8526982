"""The references' retrieval evaluators as named protocols (`evaluate.protocol`).

Three codebases train the evaluation model on a distilled set differently, and a number is only
comparable with a paper's under that paper's evaluator. Each protocol fixes the optimiser and
schedule of `jdd.evaluation.retrieval.train_and_score`:

* `'lors'`: LoRS `evaluate_synset_with_similarity` / RepBlend `src/epoch.py`
  (shared/research/multimodal_dd_methods.md §6): SGD momentum 0.9, coupled weight decay 5e-4,
  the set's learned learning rate per modality, x0.1 at epoch Epoch // 2 + 1, Epoch + 1 epochs
  of ceil(N / 128) batches, each the first min(128, N) indices of a fresh permutation, the
  method's loss (WBCE against the learned S, or InfoNCE); test scored at every evaluation point
  and the best test r_mean reported.
* `'mttvl'`: MTT-VL `epoch.py:evaluate_synset` (princetonvisualai/multimodal_dataset_distillation
  at c696fd6): one learning rate for both modalities, the learned *image* rate
  (`args.lr_net = syn_lr_img`), SGD momentum 0.9, weight decay 5e-4, batch 64 from a shuffled
  DataLoader (the last, partial batch kept), Epoch + 1 = 51 epochs with no decay before the
  final evaluation (its x0.1 comes after the test at epoch Epoch), symmetric InfoNCE, test scored
  once, after the final epoch, and that number reported.
* `'edge'`: ichbill/EDGE `evaluation/evaluation.py` at bb18c46 (LoRS's `buffer.py` with the
  trajectory saving removed): SGD lr 0.1 per modality, momentum 0, weight decay 0, symmetric
  InfoNCE, batch 64 (the README's command; the argparse default is 32) with drop_last, train
  augmentation on, no decay, `range(100)` epochs, test scored after every 5th epoch. Which of
  those points the paper reports is not in the code; jdd reports the best test r_mean, labelled.

jdd keeps its own selection under every protocol: the evaluation point with the best *val*
r_mean is selected and its test recalls are the headline; the protocol's own number (best test,
or the final epoch's test) is stored beside it as `reference_protocol_best_test` or
`reference_protocol_final_epoch_test`.

Each protocol's fields are written into the config (`jdd.configs.image_text.apply_protocol`), so
`config.json` shows every value a run used; `check` refuses a config whose fields contradict the
protocol it names (`'custom'` names none and checks nothing).

What still differs from each reference (also in docs/trajectory_matching.md and docs/edge.md):
the `'edge'` augmentation is RandomResizedCrop (scale 0.5-1, bilinear instead of bicubic) and a
horizontal flip per image, without the RandAugment(2, 5) that follows them in the reference;
a set smaller than the batch is one batch of all its pairs (torch's drop_last would train on
nothing); the text encoder is frozen in every reference, so jdd feeds precomputed caption
embeddings; several seeds are trained, not the references' single run (EDGE) or 5 networks
(MTT-VL, LoRS).
"""

from __future__ import annotations

import dataclasses
import math

# Fields every protocol fixes, in the order they are checked and written.
FIXED = ("batch_size", "batching", "shared_lr", "momentum", "weight_decay", "lr_step", "augment",
         "extra_epoch", "grid", "reference")
BATCHING = ("first", "shuffle", "drop_last")
GRIDS = ("start", "end")
REFERENCES = ("best_test", "final_epoch_test")
# Crop scale of the 'edge' protocol's RandomResizedCrop (EDGE dataset/__init__.py, min_scale).
AUGMENT_SCALE = (0.5, 1.0)


@dataclasses.dataclass(frozen=True)
class Protocol:
  """One reference evaluator: what it fixes (`FIXED`, plus `loss` unless None: the method's),
  and the epochs and scoring interval it uses by default."""
  name: str
  batch_size: int
  batching: str          # 'first': the first min(b, N) of a fresh permutation per batch,
                         # ceil(N / b) batches; 'shuffle': one permutation per epoch cut into
                         # batches, last partial; 'drop_last': floor(N / b) full batches
  shared_lr: bool        # the image learning rate for both modalities
  momentum: float
  weight_decay: float
  lr_step: bool          # x0.1 from epoch Epoch // 2 + 1
  augment: bool          # RandomResizedCrop + flip on the image batch (pixels only)
  extra_epoch: bool      # Epoch + 1 epochs (range(Epoch + 1)); False: Epoch
  grid: str              # scoring points: 'start' 0, k, 2k, ... | 'end' k-1, 2k-1, ...; both
                         # also the last epoch
  reference: str         # the protocol's own number: 'best_test' | 'final_epoch_test'
  loss: str | None       # None: the method's ('wbce' with S, or 'infonce')
  epochs: int            # the reference's Epoch
  eval_every: int        # the reference's scoring interval (jdd's val grid under 'mttvl')
  source: str


PROTOCOLS: dict[str, Protocol] = {
    "lors": Protocol("lors", 128, "first", False, 0.9, 5e-4, True, False, True, "start",
                     "best_test", None, 100, 10,
                     "LoRS evaluate_synset_with_similarity / RepBlend src/epoch.py"),
    "mttvl": Protocol("mttvl", 64, "shuffle", True, 0.9, 5e-4, False, False, True, "start",
                      "final_epoch_test", "infonce", 50, 10,
                      "MTT-VL epoch.py evaluate_synset (c696fd6)"),
    "edge": Protocol("edge", 64, "drop_last", False, 0.0, 0.0, False, True, False, "end",
                     "best_test", "infonce", 100, 5,
                     "EDGE evaluation/evaluation.py (bb18c46)"),
}
NAMES = (*PROTOCOLS, "custom")


def fixed_values(name: str) -> dict:
  """The config fields protocol `name` fixes (its loss too, when it has its own)."""
  p = PROTOCOLS[name]
  out = {f: getattr(p, f) for f in FIXED}
  if p.loss is not None:
    out["loss"] = p.loss
  return out


def check(ec) -> None:
  """Refuses an `evaluate` block whose fields contradict the protocol it names, or that holds
  an unknown value, with what to change."""
  name = str(ec.protocol)
  if name not in NAMES:
    raise ValueError(f"evaluate.protocol={name!r}: choose one of {list(NAMES)}")
  if str(ec.batching) not in BATCHING:
    raise ValueError(f"evaluate.batching={ec.batching!r}: choose one of {list(BATCHING)}")
  if str(ec.grid) not in GRIDS:
    raise ValueError(f"evaluate.grid={ec.grid!r}: choose one of {list(GRIDS)}")
  if str(ec.reference) not in REFERENCES:
    raise ValueError(f"evaluate.reference={ec.reference!r}: choose one of {list(REFERENCES)}")
  if name == "custom":
    return
  wrong = []
  for field, want in fixed_values(name).items():
    have = ec[field]
    same = (math.isclose(float(have), float(want), rel_tol=0, abs_tol=1e-12)
            if isinstance(want, float) else type(want)(have) == want)
    if not same:
      wrong.append(f"evaluate.{field}={have!r} (the protocol's: {want!r})")
  if wrong:
    raise ValueError(
        f"evaluate.protocol={name!r} ({PROTOCOLS[name].source}) fixes these fields, but the "
        f"config has {', '.join(wrong)}. Build the config with the variant `:protocol={name}` "
        "(it writes every field), or set evaluate.protocol='custom' to train with your own "
        "settings (the results are then labelled custom)")


def complete(ec):
  """`ec` with every protocol field: a block built by hand without `protocol` (a notebook, a
  test) is 'custom', its missing fields LoRS's. Returns a new ConfigDict; `ec` is untouched."""
  import ml_collections
  out = ml_collections.ConfigDict(ec.to_dict() if hasattr(ec, "to_dict") else dict(ec))
  if "protocol" not in out:
    out.protocol = "custom"
  for field, value in fixed_values("lors").items():
    if field not in out:
      out[field] = value
  return out


def check_config(config) -> None:
  """`check` of `config.evaluate`, and pixels for an augmenting protocol (the image-text
  drivers call it before any work)."""
  check(config.evaluate)
  if bool(config.evaluate.augment) and not bool(config.model.train_backbone):
    raise ValueError(f"evaluate.augment (protocol {config.evaluate.protocol!r}) crops and flips "
                     "pixels, but model.train_backbone=False trains on cached features: set "
                     "model.train_backbone=True (EDGE's evaluator trains the NFNet)")


@dataclasses.dataclass(frozen=True)
class Schedule:
  """One evaluation run's schedule, resolved from the config and the pair count."""
  epochs_run: int        # epochs trained
  batch: int             # rows per batch (min(batch_size, N))
  batches: int           # batches per epoch
  milestone: int | None  # first epoch at x0.1, or None
  points: tuple[int, ...]

  def factor(self, epoch: int) -> float:
    return 0.1 if self.milestone is not None and epoch >= self.milestone else 1.0


def schedule(ec, n: int) -> Schedule:
  """Epochs, batches per epoch, decay milestone and scoring points for `n` pairs."""
  epochs = int(ec.epochs)
  run = epochs + 1 if bool(ec.extra_epoch) else epochs
  if run < 1:
    raise ValueError(f"evaluate.epochs={epochs} trains nothing; use at least 1")
  b = min(int(ec.batch_size), n)
  batches = n // b if str(ec.batching) == "drop_last" else math.ceil(n / b)
  every = max(1, int(ec.eval_every))
  if str(ec.grid) == "start":
    points = [e for e in range(run) if e % every == 0]
  else:
    points = [e for e in range(run) if (e + 1) % every == 0]
  if not points or points[-1] != run - 1:
    points.append(run - 1)
  return Schedule(run, b, batches, epochs // 2 + 1 if bool(ec.lr_step) else None,
                  tuple(points))


def learning_rates(ec, lr_image: float | None, lr_text: float | None) -> tuple[float, float]:
  """(image, text) learning rates: a set's learned ones, else the config's; under
  `shared_lr` the image rate for both (MTT-VL's `lr_net = syn_lr_img`)."""
  img = float(lr_image if lr_image is not None else ec.lr_image)
  txt = float(lr_text if lr_text is not None else ec.lr_text)
  return (img, img) if bool(ec.shared_lr) else (img, txt)


def describe(ec) -> dict:
  """The protocol as results.json records it."""
  name = str(ec.protocol)
  keys = (*FIXED, "loss", "epochs", "eval_every", "lr_image", "lr_text")
  out: dict = {"name": name, **{k: _plain(ec[k]) for k in keys}}
  out["source"] = PROTOCOLS[name].source if name in PROTOCOLS else "custom settings"
  return out


def _plain(v):
  return v if isinstance(v, (bool, int, float, str)) else str(v)


def reference_key(ec_or_rule) -> str:
  """The results key of the protocol's own number."""
  rule = ec_or_rule if isinstance(ec_or_rule, str) else str(ec_or_rule.reference)
  return f"reference_protocol_{rule}"
