"""The config blocks the decoupled image methods (SRe2L, INFER, FADRM) share.

The three methods run the same driver (squeeze -> recover -> relabel -> evaluate, jdd/run.py), so
their `dataset`, teacher, `recover`, `relabel` and `evaluate` blocks have the same fields; each
builder here holds SRe2L's values (the family's first method, whose field names the others
follow) and takes the fields a method changes or adds as keyword arguments. The smoke variants
of the three methods shrink data, student and logging the same way (`shrink`); what they shrink
differently (teachers, recover) stays in the method's module.
"""

import ml_collections

# A teacher's squeeze recipe when a config gives none: SRe2L's CIFAR recipe, which INFER's
# CIFAR teachers come from too (200 epochs SGD 0.1, momentum 0.9, wd 5e-4, cosine, bs 128,
# RandomCrop(pad 4) + flip). jdd.configs.teacher_recipes holds the references' others.
TEACHER_DEFAULTS = dict(
    checkpoint="",  # a finished run's W/teacher folder (or a converted one): reuse it, no squeeze
    epochs=200, batch_size=128, optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4,
    warmup_epochs=0, lr_per_epoch=False, crop_padding=4, flip=True)

# jdd's offline Fashion-MNIST teachers: SRe2L's CIFAR recipe (SGD 0.1, momentum 0.9, wd 5e-4,
# cosine, bs 128, RandomCrop + flip) at 28 px (RandomCrop pads 2), for 20 epochs instead of 200:
# 10 epochs gave 90.77 % test top-1 (issue 15), short of the 91 % goal; 20 are chosen to pass
# it, and the teacher's card records what it reached. Trained once per seed
# (jdd.stages.teacher_cache).
FASHION_MNIST_TEACHER_RECIPE = dict(epochs=20, batch_size=128, lr=0.1, crop_padding=2)
# The other teachers of INFER's ensemble and FADRM+'s round robin (ConvNet-2, narrow ResNet-18s):
# the same recipe for 5 epochs. They label and recover beside the 20-epoch ConvNet-3; squeezing
# them for 20 epochs would cost four times the ConvNet-3's CPU time on 2 cores.
FASHION_MNIST_AUX_TEACHER_RECIPE = dict(FASHION_MNIST_TEACHER_RECIPE, epochs=5)

# The smoke variants' ConvNet-3 (teacher and student) and their one-epoch teacher recipe.
SMOKE_CONVNET = {"width": 16, "depth": 3}
SMOKE_TEACHER_RECIPE = dict(epochs=1, batch_size=128, optimizer="sgd", lr=0.05, warmup_epochs=0)


def dataset_config(**fields) -> ml_collections.ConfigDict:
  """`c.dataset`: a tfds name (or 'image_folder'), where it lives, the validation split carved
  out of train (`val_size` images drawn with `val_seed`), the image size (0: the dataset's) and
  caps on the train and test images (0: all)."""
  d = ml_collections.ConfigDict(dict(
      name="", data_dir="", val_size=5000, val_seed=0, image_size=0, max_train=0, max_test=0))
  d.update(fields)
  return d


def teacher(arch: str, kwargs: dict, **recipe) -> ml_collections.ConfigDict:
  """One teacher: its registry architecture and model kwargs, a checkpoint folder, and the
  squeeze recipe used when `checkpoint` is empty (`TEACHER_DEFAULTS`, changed by `recipe`).
  The single-teacher block `c.teacher` and every entry of the multi-teacher `c.teachers` have
  these fields (jdd/stages/teachers.py reads them)."""
  t = ml_collections.ConfigDict(dict(
      arch=arch, kwargs=ml_collections.ConfigDict(dict(kwargs)), **TEACHER_DEFAULTS))
  for k, v in recipe.items():
    if k not in t:
      raise KeyError(f"teacher recipe has no field {k!r}; fields: {sorted(t.keys())}")
    t[k] = v
  return t


def recover_config(**fields) -> ml_collections.ConfigDict:
  """`c.recover`: the pixel optimisation every decoupled method runs against its teachers' BN
  statistics: the storage budget (`ipc`), Adam's lr, class groups (`classes_per_batch`) of
  which `groups_per_step` are optimised side by side, the BN-matching weight (`r_bn`, first BN
  layer x `first_bn_multiplier`) and the augmentation of the synthetic batch (random resized
  crop, flip, roll by up to `jitter` px). SRe2L's values by default; `fields` override them or
  add a method's own (its schedule: `iterations`, or FADRM's `resolutions`/`budgets`)."""
  r = ml_collections.ConfigDict(dict(
      ipc=50, lr=0.25, classes_per_batch=100, groups_per_step=1, r_bn=0.01,
      first_bn_multiplier=10.0, random_resized_crop=True, crop_scale=(0.08, 1.0), flip=True,
      jitter=4))
  r.update(fields)
  return r


