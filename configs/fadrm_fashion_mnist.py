"""FADRM / FADRM+ on Fashion-MNIST: jdd's offline version (no download, 2 CPU cores).

    python -m jdd.main --config configs/fadrm_fashion_mnist.py --workdir runs/fadrm_fmnist
    python -m jdd.main --config configs/fadrm_fashion_mnist.py:plus=True --workdir runs/fadrmp_fmnist

Not a paper cell: the same pipeline as the paper's CIFAR-100 setting, shrunk to run here next
to configs/sre2l_fashion_mnist.py at an equal budget (10 images per class, 500 recover steps,
same student and evaluation). Teachers are trained by the squeeze stage, one epoch each: a
ConvNet-3 (width 32, BN) and, for FADRM+, also a ResNet-18 with the CIFAR stem at width 16;
FADRM+ alternates them every step. Recover: 4 stages at 28 px x 125 steps (the CIFAR
schedule: the ConvNet's flattening head fixes the resolution), ARC alpha 0.5 at each boundary,
lr 0.1, RRC 0.5-1 + flip + roll U{0..2}, fp32 (bf16 is slow on CPU). Patches: the best of 2
crops of 200 candidates per class. Relabel: BSSL in 2 micro-batches of 25, mixture of the
recover teachers, CutMix. Evaluate: ConvNet-3 student, 100 epochs, 3 seeds.
Variants: `:plus=True`, `:ipc=N`, `:smoke` (what the tests run: stages 32 px then 28 px).
"""

from jdd.config import check_variant_keys, finalize, parse_arg
from jdd.configs import classification, fadrm
from jdd.configs.classification import teacher


def get_config(arg=None):
  args = parse_arg(arg)
  check_variant_keys(args, {"smoke", "ipc", "plus"}, "configs/fadrm_fashion_mnist")
  c = fadrm.base_config(plus=bool(args.get("plus", False)))
  classification.fashion_mnist(c)
  quick = classification.FASHION_MNIST_TEACHER_RECIPE
  teachers = {"convnet": teacher("convnet", {"width": 32, "depth": 3}, **quick),
              "resnet18": teacher("resnet18", {"stem": "cifar", "width": 8}, **quick)}
  fadrm.select_teachers(c, teachers, ("convnet", "resnet18") if c.plus else ("convnet",))
  c.recover.ipc = int(args.get("ipc", 10))
  c.recover.resolutions = (28, 28, 28, 28)
  c.recover.budgets = (125, 125, 125, 125)
  c.recover.lr = 0.1
  c.recover.classes_per_batch = 10
  c.recover.groups_per_step = c.recover.ipc
  c.recover.crop_scale = (0.5, 1.0)
  c.recover.jitter = 2
  c.recover.compute_dtype = "float32"
  fadrm.patch_init(c, candidates=200, factor=1, crops=2)
  c.relabel.crop_scale = (0.5, 1.0)
  if args.get("smoke"):
    fadrm.apply_smoke(c)
    # 32 then 28 px: both give the ConvNet's 4x4 feature map (28 + 2 * 3 padding), so the
    # smoke run crosses a real change of resolution (upsampled, then ARC back to 28).
    c.recover.resolutions = (32, 28)
  return finalize(c)
