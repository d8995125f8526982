"""The weight-converter command line end to end: torch checkpoint files -> jdd teacher folders.

Each test saves a randomised torch network to disk in one of the reference layouts (torchvision
bare `.pth`; SRe2L/INFER `{'state_dict'}` with `module.` prefixes; Tiny-ImageNet `{'model',
..., 'args'}`; FADRM's bare kuangliu-named CIFAR ResNet), runs `third_party.convert_torch`
(in-process through `main(argv)`, and once as `python -m`), loads the folder with the driver's
own `jdd.stages.teachers.load_teacher`, and compares logits with torch. The kuangliu ResNet is written here
in plain torch (same module names and maths as the FADRM/CV-DD definition).
"""

import argparse
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn as tnn
import torch.nn.functional as F
import torchvision

from jdd import models
from jdd.stages.teachers import load_teacher
from third_party import convert_torch
from torch_parity import assert_rel, check_parity, randomise

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------ torch reference networks


class KuangliuBlock(tnn.Module):
  """kuangliu/pytorch-cifar BasicBlock: `shortcut` is an empty Sequential or (conv, bn)."""

  def __init__(self, cin, planes, stride):
    super().__init__()
    self.conv1 = tnn.Conv2d(cin, planes, 3, stride, 1, bias=False)
    self.bn1 = tnn.BatchNorm2d(planes)
    self.conv2 = tnn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = tnn.BatchNorm2d(planes)
    self.shortcut = tnn.Sequential()
    if stride != 1 or cin != planes:
      self.shortcut = tnn.Sequential(tnn.Conv2d(cin, planes, 1, stride, bias=False),
                                     tnn.BatchNorm2d(planes))

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    return F.relu(out + self.shortcut(x))


class KuangliuResNet(tnn.Module):
  """FADRM's CIFAR ResNet: 3x3/1 stem, no max-pool, global average pool, head `linear`."""

  def __init__(self, num_blocks, num_classes, width=64):
    super().__init__()
    self.conv1 = tnn.Conv2d(3, width, 3, 1, 1, bias=False)
    self.bn1 = tnn.BatchNorm2d(width)
    cin = width
    for i, n in enumerate(num_blocks):
      planes = width * 2**i
      blocks = []
      for j in range(n):
        blocks.append(KuangliuBlock(cin, planes, 2 if (i > 0 and j == 0) else 1))
        cin = planes
      setattr(self, f"layer{i + 1}", tnn.Sequential(*blocks))
    self.linear = tnn.Linear(cin, num_classes)

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
    out = F.avg_pool2d(out, out.size(2))
    return self.linear(out.flatten(1))


def sre2l_cifar_resnet18(num_classes):
  """SRe2L's CIFAR teacher: torchvision resnet18 with a 3x3/1 conv1 and no max-pool."""
  m = torchvision.models.resnet18(num_classes=num_classes)
  m.conv1 = tnn.Conv2d(3, 64, 3, 1, 1, bias=False)
  m.maxpool = tnn.Identity()
  return m


def _randomised(model, seed):
  torch.manual_seed(seed)
  model = randomise(model, seed)
  with torch.no_grad():  # random non-zero biases too, so a dropped bias cannot pass
    for p in model.parameters():
      if p.ndim == 1:
        p.add_(0.05 * torch.randn(p.shape))
  return model.eval()


# ------------------------------------------------------------------ helpers


def _argv(arch, ckpt, out, *, num_classes, size, kwargs=None, extra=()):
  return ["--arch", arch, "--checkpoint", str(ckpt), "--out", str(out),
          "--num-classes", str(num_classes), "--image-size", str(size),
          "--dataset", "test", "--mean", "0.5", "0.5", "0.5", "--std", "0.25", "0.25", "0.25",
          "--kwargs", json.dumps(kwargs or {}), *extra]


def _load(out, arch, num_classes, size, kwargs=None):
  expect = {"arch": arch, "kwargs": kwargs or {}, "num_classes": num_classes,
            "image_shape": [size, size, 3]}
  return load_teacher(str(out), expect)


def _compare_logits(torch_model, model, variables, size, batch=2, seed=0):
  x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))
  with torch.no_grad():
    want = torch_model.eval()(x).numpy()
  got = jax.jit(lambda v, a: model.apply(v, a, train=False))(
      variables, jnp.asarray(x.numpy().transpose(0, 2, 3, 1)))
  assert_rel(np.asarray(got), want, 1e-4, "logits after convert + load_teacher")


def _skip_unregistered(arch):
  if arch not in models.REGISTRY:
    pytest.skip(f"{arch} is not in jdd.models.REGISTRY yet (another engineer is adding it)")


# ------------------------------------------------------------------ the three layouts


