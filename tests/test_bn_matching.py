"""BN-statistics matching: closed forms, and parity with SRe2L's torch forward hooks.

The torch networks are written here (torchvision naming), given random weights and random
running statistics, copied into the jdd models through the documented state_dict mapping, and
compared on logits, on the BN loss and on the input gradient of CE + 0.01 * L_BN, the quantity
the recover loop follows.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn as tnn
import torch.nn.functional as F

from jdd.models import BatchNorm, build_model, init_variables, ordered_bn_stats
from jdd.objectives import bn_statistics_loss, bn_statistics_loss_from_collection

torch.set_num_threads(2)


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


def randomise(model, seed):
  """Random weights and running statistics, so a wrong mapping cannot pass by symmetry."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, tnn.BatchNorm2d):
        c = m.num_features
        m.weight.copy_(0.5 + torch.rand(c, generator=g))
        m.bias.copy_(0.2 * torch.randn(c, generator=g))
        m.running_mean.copy_(0.3 * torch.randn(c, generator=g))
        m.running_var.copy_(0.5 + torch.rand(c, generator=g))
  return model.eval()


def set_in(tree, path, value):
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = jnp.asarray(value)


def torch_to_flax(model, convnet_feature_hw=None):
  """state_dict -> {'params', 'batch_stats'} through the mapping in the module docstrings."""
  out = {"params": {}, "batch_stats": {}}
  names = {}
  if isinstance(model, TorchConvNet):
    for k, layer in enumerate(model.features):
      d = k // 4
      if isinstance(layer, tnn.Conv2d):
        names[f"features.{k}"] = f"conv{d}"
      elif isinstance(layer, tnn.BatchNorm2d):
        names[f"features.{k}"] = f"norm{d}"
    names["classifier"] = "fc"
  for key, t in model.state_dict().items():
    module, leaf = key.rsplit(".", 1)
    if leaf == "num_batches_tracked":
      continue
    if module in names:
      module = names[module]
    else:
      for i in range(1, 5):
        module = module.replace(f"layer{i}.", f"layer{i}_")
      module = module.replace("downsample.0", "downsample_conv")
      module = module.replace("downsample.1", "downsample_bn")
    path = module.split(".") if "." in module else module.split("/")
    path = [p for part in path for p in part.split("/")]
    w = t.detach().numpy()
    if leaf == "weight" and w.ndim == 4:
      set_in(out["params"], path + ["kernel"], w.transpose(2, 3, 1, 0))
    elif leaf == "weight" and w.ndim == 2:
      if module == "fc" and convnet_feature_hw is not None:
        h = convnet_feature_hw
        k_out = w.shape[0]
        w = w.reshape(k_out, -1, h, h).transpose(2, 3, 1, 0).reshape(-1, k_out).T
      set_in(out["params"], path + ["kernel"], w.T)
    elif leaf == "weight":
      set_in(out["params"], path + ["scale"], w)
    elif leaf == "bias":
      set_in(out["params"], path + ["bias"], w)
    elif leaf == "running_mean":
      set_in(out["batch_stats"], path + ["mean"], w)
    elif leaf == "running_var":
      set_in(out["batch_stats"], path + ["var"], w)
    else:
      raise KeyError(key)
  return out


def torch_recover_terms(model, x_nchw, targets, first_bn_multiplier=10.0):
  """SRe2L's recover loss in eval mode: hooks on every BatchNorm2d, in modules() order."""
  losses = []

  def hook(module, inputs, _):
    a = inputs[0]
    mean = a.mean([0, 2, 3])
    var = a.permute(1, 0, 2, 3).reshape(a.shape[1], -1).var(1, unbiased=False)
    losses.append(torch.norm(module.running_var - var, 2) +
                  torch.norm(module.running_mean - mean, 2))

  handles = [m.register_forward_hook(hook) for m in model.modules()
             if isinstance(m, tnn.BatchNorm2d)]
  x = x_nchw.clone().requires_grad_(True)
  logits = model(x)
  for h in handles:
    h.remove()
  bn = first_bn_multiplier * losses[0] + sum(losses[1:])
  total = F.cross_entropy(logits, targets) + 0.01 * bn
  total.backward()
  return logits.detach().numpy(), bn.item(), x.grad.numpy().transpose(0, 2, 3, 1)


def jax_recover_terms(model, variables, x_nhwc, targets):
  def objective(x):
    logits, col = model.apply(variables, x, train=False, mutable=["bn_stats"])
    bn = bn_statistics_loss(ordered_bn_stats(col["bn_stats"]))
    logp = jax.nn.log_softmax(logits)
    ce = -jnp.mean(jnp.take_along_axis(logp, targets[:, None], axis=1))
    return ce + 0.01 * bn, (logits, bn)

  grad, (logits, bn) = jax.jit(jax.grad(objective, has_aux=True))(x_nhwc)
  return np.asarray(logits), float(bn), np.asarray(grad)


def assert_rel(got, want, tol, what):
  err = np.max(np.abs(np.asarray(got) - np.asarray(want)))
  scale = np.max(np.abs(np.asarray(want)))
  assert err <= tol * scale, f"{what}: max abs err {err:.3g} vs scale {scale:.3g}"


def check_parity(torch_model, jax_model, image_hw, batch, num_classes, convnet_hw=None):
  g = torch.Generator().manual_seed(1)
  x = torch.randn(batch, 3, image_hw, image_hw, generator=g)
  targets = torch.randint(0, num_classes, (batch,), generator=g)
  t_logits, t_bn, t_grad = torch_recover_terms(torch_model, x, targets)

  variables = torch_to_flax(torch_model, convnet_hw)
  ref = jax.eval_shape(lambda: init_variables(jax_model, jax.random.key(0),
                                              (image_hw, image_hw, 3)))
  shapes = functools.partial(jax.tree.map, lambda a: a.shape)
  assert shapes(variables) == shapes(ref), "state_dict mapping does not cover the model"

  j_logits, j_bn, j_grad = jax_recover_terms(
      jax_model, variables, jnp.asarray(x.numpy().transpose(0, 2, 3, 1)),
      jnp.asarray(targets.numpy()))
  assert_rel(j_logits, t_logits, 1e-4, "logits")
  np.testing.assert_allclose(j_bn, t_bn, rtol=1e-4)
  assert_rel(j_grad, t_grad, 1e-3, "input gradient")
  return len(torch_model.state_dict())


def test_parity_convnet():
  torch.manual_seed(0)
  tm = randomise(TorchConvNet(3, 16, 3, 10, 32), seed=0)
  jm = build_model("convnet", 10, width=16, depth=3, norm="batchnorm")
  check_parity(tm, jm, 32, 4, 10, convnet_hw=4)


@pytest.mark.parametrize("arch,stem,hw", [("resnet18", "cifar", 16),
                                          ("resnet18", "imagenet", 32),
                                          ("resnet50", "imagenet", 32)])
def test_parity_resnet(arch, stem, hw):
  torch.manual_seed(0)
  block, stages = {"resnet18": (TorchBasic, (2, 2, 2, 2)),
                   "resnet50": (TorchBottleneck, (3, 4, 6, 3))}[arch]
  tm = randomise(TorchResNet(block, stages, 10, stem, width=8), seed=1)
  jm = build_model(arch, 10, stem=stem, width=8)
  check_parity(tm, jm, hw, 2 if arch == "resnet50" else 4, 10)
