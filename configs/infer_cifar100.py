"""INFER on CIFAR-100 (UFC sh/ufc_cifar.sh, ufc_validation/val_{static,dyn}.py).

    python -m jdd.main --config configs/infer_cifar100.py:ipc=50 --workdir runs/infer_c100 \
        --config.dataset.data_dir=/data/tfds \
        --config.teachers.resnet18.checkpoint=/teachers/c100_resnet18 (and the other three)
    ... :ipc=50,dynamic=True  for INFER+Dyn

Paper cells (INFER Table 1, ResNet-18 student, CIFAR-100): INFER 45.2 (IPC 10), 62.8 (IPC 50),
66.3 (IPC 100); INFER+Dyn 53.4, 68.9, 73.3 [paper]. With a ConvNet-128 student INFER reaches
41.0 / 53.8 / 57.0 [paper]. Budget with M = 4: 9 / 48 real images per class (IPC 10 / 50),
45 / 240 instances per class. Teachers: ResNet-18, MobileNetV2, EfficientNet-B0, ShuffleNetG2
(CIFAR layouts). Recover: 1000 iterations, lr 0.25, r_bn 1, first BN x 10, roll U{0..4}, one
class group of 100 (bs 100). Labels and student as configs/infer_cifar10.py: static or dynamic,
RandomCrop(32, 4) + flip + Mixup 0.8, T 30, ResNet-18, AdamW 1e-3, bs 64, 400 / 80 epochs.
Hardware: one GPU. Not yet run by jdd. Variants: `:ipc=N`, `:dynamic=True`, `:smoke`.
"""

from jdd.config import check_variant_keys, finalize, parse_arg
from jdd.configs import infer


def get_config(arg=None):
  args = parse_arg(arg)
  check_variant_keys(args, {"smoke", "ipc", "dynamic"}, "configs/infer_cifar100")
  c = infer.base_config()
  c.dataset.name = "cifar100"
  infer.cifar_teachers(c)
  c.recover.ipc = int(args.get("ipc", 10))
  c.recover.classes_per_batch = 100
  c.recover.groups_per_step = 4
  infer.apply_variants(c, args)
  return finalize(c)