def test_torchvision_bare_pth(tmp_path):
  tm = _randomised(torchvision.models.resnet18(num_classes=10), 0)
  ckpt = tmp_path / "resnet18.pth"
  torch.save(tm.state_dict(), ckpt)
  out = tmp_path / "teacher"
  assert convert_torch.main(_argv("resnet18", ckpt, out, num_classes=10, size=32,
                                  extra=["--layout", "torchvision"])) == 0
  model, variables, card = _load(out, "resnet18", 10, 32)
  _compare_logits(tm, model, variables, 32)
  assert card["source"]["layout"] == "torchvision"
  assert card["source"]["naming"] == "torchvision"
  assert card["source"]["sha256"] == convert_torch.sha256_of(str(ckpt))
  assert card["mean"] == [0.5] * 3 and card["std"] == [0.25] * 3 and card["dataset"] == "test"


def test_sre2l_state_dict_with_module_prefix(tmp_path):
  """SRe2L/INFER `ckpt.pth`: DataParallel names under 'state_dict', plus acc and epoch."""
  tm = _randomised(sre2l_cifar_resnet18(100), 1)
  ckpt = tmp_path / "ckpt.pth"
  torch.save({"state_dict": {f"module.{k}": v for k, v in tm.state_dict().items()},
              "acc": 78.72, "epoch": 199}, ckpt)
  out = tmp_path / "teacher"
  kwargs = {"stem": "cifar"}
  assert convert_torch.main(_argv("resnet18", ckpt, out, num_classes=100, size=16,
                                  kwargs=kwargs, extra=["--layout", "sre2l"])) == 0
  model, variables, card = _load(out, "resnet18", 100, 16, kwargs)
  assert card["source"]["layout"] == "sre2l"
  # Through the files on disk: BN-input statistics and the recover-loss input gradient as well.
  assert check_parity(tm, model, variables, image_hw=16, batch=2, num_classes=100,
                      modes=("eval",)) == 20


def test_tiny_model_dict_with_args(tmp_path):
  """The torchvision reference script's checkpoint: 'model' beside optimizer state and args."""
  tm = _randomised(sre2l_cifar_resnet18(200), 2)
  ckpt = tmp_path / "checkpoint.pth"
  torch.save({"model": tm.state_dict(), "optimizer": {"state": {}, "param_groups": []},
              "lr_scheduler": {"last_epoch": 49}, "epoch": 49,
              "args": argparse.Namespace(lr=0.2, epochs=50, model="resnet18")}, ckpt)
  out = tmp_path / "teacher"
  kwargs = {"stem": "cifar"}
  assert convert_torch.main(_argv("resnet18", ckpt, out, num_classes=200, size=16,
                                  kwargs=kwargs, extra=["--preset", "tiny_sre2l"])) == 0
  model, variables, card = _load(out, "resnet18", 200, 16, kwargs)
  _compare_logits(tm, model, variables, 16)
  assert card["source"]["layout"] == "tiny"  # found by --layout auto
  assert card["mean"] == [0.5] * 3  # explicit flags win over the preset


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_fadrm_kuangliu_bare(tmp_path, fmt):
  tm = _randomised(KuangliuResNet((2, 2, 2, 2), 100, width=16), 3)
  ckpt = tmp_path / f"fadrm_r18.{fmt}"
  if fmt == "pth":
    torch.save(tm.state_dict(), ckpt)
  else:
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in tm.state_dict().items()}, str(ckpt))
  out = tmp_path / "teacher"
  kwargs = {"stem": "cifar", "width": 16}
  assert convert_torch.main(_argv("resnet18", ckpt, out, num_classes=100, size=16,
                                  kwargs=kwargs,
                                  extra=["--layout", "fadrm", "--naming", "kuangliu"])) == 0
  model, variables, card = _load(out, "resnet18", 100, 16, kwargs)
  _compare_logits(tm, model, variables, 16)
  assert card["source"]["naming"] == "kuangliu"


def test_cli_subprocess(tmp_path):
  """`python -m third_party.convert_torch` from the repository root, with a preset."""
  tm = _randomised(KuangliuResNet((2, 2, 2, 2), 100, width=8), 4)
  ckpt = tmp_path / "r18.pth"
  torch.save(tm.state_dict(), ckpt)
  out = tmp_path / "teacher"
  kwargs = {"stem": "cifar", "width": 8}
  cmd = [sys.executable, "-m", "third_party.convert_torch", "--arch", "resnet18",
         "--checkpoint", str(ckpt), "--out", str(out), "--naming", "kuangliu",
         "--preset", "cifar100", "--kwargs", json.dumps(kwargs)]
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr
  assert "converted" in r.stdout
  model, variables, card = _load(out, "resnet18", 100, 32, kwargs)
  assert card["dataset"] == "cifar100"
  assert card["mean"] == [0.5071, 0.4867, 0.4408]
  _compare_logits(tm, model, variables, 32)
  # A second run into the same folder refuses without --force.
  r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode != 0 and "--force" in r.stderr


# ------------------------------------------------------------------ other torchvision archs

TORCHVISION_ARCHS = {
    "mobilenet_v2": lambda k: torchvision.models.mobilenet_v2(num_classes=k),
    "shufflenet_v2_x0_5": lambda k: torchvision.models.shufflenet_v2_x0_5(num_classes=k),
    "densenet121": lambda k: torchvision.models.densenet121(num_classes=k),
    "efficientnet_b0": lambda k: torchvision.models.efficientnet_b0(num_classes=k),
}


