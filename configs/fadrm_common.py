"""Fields every FADRM / FADRM+ config shares; configs/fadrm_<dataset>.py fill in the paper's values.

Field names follow configs/sre2l_common.py. What FADRM adds (see docs/fadrm.md):
  teachers / teacher_names   every teacher by name (fields of sre2l's `teacher`) and the
                             round-robin order of recover (FADRM: one name; FADRM+: M names).
                             `teacher` stays the first of them, for single-teacher stages.
  recover.resolutions/budgets  the multi-resolution stages; one global cosine over their sum.
  recover.alpha              the ARC residual weight at each stage boundary.
  recover.compute_dtype      'bfloat16' matches the reference's fp16 autocast; 'float32' exact.
  recover.init               teacher-scored real patches (jdd's documented selection).
  relabel.mode='bssl'        train-mode teachers on `num_splits` micro-batches, mixed by
                             `teacher_weights` (empty: uniform) over `relabel.teacher_names`,
                             stored as float16 logits; 'bssl_online' computes them during
                             student training instead (ImageNet-1K).
  evaluate.grad_accum_steps  the student's micro-batches (must equal relabel.num_splits).
  evaluate.cosine_eta        lr_e = lr0 * 0.5 (1 + cos(pi e / (E * eta))); eta 2 stops at half.
"""

import ml_collections

from sre2l_common import evaluate_config, relabel_config  # configs/ is on sys.path

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)


def teacher(arch: str, kwargs: dict, **recipe) -> ml_collections.ConfigDict:
  """One teacher: architecture, a converted checkpoint folder, or the squeeze recipe."""
  t = ml_collections.ConfigDict()
  t.arch = arch
  t.kwargs = ml_collections.ConfigDict(kwargs)
  t.checkpoint = ""  # a W/teacher-style folder (card.json + variables); empty: squeeze here
  t.epochs = 200
  t.batch_size = 128
  t.optimizer = "sgd"
  t.lr = 0.1
  t.momentum = 0.9
  t.weight_decay = 5e-4
  t.warmup_epochs = 0
  t.lr_per_epoch = False
  t.crop_padding = 4
  t.flip = True
  for k, v in recipe.items():
    t[k] = v
  return t


def set_teachers(c: ml_collections.ConfigDict, teachers: dict, names, relabel_names=None):
  """Installs `teachers` (name -> ConfigDict), the recover order and the relabel mixture."""
  missing = [n for n in tuple(names) + tuple(relabel_names or ()) if n not in teachers]
  if missing:
    raise ValueError(f"teacher names {missing} are not defined; defined: {sorted(teachers)}")
  # Only the teachers a run uses: squeeze loads (or trains) every teacher the config defines.
  used = tuple(names) + tuple(n for n in (relabel_names or ()) if n not in names)
  c.teachers = ml_collections.ConfigDict({n: teachers[n] for n in used})
  c.teacher_names = tuple(names)
  c.teacher = teachers[names[0]]
  c.relabel.teacher_names = tuple(relabel_names or names)


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.method = "fadrm"
  c.plus = False
  c.seed = 0
  c.num_devices = 0
  c.log_every = 50
  c.checkpoint_every = 100

  c.dataset = ml_collections.ConfigDict(dict(
      name="", data_dir="", val_size=5000, val_seed=0, image_size=0, max_train=0, max_test=0))

  c.teacher = ml_collections.ConfigDict()
  c.teachers = ml_collections.ConfigDict()
  c.teacher_names = ()

  c.recover = ml_collections.ConfigDict()
  c.recover.ipc = 50
  c.recover.resolutions = (32, 32, 32, 32)
  c.recover.budgets = (500, 500, 500, 500)
  c.recover.lr = 0.25
  c.recover.alpha = 0.5
  c.recover.classes_per_batch = 100
  c.recover.groups_per_step = 1
  c.recover.r_bn = 0.01
  c.recover.first_bn_multiplier = 10.0
  c.recover.random_resized_crop = True
  c.recover.crop_scale = (0.08, 1.0)
  c.recover.flip = True
  c.recover.jitter = 4
  c.recover.compute_dtype = "bfloat16"
  c.recover.init = ml_collections.ConfigDict(dict(
      method="patches", candidates_per_class=0, crops_per_image=5, factor=1,
      crop_scale=(0.5, 1.0)))

  c.relabel = relabel_config(
      mode="bssl",
      teacher_names=(),
      teacher_weights=(),          # empty: uniform; else softmax(w / 10) as --model-weight
      train_mode=True,             # BSSL; the Tiny FADRM IPC 50 script alone uses eval mode
      num_splits=2)

  c.evaluate = evaluate_config(epochs=300, batch_size=16, grad_accum_steps=2, cosine_eta=1.0,
                               temperature=20.0, eval_every=10)

  c.debug = ml_collections.ConfigDict({"interrupt_after": 0})
  return c


