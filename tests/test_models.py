"""Model registry, shapes, BN train/eval semantics against torch, BN recording order."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jdd.models import (ARCHS, BatchNorm, build_model, init_variables, ordered_bn_stats,
                        ordered_bn_stats_paths)
from jdd.models.resnet import max_pool_torch

torch.set_num_threads(2)

BN_COUNTS = {"resnet18": 20, "resnet34": 36, "resnet50": 53, "resnet101": 104}


def _trace_bn_paths(model, image_shape, batch=2):
  """Shapes and recorded BN paths without running the network (eval_shape only traces).

  Paths are collected while tracing, inside the function, because a pytree returned from
  eval_shape or jit comes back with sorted keys and would lose the call order.
  """
  seen = {}

  def run(rng, x):
    variables = init_variables(model, rng, image_shape)
    logits, col = model.apply(variables, x, train=False, mutable=["bn_stats"])
    recorded = col.get("bn_stats", {})  # absent when the model has no BN layer
    seen["paths"] = ordered_bn_stats_paths(recorded)
    seen["entries"] = ordered_bn_stats(recorded)
    return logits, variables

  logits, variables = jax.eval_shape(run, jax.random.key(0),
                                     jnp.zeros((batch,) + tuple(image_shape)))
  return logits, variables, seen


@pytest.mark.parametrize("arch", sorted(BN_COUNTS))
@pytest.mark.parametrize("stem", ["imagenet", "cifar"])
def test_resnet_shapes_and_bn_order(arch, stem):
  model = build_model(arch, 7, stem=stem, width=8)
  logits, variables, seen = _trace_bn_paths(model, (32, 32, 3))
  assert logits.shape == (2, 7) and logits.dtype == jnp.float32
  paths = seen["paths"]
  assert len(paths) == BN_COUNTS[arch]
  assert paths[0] == "bn1"
  assert seen["entries"][0]["mean"].shape == (8,)
  # Call order is torch's registration order: blocks in sequence (layer3_10 after layer3_9,
  # which sorted keys would break), main path before downsample within a block.
  blocks = [p.split("/")[0] for p in paths[1:]]
  order = [tuple(int(n) for n in b[len("layer"):].split("_")) for b in blocks]
  assert order == sorted(order)
  assert paths[1:4] == ["layer1_0/bn1", "layer1_0/bn2",
                        "layer1_0/bn3" if arch in ("resnet50", "resnet101")
                        else "layer1_1/bn1"]
  assert "layer2_0/downsample_bn" in paths
  assert paths.index("layer2_0/downsample_bn") == paths.index("layer2_1/bn1") - 1
  params = variables["params"]
  stem_k = (7, 7, 3, 8) if stem == "imagenet" else (3, 3, 3, 8)
  assert params["conv1"]["kernel"].shape == stem_k
  assert "bias" not in params["conv1"]
  feat = 8 * 8 * (4 if arch in ("resnet50", "resnet101") else 1)
  assert params["fc"]["kernel"].shape == (feat, 7)
  assert set(variables["batch_stats"]["bn1"]) == {"mean", "var"}


@pytest.mark.parametrize("shape,depth", [((28, 28, 1), 3), ((32, 32, 3), 3), ((64, 64, 3), 4)])
@pytest.mark.parametrize("norm", ["batchnorm", "instancenorm", "none"])
def test_convnet_shapes(shape, depth, norm):
  model = build_model("convnet", 10, width=8, depth=depth, norm=norm)
  logits, variables, seen = _trace_bn_paths(model, shape)
  assert logits.shape == (2, 10)
  # 28x28 single-channel gets padding 3 on the first conv (-> 32x32), as in the reference.
  final = {28: 4, 32: 4, 64: 4}[shape[0]]
  assert variables["params"]["fc"]["kernel"].shape == (final * final * 8, 10)
  if norm == "batchnorm":
    assert seen["paths"] == [f"norm{d}" for d in range(depth)]
  else:
    assert seen["paths"] == [] and "batch_stats" not in variables


def numpy_variables(model, image_shape, seed=0):
  """Random variables without jax.random: threefry compiles slowly on small CPUs, and these
  tests need distinct values, not the library's init (tested separately below)."""
  shapes = jax.eval_shape(lambda: init_variables(model, jax.random.key(0), image_shape))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name == "kernel":
      fan_in = int(np.prod(leaf.shape[:-1]))
      return jnp.asarray(rng.normal(size=leaf.shape) * np.sqrt(2.0 / fan_in), jnp.float32)
    if name in ("var", "scale"):
      return jnp.asarray(0.5 + rng.uniform(size=leaf.shape), jnp.float32)
    return jnp.asarray(0.1 * rng.normal(size=leaf.shape), jnp.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def test_small_models_run():
  # A real forward, not only a trace, for the two shapes the library uses most.
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 32, 32, 3)), jnp.float32)
  for arch, kw in [("convnet", dict(width=8)), ("resnet50", dict(width=8, stem="imagenet"))]:
    model = build_model(arch, 5, **kw)
    variables = numpy_variables(model, (32, 32, 3))
    logits = jax.jit(lambda v, x: model.apply(v, x))(variables, x)
    assert logits.shape == (2, 5) and np.all(np.isfinite(logits))


