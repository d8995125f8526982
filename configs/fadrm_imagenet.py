"""FADRM / FADRM+ on ImageNet-1K (FADRM scripts, `imagenet1k/`).

    python -m jdd.main --config configs/fadrm_imagenet.py:ipc=50 --workdir runs/fadrm_in1k \
        --config.dataset.data_dir=/data/tfds --config.teachers.resnet18.checkpoint=/w/r18_v1
    python -m jdd.main --config configs/fadrm_imagenet.py:ipc=10,plus=True ...

Paper cells (FADRM Table, ResNet-18 student, top-1 %): FADRM 6.9 / 47.7 / 59.8 and FADRM+
14.1 / 50.0 / 60.1 at IPC 1 / 10 / 50 [paper]; 0.47 s (FADRM) and 1.09 s (FADRM+) per image
on one RTX 4090 [paper, eff_tab].
Recover: stages 200, 224, 200, 224 px x 500 steps (one cosine over 2000, a fresh Adam and an
ARC merge, alpha 0.5, at each boundary), lr 0.25, r_bn 0.01, RRC + flip + roll U{0..32},
100 classes per batch, bf16 compute. Teachers: torchvision IMAGENET1K_V1 weights, converted
(issue 4). FADRM+: ResNet-18, DenseNet-121, ShuffleNetV2 x1.0, MobileNetV2; at IPC 1
ResNet-18, MobileNetV2, ShuffleNetV2, AlexNet (no BN: cross-entropy only on its turn).
Relabel: BSSL, batch 16 in 2 x 8, RRC 0.08-1 + flip + CutMix, 300 epochs, labels online
(stored BSSL logits would be ~30 GB at IPC 50). Validate: AdamW, T 20, lr/eta 1e-3/2, 1e-3/2,
1e-3/1. Patches: 2 x 2 mosaics of the best crops of 300 candidates per class.
Hardware: GPUs. Not yet run by jdd.
"""

from jdd.config import check_variant_keys, finalize, parse_arg
from jdd.configs import fadrm
from jdd.configs.classification import teacher

TV = {"stem": "imagenet"}
LR_ETA = {1: (1e-3, 2.0), 10: (1e-3, 2.0), 50: (1e-3, 1.0)}


def get_config(arg=None):
  args = parse_arg(arg)
  check_variant_keys(args, {"smoke", "ipc", "plus"}, "configs/fadrm_imagenet")
  c = fadrm.base_config(plus=bool(args.get("plus", False)))
  ipc = int(args.get("ipc", 50))
  c.dataset.name = "imagenet1k"
  c.dataset.val_size = 10000
  teachers = {"resnet18": teacher("resnet18", TV), "densenet121": teacher("densenet121", {}),
              "shufflenet_v2": teacher("shufflenet_v2_x1_0", {}),
              "mobilenet_v2": teacher("mobilenet_v2", {}), "alexnet": teacher("alexnet", {})}
  if c.plus:
    names = (("resnet18", "mobilenet_v2", "shufflenet_v2", "alexnet") if ipc == 1 else
             ("resnet18", "densenet121", "shufflenet_v2", "mobilenet_v2"))
  else:
    names = ("resnet18",)
  fadrm.select_teachers(c, teachers, names)
  c.recover.ipc = ipc
  c.recover.resolutions = (200, 224, 200, 224)
  c.recover.budgets = (500, 500, 500, 500)
  c.recover.lr = 0.25
  c.recover.jitter = 32
  c.recover.classes_per_batch = 100
  fadrm.patch_init(c, candidates=300, factor=2)
  c.relabel.mode = "bssl_online"
  c.evaluate.student = {"arch": "resnet18", "kwargs": {"stem": "imagenet"}}
  c.evaluate.epochs = 300
  c.evaluate.lr, c.evaluate.cosine_eta = LR_ETA.get(ipc, LR_ETA[50])
  if args.get("smoke"):
    fadrm.apply_smoke(c, args)
  return finalize(c)
