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

  c.relabel = ml_collections.ConfigDict()
  c.relabel.mode = "stored"  # 'stored' (logits per epoch/batch, counted in the manifest) | 'online'
  c.relabel.crop = "rrc"
  c.relabel.crop_scale = (0.08, 1.0)
  c.relabel.crop_padding = 4
  c.relabel.flip = True
  c.relabel.mix = "cutmix"
  c.relabel.mix_alpha = 1.0

  c.evaluate = ml_collections.ConfigDict()
  c.evaluate.student = ml_collections.ConfigDict(
      {"arch": "resnet18", "kwargs": ml_collections.ConfigDict({"stem": "cifar"})})
  c.evaluate.epochs = 400
  c.evaluate.batch_size = 128
  c.evaluate.optimizer = "adamw"
  c.evaluate.lr = 1e-3
  c.evaluate.momentum = 0.9
  c.evaluate.weight_decay = 0.01
  c.evaluate.warmup_epochs = 0
  c.evaluate.lr_per_epoch = True
  c.evaluate.temperature = 30.0
  c.evaluate.t_squared = False
  c.evaluate.eval_every = 20
  c.evaluate.seeds = 3
  c.evaluate.baseline = True

  c.debug = ml_collections.ConfigDict({"interrupt_after": 0})
  return c


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
