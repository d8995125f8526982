"""SRe2L on Fashion-MNIST: jdd's offline version of the references' small-image recipe.

    python -m jdd.main --config configs/sre2l_fashion_mnist.py --workdir runs/sre2l_fmnist
    python -m jdd.main --config configs/sre2l_fashion_mnist.py:ipc=50 --workdir runs/sre2l_ipc50

Not a paper cell: Fashion-MNIST ships with Debian (`apt-get install dataset-fashion-mnist`), so
the whole pipeline runs with no download. The values are SRe2L's CIFAR scripts
(research/unimodal_dd_methods.md §3.3, §3.4):
- teacher: ConvNet-3 (width 32, BatchNorm) by SRe2L's CIFAR squeeze recipe (SGD 0.1, momentum
  0.9, wd 5e-4, cosine, bs 128, RandomCrop + flip), trained once per seed and cached
  (jdd.stages.teacher_cache; shipped with jdd in jdd/assets/teachers, val 92.34 %, test
  92.17 %, so a fresh clone trains no teacher);
- recover: 1000 iterations, Adam lr 0.25 with cosine, no crop and no flip, roll U{0..4},
  first BN x 10, one image per class per batch (all 10 classes), r_bn = 1.0;
- relabel: FKD labels stored per (epoch, batch): RandomCrop(pad 4) + flip + Mixup 0.8, the
  teacher labelling the mixed batch; evaluate: KL at T = 30, AdamW 1e-3 (wd 0.01), cosine.

What still differs from the reference, and why:
- r_bn 1.0 instead of CIFAR's 0.01: 0.01 was set for ResNet-18's 20 BN layers; on ConvNet-3's
  three the BN term is ~0.02 against CE ~0.1 and barely counts (issue 15). 1.0 is SRe2L's own
  Tiny-ImageNet value and UFC's CIFAR value, the references' choice for shallow BN stacks.
- 28 px with padding 4 kept (not rescaled from 32 px); the ConvNet's flattening head fixes
  the resolution.
- the relabel teacher runs in eval mode (the reference's CIFAR relabel leaves it in train mode
  by accident) and labels are stored, not computed online (jdd.labels.fkd).
- 20-epoch teacher instead of 200 (CPU; 10 epochs gave 90.77 %, the goal is >= 91 %), a
  ConvNet-3 instead of a ResNet-18 (CPU), batch 50 instead of 128 (10 classes: a 100-image set
  would train one step per epoch); `evaluate.epochs` is the reference's 400 at IPC 10 (800
  steps at batch 50 for every set compared) and 200 at IPC 50 (2000 steps), not yet re-chosen
  from curves: each run's W/eval/curves.png shows whether validation has flattened, and
  docs/fashion_mnist.md reports what the measured runs show.
Expected time: docs/fashion_mnist.md. Variants: `:ipc=N`, `:smoke` (a minute; the tests),
`:demo` (scripts/demo.sh: label modes soft and hard only, 12 students instead of 18, to stay
within the demo's 15 minutes on 2 cores; DD-Ranking's ARS needs the soft-without-augmentation
students, so the demo reports LRS only and the full config both).
"""

from jdd.config import check_variant_keys, finalize, parse_arg
from jdd.configs import classification, sre2l
from jdd.configs.classification import teacher


def get_config(arg=None):
  args = parse_arg(arg)
  check_variant_keys(args, {"smoke", "ipc", "demo"}, "configs/sre2l_fashion_mnist")
  c = sre2l.base_config()
  classification.fashion_mnist(c)
  c.teacher = teacher("convnet", {"width": 32, "depth": 3},
                      **classification.FASHION_MNIST_TEACHER_RECIPE)
  c.recover.ipc = int(args.get("ipc", 10))
  c.recover.iterations = 1000
  c.recover.lr = 0.25
  c.recover.classes_per_batch = 10
  c.recover.groups_per_step = c.recover.ipc
  c.recover.r_bn = 1.0
  c.recover.random_resized_crop = False
  c.recover.flip = False
  c.recover.jitter = 4
  classification.fashion_mnist_fkd_labels(c)
  c.evaluate.epochs = 400 if c.recover.ipc <= 10 else 200
  c.evaluate.eval_every = c.evaluate.epochs // 10
  if args.get("smoke"):
    sre2l.apply_smoke(c, args)
  if args.get("demo"):
    c.evaluate.label_modes = ("soft", "hard")
  return finalize(c)
