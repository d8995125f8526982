"""PyTorch parity of jdd's MobileNetV2 and ShuffleNet teachers (torchvision and CIFAR layouts).

torchvision nets come from torchvision itself; the CIFAR nets of FADRM (`models/mobilenetv2.py`,
`models/shufflenetv2.py`) and UFC (`models/mobilenetv2.py`, `models/shufflenet.py`) are not
installable, so they are re-written below in plain torch with the same module names, shapes and
forward maths (the state-dict keys are what a real checkpoint has). Every parity check goes
through `tests/torch_parity.py`: logits, every BN input's mean/var in call order, and the
recover-loss input gradient, in eval and train mode.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn as tnn
import torch.nn.functional as F
import torchvision

from jdd.models import REGISTRY, build_model, init_variables, ordered_bn_stats_paths, torch_key_fn
from jdd.models.shufflenet import channel_shuffle
from tests.torch_parity import check_parity, convert, randomise, state_dict_numpy
from third_party.torch_to_flax import CheckpointMismatchError

torch.set_num_threads(2)


# ---------------------------------------------------------------- plain-torch CIFAR references

def _torch_shuffle(x, groups):
  n, c, h, w = x.shape
  return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def _conv(i, o, k, s=1, groups=1):
  return tnn.Conv2d(i, o, k, stride=s, padding=(k - 1) // 2, groups=groups, bias=False)


class TorchCifarMBBlock(tnn.Module):
  def __init__(self, inp, out, expansion, stride):
    super().__init__()
    self.stride, planes = stride, expansion * inp
    self.conv1, self.bn1 = _conv(inp, planes, 1), tnn.BatchNorm2d(planes)
    self.conv2, self.bn2 = _conv(planes, planes, 3, stride, planes), tnn.BatchNorm2d(planes)
    self.conv3, self.bn3 = _conv(planes, out, 1), tnn.BatchNorm2d(out)
    self.shortcut = tnn.Sequential()
    if stride == 1 and inp != out:
      self.shortcut = tnn.Sequential(_conv(inp, out, 1), tnn.BatchNorm2d(out))

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = F.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return y + self.shortcut(x) if self.stride == 1 else y


class TorchCifarMobileNetV2(tnn.Module):
  """FADRM `MobileNetV2` / UFC `MobileNetV2_cifar*` (identical at 32x32)."""

  table = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
           (6, 160, 3, 2), (6, 320, 1, 1)]

  def __init__(self, num_classes):
    super().__init__()
    self.conv1, self.bn1 = _conv(3, 32, 3), tnn.BatchNorm2d(32)
    blocks, inp = [], 32
    for t, c, n, s in self.table:
      for j in range(n):
        blocks.append(TorchCifarMBBlock(inp, c, t, s if j == 0 else 1))
        inp = c
    self.layers = tnn.Sequential(*blocks)
    self.conv2, self.bn2 = _conv(320, 1280, 1), tnn.BatchNorm2d(1280)
    self.linear = tnn.Linear(1280, num_classes)

  def forward(self, x):
    y = self.layers(F.relu(self.bn1(self.conv1(x))))
    y = F.relu(self.bn2(self.conv2(y)))
    return self.linear(F.avg_pool2d(y, y.shape[2]).flatten(1))


class TorchV2Down(tnn.Module):
  def __init__(self, inp, out):
    super().__init__()
    mid = out // 2
    self.conv1, self.bn1 = _conv(inp, inp, 3, 2, inp), tnn.BatchNorm2d(inp)
    self.conv2, self.bn2 = _conv(inp, mid, 1), tnn.BatchNorm2d(mid)
    self.conv3, self.bn3 = _conv(inp, mid, 1), tnn.BatchNorm2d(mid)
    self.conv4, self.bn4 = _conv(mid, mid, 3, 2, mid), tnn.BatchNorm2d(mid)
    self.conv5, self.bn5 = _conv(mid, mid, 1), tnn.BatchNorm2d(mid)

  def forward(self, x):
    a = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
    b = F.relu(self.bn3(self.conv3(x)))
    b = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(b)))))
    return _torch_shuffle(torch.cat([a, b], 1), 2)


class TorchV2Basic(tnn.Module):
  def __init__(self, channels):
    super().__init__()
    c = int(channels * 0.5)
    self.conv1, self.bn1 = _conv(c, c, 1), tnn.BatchNorm2d(c)
    self.conv2, self.bn2 = _conv(c, c, 3, 1, c), tnn.BatchNorm2d(c)
    self.conv3, self.bn3 = _conv(c, c, 1), tnn.BatchNorm2d(c)

  def forward(self, x):
    c = int(x.shape[1] * 0.5)
    keep, y = x[:, :c], x[:, c:]
    y = F.relu(self.bn1(self.conv1(y)))
    y = F.relu(self.bn3(self.conv3(self.bn2(self.conv2(y)))))
    return _torch_shuffle(torch.cat([keep, y], 1), 2)


class TorchCifarShuffleNetV2(tnn.Module):
  """FADRM `ShuffleNetV2(net_size, ncls)` for net_size 0.5 / 1."""

  configs = {0.5: (48, 96, 192, 1024), 1.0: (116, 232, 464, 1024)}

  def __init__(self, net_size, num_classes):
    super().__init__()
    *stages, last = self.configs[net_size]
    self.conv1, self.bn1 = _conv(3, 24, 3), tnn.BatchNorm2d(24)
    inp = 24
    for i, (out, n) in enumerate(zip(stages, (3, 7, 3))):
      setattr(self, f"layer{i + 1}",
              tnn.Sequential(TorchV2Down(inp, out), *[TorchV2Basic(out) for _ in range(n)]))
      inp = out
    self.conv2, self.bn2 = _conv(inp, last, 1), tnn.BatchNorm2d(last)
    self.linear = tnn.Linear(last, num_classes)

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.layer3(self.layer2(self.layer1(y)))
    y = F.relu(self.bn2(self.conv2(y)))
    return self.linear(F.avg_pool2d(y, y.shape[2]).flatten(1))


class TorchG2Bottleneck(tnn.Module):
  def __init__(self, inp, out, stride, groups):
    super().__init__()
    self.stride, mid = stride, int(out / 4)
    self.g = 1 if inp == 24 else groups
    self.conv1, self.bn1 = _conv(inp, mid, 1, groups=self.g), tnn.BatchNorm2d(mid)
    self.conv2, self.bn2 = _conv(mid, mid, 3, stride, mid), tnn.BatchNorm2d(mid)
    self.conv3, self.bn3 = _conv(mid, out, 1, groups=groups), tnn.BatchNorm2d(out)
    self.shortcut = tnn.AvgPool2d(3, 2, 1) if stride == 2 else tnn.Identity()

  def forward(self, x):
    y = _torch_shuffle(F.relu(self.bn1(self.conv1(x))), self.g)
    y = self.bn3(self.conv3(F.relu(self.bn2(self.conv2(y)))))
    res = self.shortcut(x)
    return F.relu(torch.cat([y, res], 1)) if self.stride == 2 else F.relu(y + res)


class TorchShuffleNetG2(tnn.Module):
  """UFC `ShuffleNetG2_cifar*` (kuangliu ShuffleNet V1, groups 2) with `num_classes`."""

  def __init__(self, num_classes, out_planes=(200, 400, 800), num_blocks=(4, 8, 4), groups=2):
    super().__init__()
    self.conv1, self.bn1 = _conv(3, 24, 1), tnn.BatchNorm2d(24)
    inp = 24
    for i, (out, n) in enumerate(zip(out_planes, num_blocks)):
      blocks = []
      for j in range(n):
        blocks.append(TorchG2Bottleneck(inp, out - (inp if j == 0 else 0), 2 if j == 0 else 1,
                                        groups))
        inp = out
      setattr(self, f"layer{i + 1}", tnn.Sequential(*blocks))
    self.linear = tnn.Linear(out_planes[-1], num_classes)

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.layer3(self.layer2(self.layer1(y)))
    return self.linear(F.avg_pool2d(y, 4).flatten(1))


# ---------------------------------------------------------------------------------- parity

def _fit_running_stats(model, hw, seed):
  """Running statistics that fit the network's own activations, then perturbed.

  `randomise` draws running statistics unrelated to the activations; over 50+ BN layers of a
  torch-initialised net the eval-mode signal then fades (logits that differ by 1e-5 across the
  batch) or explodes, and the input gradient becomes float32 cancellation noise in both
  frameworks (a flaky, meaningless comparison). Statistics measured on another random batch and
  perturbed (mean +- 0.2 std, var x U[0.7, 1.3]) keep eval mode well conditioned and still
  differ clearly from the test batch's own statistics.
  """
  g = torch.Generator().manual_seed(seed)
  bns = [m for m in model.modules() if isinstance(m, tnn.BatchNorm2d)]
  for m in bns:
    m.momentum = None  # cumulative average: one batch sets the running stats to its own
    m.reset_running_stats()
  model.train()
  with torch.no_grad():
    model(torch.randn(8, 3, hw, hw, generator=g))
    for m in bns:
      c = m.num_features
      m.momentum = 0.1
      m.running_mean.add_(0.2 * m.running_var.sqrt() * torch.randn(c, generator=g))
      m.running_var.mul_(0.7 + 0.6 * torch.rand(c, generator=g))
  return model.eval()


def _parity(make_torch, arch, kwargs, image_hw, naming="torchvision", num_classes=10, batch=4,
            grad_in_float64=False):
  torch.manual_seed(0)  # torch's own conv/linear init draws from the global generator
  torch_model = _fit_running_stats(randomise(make_torch(), seed=3), image_hw, seed=4)
  jax_model = build_model(arch, num_classes, **kwargs)
  variables = convert(torch_model, jax_model, (image_hw, image_hw, 3),
                      torch_key_fn(arch, naming), arch)
  return check_parity(torch_model, jax_model, variables, image_hw=image_hw, batch=batch,
                      num_classes=num_classes, grad_in_float64=grad_in_float64)


def _no_dropout(model):
  model.classifier[0].p = 0.0
  return model


# torchvision nets downsample 32x: 64x64 with batch 4 leaves a 2x2 final map, 16 values per
# channel, the least that keeps train-mode statistics well conditioned.
# At x1.0 the input gradient is ill-conditioned at this input: in float64, moving the input by
# 1e-6 moves the gradient by 1.5 % of its largest entry (ReLU6 gates flip), so float32 results
# scatter by that much (jitted jdd 1.5e-2, torch 7e-4, eager jdd 2e-5 from torch float64). Its
# gradient is therefore compared in float64 on both sides (2.4e-5 apart); logits and BN
# statistics in float32 as everywhere. x0.25 too since jdd turned XLA:CPU's YNNPACK convolutions
# off (jdd.xla_setup), which rounds differently: `python scripts/gradient_tie_probe.py
# mobilenet_v2_x0_25` prints jitted jdd float32 5.2e-3 from torch float64 (torch float32 3.7e-5),
# jdd float64 4.2e-8, and a 1e-6 input move stepping the float64 gradient by 6.9e-3 of its
# largest entry (a ReLU6 gate that close to its threshold) where 1e-7 moves it 1e-5.
@pytest.mark.parametrize("width_mult", [0.25, pytest.param(1.0, marks=pytest.mark.slow)])
def test_torchvision_mobilenet_v2_parity(width_mult):
  make = lambda: _no_dropout(torchvision.models.mobilenet_v2(num_classes=10,
                                                             width_mult=width_mult))
  n_bn = _parity(make, "mobilenet_v2", dict(width_mult=width_mult, dropout=0.0), 64,
                 grad_in_float64=True)
  assert n_bn == 52


# x0.5's train-mode input gradient sits on a ReLU tie on some CPUs (seen on a 2026-12 machine):
# `python scripts/gradient_tie_probe.py shufflenet_v2_x0_5` shows a 1e-7 input move stepping the
# float64 gradient by 5.5e-3 of its largest entry, exactly where jitted jdd float32 sits (4e-5 from
# it there) while torch float32 stays on the other side; jdd and torch agree to 4e-8 in float64.
# So the gradient is compared in float64 on both sides, logits and BN statistics in float32.
@pytest.mark.parametrize("arch", [
    "shufflenet_v2_x0_5",
    pytest.param("shufflenet_v2_x1_0", marks=pytest.mark.slow)])
def test_torchvision_shufflenet_v2_parity(arch):
  make = lambda: getattr(torchvision.models, arch)(num_classes=10)
  assert _parity(make, arch, {}, 64, grad_in_float64=arch == "shufflenet_v2_x0_5") == 56


# The CIFAR nets run at their real 32x32 with batch 2 (a 4x4 final map: 32 values per channel
# for train-mode statistics); ShuffleNetG2 needs batch 4 (at batch 2 its train-mode gradient is
# 2.7 % off torch float64 even eagerly, while torch float32 is 2e-4 off: see the report). Most of the time goes into torch's float64 reference of the
# train-mode gradient, whose grouped convs run one slow kernel per group.
@pytest.mark.slow
def test_cifar_mobilenet_v2_parity():
  # A ReLU6 tie (tests/test_parity_dense_eff.py, F32_TRAIN_GAP): moving the input by 3e-8
  # moves the float64 train-mode gradient by 2.3e-3, exactly where jdd float32 sits (1.1e-5
  # from it there); torch float32 sits on the other side. Compared in float64 on both sides.
  n_bn = _parity(lambda: TorchCifarMobileNetV2(10), "mobilenet_v2", dict(variant="cifar"), 32,
                 naming="kuangliu", batch=2, grad_in_float64=True)
  assert n_bn == 2 + 3 * 17 + 4  # stem, conv2 and 17 blocks, 4 of them with a conv shortcut


@pytest.mark.slow
def test_cifar_shufflenet_v2_parity():
  n_bn = _parity(lambda: TorchCifarShuffleNetV2(0.5, 10), "shufflenet_v2_x0_5",
                 dict(variant="cifar"), 32, naming="kuangliu", batch=2)
  assert n_bn == 2 + 3 * 5 + 13 * 3


@pytest.mark.slow
def test_shufflenet_g2_parity():
  n_bn = _parity(lambda: TorchShuffleNetG2(10), "shufflenet_g2", {}, 32, naming="kuangliu",
                 batch=4)
  assert n_bn == 1 + 16 * 3


# ------------------------------------------------------------------------- checks on names

def test_channel_shuffle_matches_torch_order():
  x = np.arange(2 * 12 * 2 * 3, dtype=np.float32).reshape(2, 12, 2, 3)
  for groups in (2, 3, 4):
    want = _torch_shuffle(torch.from_numpy(x), groups).numpy().transpose(0, 2, 3, 1)
    got = channel_shuffle(jnp.asarray(x.transpose(0, 2, 3, 1)), groups)
    np.testing.assert_array_equal(np.asarray(got), want)


def _template(arch, kwargs, hw):
  model = build_model(arch, 10, **kwargs)
  return model, jax.eval_shape(lambda: init_variables(model, jax.random.key(0), (hw, hw, 3)))


def test_wrong_variant_or_width_checkpoint_is_rejected():
  from third_party.torch_to_flax import convert_state_dict
  tv = state_dict_numpy(torchvision.models.mobilenet_v2(num_classes=10, width_mult=0.5))
  # A torchvision checkpoint into the CIFAR layout: names differ -> missing and unexpected keys.
  _, template = _template("mobilenet_v2", dict(variant="cifar"), 32)
  with pytest.raises(CheckpointMismatchError) as err:
    convert_state_dict(template, tv, torch_key_fn("mobilenet_v2", "kuangliu"), "mobilenet_v2")
  msg = str(err.value)
  assert "missing keys" in msg and "bn1.running_mean" in msg
  assert "unexpected keys" in msg and "features.0.0.weight" in msg
  assert {"conv1.weight", "layers.0.conv1.weight", "linear.weight"} <= set(err.value.missing)
  assert "classifier.1.weight" in err.value.unexpected
  # The right layout at the wrong width: every name matches, shapes do not.
  _, template = _template("mobilenet_v2", dict(width_mult=0.25), 64)
  with pytest.raises(CheckpointMismatchError) as err:
    convert_state_dict(template, tv, torch_key_fn("mobilenet_v2"), "mobilenet_v2")
  assert not err.value.missing and not err.value.unexpected
  bad = {k: (want, got) for k, want, got in err.value.misshaped}
  assert bad["features.0.0.weight"] == ((3, 3, 3, 8), (3, 3, 3, 16))
  assert "features.0.1.running_mean expected (8,) got (16,)" in str(err.value)
  # ShuffleNetV2 x0.5 weights into x1.0, and a torchvision ShuffleNetV2 into ShuffleNetG2.
  sd = state_dict_numpy(torchvision.models.shufflenet_v2_x0_5(num_classes=10))
  _, template = _template("shufflenet_v2_x1_0", {}, 64)
  with pytest.raises(CheckpointMismatchError) as err:
    convert_state_dict(template, sd, torch_key_fn("shufflenet_v2_x1_0"), "shufflenet_v2_x1_0")
  assert "stage2.0.branch1.3.running_mean expected (58,) got (24,)" in str(err.value)
  assert ("stage2.0.branch1.2.weight", (1, 1, 24, 58), (1, 1, 24, 24)) in err.value.misshaped
  _, template = _template("shufflenet_g2", {}, 32)
  with pytest.raises(CheckpointMismatchError) as err:
    convert_state_dict(template, sd, torch_key_fn("shufflenet_g2"), "shufflenet_g2")
  assert "layer1.0.conv1.weight" in err.value.missing
  assert "stage2.0.branch1.0.weight" in err.value.unexpected
  with pytest.raises(ValueError, match="naming"):
    torch_key_fn("shufflenet_g2", "timm")(("params", "conv1", "kernel"))


NEW_ARCHS = ["mobilenet_v2", "shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_g2"]
FIRST_BN = {"torchvision": {"mobilenet_v2": "features_0_1"}, "cifar": {}}


@pytest.mark.parametrize("arch", NEW_ARCHS)
def test_registry_entries_build_init_and_run(arch):
  # Traced, not executed (eval_shape): the numbers are checked by the parity tests, and an eager
  # full-width forward costs minutes on a shared CPU.
  assert arch in REGISTRY
  variants = ["cifar"] if arch == "shufflenet_g2" else ["torchvision", "cifar"]
  for variant in variants:
    model = build_model(arch, 10, variant=variant)
    seen = {}

    def run(rng, x):
      variables = init_variables(model, rng, (32, 32, 3))
      logits, col = model.apply(variables, x, train=True, mutable=["bn_stats", "batch_stats"])
      seen["paths"] = ordered_bn_stats_paths(col["bn_stats"])
      return logits, variables

    logits, variables = jax.eval_shape(run, jax.random.key(1), jnp.zeros((2, 32, 32, 3)))
    assert logits.shape == (2, 10) and logits.dtype == jnp.float32
    first = FIRST_BN[variant].get(arch, "conv1_1" if variant == "torchvision" else "bn1")
    assert seen["paths"][0] == first
    # Every variable has its own torch key, and every BN has running statistics.
    keys = [torch_key_fn(arch)(p) for p in _paths(variables)]
    assert len(set(keys)) == len(keys)
    assert len(seen["paths"]) == len(jax.tree.leaves(variables["batch_stats"])) // 2
  with pytest.raises(ValueError, match="variant"):
    init_variables(build_model(arch, 10, variant="timm"), jax.random.key(0), (32, 32, 3))


def _paths(tree, prefix=()):
  if isinstance(tree, dict):
    for k, v in tree.items():
      yield from _paths(v, prefix + (k,))
  else:
    yield prefix


def test_mobilenet_v2_dropout_only_with_rng():
  model = build_model("mobilenet_v2", 10, width_mult=0.25, dropout=0.5)
  # Random weights from numpy on the traced template: an eager or jitted Flax init of a
  # 52-conv net costs ~15 s of CPU here, the weights' values do not matter for this test.
  _, template = _template("mobilenet_v2", dict(width_mult=0.25, dropout=0.5), 32)
  rng = np.random.default_rng(0)
  variables = jax.tree.map(
      lambda t: jnp.asarray(0.5 + rng.uniform(size=t.shape) if len(t.shape) == 1
                            else 0.3 * rng.normal(size=t.shape), jnp.float32), template)
  x = jnp.asarray(rng.normal(size=(2, 32, 32, 3)), jnp.float32)

  @jax.jit
  def forward(variables, x, key):
    rngs = {} if key is None else {"dropout": key}
    return model.apply(variables, x, train=True, mutable=["batch_stats"], rngs=rngs)[0]

  det = forward(variables, x, None)
  dropped = forward(variables, x, jax.random.key(1))
  assert np.abs(np.asarray(det)).max() > 0
  np.testing.assert_array_equal(det, forward(variables, x, None))
  assert not np.allclose(det, dropped)
  with pytest.raises(ValueError, match="width"):
    init_variables(build_model("mobilenet_v2", 10, variant="cifar", width_mult=0.5),
                   jax.random.key(0), (32, 32, 3))
