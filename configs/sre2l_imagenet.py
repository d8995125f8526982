"""SRe2L on ImageNet-1K (SRe2L recover.sh, relabel, validate/train_FKD.py).

    python -m jdd.main --config configs/sre2l_imagenet.py:ipc=50 --workdir runs/sre2l_in1k \
        --config.dataset.data_dir=/data/tfds --config.teacher.checkpoint=/weights/resnet18_v1

Paper cells (ResNet-18 student): 21.3 ± 0.6 (IPC 10), 46.8 ± 0.2 (IPC 50), 52.8 ± 0.3 (IPC 100),
57.0 ± 0.4 (IPC 200) [paper]. Teacher: torchvision ResNet-18 IMAGENET1K_V1, which must be
converted to a jdd teacher folder (converter: the teachers issue); squeezing ImageNet here is
not supported. Recover: 224x224, 4000 iterations, lr 0.25, r_bn 0.01, roll U{0..32},
RandomResizedCrop(0.08-1) + flip, 100 classes per batch. Relabel + validate: RRC + flip per
image, CutMix 1.0, 300 epochs, AdamW 1e-3 wd 0.01 (no decay on 1-D params), per-epoch cosine,
bs 1024, T 20. Labels run online (stored FKD labels would be ~30 GB at IPC 50).
Hardware: GPUs; recover at IPC 50 is 500 batches x 4000 steps. Not yet run by jdd.
"""

from jdd.config import check_variant_keys, finalize, parse_arg
from jdd.configs import sre2l


def get_config(arg=None):
  args = parse_arg(arg)
  check_variant_keys(args, {"smoke", "ipc"}, "configs/sre2l_imagenet")
  c = sre2l.base_config()
  c.dataset.name = "imagenet1k"
  c.dataset.val_size = 10000
  c.teacher.kwargs = {"stem": "imagenet"}
  c.recover.ipc = int(args.get("ipc", 50))
  c.recover.iterations = 4000
  c.recover.lr = 0.25
  c.recover.r_bn = 0.01
  c.recover.jitter = 32
  c.recover.groups_per_step = 1
  c.relabel.mode = "online"
  c.relabel.crop = "rrc"
  c.relabel.mix = "cutmix"
  c.relabel.mix_alpha = 1.0
  c.evaluate.student = {"arch": "resnet18", "kwargs": {"stem": "imagenet"}}
  c.evaluate.epochs = 300
  c.evaluate.batch_size = 1024
  c.evaluate.temperature = 20.0
  c.evaluate.eval_every = 10
  if args.get("smoke"):
    sre2l.apply_smoke(c, args)
  return finalize(c)
