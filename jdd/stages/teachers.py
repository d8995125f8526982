"""Squeeze: the run's teachers, each loaded from a folder or trained here (resumable).

Two config schemas are accepted:
- one teacher, `config.teacher` (SRe2L's configs): stored in W/teacher/ and checkpointed as
  stage `squeeze`;
- several, `config.teachers` (a ConfigDict name -> teacher ConfigDict with the same fields as
  `config.teacher`) ordered by `config.teacher_names`: stored in W/teachers/<name>/, each with
  its own key (below), so that reordering or adding teachers never changes one already
  trained. INFER assigns teacher m to the m-th name; FADRM+ cycles
  through the names in that order. Teachers defined but not in `teacher_names` are loaded
  after them (for label sources that name them). A config holding both (`teacher` as an alias of the first)
  uses the list.

A teacher folder holds `variables/` (Orbax) and `card.json` (arch, kwargs, num_classes,
image_shape, dataset, normalisation, accuracies). `teacher.checkpoint` points at such a folder:
a finished run's, or one written by the converter CLI from third-party weights.

A teacher squeezed here is trained with the key `fold_in(keys['squeeze'], digest)`, where the
digest covers its architecture, recipe, training split and seed (`jdd.stages.teacher_cache`),
so the same teacher is the same network in every config that asks for it, whatever its name;
with `config.teacher_cache` on it is trained once and then found in the cache (or among the
teachers shipped with jdd). Two teachers of one config with the same digest would be the same
network and are refused.

The full-data student (`full_data_student`) is the DD-Ranking ceiling: the evaluation's student
architecture trained on the whole training split with hard labels, by the first teacher's
squeeze recipe, through the same code and cache (the first teacher itself when it already is
that network).
"""

from __future__ import annotations

import functools
import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from jdd import checkpoint, models, training
from jdd.loop import RunContext, Teacher
from jdd.stages import teacher_cache


def is_multi(config) -> bool:
  """The list schema is in use when `teacher_names` names at least one teacher (a config may
  also keep `teacher` as an alias of the first; the list wins)."""
  return bool(config.get("teacher_names")) or (
      "teacher" not in config and "teachers" in config)


def teacher_specs(config) -> list[tuple[str, object, str]]:
  """[(name, teacher config, folder relative to the workdir)] in `teacher_names` order."""
  if is_multi(config):
    names = tuple(config.get("teacher_names") or ())
    have = tuple(config.teachers.keys())
    if not names:
      raise ValueError("config.teacher_names is empty: list the teachers of config.teachers in "
                       "the order the method uses them")
    undefined = [n for n in names if n not in have]
    if len(set(names)) != len(names) or undefined:
      raise ValueError(f"config.teacher_names={names} must name each teacher at most once and "
                       f"only teachers defined in config.teachers ({sorted(have)}); "
                       f"undefined: {undefined}")
    # Teachers defined but not ordered (e.g. used only by a label source) come last.
    names = names + tuple(n for n in have if n not in names)
    return [(n, config.teachers[n], os.path.join("teachers", n)) for n in names]
  if "teacher" in config:
    return [("teacher", config.teacher, "teacher")]
  raise ValueError("the config has neither `teacher` nor `teachers`/`teacher_names`")


def expected_card(tc, data) -> dict:
  return {"arch": tc.arch, "kwargs": dict(tc.kwargs), "num_classes": data.num_classes,
          "image_shape": list(data.image_shape), "dataset": data.name, "mean": list(data.mean),
          "std": list(data.std)}


