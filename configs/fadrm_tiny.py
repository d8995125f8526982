"""FADRM / FADRM+ on Tiny-ImageNet (FADRM scripts, `tiny_imagenet/`).

    python -m jdd.main --config configs/fadrm_tiny.py:ipc=50 --workdir runs/fadrm_tiny \
        --config.dataset.data_dir=/data/tiny-imagenet-200
    python -m jdd.main --config configs/fadrm_tiny.py:ipc=50,plus=True ...

Paper cells (FADRM Table, ResNet-18 student, top-1 %): FADRM 28.6 / 48.9 / 56.4 and FADRM+
40.4 / 52.8 / 58.7 at IPC 1 / 10 / 50 [paper].
Recover: FADRM 2 stages at 64 px x 500 steps, lr 0.01; FADRM+ 4 stages at 64 px x 500, lr 0.25
with ResNet-18, ShuffleNetV2 (x0.5), DenseNet-121, MobileNetV2 (IPC 1: DenseNet-121 left out);
alpha 0.5, r_bn 0.01, RRC + flip + roll U{0..4}, ImageNet normalisation (FADRM's choice, unlike
SRe2L's Tiny statistics). Relabel: BSSL, batch 16 in 2 x 8, CutMix, 300 epochs. The reference's
FADRM IPC 50 relabel script alone runs its teacher in eval mode; jdd keeps BSSL
(`--config.relabel.train_mode=False` reproduces that script). Validate: AdamW, T 20,
lr/eta 1e-3/2, 1e-3/2, 1e-3/1 at IPC 1/10/50. Hardware: one GPU. Not yet run by jdd.
"""

from jdd.config import check_variant_keys, finalize, parse_arg
from jdd.configs import fadrm
from jdd.configs.classification import teacher

CIFAR = {"stem": "cifar"}
CIFAR_V = {"variant": "cifar"}
LR_ETA = {1: (1e-3, 2.0), 10: (1e-3, 2.0), 50: (1e-3, 1.0)}


def get_config(arg=None):
  args = parse_arg(arg)
  check_variant_keys(args, {"smoke", "ipc", "plus"}, "configs/fadrm_tiny")
  c = fadrm.base_config(plus=bool(args.get("plus", False)))
  ipc = int(args.get("ipc", 50))
  c.dataset.name = "tiny_imagenet"
  c.dataset.image_size = 64
  c.dataset.mean, c.dataset.std = fadrm.IMAGENET_MEAN, fadrm.IMAGENET_STD
  # Squeeze fallback: 50 epochs SGD 0.01 (CV-DD; batch and wd [unverified]).
  squeeze = dict(epochs=50, batch_size=256, lr=0.01, weight_decay=5e-4)
  teachers = {"resnet18": teacher("resnet18", CIFAR, **squeeze),
              "shufflenet_v2": teacher("shufflenet_v2_x0_5", CIFAR_V, **squeeze),
              "densenet121": teacher("densenet121", CIFAR_V, **squeeze),
              "mobilenet_v2": teacher("mobilenet_v2", CIFAR_V, **squeeze)}
  if c.plus:
    names = (("resnet18", "shufflenet_v2", "mobilenet_v2") if ipc == 1 else
             ("resnet18", "shufflenet_v2", "densenet121", "mobilenet_v2"))
  else:
    names = ("resnet18",)
  fadrm.select_teachers(c, teachers, names)
  c.recover.ipc = ipc
  c.recover.resolutions = (64, 64, 64, 64) if c.plus else (64, 64)
  c.recover.budgets = (500, 500, 500, 500) if c.plus else (500, 500)
  c.recover.lr = 0.25 if c.plus else 0.01
  c.recover.jitter = 4
  c.recover.classes_per_batch = 100
  c.recover.groups_per_step = 4
  fadrm.patch_init(c, candidates=500, factor=1)
  c.evaluate.epochs = 300
  c.evaluate.lr, c.evaluate.cosine_eta = LR_ETA.get(ipc, LR_ETA[50])
  if args.get("smoke"):
    fadrm.apply_smoke(c, args)
  return finalize(c)
