"""INFER on Fashion-MNIST: the offline version (teachers trained here by squeeze), not a paper cell.

    python -m jdd.main --config configs/infer_fashion_mnist.py --workdir runs/infer_fm
    python -m jdd.main --config configs/infer_fashion_mnist.py:dynamic=True --workdir runs/infer_fm_dyn

Fashion-MNIST ships with Debian (`apt-get install dataset-fashion-mnist`), so nothing is
downloaded. M = 4 teachers of two architectures (ConvNet-3 and ConvNet-2 at width 32, ResNet-18
with the CIFAR stem at widths 4 and 8), each squeezed for one epoch. Budget 10 images per class:
floor(10 * 10 / 14) = 7 real images per class + 7 x 4 compensators = 98 <= 100 stored
image-sized tensors, materialised into 35 instances per class. Recover as the reference's CIFAR
script (lr 0.25, r_bn 1, first BN x 10, roll U{0..4}), 500 iterations. Evaluation as the SRe2L
Fashion-MNIST demo so the two are comparable: ConvNet-3 w32 student, AdamW 2e-3, bs 50, T 4,
100 epochs (static labels) or 100 / (M + 1) = 20 epochs (`:dynamic=True`, online teachers),
3 seeds, beside a random real subset of 10 images per class with the same labels.
Measured wall time on 2 shared CPU cores: see docs/infer.md (target < 20 minutes each).
Variants: `:dynamic=True`, `:ipc=N` (N >= 2), `:smoke` (a minute; what the tests run).
"""

from jdd.config import check_variant_keys, finalize, parse_arg
from jdd.configs import classification, infer
from jdd.configs.classification import teacher


def get_config(arg=None):
  args = parse_arg(arg)
  check_variant_keys(args, {"smoke", "ipc", "dynamic"}, "configs/infer_fashion_mnist")
  c = infer.base_config()
  classification.fashion_mnist(c)
  recipe = classification.FASHION_MNIST_TEACHER_RECIPE
  infer.set_compensator_teachers(c, {
      "convnet_w32": teacher("convnet", {"width": 32, "depth": 3}, **recipe),
      "resnet18_w4": teacher("resnet18", {"stem": "cifar", "width": 4}, **recipe),
      "convnet_w32d2": teacher("convnet", {"width": 32, "depth": 2}, **recipe),
      "resnet18_w8": teacher("resnet18", {"stem": "cifar", "width": 8}, **recipe)})
  c.recover.ipc = int(args.get("ipc", 10))
  c.recover.iterations = 500
  c.recover.lr = 0.25
  c.recover.classes_per_batch = 10
  c.recover.groups_per_step = 16
  c.recover.r_bn = 1.0
  c.recover.jitter = 4
  c.relabel.crop = "pad_crop"
  c.relabel.crop_padding = 2
  c.relabel.mix = "mixup"
  c.relabel.mix_alpha = 0.8
  infer.apply_variants(c, args)
  return finalize(c)
