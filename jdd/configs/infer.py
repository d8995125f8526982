"""INFER's base config and variants; configs/infer_<dataset>.py fill in the paper's values.

INFER (ICLR 2025) per research/unimodal_dd_methods.md §4: M teachers (`teachers` +
`teacher_names`, teacher m serving the m-th compensator of every (group, slot)), UFC recover
(§4.4), static or dynamic labels (§4.5). The teacher list is the multi-teacher schema of the
driver (jdd/stages/teachers.py): each entry is a `classification.teacher` block.
"""

import ml_collections

from jdd.config import smoke_value
from jdd.configs import classification, new_config
from jdd.configs.classification import teacher


def set_compensator_teachers(c: ml_collections.ConfigDict, teachers: dict) -> None:
  """Installs every teacher of `teachers` (name -> teacher block); their order is the order of
  the compensators they serve (INFER uses all of them, unlike FADRM's `select_teachers`)."""
  c.teachers = ml_collections.ConfigDict(teachers)
  c.teacher_names = tuple(teachers)


def base_config() -> ml_collections.ConfigDict:
  c = new_config("infer", checkpoint_every=100)
  c.dataset = classification.dataset_config()
  c.teacher_cache = "auto"   # jdd.stages.teacher_cache: '' trains every teacher in the workdir
  c.teachers = ml_collections.ConfigDict()
  c.teacher_names = ()
  c.recover = classification.recover_config(
      ipc=10,                      # the storage budget, in images per class
      iterations=1000,
      # classes_per_batch is B: one compensator serves one block of B classes;
      # groups_per_step counts the (group, slot) units optimised side by side per teacher.
      r_bn=1.0, random_resized_crop=False, flip=False, jitter_symmetric=False,
      clip_in_loss=False)          # True: the teacher sees clip(x + u), the exported image
  c.relabel = classification.relabel_config(
      mode="static",               # 'static' (stored, one vector per image) | 'dynamic' (online)
      crop="pad_crop", mix="mixup", mix_alpha=0.8)
  c.evaluate = classification.evaluate_config(batch_size=64, eval_every=10)
  return c


def cifar_teachers(c: ml_collections.ConfigDict, epochs: int = 200) -> None:
  """UFC's CIFAR teachers, in its model order (ufc_cifar.py:136-157): ResNet-18 (CIFAR stem),
  MobileNetV2, EfficientNet-B0 and ShuffleNetG2 in their CIFAR layouts. The reference loads
  `pretrained/<dataset>/<arch>_E200/ckpt.pth` (convert them and set teachers.<name>.checkpoint);
  left empty, each is squeezed here for `epochs` with the default SGD recipe of
  `classification.teacher` (the reference's exact teacher recipe is [unverified])."""
  set_compensator_teachers(c, {
      "resnet18": teacher("resnet18", {"stem": "cifar"}, epochs=epochs),
      "mobilenet_v2": teacher("mobilenet_v2", {"variant": "cifar"}, epochs=epochs),
      "efficientnet_b0": teacher("efficientnet_b0", {"variant": "cifar"}, epochs=epochs),
      "shufflenet_g2": teacher("shufflenet_g2", {"variant": "cifar"}, epochs=epochs)})


def apply_smoke(c: ml_collections.ConfigDict, args: dict | None = None) -> None:
  """Shrinks any INFER config to a CPU run of a minute (what the tests use): two tiny teachers
  of different architectures squeezed for one epoch on 2000 images, IPC 3 (2 real images per
  class + 2 x 2 compensators; or the variant's `ipc`), 10 recover iterations, 4 student
  epochs."""
  tiny = classification.SMOKE_TEACHER_RECIPE
  set_compensator_teachers(c, {
      "convnet": teacher("convnet", {"width": 8, "depth": 2}, **tiny),
      "resnet18": teacher("resnet18", {"stem": "cifar", "width": 4}, **tiny)})
  c.recover.ipc = int(smoke_value(args, "ipc", 3))
  c.recover.iterations = 10
  c.recover.groups_per_step = 4
  classification.shrink(c, student_epochs=4, eval_every=2, log_every=5)


def apply_dynamic(c: ml_collections.ConfigDict) -> None:
  """INFER+Dyn: online teachers, epochs / (M + 1) (README: the same number of teacher
  evaluations as static labels on (M + 1)x fewer instances)."""
  m = len(c.teacher_names)
  c.relabel.mode = "dynamic"
  c.evaluate.epochs = max(1, int(c.evaluate.epochs) // (m + 1))
  c.evaluate.eval_every = max(1, min(int(c.evaluate.eval_every), int(c.evaluate.epochs) // 4))


def apply_variants(c: ml_collections.ConfigDict, args: dict) -> None:
  """The variants every INFER config accepts, in their one valid order: `smoke` first (it
  replaces the teachers), then `dynamic` (its epoch rule counts them)."""
  if args.get("smoke"):
    apply_smoke(c, args)
  if args.get("dynamic"):
    apply_dynamic(c)