def patch_init(c, candidates: int, factor: int, crops: int = 5, scale=(0.5, 1.0)) -> None:
  c.recover.init.candidates_per_class = candidates
  c.recover.init.factor = factor
  c.recover.init.crops_per_image = crops
  c.recover.init.crop_scale = scale


def apply_smoke(c: ml_collections.ConfigDict) -> None:
  """Shrinks any FADRM config to a CPU run of a minute or two: two tiny ConvNet teachers
  (BN and no-BN under `:plus`), 2 stages x 8 steps, fp32."""
  small = dict(epochs=1, batch_size=128, optimizer="sgd", lr=0.05)
  teachers = {"convnet_bn": teacher("convnet", {"width": 16, "depth": 3}, **small),
              "convnet_in": teacher("convnet", {"width": 16, "depth": 3,
                                                "norm": "instancenorm"}, **small)}
  names = ("convnet_bn", "convnet_in") if c.plus else ("convnet_bn",)
  set_teachers(c, teachers, names)
  c.dataset.max_train = 2000
  c.dataset.max_test = 500
  c.dataset.val_size = 500
  c.recover.ipc = 2
  # Smoke teachers are ConvNets (flattening head), so every stage keeps the full resolution.
  size = c.dataset.image_size or c.recover.resolutions[-1]
  c.recover.resolutions = (size, size)
  c.recover.budgets = (8, 8)
  c.recover.groups_per_step = 2
  c.recover.compute_dtype = "float32"
  patch_init(c, candidates=8, factor=1, crops=2)
  c.evaluate.student = ml_collections.ConfigDict(
      {"arch": "convnet", "kwargs": ml_collections.ConfigDict({"width": 16, "depth": 3})})
  c.evaluate.epochs = 6
  c.evaluate.eval_every = 3
  c.evaluate.batch_size = 10
  c.evaluate.seeds = 2
  c.log_every = 10
  c.checkpoint_every = 10


def imagenet_subset_config(args, *, fadrm_lr: float, order, relabel_batch: int,
                           lr_eta: dict) -> ml_collections.ConfigDict:
  """ImageNette / ImageWoof: 10 classes in an image folder at 224 px, torchvision teachers with
  10-way heads (FADRM's offline checkpoints, converted), one class batch of 10."""
  c = base_config()
  c.plus = bool(args.get("plus", False))
  ipc = int(args.get("ipc", 10))
  c.dataset.name = "image_folder"
  c.dataset.image_size = 224
  c.dataset.val_size = 500
  # Squeeze fallback only (the paper's teachers come from FADRM's checkpoints; recipe unknown).
  recipe = dict(epochs=100, batch_size=64, lr=0.1, weight_decay=1e-4)
  teachers = {"resnet18": teacher("resnet18", {"stem": "imagenet"}, **recipe),
              "densenet121": teacher("densenet121", {}, **recipe),
              "shufflenet_v2": teacher("shufflenet_v2_x1_0", {}, **recipe),
              "mobilenet_v2": teacher("mobilenet_v2", {}, **recipe)}
  set_teachers(c, teachers, tuple(order) if c.plus else ("resnet18",))
  c.recover.ipc = ipc
  c.recover.resolutions = (200, 224, 200, 224)
  c.recover.budgets = (500, 500, 500, 500)
  c.recover.lr = 0.25 if c.plus else fadrm_lr
  c.recover.jitter = 32
  c.recover.classes_per_batch = 10
  c.recover.groups_per_step = 5
  patch_init(c, candidates=300, factor=2)
  c.evaluate.student = ml_collections.ConfigDict(
      {"arch": "resnet18", "kwargs": ml_collections.ConfigDict({"stem": "imagenet"})})
  c.evaluate.epochs = 300
  c.evaluate.batch_size = relabel_batch if ipc > 1 else 10
  c.evaluate.lr, c.evaluate.cosine_eta = lr_eta.get(ipc, lr_eta[10])
  if args.get("smoke"):
    apply_smoke(c)
    c.dataset.image_size = 32
    c.recover.resolutions = (32, 32)
  return c
