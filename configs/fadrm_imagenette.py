"""FADRM / FADRM+ on ImageNette (FADRM scripts, `imagenet-nette/`).

    python -m jdd.main --config configs/fadrm_imagenette.py:ipc=10 --workdir runs/fadrm_nette \
        --config.dataset.data_dir=/data/imagenette   # <dir>/train/<class>/, <dir>/test/<class>/
    python -m jdd.main --config configs/fadrm_imagenette.py:ipc=10,plus=True ...

Paper cells (FADRM Table, ResNet-18 student, top-1 %): FADRM 36.2 / 64.8 / 83.6 and FADRM+
39.2 / 69.0 / 84.6 at IPC 1 / 10 / 50 [paper].
Recover: stages 200, 224, 200, 224 px x 500 steps, ARC alpha 0.5, lr 0.05 (FADRM) / 0.25
(FADRM+ with ResNet-18, DenseNet-121, ShuffleNetV2 x1.0, MobileNetV2), r_bn 0.01, roll
U{0..32}, one batch of the 10 classes. Relabel: BSSL, batch 10 in 2 x 5, CutMix, 300 epochs.
Validate: AdamW, T 20, lr/eta 5e-4/2, 5e-4/1, 5e-4/2 at IPC 1/10/50. `:smoke` shrinks the
images to 32 px. Hardware: one GPU. Not yet run by jdd.
"""

from jdd.config import check_variant_keys, finalize, parse_arg
from jdd.configs import fadrm


def get_config(arg=None):
  args = parse_arg(arg)
  check_variant_keys(args, {"smoke", "ipc", "plus"}, "configs/fadrm_imagenette")
  c = fadrm.imagenet_subset_config(
      args, fadrm_lr=0.05,
      order=("resnet18", "densenet121", "shufflenet_v2", "mobilenet_v2"), relabel_batch=10,
      lr_eta={1: (5e-4, 2.0), 10: (5e-4, 1.0), 50: (5e-4, 2.0)})
  return finalize(c)