def relabel_config(**fields) -> ml_collections.ConfigDict:
  """`c.relabel`: the student-side crop, flip and mix that the soft labels are generated (or
  looked up) for, SRe2L's values by default; `fields` override them or add a method's own."""
  r = ml_collections.ConfigDict(dict(
      crop="rrc", crop_scale=(0.08, 1.0), crop_padding=4, flip=True, mix="cutmix",
      mix_alpha=1.0))
  r.update(fields)
  return r


def evaluate_config(**fields) -> ml_collections.ConfigDict:
  """`c.evaluate`: a student trained on the distilled set with the soft labels (KL at
  `temperature`), SRe2L's CIFAR values by default; `fields` override them or add a method's
  own. The comparison (jdd.stages.evaluate): `epochs` of the distilled set fix the optimiser
  steps of every set compared; `label_modes` ('soft', 'hard', 'soft_noaug'); `seeds`
  evaluation seeds; `baseline` random subsets, `subset_draws` of them (0: one per seed);
  `full_data` trains the full-data student (the ceiling); `test_every_eval` scores the test
  split at every evaluation point (curves) instead of only where it is reported;
  `distill_seeds` N > 1 repeats the distillation with N seeds and reports their spread;
  `steps_program` 'scan' (one program per stretch), 'per_step' (one call per step) or 'auto'
  (scan except on the CPU backend: `jdd.evaluation.classification.use_scan`)."""
  e = ml_collections.ConfigDict(dict(
      student=ml_collections.ConfigDict(
          {"arch": "resnet18", "kwargs": ml_collections.ConfigDict({"stem": "cifar"})}),
      epochs=400, batch_size=128, optimizer="adamw", lr=1e-3, momentum=0.9, weight_decay=0.01,
      warmup_epochs=0, lr_per_epoch=True, temperature=30.0, t_squared=False, eval_every=20,
      seeds=3, baseline=True, subset_draws=0, label_modes=("soft", "hard", "soft_noaug"),
      full_data=False, test_every_eval=False, distill_seeds=1, steps_program="auto"))
  e.update(fields)
  return e


def fashion_mnist(c: ml_collections.ConfigDict) -> None:
  """jdd's offline Fashion-MNIST setting (no download), shared by SRe2L, INFER and FADRM: the
  dataset with a 5000-image validation split; a ConvNet-3 (width 32) student at batch 50 with
  the references' small-image optimiser (AdamW lr 1e-3, weight decay 0.01, per-epoch cosine);
  3 evaluation seeds, 3 random-subset draws, the three label modes, the full-data student as
  the ceiling. Each config sets its method's temperature, epochs and label augmentation;
  teachers: `FASHION_MNIST_TEACHER_RECIPE`. Batch 50 instead of the references' 64-128: a
  100-image set (10 classes x IPC 10) would otherwise train one step per epoch."""
  c.dataset.name = "fashion_mnist"
  c.dataset.val_size = 5000
  c.evaluate.student = {"arch": "convnet", "kwargs": {"width": 32, "depth": 3}}
  c.evaluate.batch_size = 50
  c.evaluate.optimizer = "adamw"
  c.evaluate.lr = 1e-3
  c.evaluate.weight_decay = 0.01
  c.evaluate.seeds = 3
  c.evaluate.subset_draws = 3
  c.evaluate.label_modes = ("soft", "hard", "soft_noaug")
  c.evaluate.full_data = True


def fashion_mnist_fkd_labels(c: ml_collections.ConfigDict) -> None:
  """SRe2L's and INFER's label recipe on the 28-px set (the references' small-image scripts):
  pad-crop 4 and Mixup 0.8 on the relabelled batches, temperature 30."""
  c.relabel.crop = "pad_crop"
  c.relabel.crop_padding = 4
  c.relabel.mix = "mixup"
  c.relabel.mix_alpha = 0.8
  c.evaluate.temperature = 30.0


def shrink(c: ml_collections.ConfigDict, *, student_epochs: int, eval_every: int,
           log_every: int) -> None:
  """The part of a smoke variant the decoupled methods share: 2000 train, 500 validation and
  500 test images; a ConvNet-3 student trained for `student_epochs` at batch 10 and scored
  every `eval_every` epochs over 2 seeds; logs and checkpoints every `log_every` steps."""
  c.teacher_cache = ""   # tests never read or write the user's cache
  c.dataset.max_train = 2000
  c.dataset.max_test = 500
  c.dataset.val_size = 500
  c.evaluate.student = ml_collections.ConfigDict(
      {"arch": "convnet", "kwargs": ml_collections.ConfigDict(SMOKE_CONVNET)})
  c.evaluate.epochs = student_epochs
  c.evaluate.eval_every = eval_every
  c.evaluate.batch_size = 10
  c.evaluate.seeds = 2
  c.evaluate.label_modes = ("soft",)
  c.evaluate.full_data = False
  c.log_every = log_every
  c.checkpoint_every = log_every