@pytest.mark.parametrize("arch", sorted(TORCHVISION_ARCHS))
def test_torchvision_archs_round_trip(tmp_path, arch):
  _skip_unregistered(arch)
  tm = _randomised(TORCHVISION_ARCHS[arch](10), 5)
  ckpt = tmp_path / f"{arch}.pth"
  torch.save(tm.state_dict(), ckpt)
  out = tmp_path / "teacher"
  assert convert_torch.main(_argv(arch, ckpt, out, num_classes=10, size=32,
                                  extra=["--layout", "torchvision"])) == 0
  model, variables, _ = _load(out, arch, 10, 32)
  _compare_logits(tm, model, variables, 32)


# ------------------------------------------------------------------ bad inputs


def test_wrong_arch_lists_keys(tmp_path, capsys):
  ckpt34 = tmp_path / "r34.pth"
  torch.save(KuangliuResNet((3, 4, 6, 3), 10, width=8).state_dict(), ckpt34)
  ckpt18 = tmp_path / "r18.pth"
  torch.save(KuangliuResNet((2, 2, 2, 2), 10, width=8).state_dict(), ckpt18)
  kwargs = {"stem": "cifar", "width": 8}
  naming = ["--naming", "kuangliu"]

  # A ResNet-34 file read as a ResNet-18 with the wrong class count.
  out = tmp_path / "a"
  assert convert_torch.main(_argv("resnet18", ckpt34, out, num_classes=100, size=16,
                                  kwargs=kwargs, extra=naming)) == 2
  err = capsys.readouterr().err
  assert "does not fit architecture 'resnet18'" in err
  assert "unexpected keys" in err and "layer1.2.conv1.weight" in err
  assert "mis-shaped keys" in err and "linear.weight expected (64, 100) got (64, 10)" in err
  assert not (out / "card.json").exists()

  # A ResNet-18 file read as a ResNet-34: its extra blocks are missing.
  assert convert_torch.main(_argv("resnet34", ckpt18, tmp_path / "b", num_classes=10, size=16,
                                  kwargs=kwargs, extra=naming)) == 2
  err = capsys.readouterr().err
  assert "missing keys (80)" in err and "layer1.2.bn1.running_mean" in err

  # The right file with the wrong naming: every renamed key is listed, with the known namings.
  assert convert_torch.main(_argv("resnet18", ckpt18, tmp_path / "c", num_classes=10, size=16,
                                  kwargs=kwargs)) == 2
  err = capsys.readouterr().err
  assert "missing keys" in err and "fc.weight" in err and "linear.weight" in err
  assert "namings known for resnet18: kuangliu, torchvision" in err


def test_layout_mismatch_is_a_clear_error(tmp_path, capsys):
  net = KuangliuResNet((2, 2, 2, 2), 10, width=8)
  bare = tmp_path / "bare.pth"
  torch.save(net.state_dict(), bare)
  wrapped = tmp_path / "wrapped.pth"
  torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, wrapped)
  common = dict(num_classes=10, size=16, kwargs={"stem": "cifar", "width": 8},)
  assert convert_torch.main(_argv("resnet18", bare, tmp_path / "a", **common,
                                  extra=["--layout", "sre2l", "--naming", "kuangliu"])) == 2
  err = capsys.readouterr().err
  assert "--layout sre2l expects a dict with the state dict under 'state_dict'" in err
  assert "bare state dict" in err
  assert convert_torch.main(_argv("resnet18", wrapped, tmp_path / "b", **common,
                                  extra=["--layout", "fadrm", "--naming", "kuangliu"])) == 2
  assert "wraps it under 'state_dict' (the sre2l layout)" in capsys.readouterr().err
  assert convert_torch.main(_argv("resnet18", wrapped, tmp_path / "c", **common,
                                  extra=["--layout", "tiny", "--naming", "kuangliu"])) == 2
  assert "--layout tiny expects a dict with the state dict under 'model'" in \
      capsys.readouterr().err


def test_missing_settings_and_unsafe_pickle(tmp_path, capsys):
  ckpt = tmp_path / "r18.pth"
  torch.save({"model": {}, "weird": _Opaque()}, ckpt)
  argv = ["--arch", "resnet18", "--checkpoint", str(ckpt), "--out", str(tmp_path / "o")]
  assert convert_torch.main(argv) == 2
  assert "missing --num-classes, --image-size, --mean, --std, --dataset" in capsys.readouterr().err
  assert convert_torch.main(argv + ["--preset", "cifar10"]) == 2
  err = capsys.readouterr().err
  assert "weights_only=True" in err and "--allow-pickle" in err
  assert convert_torch.main(argv + ["--preset", "cifar10", "--arch", "nope"]) == 2
  assert "unknown --arch 'nope'" in capsys.readouterr().err


class _Opaque:
  """An arbitrary pickled object, which weights_only loading must refuse."""
