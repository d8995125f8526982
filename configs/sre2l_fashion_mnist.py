"""SRe2L on Fashion-MNIST: jdd's offline default (the README demo).

    python -m jdd.main --config configs/sre2l_fashion_mnist.py --workdir runs/sre2l_fmnist

Not a paper cell: Fashion-MNIST ships with Debian (`apt-get install dataset-fashion-mnist`), so
the whole pipeline runs with no download. ConvNet-3 (width 32, BatchNorm) teacher trained for
1 epoch, 10 images per class recovered for 500 iterations, relabelled FKD-style and evaluated
with a ConvNet-3 student over 3 seeds beside a random real subset of the same size.
About 10 minutes on 2 CPU cores. Variants: `:smoke` (a minute, what the tests run), `:ipc=N`.
"""

import sys, os
sys.path.insert(0, os.path.dirname(__file__))
from sre2l_common import apply_smoke, base_config  # noqa: E402
from jdd.config import check_variant_keys, finalize, parse_arg  # noqa: E402


def get_config(arg=None):
  args = parse_arg(arg)
  check_variant_keys(args, {"smoke", "ipc"}, "configs/sre2l_fashion_mnist")
  c = base_config()
  c.dataset.name = "fashion_mnist"
  c.dataset.val_size = 5000
  c.teacher.arch = "convnet"
  c.teacher.kwargs = {"width": 32, "depth": 3}
  c.teacher.epochs = 1
  c.teacher.batch_size = 256
  c.teacher.lr = 0.05
  c.teacher.crop_padding = 2
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
  c.evaluate.student = {"arch": "convnet", "kwargs": {"width": 32, "depth": 3}}
  c.evaluate.epochs = 100
  c.evaluate.batch_size = 50
  c.evaluate.lr = 2e-3
  c.evaluate.temperature = 4.0
  c.evaluate.eval_every = 20
  c.evaluate.seeds = 3
  c.checkpoint_every = 100
  if args.get("smoke"):
    apply_smoke(c)
    c.dataset.name = "fashion_mnist"
  return finalize(c)
