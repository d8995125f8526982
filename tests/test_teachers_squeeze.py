"""Squeeze (teacher training) for every registered architecture, with the references' recipes.

A few jitted `training.supervised_step`s per arch on tiny random data, in the arch's CIFAR
layout with its recipe's optimiser: the loss is finite, the weights and the BN running
statistics move. Size knobs (width, growth rate, DenseNet block counts, NFNet channels) shrink
the nets where a module has them, so the same code paths compile in seconds. A separate test proves
that the step feeds a 'dropout' rng derived from the step key (MobileNetV2 / EfficientNet
dropout is live in squeeze, and reproducible).
"""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdd import models, training
from jdd.configs import sre2l
from jdd.configs.teacher_recipes import apply_recipe, recipe

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
# Shrinking kwargs, used only where the module has that field.
SMALL = {"width": 4, "width_mult": 0.25, "growth_rate": 4, "block_config": (2, 2, 2, 2), "stem_chs": 8,
         "channels": (16, 16, 32, 32), "num_features": 32, "group_size": 8}


def _small_kwargs(arch, kwargs):
  fields = {f.name for f in dataclasses.fields(models.build_model(arch, 10, **kwargs))}
  small = {k: v for k, v in SMALL.items() if k in fields}
  if arch == "mobilenet_v2" and kwargs.get("variant") == "cifar":
    small.pop("width_mult")   # the kuangliu CIFAR MobileNetV2 has no width multiplier
  return {**kwargs, **small}


# These tests check that squeeze runs, not its speed: XLA's cheapest CPU compilation.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _numpy_variables(model, image_shape, seed=0):
  """He-scaled random variables from numpy: jitted threefry initialisers compile for a minute
  on a busy 2-core machine, and training from any sensible start proves the same."""
  shapes = jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0), image_shape))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name == "kernel":
      fan_in = int(np.prod(leaf.shape[:-1]))
      return jnp.asarray(rng.normal(size=leaf.shape) * np.sqrt(2.0 / fan_in), leaf.dtype)
    if name in ("var", "scale", "gain"):
      return jnp.asarray(0.5 + rng.uniform(size=leaf.shape), leaf.dtype)
    return jnp.asarray(0.1 * rng.normal(size=leaf.shape), leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def _batch(size=32, n=4, seed=0):
  rng = np.random.default_rng(seed)
  return {"images": rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
          "labels": rng.integers(0, 10, (n,)).astype(np.int32)}


# The deepest nets keep compiling for tens of seconds even when narrow: `slow` (scripts/test.sh
# --all); every module family still squeezes in the default run through a smaller sibling.
_HEAVY = {"densenet121", "efficientnet_b0", "resnet101", "shufflenet_v2_x1_0"}


@pytest.mark.parametrize("arch", [pytest.param(a, marks=pytest.mark.slow) if a in _HEAVY else a
                                  for a in sorted(models.REGISTRY)])
def test_squeeze_steps_every_arch(arch):
  r = recipe(arch, "cifar10")
  kwargs = _small_kwargs(arch, dict(r.kwargs))
  model = models.build_model(arch, 10, **kwargs)
  variables = _numpy_variables(model, (32, 32, 3))
  optimizer = training.make_optimizer(r, steps_per_epoch=2)
  state = training.init_state(variables, optimizer)
  step = jax.jit(functools.partial(training.supervised_step, model=model, optimizer=optimizer,
                                   mean=MEAN, std=STD, crop_padding=int(r.crop_padding),
                                   flip=bool(r.flip)))
  step = step.lower(state, _batch(), jax.random.key(1)).compile(FAST_COMPILE)
  new, metrics = step(state, _batch(), jax.random.key(1))
  new, metrics = step(new, _batch(seed=1), jax.random.key(2))
  assert np.isfinite(float(metrics["loss"])), arch
  moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), state.params, new.params)
  assert max(jax.tree.leaves(moved)) > 0, f"{arch}: no parameter changed"
  if state.batch_stats:
    stats = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), state.batch_stats,
                         new.batch_stats)
    moved = np.array(jax.tree.leaves(stats)) > 0
    # >= 90%, not all: EfficientNet keeps block 0's never-run expand BN for checkpoint keys.
    assert moved.mean() >= 0.9, f"{arch}: only {moved.mean():.0%} of BN running stats updated"


class _DropoutNet(nn.Module):
  """Dropout the way jdd's modules gate it: live only with train=True and a 'dropout' rng."""

  @nn.compact
  def __call__(self, x, train=False):
    x = x.reshape(x.shape[0], -1)
    x = nn.Dropout(0.5, deterministic=not (train and self.has_rng("dropout")))(x)
    return nn.Dense(10)(x)


def test_supervised_step_feeds_dropout_rng():
  model = _DropoutNet()
  variables = _numpy_variables(model, (8, 8, 3))
  r = recipe("convnet", "cifar10")
  optimizer = training.make_optimizer(r, steps_per_epoch=2)
  state = training.init_state(variables, optimizer)
  step = jax.jit(functools.partial(training.supervised_step, model=model, optimizer=optimizer,
                                   mean=MEAN, std=STD, crop_padding=0, flip=False))
  batch = _batch(size=8)
  loss = lambda key: float(step(state, batch, key)[1]["loss"])
  no_dropout = float(optax_ce(model, variables, batch))
  a, b = loss(jax.random.key(1)), loss(jax.random.key(2))
  assert a != b, "the dropout mask must come from the step key"
  assert a != no_dropout and b != no_dropout, "dropout must be active in squeeze"
  assert loss(jax.random.key(1)) == a, "same step key, same mask"


def optax_ce(model, variables, batch):
  from jdd.data import normalize
  logits = model.apply(variables, normalize(jnp.asarray(batch["images"]), MEAN, STD), train=True)
  logp = jax.nn.log_softmax(logits)
  return -jnp.mean(jnp.take_along_axis(logp, jnp.asarray(batch["labels"])[:, None], axis=1))


def test_recipes_match_the_references():
  r = recipe("resnet18", "cifar100")
  assert (r.epochs, r.optimizer, r.lr, r.momentum, r.weight_decay, r.batch_size) == \
      (200, "sgd", 0.1, 0.9, 5e-4, 128)
  assert dict(r.kwargs) == {"stem": "cifar"} and r.crop_padding == 4 and r.flip
  t = recipe("resnet18", "tiny_imagenet")
  assert (t.epochs, t.lr, t.weight_decay, t.batch_size, t.warmup_epochs) == (50, 0.2, 1e-4, 256, 5)
  f = recipe("resnet18", "cifar100", reference="fadrm")
  assert (f.epochs, f.optimizer, f.lr, f.batch_size, f.weight_decay) == \
      (200, "adamw", 1e-3, 512, 0.0)
  ft = recipe("resnet18", "tiny_imagenet", reference="fadrm")
  assert (ft.epochs, ft.optimizer, ft.lr) == (50, "sgd", 0.01)
  with pytest.raises(ValueError, match="IMAGENET1K_V1"):
    recipe("resnet18", "imagenet1k")
  with pytest.raises(ValueError, match="unknown arch"):
    recipe("resnet19", "cifar10")
  with pytest.raises(ValueError, match="reference must be"):
    recipe("resnet18", "cifar10", reference="dc")
  # apply_recipe fills a real config's teacher block (types checked by ConfigDict).
  c = apply_recipe(sre2l.base_config(), "resnet50", "tiny_imagenet")
  assert c.teacher.arch == "resnet50" and c.teacher.lr == 0.2 and c.teacher.warmup_epochs == 5
