"""INFER on Tiny-ImageNet (INFER Table 1; the reference releases no Tiny generation or
validation code, so this config carries the CIFAR settings over at 64x64 [unverified]).

    python -m jdd.main --config configs/infer_tiny.py:ipc=50 --workdir runs/infer_tiny \
        --config.dataset.data_dir=/data/tiny-imagenet-200
    ... :ipc=50,dynamic=True  for INFER+Dyn

Paper cells (INFER Table 1, ResNet-18 student, Tiny-ImageNet): INFER 32.0 (IPC 10), 52.9
(IPC 50); INFER+Dyn 41.0, 54.6 [paper]; ConvNet-128 student 22.8 / 32.3. Budget with M = 4
teachers and one group of 200 classes: 9 / 49 real images per class, 45 / 245 instances per
class. Teachers: ResNet-18 (CIFAR stem at 64x64, as SRe2L's Tiny teacher), MobileNetV2,
EfficientNet-B0, ShuffleNetG2 (CIFAR layouts), squeezed with SRe2L's Tiny recipe (50 epochs,
SGD 0.2, wd 1e-4, 5 warm-up epochs, bs 256) unless a checkpoint is given. Recover: 1000
iterations, lr 0.25, r_bn 1, roll U{0..4}. Labels: RandomCrop(64, 4) + flip + Mixup 0.8, T 30;
student ResNet-18, AdamW 1e-3, bs 64, 200 epochs static, 200 / 5 = 40 dynamic [unverified].
Hardware: one GPU. Not yet run by jdd. Variants: `:ipc=N`, `:dynamic=True`, `:smoke`.
"""

from jdd.config import check_variant_keys, finalize, parse_arg
from jdd.configs import infer


def get_config(arg=None):
  args = parse_arg(arg)
  check_variant_keys(args, {"smoke", "ipc", "dynamic"}, "configs/infer_tiny")
  c = infer.base_config()
  c.dataset.name = "tiny_imagenet"
  c.dataset.image_size = 64
  infer.cifar_teachers(c, epochs=50)
  for name in c.teacher_names:
    t = c.teachers[name]
    t.batch_size, t.lr, t.weight_decay, t.warmup_epochs = 256, 0.2, 1e-4, 5
  c.recover.ipc = int(args.get("ipc", 10))
  c.recover.classes_per_batch = 200
  c.recover.groups_per_step = 2
  c.evaluate.epochs = 200
  infer.apply_variants(c, args)
  return finalize(c)
