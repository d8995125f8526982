"""BN-statistics matching: closed forms, and parity with SRe2L's torch BN hooks.

The torch networks are written here (torchvision naming), given random weights and random
running statistics, converted with jdd's one converter (`third_party.torch_to_flax` and each
model's `torch_key`) and compared by the shared harness `tests/torch_parity.py`: logits, every
BN input's mean and variance in call order, and the input gradient of CE + 0.01 * L_BN (the
quantity the recover loop follows), in eval and in train mode.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn as tnn
import torch.nn.functional as F

from jdd.models import BatchNorm, build_model, ordered_bn_stats, torch_key_fn
from jdd.objectives import bn_statistics_loss, bn_statistics_loss_from_collection
from torch_parity import check_parity, convert, randomise


# ---------------------------------------------------------------- closed forms


def test_closed_form_two_layers():
  entries = [
      {"mean": jnp.array([1.0, 2.0]), "var": jnp.array([1.0, 1.0]),
       "running_mean": jnp.zeros(2), "running_var": jnp.array([4.0, 5.0])},
      {"mean": jnp.array([3.0]), "var": jnp.array([2.0]),
       "running_mean": jnp.array([-1.0]), "running_var": jnp.array([2.0])},
  ]
  # first: ||(3,4)|| + ||(-1,-2)|| = 5 + sqrt(5); second: 0 + 4.
  want = 10.0 * (5.0 + np.sqrt(5.0)) + 4.0
  np.testing.assert_allclose(bn_statistics_loss(entries), want, rtol=1e-6)
  np.testing.assert_allclose(bn_statistics_loss(entries, first_bn_multiplier=1.0),
                             5.0 + np.sqrt(5.0) + 4.0, rtol=1e-6)
  assert bn_statistics_loss(entries).dtype == jnp.float32


def test_closed_form_through_the_layer():
  # One channel, values 1 and 3: mean 2, biased var 1 (unbiased would be 2). Running 0 / 1.
  bn = BatchNorm()
  x = jnp.array([1.0, 3.0]).reshape(1, 1, 2, 1)
  variables = bn.init(jax.random.key(0), x, train=False)
  variables = {k: variables[k] for k in ("params", "batch_stats")}
  _, col = bn.apply(variables, x, train=False, mutable=["bn_stats"])
  (entry,) = ordered_bn_stats(col["bn_stats"])
  np.testing.assert_allclose(entry["mean"], [2.0])
  np.testing.assert_allclose(entry["var"], [1.0])
  # |1 - 1| + |0 - 2| = 2, times 10 for the first (only) BN.
  np.testing.assert_allclose(bn_statistics_loss_from_collection(col["bn_stats"]), 20.0)


def test_finite_gradient_at_exact_match():
  stats = {"mean": jnp.array([0.5, -1.0]), "var": jnp.array([2.0, 3.0])}

  def loss(s):
    return bn_statistics_loss([{**s, "running_mean": jnp.array([0.5, -1.0]),
                                "running_var": jnp.array([2.0, 3.0])}])

  value, grads = jax.value_and_grad(loss)(stats)
  assert float(value) == 0.0
  for g in jax.tree.leaves(grads):
    assert np.all(np.isfinite(g))
  # The naive norm is what goes wrong here.
  naive = jax.grad(lambda d: jnp.linalg.norm(d))(jnp.zeros(2))
  assert not np.all(np.isfinite(naive))


def test_first_bn_weighting_and_order():
  rng = np.random.default_rng(0)
  entries = [{k: jnp.asarray(rng.normal(size=4), jnp.float32)
              for k in ("mean", "var", "running_mean", "running_var")} for _ in range(3)]
  per_layer = [float(bn_statistics_loss([e], first_bn_multiplier=1.0)) for e in entries]
  for m in (1.0, 10.0, 0.0):
    got = bn_statistics_loss(entries, first_bn_multiplier=m)
    np.testing.assert_allclose(got, m * per_layer[0] + sum(per_layer[1:]), rtol=1e-5)
  # Only the first entry is weighted: reordering changes the loss.
  swapped = bn_statistics_loss(entries[::-1])
  np.testing.assert_allclose(swapped, 10 * per_layer[2] + per_layer[0] + per_layer[1],
                             rtol=1e-5)


def test_bad_inputs():
  with pytest.raises(ValueError, match="mutable"):
    bn_statistics_loss([])
  with pytest.raises(ValueError, match="lacks"):
    bn_statistics_loss([{"mean": jnp.zeros(2), "var": jnp.ones(2)}])


# ---------------------------------------------------------------- torch references


class TorchConvNet(tnn.Module):
  """The DD ConvNet with BatchNorm, laid out like the reference (`features`, `classifier`)."""

  def __init__(self, channels, width, depth, num_classes, image_size):
    super().__init__()
    layers, c, s = [], channels, image_size
    for _ in range(depth):
      layers += [tnn.Conv2d(c, width, 3, padding=1), tnn.BatchNorm2d(width), tnn.ReLU(),
                 tnn.AvgPool2d(2, 2)]
      c, s = width, s // 2
    self.features = tnn.Sequential(*layers)
    self.classifier = tnn.Linear(width * s * s, num_classes)

  def forward(self, x):
    return self.classifier(torch.flatten(self.features(x), 1))


class TorchBasic(tnn.Module):
  expansion = 1

  def __init__(self, cin, planes, stride):
    super().__init__()
    self.conv1 = tnn.Conv2d(cin, planes, 3, stride, 1, bias=False)
    self.bn1 = tnn.BatchNorm2d(planes)
    self.conv2 = tnn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = tnn.BatchNorm2d(planes)
    self.downsample = None
    if stride != 1 or cin != planes:
      self.downsample = tnn.Sequential(tnn.Conv2d(cin, planes, 1, stride, bias=False),
                                       tnn.BatchNorm2d(planes))

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class TorchBottleneck(tnn.Module):
  expansion = 4

  def __init__(self, cin, planes, stride):
    super().__init__()
    self.conv1 = tnn.Conv2d(cin, planes, 1, bias=False)
    self.bn1 = tnn.BatchNorm2d(planes)
    self.conv2 = tnn.Conv2d(planes, planes, 3, stride, 1, bias=False)
    self.bn2 = tnn.BatchNorm2d(planes)
    self.conv3 = tnn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = tnn.BatchNorm2d(planes * 4)
    self.downsample = None
    if stride != 1 or cin != planes * 4:
      self.downsample = tnn.Sequential(tnn.Conv2d(cin, planes * 4, 1, stride, bias=False),
                                       tnn.BatchNorm2d(planes * 4))

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = F.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class TorchResNet(tnn.Module):
  def __init__(self, block, stages, num_classes, stem, width):
    super().__init__()
    if stem == "imagenet":
      self.conv1 = tnn.Conv2d(3, width, 7, 2, 3, bias=False)
      self.maxpool = tnn.MaxPool2d(3, 2, 1)
    else:
      self.conv1 = tnn.Conv2d(3, width, 3, 1, 1, bias=False)
      self.maxpool = tnn.Identity()
    self.bn1 = tnn.BatchNorm2d(width)
    cin = width
    for i, n in enumerate(stages):
      blocks = []
      for j in range(n):
        blocks.append(block(cin, width * 2**i, 2 if (i > 0 and j == 0) else 1))
        cin = width * 2**i * block.expansion
      setattr(self, f"layer{i + 1}", tnn.Sequential(*blocks))
    self.n_stages = len(stages)
    self.fc = tnn.Linear(cin, num_classes)

  def forward(self, x):
    x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
    for i in range(self.n_stages):
      x = getattr(self, f"layer{i + 1}")(x)
    return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def test_parity_convnet():
  torch.manual_seed(0)
  tm = randomise(TorchConvNet(3, 16, 3, 10, 32), seed=0)
  jm = build_model("convnet", 10, width=16, depth=3, norm="batchnorm")
  variables = convert(tm, jm, (32, 32, 3), torch_key_fn("convnet", "dd", feature_hw=4),
                      "convnet")
  assert check_parity(tm, jm, variables, image_hw=32, batch=4, num_classes=10) == 3


# Final maps x batch hold >= 16 values per channel, so train-mode batch statistics are not
# degenerate: CIFAR stem 16 -> 2x2, ImageNet stem 64 -> 2x2, batch 4.
@pytest.mark.parametrize("arch,stem,hw", [("resnet18", "cifar", 16),
                                          ("resnet18", "imagenet", 64),
                                          ("resnet50", "imagenet", 64)])
def test_parity_resnet(arch, stem, hw):
  torch.manual_seed(0)
  block, stages = {"resnet18": (TorchBasic, (2, 2, 2, 2)),
                   "resnet50": (TorchBottleneck, (3, 4, 6, 3))}[arch]
  tm = randomise(TorchResNet(block, stages, 10, stem, width=8), seed=1)
  jm = build_model(arch, 10, stem=stem, width=8)
  variables = convert(tm, jm, (hw, hw, 3), torch_key_fn(arch, "torchvision"), arch)
  n_bn = check_parity(tm, jm, variables, image_hw=hw, batch=4, num_classes=10)
  assert n_bn == {"resnet18": 20, "resnet50": 53}[arch]
