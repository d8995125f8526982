"""SRe2L on Tiny-ImageNet (SRe2L recover_tiny.sh; zeyuanyin/tiny-imagenet for squeeze/validate).

    python -m jdd.main --config configs/sre2l_tiny.py:ipc=50 --workdir runs/sre2l_tiny \
        --config.dataset.data_dir=/data/tiny-imagenet-200

Paper cells (SRe2L Table, ResNet-18): 41.1 ± 0.4 (IPC 50), 49.7 ± 0.3 (IPC 100) [paper].
Teacher: ResNet-18 (CIFAR stem), 50 epochs SGD 0.2, momentum 0.9, wd 1e-4, bs 256, cosine with
5 warm-up epochs ("rn18_E50"). Recover: 64x64, 4000 iterations, lr 0.1, r_bn 1.0, roll
U{-4..4}, RandomResizedCrop + flip. Validate: online KD in the reference (here stored FKD
labels, same maths), RRC(64) + flip, no mix, 100 epochs, SGD 0.2 momentum 0.9 wd 1e-4, cosine
+ 5 warm-up, bs 256, T 20 with the T^2 factor. Hardware: one GPU. Not yet run by jdd.
"""

from jdd.config import check_variant_keys, finalize, parse_arg
from jdd.configs import sre2l


def get_config(arg=None):
  args = parse_arg(arg)
  check_variant_keys(args, {"smoke", "ipc"}, "configs/sre2l_tiny")
  c = sre2l.base_config()
  c.dataset.name = "tiny_imagenet"
  c.dataset.image_size = 64
  c.teacher.epochs = 50
  c.teacher.batch_size = 256
  c.teacher.lr = 0.2
  c.teacher.weight_decay = 1e-4
  c.teacher.warmup_epochs = 5
  c.recover.ipc = int(args.get("ipc", 50))
  c.recover.iterations = 4000
  c.recover.lr = 0.1
  c.recover.r_bn = 1.0
  c.recover.jitter = 4
  c.recover.jitter_symmetric = True
  c.recover.groups_per_step = 4
  c.relabel.crop = "rrc"
  c.relabel.mix = "none"
  c.evaluate.epochs = 100
  c.evaluate.batch_size = 256
  c.evaluate.optimizer = "sgd"
  c.evaluate.lr = 0.2
  c.evaluate.weight_decay = 1e-4
  c.evaluate.warmup_epochs = 5
  c.evaluate.temperature = 20.0
  c.evaluate.t_squared = True
  if args.get("smoke"):
    sre2l.apply_smoke(c, args)
  return finalize(c)
