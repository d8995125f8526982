"""Fields every SRe2L config shares; each configs/sre2l_<dataset>.py fills in the paper's values."""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.method = "sre2l"
  c.seed = 0
  c.num_devices = 0          # 0: all visible devices
  c.log_every = 50
  c.checkpoint_every = 100

  c.dataset = ml_collections.ConfigDict(dict(
      name="", data_dir="", val_size=5000, val_seed=0, image_size=0, max_train=0, max_test=0))

  c.teacher = ml_collections.ConfigDict()
  c.teacher.arch = "resnet18"
  c.teacher.kwargs = ml_collections.ConfigDict({"stem": "cifar"})
  c.teacher.checkpoint = ""  # a finished run's W/teacher folder: reuse it instead of squeezing
  c.teacher.epochs = 200
  c.teacher.batch_size = 128
  c.teacher.optimizer = "sgd"
  c.teacher.lr = 0.1
  c.teacher.momentum = 0.9
  c.teacher.weight_decay = 5e-4
  c.teacher.warmup_epochs = 0
  c.teacher.lr_per_epoch = False
  c.teacher.crop_padding = 4
  c.teacher.flip = True

  c.recover = ml_collections.ConfigDict()
  c.recover.ipc = 50
  c.recover.iterations = 1000
  c.recover.lr = 0.25
  c.recover.classes_per_batch = 100
  c.recover.groups_per_step = 1
  c.recover.r_bn = 0.01
  c.recover.first_bn_multiplier = 10.0
  c.recover.random_resized_crop = True
  c.recover.crop_scale = (0.08, 1.0)
  c.recover.flip = True
  c.recover.jitter = 4
  c.recover.jitter_symmetric = False

  # mode: 'stored' (logits per epoch/batch, counted in the manifest) | 'online'
  c.relabel = relabel_config(mode="stored")

  c.evaluate = evaluate_config()

  c.debug = ml_collections.ConfigDict({"interrupt_after": 0})
  return c


def relabel_config(**fields) -> ml_collections.ConfigDict:
  """`c.relabel` of the decoupled methods (SRe2L, INFER, FADRM): the student-side crop, flip
  and mix that the soft labels are generated (or looked up) for, SRe2L's values by default;
  `fields` override them or add a method's own."""
  r = ml_collections.ConfigDict(dict(
      crop="rrc", crop_scale=(0.08, 1.0), crop_padding=4, flip=True, mix="cutmix",
      mix_alpha=1.0))
  r.update(fields)
  return r


def evaluate_config(**fields) -> ml_collections.ConfigDict:
  """`c.evaluate` of the decoupled methods: a student trained on the distilled set with the
  soft labels (KL at `temperature`), SRe2L's CIFAR values by default; `fields` override them
  or add a method's own."""
  e = ml_collections.ConfigDict(dict(
      student=ml_collections.ConfigDict(
          {"arch": "resnet18", "kwargs": ml_collections.ConfigDict({"stem": "cifar"})}),
      epochs=400, batch_size=128, optimizer="adamw", lr=1e-3, momentum=0.9, weight_decay=0.01,
      warmup_epochs=0, lr_per_epoch=True, temperature=30.0, t_squared=False, eval_every=20,
      seeds=3, baseline=True))
  e.update(fields)
  return e


def apply_smoke(c: ml_collections.ConfigDict) -> None:
  """Shrinks any SRe2L config to a CPU run of a minute or two (what the tests use)."""
  c.teacher.arch = "convnet"
  c.teacher.kwargs = ml_collections.ConfigDict({"width": 16, "depth": 3})
  c.teacher.epochs = 1
  c.teacher.batch_size = 128
  c.teacher.optimizer = "sgd"
  c.teacher.lr = 0.05
  c.dataset.max_train = 2000
  c.dataset.max_test = 500
  c.dataset.val_size = 500
  c.recover.ipc = 2
  c.recover.iterations = 20
  c.recover.groups_per_step = 2
  c.evaluate.student = ml_collections.ConfigDict(
      {"arch": "convnet", "kwargs": ml_collections.ConfigDict({"width": 16, "depth": 3})})
  c.evaluate.epochs = 6
  c.evaluate.eval_every = 3
  c.evaluate.batch_size = 10
  c.evaluate.seeds = 2
  c.log_every = 10
  c.checkpoint_every = 10
