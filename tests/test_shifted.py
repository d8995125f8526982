"""jdd.models.shifted: the shifted multiply-add depthwise convolution equals XLA's grouped
convolution (values, input and kernel gradients, and the gradient of a gradient, which the
trajectory-matching unroll takes), at the strides, paddings and kernel sizes the MobileNetV2,
ShuffleNetV2 and EfficientNet-B0 teachers use, in float64."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jdd.models.shifted import DepthwiseConv, depthwise_conv, max_pool


def _xla(x, k, stride, pad):
  return lax.conv_general_dilated(x, k, (stride, stride), pad,
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                  feature_group_count=x.shape[-1])


@pytest.mark.parametrize("h,w,kernel,stride,p", [(9, 8, 3, 1, 1), (10, 10, 3, 2, 1),
                                                  (11, 11, 5, 2, 2), (7, 7, 3, 2, 0)])
def test_matches_grouped_conv_and_its_gradients(h, w, kernel, stride, p):
  with jax.enable_x64():
    keys = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(keys[0], (2, h, w, 5), jnp.float64)
    k = jax.random.normal(keys[1], (kernel, kernel, 1, 5), jnp.float64)
    pad = ((p, p), (p, p))
    want = _xla(x, k, stride, pad)
    np.testing.assert_allclose(depthwise_conv(x, k, stride, pad), want, rtol=0, atol=1e-12)
    v = jax.random.normal(keys[2], want.shape, jnp.float64)
    u = jax.random.normal(keys[3], x.shape, jnp.float64)

    def loss(conv):
      return lambda x, k: jnp.sum(jnp.sin(conv(x, k, stride, pad)) * v)

    def second(conv):   # d/d(x, k) of <d loss / dx, u>
      return lambda x, k: jnp.sum(jax.grad(loss(conv))(x, k) * u)

    for fn in (loss, second):
      got = jax.grad(fn(depthwise_conv), (0, 1))(x, k)
      ref = jax.grad(fn(_xla), (0, 1))(x, k)
      for a, b in zip(got, ref):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-10)


def test_module_has_nn_conv_parameters_and_output():
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 6))
  mine = DepthwiseConv(6, (3, 3), (2, 2), ((1, 1), (1, 1)), impl="shifted")
  ref = nn.Conv(6, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), feature_group_count=6,
                use_bias=False)
  variables = ref.init(jax.random.key(2), x)
  assert jax.tree.map(jnp.shape, mine.init(jax.random.key(2), x)) == jax.tree.map(
      jnp.shape, variables)
  np.testing.assert_allclose(mine.apply(variables, x), ref.apply(variables, x), atol=1e-5)
  np.testing.assert_allclose(mine.clone(impl="xla").apply(variables, x),
                             ref.apply(variables, x), atol=1e-5)
  with pytest.raises(ValueError, match="depthwise conv of 6 channels got 4"):
    mine.init(jax.random.key(0), x[..., :4])


@pytest.mark.parametrize("size,window,stride,pad", [(9, 3, 2, 1), (8, 3, 2, 1), (7, 2, 2, 0),
                                                    (6, 3, 1, 1)])
def test_max_pool_matches_reduce_window_and_torch_ties(size, window, stride, pad):
  torch = pytest.importorskip("torch")
  x = np.array(jax.random.normal(jax.random.key(3), (2, size, size, 3)), np.float32)
  x[:, ::2, ::3] = 0.0                   # ties (as after a ReLU), and negatives beside -inf pads
  x[0, :3, :3] = -1.5

  def pooled(impl):
    return lambda x: max_pool(x, window, stride, pad, impl=impl)

  out = pooled("shifted")(x)
  np.testing.assert_array_equal(out, pooled("xla")(x))
  g = np.asarray(jax.random.normal(jax.random.key(4), out.shape), np.float32)
  dx = jax.vjp(pooled("shifted"), x)[1](g)[0]
  xt = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
  torch.nn.functional.max_pool2d(xt, window, stride, pad).backward(
      torch.tensor(g.transpose(0, 3, 1, 2)))
  # Same routing; a cell in two windows sums their gradients in another order.
  np.testing.assert_allclose(dx, xt.grad.numpy().transpose(0, 2, 3, 1), rtol=0, atol=1e-6)
