"""INFER on ImageNet-1K (UFC ufc_generation/ufc_imgnet.py, README hyperparameters).

    python -m jdd.main --config configs/infer_imagenet.py:ipc=50 --workdir runs/infer_in1k \
        --config.dataset.data_dir=/data/tfds \
        --config.teachers.resnet18.checkpoint=/teachers/resnet18_v1 \
        --config.teachers.mobilenet_v2.checkpoint=/teachers/mobilenet_v2_v1 \
        --config.teachers.efficientnet_b0.checkpoint=/teachers/efficientnet_b0_v1
    ... :ipc=50,dynamic=True  for INFER+Dyn

Paper cells (INFER Table 2, ResNet-18 student): INFER 28.7 (IPC 10), 51.8 (IPC 50) at
compression 0.81 % / 4.04 %; INFER+Dyn 36.3 / 55.6 [paper] (ResNet-50: 26.9 / 53.3 and
38.3 / 63.4). Budget with M = 3: 9 / 49 real images per class, 36 / 196 instances per class.
Teachers: torchvision ResNet-18, MobileNetV2, EfficientNet-B0 (IMAGENET1K_V1), converted to
jdd teacher folders (squeezing ImageNet here is not supported). Recover: 224x224, 2000
iterations, lr 0.25, r_bn 0.01, first BN x 10, RandomResizedCrop(224) + flip + roll U{0..32},
one group of 1000 classes (bs 1000). The reference's ImageNet validation is not released: the
student protocol here is SRe2L's ImageNet one (RandomResizedCrop + flip, AdamW 1e-3, bs 1024,
T 20, 300 epochs static; 300 / 4 = 75 dynamic) with INFER's Mixup 0.8 [unverified].
Hardware: GPUs; IPC 50 is 49 x 3 compensators of 1000-image batches x 2000 steps.
Not yet run by jdd. Variants: `:ipc=N`, `:dynamic=True`, `:smoke`.
"""

from jdd.config import check_variant_keys, finalize, parse_arg
from jdd.configs import infer
from jdd.configs.classification import teacher


def get_config(arg=None):
  args = parse_arg(arg)
  check_variant_keys(args, {"smoke", "ipc", "dynamic"}, "configs/infer_imagenet")
  c = infer.base_config()
  c.dataset.name = "imagenet1k"
  c.dataset.val_size = 10000
  infer.set_compensator_teachers(c, {
      "resnet18": teacher("resnet18", {"stem": "imagenet"}),
      "mobilenet_v2": teacher("mobilenet_v2", {"variant": "torchvision"}),
      "efficientnet_b0": teacher("efficientnet_b0", {"variant": "torchvision"})})
  c.recover.ipc = int(args.get("ipc", 10))
  c.recover.iterations = 2000
  c.recover.lr = 0.25
  c.recover.r_bn = 0.01
  c.recover.classes_per_batch = 1000
  c.recover.groups_per_step = 1
  c.recover.random_resized_crop = True
  c.recover.flip = True
  c.recover.jitter = 32
  c.relabel.crop = "rrc"
  c.evaluate.student = {"arch": "resnet18", "kwargs": {"stem": "imagenet"}}
  c.evaluate.epochs = 300
  c.evaluate.batch_size = 1024
  c.evaluate.temperature = 20.0
  infer.apply_variants(c, args)
  return finalize(c)