def test_init_variables_is_torch_like():
  model = build_model("convnet", 10, width=8, depth=2)
  variables = init_variables(model, jax.random.key(0), (8, 8, 3))
  assert set(variables) == {"params", "batch_stats"}  # nothing sown during init leaks out
  k = variables["params"]["conv1"]["kernel"]
  bound = 1.0 / np.sqrt(8 * 9)  # torch default conv init: U(+-1/sqrt(fan_in))
  assert np.all(np.abs(k) <= bound) and np.abs(k).max() > 0.8 * bound
  assert np.all(np.abs(variables["params"]["conv1"]["bias"]) <= bound)
  np.testing.assert_array_equal(variables["batch_stats"]["norm0"]["mean"], np.zeros(8))
  np.testing.assert_array_equal(variables["batch_stats"]["norm0"]["var"], np.ones(8))
  np.testing.assert_array_equal(variables["params"]["norm0"]["scale"], np.ones(8))
  # ResNet convs: torchvision's kaiming_normal(fan_out, relu), std sqrt(2 / (O*kh*kw)).
  from jdd.models.resnet import kaiming_fan_out
  w = kaiming_fan_out(jax.random.key(0), (3, 3, 64, 64))
  np.testing.assert_allclose(np.std(w), np.sqrt(2.0 / (64 * 9)), rtol=0.05)


def test_unknown_arch_and_bad_inputs():
  with pytest.raises(ValueError, match="resnet50"):
    build_model("vgg11", 10)
  # Every architecture the papers distil through or evaluate with is registered.
  assert set(ARCHS) >= {"convnet", "resnet18", "resnet34", "resnet50", "resnet101",
                        "mobilenet_v2", "shufflenet_v2_x0_5", "shufflenet_v2_x1_0",
                        "shufflenet_g2", "densenet121", "efficientnet_b0", "nfnet_l0"}
  with pytest.raises(ValueError, match="stem"):
    init_variables(build_model("resnet18", 10, stem="tiny"), jax.random.key(0), (32, 32, 3))
  with pytest.raises(ValueError, match="norm"):
    init_variables(build_model("convnet", 10, norm="layernorm"), jax.random.key(0), (32, 32, 3))
  with pytest.raises(ValueError, match="H, W, C"):
    init_variables(build_model("convnet", 10), jax.random.key(0), (1, 32, 32, 3))


def _bn_with_torch_state(channels, seed):
  g = torch.Generator().manual_seed(seed)
  tbn = torch.nn.BatchNorm2d(channels)
  with torch.no_grad():
    tbn.weight.copy_(0.5 + torch.rand(channels, generator=g))
    tbn.bias.copy_(torch.randn(channels, generator=g))
    tbn.running_mean.copy_(torch.randn(channels, generator=g))
    tbn.running_var.copy_(0.5 + torch.rand(channels, generator=g))
  variables = {
      "params": {"scale": jnp.asarray(tbn.weight.detach().numpy()),
                 "bias": jnp.asarray(tbn.bias.detach().numpy())},
      "batch_stats": {"mean": jnp.asarray(tbn.running_mean.numpy()),
                      "var": jnp.asarray(tbn.running_var.numpy())},
  }
  return tbn, variables


