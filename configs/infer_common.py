"""Fields every INFER config shares; each configs/infer_<dataset>.py fills in the paper's values.

INFER (ICLR 2025) per research/unimodal_dd_methods.md §4: M teachers (`teachers` +
`teacher_names`, teacher m serving the m-th compensator of every (group, slot)), UFC recover
(§4.4), static or dynamic labels (§4.5). The teacher list is the multi-teacher schema of the
driver (jdd/stages/teachers.py): each entry has the single-teacher fields (arch, kwargs,
checkpoint, and the squeeze recipe used when checkpoint is empty).
"""

import ml_collections

from sre2l_common import evaluate_config, relabel_config  # configs/ is on sys.path


def teacher_config(arch: str, kwargs: dict, **recipe) -> ml_collections.ConfigDict:
  """One teacher: architecture, converted/earlier checkpoint folder, and a squeeze recipe
  (the CIFAR recipe of SRe2L/INFER's teachers by default: 200 epochs SGD 0.1, momentum 0.9,
  wd 5e-4, cosine, bs 128, RandomCrop(pad 4) + flip)."""
  t = ml_collections.ConfigDict(dict(
      arch=arch, kwargs=ml_collections.ConfigDict(dict(kwargs)), checkpoint="", epochs=200,
      batch_size=128, optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4,
      warmup_epochs=0, lr_per_epoch=False, crop_padding=4, flip=True))
  for k, v in recipe.items():
    if k not in t:
      raise KeyError(f"teacher recipe has no field {k!r}; fields: {sorted(t.keys())}")
    t[k] = v
  return t


def set_teachers(c: ml_collections.ConfigDict, teachers: dict) -> None:
  """`teachers`: name -> teacher ConfigDict, in the order the compensators use them."""
  c.teachers = ml_collections.ConfigDict(teachers)
  c.teacher_names = tuple(teachers)


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.method = "infer"
  c.seed = 0
  c.num_devices = 0          # 0: all visible devices
  c.log_every = 50
  c.checkpoint_every = 100

  c.dataset = ml_collections.ConfigDict(dict(
      name="", data_dir="", val_size=5000, val_seed=0, image_size=0, max_train=0, max_test=0))
  c.teachers = ml_collections.ConfigDict()
  c.teacher_names = ()

  c.recover = ml_collections.ConfigDict()
  c.recover.ipc = 10               # the storage budget, in images per class
  c.recover.iterations = 1000
  c.recover.lr = 0.25
  c.recover.classes_per_batch = 100  # B: one compensator serves one block of B classes
  c.recover.groups_per_step = 1    # (group, slot) units optimised side by side per teacher
  c.recover.r_bn = 1.0
  c.recover.first_bn_multiplier = 10.0
  c.recover.random_resized_crop = False
  c.recover.crop_scale = (0.08, 1.0)
  c.recover.flip = False
  c.recover.jitter = 4
  c.recover.jitter_symmetric = False
  c.recover.clip_in_loss = False   # True: the teacher sees clip(x + u), the exported image

  c.relabel = relabel_config(
      mode="static",               # 'static' (stored, one vector per image) | 'dynamic' (online)
      crop="pad_crop", mix="mixup", mix_alpha=0.8)

  c.evaluate = evaluate_config(batch_size=64, eval_every=10)

  c.debug = ml_collections.ConfigDict({"interrupt_after": 0})
  return c


def apply_dynamic(c: ml_collections.ConfigDict) -> None:
  """INFER+Dyn: online teachers, epochs / (M + 1) (README: the same number of teacher
  evaluations as static labels on (M + 1)x fewer instances)."""
  m = len(c.teacher_names)
  c.relabel.mode = "dynamic"
  c.evaluate.epochs = max(1, int(c.evaluate.epochs) // (m + 1))
  c.evaluate.eval_every = max(1, min(int(c.evaluate.eval_every), int(c.evaluate.epochs) // 4))


def apply_smoke(c: ml_collections.ConfigDict) -> None:
  """Shrinks any INFER config to a CPU run of a minute (what the tests use): two tiny teachers
  of different architectures squeezed for one epoch on 2000 images, IPC 3 (2 real images per
  class + 2 x 2 compensators), 10 recover iterations, 4 student epochs."""
  tiny = dict(epochs=1, batch_size=128, lr=0.05)
  set_teachers(c, {
      "convnet": teacher_config("convnet", {"width": 8, "depth": 2}, **tiny),
      "resnet18": teacher_config("resnet18", {"stem": "cifar", "width": 4}, **tiny)})
  c.dataset.max_train = 2000
  c.dataset.max_test = 500
  c.dataset.val_size = 500
  c.recover.ipc = 3
  c.recover.iterations = 10
  c.recover.groups_per_step = 4
  c.evaluate.student = ml_collections.ConfigDict(
      {"arch": "convnet", "kwargs": ml_collections.ConfigDict({"width": 16, "depth": 3})})
  c.evaluate.epochs = 4
  c.evaluate.eval_every = 2
  c.evaluate.batch_size = 10
  c.evaluate.seeds = 2
  c.log_every = 5
  c.checkpoint_every = 5


def cifar_teachers(c: ml_collections.ConfigDict, epochs: int = 200) -> None:
  """UFC's CIFAR teachers, in its model order (ufc_cifar.py:136-157): ResNet-18 (CIFAR stem),
  MobileNetV2, EfficientNet-B0 and ShuffleNetG2 in their CIFAR layouts. The reference loads
  `pretrained/<dataset>/<arch>_E200/ckpt.pth` (convert them and set teachers.<name>.checkpoint);
  left empty, each is squeezed here for `epochs` with the SGD recipe of `teacher_config`
  (the reference's exact teacher recipe is [unverified])."""
  set_teachers(c, {
      "resnet18": teacher_config("resnet18", {"stem": "cifar"}, epochs=epochs),
      "mobilenet_v2": teacher_config("mobilenet_v2", {"variant": "cifar"}, epochs=epochs),
      "efficientnet_b0": teacher_config("efficientnet_b0", {"variant": "cifar"}, epochs=epochs),
      "shufflenet_g2": teacher_config("shufflenet_g2", {"variant": "cifar"}, epochs=epochs)})


def finish(c: ml_collections.ConfigDict, args: dict) -> None:
  """The shared variant handling of the paper configs: smoke first, then dynamic."""
  if args.get("smoke"):
    name, size = c.dataset.name, c.dataset.image_size
    apply_smoke(c)
    c.dataset.name, c.dataset.image_size = name, size
  if args.get("dynamic"):
    apply_dynamic(c)