def load_teacher(path: str, expect: dict):
  """Loads a teacher folder (variables/ + card.json); refuses one built for another setting.

  `expect` needs arch, kwargs, num_classes and image_shape. Returns (model, variables, card).
  """
  card_path = os.path.join(path, "card.json")
  if not os.path.exists(card_path):
    raise FileNotFoundError(
        f"teacher.checkpoint={path!r} has no card.json: point it at the `teacher/` folder of a "
        "finished jdd run (W/teacher or W/teachers/<name>), a converted teacher folder, or leave "
        "it empty to train the teacher here.")
  card = checkpoint.read_json(card_path)
  for field in ("arch", "kwargs", "num_classes", "image_shape"):
    if card.get(field) != expect[field]:
      raise ValueError(
          f"teacher at {path} has {field}={card.get(field)!r} but this config needs "
          f"{expect[field]!r}; set teacher.arch/kwargs to match it or squeeze a new teacher.")
  model = models.build_model(card["arch"], card["num_classes"], **card["kwargs"])
  template = jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0),
                                                          tuple(card["image_shape"])))
  variables = ocp.StandardCheckpointer().restore(
      os.path.abspath(os.path.join(path, "variables")), template)
  return model, variables, card


def _train_teacher(ctx: RunContext, name: str, tc, folder: str, stage: str, key):
  data = ctx.data
  if not hasattr(data.train, "images"):
    raise ValueError(
        f"{data.name}: squeezing a teacher on a streamed training split is not supported; set "
        f"the checkpoint of teacher {name!r} to a converted teacher folder (card.json + "
        "variables).")
  model = models.build_model(tc.arch, data.num_classes, **dict(tc.kwargs))
  variables = models.init_variables(model, jax.random.fold_in(key, 0), data.image_shape)
  n, b = len(data.train), int(tc.batch_size)
  s = n // b
  optimizer = training.make_optimizer(tc, s)
  state = training.init_state(variables, optimizer)
  step = jax.jit(functools.partial(
      training.supervised_step, model=model, optimizer=optimizer, mean=data.mean, std=data.std,
      crop_padding=int(tc.crop_padding), flip=bool(tc.flip)))
  order_key = jax.random.fold_in(key, 1)
  epoch_perm = {}

  def batch_fn(i):
    e, k = divmod(i, s)
    if e not in epoch_perm:
      epoch_perm.clear()
      epoch_perm[e] = np.asarray(jax.random.permutation(jax.random.fold_in(order_key, e), n))
    idx = epoch_perm[e][k * b:(k + 1) * b]
    return {"images": data.train.images[idx], "labels": data.train.labels[idx]}

  state = ctx.loop(stage, state, step, batch_fn, int(tc.epochs) * s, jax.random.fold_in(key, 2))
  variables = training.variables_of(state)
  predict = training.predict_fn(model)
  acc = {split: training.accuracy(predict, variables, getattr(data, split).images,
                                  getattr(data, split).labels, data.mean, data.std)
         for split in ("val", "test")}
  print(f"[{stage}] teacher {name} ({tc.arch}) top-1: val {acc['val'] * 100:.2f}%  "
        f"test {acc['test'] * 100:.2f}%", flush=True)
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(os.path.abspath(os.path.join(folder, "variables")), variables, force=True)
  ckptr.wait_until_finished()
  checkpoint.atomic_write_json(os.path.join(folder, "card.json"),  # written last: marks done
                               {**expected_card(tc, data), "val_top1": acc["val"],
                                "test_top1": acc["test"]})


def _cache_spec(ctx: RunContext, tc, role: str = "teacher") -> tuple[dict, str]:
  spec = teacher_cache.spec(tc, expected_card(tc, ctx.data), ctx.config.dataset,
                            int(ctx.config.seed), role)
  return spec, teacher_cache.digest(spec)


