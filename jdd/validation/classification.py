"""Checks of the decoupled image methods (SRe2L, INFER, FADRM) before any data is read.

`static(config)` needs nothing but the config; `with_data(config, facts, shapes)` compares it with
what the dataset holds (`jdd.validation.datasets`): the IPC against the training images per class
(the random-subset baseline draws that many real images per class, FADRM's patches
ipc x factor^2, INFER keeps J = floor(IPC B / (B + M)) real images per class and refuses J = 0),
teachers and student against the image shape, teacher checkpoints against their card.json.
"""

from __future__ import annotations

from jdd.errors import ConfigError
from jdd.validation import datasets, models
from jdd.validation.fields import MISSING, at_most, choice, fail, get, integer, interval, number
from jdd.validation.fields import positive

OPTIMIZERS = ("sgd", "adamw")


def _training(config, prefix: str, epochs) -> None:
  """The fields of a network's training (teacher or student) under `prefix`."""
  integer(config, f"{prefix}.batch_size", lo=1)
  positive(config, f"{prefix}.lr")
  choice(config, f"{prefix}.optimizer", OPTIMIZERS)
  number(config, f"{prefix}.weight_decay", lo=0.0)
  number(config, f"{prefix}.momentum", lo=0.0, hi=1.0)
  integer(config, f"{prefix}.warmup_epochs", lo=0, hi=epochs,
          why=f"warm-up must end within the {epochs} epochs")


def static(config) -> None:
  from jdd.data import augment
  from jdd.stages import relabel, teachers
  try:
    specs = teachers.teacher_specs(config)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  for name, tc, rel in specs:
    prefix = _teacher_prefix(config, name)
    if not tc.checkpoint:
      _training(config, prefix, integer(config, f"{prefix}.epochs", lo=1))
      integer(config, f"{prefix}.crop_padding", lo=0)

  r = "recover"
  integer(config, f"{r}.ipc", lo=1, why="the budget is images per class")
  positive(config, f"{r}.lr")
  integer(config, f"{r}.iterations", lo=1)
  integer(config, f"{r}.classes_per_batch", lo=1)
  integer(config, f"{r}.groups_per_step", lo=1)
  number(config, f"{r}.r_bn", lo=0.0)
  number(config, f"{r}.first_bn_multiplier", lo=0.0)
  interval(config, f"{r}.crop_scale", 0.0, 1.0)
  integer(config, f"{r}.jitter", lo=0)
  if config.method == "fadrm":
    _fadrm_static(config)

  rl = "relabel"
  mode = choice(config, f"{rl}.mode", relabel.BUILDERS)
  choice(config, f"{rl}.crop", augment.CROPS)
  choice(config, f"{rl}.mix", augment.MIXES)
  number(config, f"{rl}.mix_alpha", lo=0.0)
  interval(config, f"{rl}.crop_scale", 0.0, 1.0)
  integer(config, f"{rl}.crop_padding", lo=0)
  names = get(config, f"{rl}.teacher_names")
  if names not in (MISSING, None) and names:
    have = [n for n, _, _ in specs]
    undefined = [n for n in names if n not in have]
    if undefined:
      raise fail(f"{rl}.teacher_names", tuple(names), f"names of defined teachers {have}",
                 f"{undefined} are not defined")
  if mode in ("bssl", "bssl_online"):
    splits = integer(config, f"{rl}.num_splits", lo=1)
    accum = get(config, "evaluate.grad_accum_steps")
    accum = 1 if accum is MISSING else accum
    if splits is not MISSING and splits != accum:
      raise fail(f"{rl}.num_splits", splits, f"evaluate.grad_accum_steps ({accum})",
                 "BSSL labels each micro-batch of the student separately")
    weights = get(config, f"{rl}.teacher_weights")
    labelled = len(names or ()) or len(config.get("teacher_names") or ()) or 1
    if weights not in (MISSING, None) and len(weights) not in (0, labelled):
      raise fail(f"{rl}.teacher_weights", tuple(weights), f"() (uniform) or {labelled} weights, "
                 "one per labelling teacher")

  e = "evaluate"
  epochs = integer(config, f"{e}.epochs", lo=1)
  integer(config, f"{e}.eval_every", lo=1, hi=epochs,
          why=f"the student is scored every eval_every of its {epochs} epochs")
  integer(config, f"{e}.seeds", lo=1)
  _training(config, e, epochs)
  positive(config, f"{e}.temperature")
  integer(config, f"{e}.grad_accum_steps", lo=1)
  eta = number(config, f"{e}.cosine_eta", lo=1.0)
  if eta is not MISSING and float(epochs * eta) != int(epochs * eta):
    raise fail(f"{e}.cosine_eta", eta, f"a value >= 1 making evaluate.epochs * eta a whole "
               f"number (epochs={epochs})")
  _comparison(config)


