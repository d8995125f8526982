"""SRe2L on Fashion-MNIST: jdd's offline default (the README demo).

    python -m jdd.main --config configs/sre2l_fashion_mnist.py --workdir runs/sre2l_fmnist

Not a paper cell: Fashion-MNIST ships with Debian (`apt-get install dataset-fashion-mnist`), so
the whole pipeline runs with no download. ConvNet-3 (width 32, BatchNorm) teacher trained for
1 epoch, 10 images per class recovered for 500 iterations, relabelled FKD-style and evaluated
with a ConvNet-3 student over 3 seeds beside a random real subset of the same size.
About 10 minutes on 2 CPU cores. Variants: `:smoke` (a minute, what the tests run), `:ipc=N`.
"""

from jdd.config import check_variant_keys, finalize, parse_arg
from jdd.configs import classification, sre2l
from jdd.configs.classification import teacher


def get_config(arg=None):
  args = parse_arg(arg)
  check_variant_keys(args, {"smoke", "ipc"}, "configs/sre2l_fashion_mnist")
  c = sre2l.base_config()
  classification.fashion_mnist(c)
  c.teacher = teacher("convnet", {"width": 32, "depth": 3},
                      **classification.FASHION_MNIST_TEACHER_RECIPE)
  c.recover.ipc = int(args.get("ipc", 10))
  c.recover.iterations = 500
  c.recover.lr = 0.1
  c.recover.classes_per_batch = 10
  c.recover.groups_per_step = c.recover.ipc
  c.recover.r_bn = 0.01
  c.recover.crop_scale = (0.5, 1.0)
  c.recover.jitter = 2
  c.relabel.crop = "rrc"
  c.relabel.crop_scale = (0.5, 1.0)
  c.relabel.mix = "cutmix"
  if args.get("smoke"):
    sre2l.apply_smoke(c, args)
  return finalize(c)