def _squeezed(ctx: RunContext, name: str, tc, folder: str, stage: str, role: str = "teacher"):
  """(model, variables, card) of a network squeezed by this recipe: from the shipped teachers
  or the cache when there, else trained into `folder` (resumable) and then cached."""
  spec, digest = _cache_spec(ctx, tc, role)
  expect = expected_card(tc, ctx.data)
  cached = teacher_cache.lookup(ctx.config, digest)
  if cached is not None:
    print(f"[squeeze] {role} {name}: cached at {cached}", flush=True)
    folder = cached
  elif os.path.exists(os.path.join(folder, "card.json")):
    print(f"[squeeze] {role} {name} already trained: skipped", flush=True)
  else:
    key = jax.random.fold_in(ctx.keys["squeeze"], teacher_cache.key_index(digest))
    _train_teacher(ctx, name, tc, folder, stage, key)
  if cached is None:
    folder = teacher_cache.store(folder, teacher_cache.cache_root(ctx.config), spec,
                                 digest) or folder
  model, variables, card = load_teacher(folder, expect)
  return model, variables, {**card, "cache_folder": folder, "digest": digest}


def squeeze(ctx: RunContext) -> list[Teacher]:
  """Every teacher of the config, in order: loaded from its checkpoint, found in the cache or
  the workdir when trained before, or trained now."""
  specs = teacher_specs(ctx.config)
  legacy = not is_multi(ctx.config)
  digests = {}
  for name, tc, _ in specs:
    if not tc.checkpoint:
      d = _cache_spec(ctx, tc)[1]
      if d in digests:
        raise ValueError(f"teachers {digests[d]!r} and {name!r} have the same architecture, "
                         "recipe and seed, so they would be the same network; change a field "
                         "of one of them (or drop it)")
      digests[d] = name
  out = []
  for name, tc, rel in specs:
    if tc.checkpoint:
      print(f"[squeeze] teacher {name}: using {tc.checkpoint}", flush=True)
      out.append(Teacher(name, *load_teacher(tc.checkpoint, expected_card(tc, ctx.data))))
      continue
    out.append(Teacher(name, *_squeezed(ctx, name, tc, os.path.join(ctx.workdir, rel),
                                        "squeeze" if legacy else f"squeeze_{name}")))
  return out


def full_data_student(ctx: RunContext) -> dict | None:
  """The ceiling of the comparison (DD-Ranking's 'real-hard' accuracy): the student
  architecture trained on the whole training split with hard labels by the first teacher's
  squeeze recipe; its card (val_top1, test_top1, ...), or None when `evaluate.full_data` is off.

  When the first teacher was squeezed here (or found in the cache) with the student's own
  architecture, it *is* that network: the same training on the same data, differing from a
  second one only by its seed. Its card is returned (`same_as_teacher`) instead of training a
  second network for half an hour of CPU.
  """
  ec = ctx.config.evaluate
  if not ec.get("full_data", False):
    return None
  name, first, _ = teacher_specs(ctx.config)[0]
  tc = first.copy_and_resolve_references()
  with tc.unlocked():
    tc.arch = ec.student.arch
    tc.kwargs = ec.student.get("kwargs", {})
    tc.checkpoint = ""
  loaded = {t.name: t for t in ctx.teachers}.get(name)
  if (loaded is not None and not first.checkpoint
      and loaded.card.get("digest") == _cache_spec(ctx, tc)[1]):
    return {**loaded.card, "same_as_teacher": name}
  _, _, card = _squeezed(ctx, "full_data_student", tc,
                         os.path.join(ctx.workdir, "full_data_student"), "squeeze_full_data",
                         role="full_data_student")
  return card


def summary(teachers: list[Teacher]) -> list[dict]:
  return [{"name": t.name, **{k: t.card.get(k) for k in ("arch", "kwargs", "val_top1",
                                                          "test_top1")}} for t in teachers]


def ordered(ctx: RunContext, names=None) -> list[Teacher]:
  """The teachers named by `names` (default `config.teacher_names`; all of a single-teacher
  config), in that order."""
  if names is None:
    names = ctx.config.get("teacher_names") or [t.name for t in ctx.teachers]
  by_name = {t.name: t for t in ctx.teachers}
  missing = [n for n in names if n not in by_name]
  if missing:
    raise ValueError(f"teachers {missing} are not loaded; loaded: {sorted(by_name)}")
  return [by_name[n] for n in names]
