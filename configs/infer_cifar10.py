"""INFER on CIFAR-10 (UFC sh/ufc_cifar.sh, ufc_validation/val_{static,dyn}.py).

    python -m jdd.main --config configs/infer_cifar10.py:ipc=50 --workdir runs/infer_c10 \
        --config.dataset.data_dir=/data/tfds \
        --config.teachers.resnet18.checkpoint=/teachers/c10_resnet18 (and the other three)
    ... :ipc=50,dynamic=True  for INFER+Dyn

Paper cells (INFER Table 1, ResNet-18 student, CIFAR-10): INFER 32.0 (IPC 10), 60.4 (IPC 50);
INFER+Dyn 30.7 (IPC 10), 60.7 (IPC 50) [paper]. Budget with M = 4 teachers: 7 / 35 real images
per class, 35 / 175 instances per class. Teachers: ResNet-18, MobileNetV2, EfficientNet-B0,
ShuffleNetG2 (CIFAR layouts), converted from the reference's checkpoints or squeezed here
(200 epochs). Recover: 1000 iterations, Adam lr 0.25 (0.5, 0.9), r_bn 1, first BN x 10, roll
U{0..4}, one class group of 10 per compensator. Labels: static (teacher-mean logits, Mixup 0.8
in logit space) or dynamic; RandomCrop(32, 4) + flip; KL with T 30; student ResNet-18 (CIFAR
stem), AdamW 1e-3 wd 0.01, cosine, bs 64, 400 epochs static, 400 / 5 = 80 dynamic. jdd selects
the epoch on a validation split (the reference reports the best test epoch).
Hardware: one GPU. Not yet run by jdd. Variants: `:ipc=N`, `:dynamic=True`, `:smoke`.
"""

from jdd.config import check_variant_keys, finalize, parse_arg
from jdd.configs import infer


def get_config(arg=None):
  args = parse_arg(arg)
  check_variant_keys(args, {"smoke", "ipc", "dynamic"}, "configs/infer_cifar10")
  c = infer.base_config()
  c.dataset.name = "cifar10"
  infer.cifar_teachers(c)
  c.recover.ipc = int(args.get("ipc", 10))
  c.recover.classes_per_batch = 10
  c.recover.groups_per_step = 7
  infer.apply_variants(c, args)
  return finalize(c)