def test_batchnorm_train_and_eval_match_torch():
  c = 6
  tbn, variables = _bn_with_torch_state(c, seed=0)
  x = 3.0 + 2.0 * torch.randn(4, c, 5, 5, generator=torch.Generator().manual_seed(1))
  x_nhwc = jnp.asarray(x.numpy().transpose(0, 2, 3, 1))
  bn = BatchNorm()

  tbn.eval()
  with torch.no_grad():
    want_eval = tbn(x).numpy().transpose(0, 2, 3, 1)
  np.testing.assert_allclose(bn.apply(variables, x_nhwc, train=False), want_eval,
                             rtol=1e-5, atol=1e-5)

  tbn.train()
  with torch.no_grad():
    want_train = tbn(x).numpy().transpose(0, 2, 3, 1)
  y, new = bn.apply(variables, x_nhwc, train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(y, want_train, rtol=1e-5, atol=1e-5)
  # torch's rule: momentum 0.1, running_var from the unbiased batch variance.
  np.testing.assert_allclose(new["batch_stats"]["mean"], tbn.running_mean.numpy(), rtol=1e-5)
  np.testing.assert_allclose(new["batch_stats"]["var"], tbn.running_var.numpy(), rtol=1e-5)

  # Recording reports the pre-update running stats and the biased batch variance.
  _, col = bn.apply(variables, x_nhwc, train=True, mutable=["batch_stats", "bn_stats"])
  (entry,) = ordered_bn_stats(col["bn_stats"])
  np.testing.assert_allclose(entry["running_var"], variables["batch_stats"]["var"])
  np.testing.assert_allclose(entry["var"], x.var(dim=(0, 2, 3), unbiased=False).numpy(),
                             rtol=1e-5)


def test_batchnorm_bf16_stats_in_float32():
  _, variables = _bn_with_torch_state(4, seed=2)
  x = jnp.asarray(100.0 + np.random.default_rng(0).normal(size=(8, 3, 3, 4)), jnp.bfloat16)
  y, col = BatchNorm().apply(variables, x, train=False, mutable=["bn_stats"])
  assert y.dtype == jnp.bfloat16
  (entry,) = ordered_bn_stats(col["bn_stats"])
  assert entry["mean"].dtype == jnp.float32 and entry["var"].dtype == jnp.float32
  np.testing.assert_allclose(entry["var"], jnp.var(x.astype(jnp.float32), axis=(0, 1, 2)),
                             rtol=1e-5)


def test_resnet_train_mode_updates_every_bn_eval_mode_none():
  model = build_model("resnet18", 4, stem="cifar", width=4)
  variables = numpy_variables(model, (8, 8, 3))
  x = jnp.asarray(1.0 + np.random.default_rng(1).normal(size=(4, 8, 8, 3)), jnp.float32)
  apply = jax.jit(model.apply, static_argnames=("train", "mutable"))
  y_eval = apply(variables, x, train=False)
  y_train, new = apply(variables, x, train=True, mutable=("batch_stats",))
  assert not np.allclose(y_eval, y_train)
  old_leaves = jax.tree.leaves(variables["batch_stats"])
  new_leaves = jax.tree.leaves(new["batch_stats"])
  assert len(new_leaves) == 2 * 20
  assert all(not np.allclose(a, b) for a, b in zip(old_leaves, new_leaves))
  # Eval mode with batch_stats mutable leaves them untouched (the recover teacher stays frozen).
  _, same = apply(variables, x, train=False, mutable=("batch_stats",))
  for a, b in zip(old_leaves, jax.tree.leaves(same["batch_stats"])):
    np.testing.assert_array_equal(a, b)


def test_stem_bn_is_first_entry_by_value():
  model = build_model("resnet18", 3, stem="imagenet", width=4)
  variables = numpy_variables(model, (32, 32, 3))
  # Distinct running means per layer, so the first entry identifies its layer by value.
  leaves, treedef = jax.tree.flatten(variables["batch_stats"])
  leaves = [jnp.full_like(v, float(i)) + (1.0 if i % 2 else 0.0) for i, v in enumerate(leaves)]
  variables = {**variables, "batch_stats": jax.tree.unflatten(treedef, leaves)}
  _, col = model.apply(variables, jnp.ones((2, 32, 32, 3)), mutable=["bn_stats"])
  first = ordered_bn_stats(col["bn_stats"])[0]
  np.testing.assert_array_equal(first["running_mean"], variables["batch_stats"]["bn1"]["mean"])
  np.testing.assert_array_equal(first["running_var"], variables["batch_stats"]["bn1"]["var"])


def test_max_pool_pads_with_minus_inf():
  x = jnp.asarray(-1.0 - np.random.default_rng(0).uniform(size=(2, 7, 7, 3)), jnp.float32)  # all negative
  got = max_pool_torch(x, 3, 2, 1)
  want = torch.nn.functional.max_pool2d(torch.from_numpy(np.array(x).transpose(0, 3, 1, 2)),
                                        3, 2, 1).numpy().transpose(0, 2, 3, 1)
  np.testing.assert_array_equal(got, want)
  assert np.all(got < 0)  # zero padding would have put zeros on the border