def _comparison(config) -> None:
  """The fields of the like-with-like comparison (jdd.stages.evaluate) and the teacher cache."""
  from jdd.stages import evaluate as evaluate_stage
  e = "evaluate"
  integer(config, f"{e}.subset_draws", lo=0, why="0 draws one random subset per evaluation seed")
  integer(config, f"{e}.distill_seeds", lo=1, why="the number of distilled sets compared")
  modes = get(config, f"{e}.label_modes")
  if modes is not MISSING:
    names = tuple(modes) if isinstance(modes, (list, tuple)) else (modes,)
    bad = [m for m in names if m not in evaluate_stage.MODES]
    if not names or bad or "soft" not in names or len(set(names)) != len(names):
      raise fail(f"{e}.label_modes", names, f"distinct names of {evaluate_stage.MODES}, "
                 "'soft' among them", f"{bad} are not label modes" if bad else
                 "'soft' (the method's own labels) is the headline every comparison reports")
  cache = get(config, "teacher_cache")
  if cache is not MISSING and not isinstance(cache, str):
    raise fail("teacher_cache", cache, "'auto', '' (off) or a folder")


def _fadrm_static(config) -> None:
  r = "recover"
  res, budgets = tuple(config.recover.resolutions), tuple(config.recover.budgets)
  if not res or len(res) != len(budgets):
    raise fail(f"{r}.budgets", budgets, f"{len(res)} step counts, one per entry of "
               f"recover.resolutions {res}")
  for i, (size, steps) in enumerate(zip(res, budgets)):
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
      raise fail(f"{r}.resolutions", res, "sizes in pixels >= 1", f"entry {i} is {size!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
      raise fail(f"{r}.budgets", budgets, "step counts >= 1", f"entry {i} is {steps!r}")
  number(config, f"{r}.alpha", lo=0.0, hi=1.0)
  choice(config, f"{r}.compute_dtype", ("bfloat16", "float32"))
  choice(config, f"{r}.init.method", ("patches",), "FADRM starts from real patches")
  integer(config, f"{r}.init.factor", lo=1)
  integer(config, f"{r}.init.crops_per_image", lo=1)
  integer(config, f"{r}.init.candidates_per_class", lo=0)
  interval(config, f"{r}.init.crop_scale", 0.0, 1.0)
  from jdd.methods import fadrm
  choice(config, f"{r}.init.difficulty", fadrm.DIFFICULTIES,
         "which teacher-scored patches start the recover (FADRM's --patch-diff)")
  ic = config.recover.init
  least = int(config.recover.ipc) * int(ic.factor) ** 2
  if 0 < int(ic.candidates_per_class) < least:
    raise fail(f"{r}.init.candidates_per_class", int(ic.candidates_per_class),
               f"0 (ipc x factor^2) or at least {least}", "every patch cell is its own image")


def _teacher_prefix(config, name: str) -> str:
  from jdd.stages import teachers
  return f"teachers.{name}" if teachers.is_multi(config) else "teacher"


def with_data(config, facts: datasets.ClassificationFacts, shapes: bool = True) -> None:
  """The checks that need the dataset's facts; `shapes` also traces the networks."""
  from jdd.methods import infer
  from jdd.stages import teachers
  c, shape = facts.num_classes, facts.image_shape
  per_class, what = facts.train_per_class, f"{facts.name} ({facts.how})"
  ipc = int(config.recover.ipc)
  cpb = int(config.recover.classes_per_batch)
  if c % min(c, cpb):
    raise fail("recover.classes_per_batch", cpb, f"a divisor of {c} (or {c} or more)",
               f"each batch holds one image per class of a block of the {c} classes")
  at_most("recover.jitter", int(config.recover.jitter), shape[0] - 1,
          f"the images of {facts.name} are {shape[0]} px")
  if config.method == "infer":
    try:
      budget = infer.compensator_budget(ipc, c, len(config.get("teacher_names") or ()) or 1,
                                        cpb)
    except ValueError as e:
      raise ConfigError(f"recover.ipc={ipc}: {e}") from None
    if per_class is not None:
      b, m = budget.classes_per_group, budget.num_teachers
      at_most("recover.ipc", ipc, -(-(per_class + 1) * (b + m) // b) - 1,
              f"INFER keeps floor(ipc * {b} / ({b} + {m})) = {budget.real_per_class} real "
              f"training images per class and {what} has {per_class} per class")
  if per_class is not None and config.evaluate.get("baseline", False):
    at_most("recover.ipc", ipc, per_class,
            f"the random-subset baseline draws ipc real training images per class and {what} "
            f"has {per_class} per class", "or set evaluate.baseline=False")
  if config.method == "fadrm":
    cand, factor = int(config.recover.init.candidates_per_class), int(config.recover.init.factor)
    if factor > 1 and shape[0] % factor:
      raise fail("recover.init.factor", factor, f"a divisor of {shape[0]}",
                 f"a {factor}x{factor} mosaic tiles the {shape[0]}-px image")
    if per_class is not None and cand:
      at_most("recover.init.candidates_per_class", cand, per_class,
              f"they are real training images per class and {what} has {per_class} per class")
    elif per_class is not None:
      at_most("recover.ipc", ipc, per_class // factor ** 2,
              f"FADRM draws ipc x factor^2 = {ipc * factor ** 2} real candidate images per class "
              f"for its patches and {what} has {per_class} per class")

  for name, tc, rel in teachers.teacher_specs(config):
    prefix = _teacher_prefix(config, name)
    if tc.checkpoint:
      expect = {"arch": tc.arch, "kwargs": dict(tc.kwargs), "num_classes": c,
                "image_shape": list(shape)}
      models.card(prefix, tc.checkpoint, expect, facts.name)
      continue
    if facts.streamed:
      raise fail(f"{prefix}.checkpoint", "", "a converted teacher folder (card.json + "
                 "variables/), or dataset.max_train > 0 for a materialised subset",
                 f"the training split of {facts.name} is streamed, so no teacher is squeezed "
                 "on it")
    if facts.train_images is not None:
      at_most(f"{prefix}.batch_size", int(tc.batch_size), facts.train_images,
              f"a teacher epoch is train_images // batch_size steps and {what} has "
              f"{facts.train_images} training images")
  if shapes:
    _shapes(config, facts)


def _shapes(config, facts) -> None:
  from jdd.stages import teachers
  c, shape = facts.num_classes, facts.image_shape
  for name, tc, _ in teachers.teacher_specs(config):
    prefix = _teacher_prefix(config, name)
    model = models.module(prefix, tc.arch, tc.kwargs, c)
    variables = models.variable_shapes(prefix, model, shape, facts.name)
    if config.method == "fadrm":
      for size in sorted(set(int(s) for s in config.recover.resolutions) - {shape[0]}):
        models.applies_at(prefix, model, variables, size, shape[2], "recover.resolutions entry")
  st = config.evaluate.student
  student = models.module("evaluate.student", st.arch, st.get("kwargs", {}), c)
  models.variable_shapes("evaluate.student", student, shape, facts.name)


def facts_of(config):
  return datasets.classification(config.dataset)
