"""FADRM / FADRM+ on CIFAR-100 (FADRM recover/relabel/validate scripts, `cifar100/`).

    python -m jdd.main --config configs/fadrm_cifar100.py:ipc=50 --workdir runs/fadrm_c100 \
        --config.dataset.data_dir=/data/tfds --config.teachers.resnet18.checkpoint=/w/r18_c100
    python -m jdd.main --config configs/fadrm_cifar100.py:ipc=50,plus=True ...

Paper cells (FADRM Table, `F:img/exp.png`, ResNet-18 student, top-1 %): FADRM 31.8 / 67.4 /
71.0 and FADRM+ 40.6 / 67.9 / 71.3 at IPC 1 / 10 / 50 [paper].
Recover: 4 stages at 32 px x 500 steps (ARC at each boundary, alpha 0.5), lr 0.25, r_bn 0.01,
RRC + flip + roll U{0..4}, 100 classes per batch, CIFAR-100 statistics. FADRM+: ResNet-18,
DenseNet-121, ShuffleNetV2 (x0.5), MobileNetV2 round-robin (kuangliu CIFAR layouts, converted
from FADRM's checkpoints). Relabel: BSSL, batch 16 in 2 x 8, RRC 0.08-1 + flip + CutMix 1.0,
1000 epochs. Validate: AdamW wd 0.01, T 20, lr/eta 5e-4/2, 1e-3/2, 1e-3/1 at IPC 1/10/50.
Patches: RDED-style teacher-scored crops of all 500 images per class, one crop per patch.
Hardware: one GPU (paper: RTX 4090). Not yet run by jdd. Teacher archs other than resnet18
need the registry entries of issue 4.
"""

from jdd.config import check_variant_keys, finalize, parse_arg
from jdd.configs import fadrm
from jdd.configs.classification import teacher

CIFAR = {"stem": "cifar"}          # ResNet's CIFAR layout
CIFAR_V = {"variant": "cifar"}     # kuangliu DenseNet / ShuffleNetV2 / MobileNetV2 layouts
# Squeeze fallback (FADRM ships checkpoints; CV-DD's squeeze.py recipe [unverified]).
SQUEEZE = dict(epochs=200, batch_size=512, optimizer="adamw", lr=1e-3, weight_decay=0.0)
LR_ETA = {1: (5e-4, 2.0), 10: (1e-3, 2.0), 50: (1e-3, 1.0)}


def get_config(arg=None):
  args = parse_arg(arg)
  check_variant_keys(args, {"smoke", "ipc", "plus"}, "configs/fadrm_cifar100")
  c = fadrm.base_config(plus=bool(args.get("plus", False)))
  ipc = int(args.get("ipc", 50))
  c.dataset.name = "cifar100"
  c.dataset.mean, c.dataset.std = fadrm.CIFAR100_MEAN, fadrm.CIFAR100_STD
  teachers = {"resnet18": teacher("resnet18", CIFAR, **SQUEEZE),
              "densenet121": teacher("densenet121", CIFAR_V, **SQUEEZE),
              "shufflenet_v2": teacher("shufflenet_v2_x0_5", CIFAR_V, **SQUEEZE),
              "mobilenet_v2": teacher("mobilenet_v2", CIFAR_V, **SQUEEZE)}
  names = (("resnet18", "densenet121", "shufflenet_v2", "mobilenet_v2") if c.plus
           else ("resnet18",))
  fadrm.select_teachers(c, teachers, names)
  c.recover.ipc = ipc
  c.recover.resolutions = (32, 32, 32, 32)
  c.recover.budgets = (500, 500, 500, 500)
  c.recover.lr = 0.25
  c.recover.jitter = 4
  c.recover.classes_per_batch = 100
  c.recover.groups_per_step = 10
  fadrm.patch_init(c, candidates=500, factor=1)
  c.evaluate.epochs = 1000
  c.evaluate.lr, c.evaluate.cosine_eta = LR_ETA.get(ipc, LR_ETA[50])
  if args.get("smoke"):
    fadrm.apply_smoke(c, args)
  return finalize(c)
