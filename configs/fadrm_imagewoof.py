"""FADRM / FADRM+ on ImageWoof (FADRM scripts, `imagewoof/`).

    python -m jdd.main --config configs/fadrm_imagewoof.py:ipc=10 --workdir runs/fadrm_woof \
        --config.dataset.data_dir=/data/imagewoof   # <dir>/train/<class>/, <dir>/test/<class>/
    python -m jdd.main --config configs/fadrm_imagewoof.py:ipc=10,plus=True ...

Paper cells (FADRM Table, ResNet-18 student, top-1 %): FADRM 21.0 / 44.5 / 72.3 and FADRM+
22.8 / 57.3 / 72.6 at IPC 1 / 10 / 50 [paper].
Recover: stages 200, 224, 200, 224 px x 500 steps, ARC alpha 0.5, lr 0.25 (both), r_bn 0.01,
roll U{0..32}, one batch of the 10 classes; FADRM+ round-robin ResNet-18, ShuffleNetV2 x1.0,
MobileNetV2, DenseNet-121 (the reference's order varies by IPC; this is one of them).
Relabel: BSSL, batch 16 in 2 x 8 (IPC 1: 10 in 2 x 5), CutMix, 300 epochs; the reference's
validate scripts use batch 10 at IPC 10/50 against labels made with 16, which cannot load
(§5.7): jdd uses 16 for both. Validate: AdamW, T 20, lr/eta 5e-4/2, 5e-4/1, 1e-3/2 at IPC
1/10/50. `:smoke` shrinks the images to 32 px. Hardware: one GPU. Not yet run by jdd.
"""

from jdd.config import check_variant_keys, finalize, parse_arg
from jdd.configs import fadrm


def get_config(arg=None):
  args = parse_arg(arg)
  check_variant_keys(args, {"smoke", "ipc", "plus"}, "configs/fadrm_imagewoof")
  c = fadrm.imagenet_subset_config(
      args, fadrm_lr=0.25,
      order=("resnet18", "shufflenet_v2", "mobilenet_v2", "densenet121"), relabel_batch=16,
      lr_eta={1: (5e-4, 2.0), 10: (5e-4, 1.0), 50: (1e-3, 2.0)})
  return finalize(c)
