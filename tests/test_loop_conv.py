"""jdd.models.conv: values and gradients equal lax.conv_general_dilated's, in and out of scans."""

import itertools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jdd.models.conv import SPLIT_GROUPS_UP_TO
from jdd.models.conv import conv_general_dilated as loop_conv

DN = ("NHWC", "HWIO", "NHWC")
KERNELS, STRIDES = (1, 3, 5, 7), (1, 2)
PADDINGS = ("SAME", "VALID", ((0, 1), (2, 1)))
GROUPS = (1, 2, "depthwise")
# every (kernel, stride, padding); dilation and groups cycle so each of their 6 pairs appears
# 4 times. Each case compiles six convolutions (~2 CPU s), so the default suite runs the half
# with i % 4 in (0, 1), which still has every kernel, stride, padding, dilation and group
# count and every (dilation, groups) pair; the other half is marked slow.
GRID = [pytest.param(k, s, p, 1 + i % 2, GROUPS[i % 3],
                     marks=() if i % 4 in (0, 1) else pytest.mark.slow,
                     id=f"k{k}-s{s}-{p if isinstance(p, str) else 'pad'}-d{1 + i % 2}"
                        f"-g{GROUPS[i % 3]}")
        for i, (k, s, p) in enumerate(itertools.product(KERNELS, STRIDES, PADDINGS))]


def _operands(k, groups, shape=(2, 15, 13, 4), cout=6, seed=0):
  cin = shape[-1]
  g = cin if groups == "depthwise" else groups
  cout = 2 * cin if groups == "depthwise" else cout
  kx, kw, kc = jax.random.split(jax.random.key(seed), 3)
  return (jax.random.normal(kx, shape), jax.random.normal(kw, (k, k, cin // g, cout)), g, kc)


def _convs(s, p, d, g):
  kw = dict(rhs_dilation=(d, d), dimension_numbers=DN, feature_group_count=g)
  return (lambda x, w: lax.conv_general_dilated(x, w, (s, s), p, **kw),
          lambda x, w: loop_conv(x, w, (s, s), p, **kw))


def _close(a, b, rtol=1e-5):
  a, b = np.asarray(a), np.asarray(b)
  np.testing.assert_allclose(b, a, rtol=rtol, atol=rtol * float(np.abs(a).max()))


@pytest.mark.parametrize("k,s,p,d,g", GRID)
def test_value_and_gradients_match_lax(k, s, p, d, g):
  x, w, g, kc = _operands(k, g)
  ref, new = _convs(s, p, d, g)
  c = jax.random.normal(kc, ref(x, w).shape)

  @jax.jit
  def both(x, w):
    out = []
    for conv in (ref, new):
      y, vjp = jax.vjp(conv, x, w)
      out.append((y, *vjp(c)))
    return out

  (y0, dx0, dw0), (y1, dx1, dw1) = both(x, w)
  if 1 < g <= SPLIT_GROUPS_UP_TO:   # maybe one dense conv per group: the same sums, reordered
    _close(y0, y1, 1e-6)
  else:
    np.testing.assert_array_equal(y1, y0)    # the forward is lax's, unchanged
  _close(dx0, dx1)
  _close(dw0, dw1)


def _second_order(conv, x, w, c):
  """TESLA's pass 2 shape: gradient w.r.t. x and w of a function of the weight gradient."""
  def inner(x, w):
    gw = jax.grad(lambda w: jnp.sum(jnp.tanh(conv(x, w)) * c))(w)
    return jnp.sum(gw * gw)
  return jax.grad(inner, (0, 1))(x, w)


SECOND = [(3, 1, "SAME", 1, 1), (3, 2, ((0, 1), (2, 1)), 1, 1), (5, 2, "VALID", 2, 2),
          (3, 2, "SAME", 1, "depthwise"), (1, 2, "SAME", 1, 1)]


@pytest.mark.parametrize("k,s,p,d,g", SECOND)
def test_grad_of_grad_matches_lax(k, s, p, d, g):
  x, w, g, kc = _operands(k, g, shape=(2, 9, 11, 4))
  ref, new = _convs(s, p, d, g)
  c = jax.random.normal(kc, ref(x, w).shape)
  f = jax.jit(lambda x, w: (_second_order(ref, x, w, c), _second_order(new, x, w, c)))
  (gx0, gw0), (gx1, gw1) = f(x, w)
  _close(gx0, gx1, 1e-4)
  _close(gw0, gw1, 1e-4)


@pytest.mark.parametrize("k,s,p,d,g", [(3, 1, "SAME", 1, 1), (3, 2, ((0, 1), (2, 1)), 2, 2),
                                       (5, 1, "VALID", 1, "depthwise")])
def test_inside_scan_matches_lax(k, s, p, d, g):
  """Three gradient steps in a scan, then a gradient through the whole scan."""
  x, w, g, kc = _operands(k, g, shape=(2, 9, 11, 4))
  ref, new = _convs(s, p, d, g)
  c = jax.random.normal(kc, ref(x, w).shape)

  def unrolled(conv, w0):
    def body(w, _):
      gw = jax.grad(lambda w: jnp.sum(jnp.tanh(conv(x, w)) * c))(w)
      return w - 0.1 * gw, None
    w3 = lax.scan(body, w0, None, length=3)[0]
    return jnp.sum(jnp.tanh(conv(x, w3)) * c)

  f = jax.jit(lambda w: [jax.value_and_grad(lambda w: unrolled(conv, w))(w) for conv in
                         (ref, new)])
  (v0, g0), (v1, g1) = f(w)
  _close(v0, v1, 1e-5)
  _close(g0, g1, 1e-4)


def test_flax_conv_uses_it():
  x = jax.random.normal(jax.random.key(0), (2, 9, 9, 3))
  kw = dict(features=5, kernel_size=(3, 3), strides=2, padding=((1, 0), (0, 2)),
            feature_group_count=1, kernel_dilation=2)
  ref, new = nn.Conv(**kw), nn.Conv(**kw, conv_general_dilated=loop_conv)
  params = ref.init(jax.random.key(1), x)
  np.testing.assert_array_equal(new.apply(params, x), ref.apply(params, x))
  grads = jax.jit(lambda p: [jax.grad(lambda p, m=m: jnp.sum(m.apply(p, x) ** 2))(p)
                             for m in (ref, new)])(params)
  jax.tree.map(_close, *grads)


@pytest.mark.parametrize("kwargs,match", [
    (dict(dimension_numbers=("NCHW", "OIHW", "NCHW")), "supports only dimension_numbers"),
    (dict(dimension_numbers=None), "needs dimension_numbers"),
    (dict(dimension_numbers=DN, lhs_dilation=(2, 2)), "lhs_dilation"),
    (dict(dimension_numbers=DN, batch_group_count=2), "batch_group_count"),
    (dict(dimension_numbers=DN, feature_group_count=3), "feature_group_count 3"),
])
def test_unsupported_arguments_are_refused(kwargs, match):
  x, w = jnp.zeros((1, 5, 5, 4)), jnp.zeros((3, 3, 4, 6))
  with pytest.raises(ValueError, match=match):
    loop_conv(x, w, (1, 1), "SAME", **kwargs)


def test_scan_hlo_has_only_canonical_convolutions():
  """The reason the module exists: inside a while loop XLA:CPU keeps the layouts it is given."""
  x = jax.random.normal(jax.random.key(0), (4, 10, 10, 8))
  w = jax.random.normal(jax.random.key(1), (3, 3, 8, 8))

  def loss(w, x, conv):
    return jnp.sum(conv(x, w, (1, 1), "SAME", dimension_numbers=DN) ** 2)

  def scanned(conv):
    body = lambda w, _: (w - 1e-3 * jax.grad(loss)(w, x, conv), None)
    hlo = jax.jit(lambda w: lax.scan(body, w, None, length=3)[0]).lower(w).compile().as_text()
    return set(re.findall(r"convolution\(.*?dim_labels=(\S+?),", hlo))

  assert scanned(loop_conv) == {"b01f_01io->b01f"}
  # the default rule's non-canonical weight gradient, which this guards against (if XLA ever
  # canonicalises it inside loops too, this module can go)
  assert scanned(lax.conv_general_dilated) != {"b01f_01io->b01f"}


def test_vmap_over_students_matches_lax():
  """Evaluation trains seeds side by side under vmap: batched kernels and inputs."""
  x = jax.random.normal(jax.random.key(0), (3, 2, 9, 9, 4))
  w = jax.random.normal(jax.random.key(1), (3, 3, 3, 2, 6))
  ref, new = _convs(2, "SAME", 1, 2)
  f = jax.jit(lambda x, w: [jax.vmap(jax.grad(lambda x, w, c=c: jnp.sum(jnp.tanh(c(x, w))),
                                              (0, 1)))(x, w) for c in (ref, new)])
  (gx0, gw0), (gx1, gw1) = f(x, w)
  _close(gx0, gx1)
  _close(gw0, gw1)


def test_frozen_kernels_are_reversed_one_layer_at_a_time():
  """The input gradient through frozen convs holds one reversed kernel at a time, not one per
  layer made up front (what XLA:CPU's scheduler does with lax's own transpose rule): the
  compiled program's temporaries stay under two kernels plus the activations, for 8 layers."""
  layers, c, s = 8, 128, 4
  rs = np.random.RandomState(0)
  ws = [jnp.asarray(rs.randn(3, 3, c, c).astype(np.float32) * 0.05) for _ in range(layers)]
  x = jnp.asarray(rs.randn(2, s, s, c).astype(np.float32))

  def net(conv):
    def f(x, ws):
      for w in ws:
        x = jax.nn.silu(conv(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
      return jnp.sum(x ** 2)
    return jax.jit(jax.grad(f))   # gradient for x only: the kernels are frozen

  kernel_bytes = 9 * c * c * 4
  act_bytes = x.size * 4
  temp = net(loop_conv).lower(x, ws).compile().memory_analysis().temp_size_in_bytes
  assert temp < 2 * kernel_bytes + 4 * layers * act_bytes, (temp, kernel_bytes)
  np.testing.assert_allclose(net(loop_conv)(x, ws), net(lax.conv_general_dilated)(x, ws),
                             rtol=1e-5, atol=1e-6)



@pytest.mark.parametrize("s,g", [(1, 2), (2, 1), (2, "depthwise")])
def test_grad_of_grad_pads_no_more_than_the_kernel(s, g):
  """The second-order gradient is made of the forward, input- and weight-gradient convolutions
  (each padded by at most k - 1). Left to autodiff, the transposed weight gradient pads a
  k x k map to the Ho x Wo cotangent's size and convolves it with that whole map (pad 22 here;
  81 s vs torch's 0.8 s on NFNet-L0's grouped 3x3 convs at 56 x 56)."""
  x, w, g, kc = _operands(3, g, shape=(2, 24, 24, 8), cout=8)
  ref, new = _convs(s, "SAME", 1, g)
  c = jax.random.normal(kc, ref(x, w).shape)
  hlo = jax.jit(lambda x, w: _second_order(new, x, w, c)).lower(x, w).compile().as_text()
  convs = [line for line in hlo.splitlines() if " convolution(" in line]
  pads = [int(v) for line in convs for m in [re.search(r"pad=(\S+)", line)] if m
          for v in re.findall(r"-?\d+", m.group(1))]
  assert len(convs) >= 5 and max(pads) <= 2, convs


@pytest.mark.parametrize("s,g", [(1, 2), (2, 4)])
def test_split_groups_match_lax(s, g):
  """A grouped conv of >= 4 channels per group runs as one dense conv per group (XLA:CPU's
  grouped conv took 2.6x torch's CPU time); values, gradients and gradients of gradients."""
  x, w, g, kc = _operands(3, g, shape=(2, 9, 11, 16), cout=16)
  ref, new = _convs(s, "SAME", 1, g)
  text = jax.jit(new).lower(x, w).as_text()
  groups = re.findall(r"feature_group_count = (\d+)", text)
  assert groups == ["1"] * g, groups
  c = jax.random.normal(kc, ref(x, w).shape)
  f = jax.jit(lambda x, w: [(conv(x, w), *jax.vjp(conv, x, w)[1](c), *_second_order(conv, x, w, c))
                            for conv in (ref, new)])
  for a, b in zip(*f(x, w)):
    _close(a, b, 1e-4)


def test_exact_trajectory_gradient_has_only_canonical_convolutions():
  """Differentiating through SGD steps (the exact trajectory gradient) takes the derivative of
  each custom rule's fwd too. Every convolution of that program must be jdd's canonical one;
  with the fwd rule calling the raw lax conv, the derivative through the weights got JAX's own
  weight-gradient transposes, which XLA:CPU ran 3x slower on LoRS's NFNet (module docstring)."""
  x, w, g, kc = _operands(3, 2, shape=(2, 12, 12, 8), cout=8)
  ref, new = _convs(2, "SAME", 1, g)
  c = jax.random.normal(kc, ref(x, w).shape)

  def through_steps(conv):
    def end(w, x):
      step = lambda w, _: (w - 0.1 * jax.grad(lambda w: jnp.sum(jnp.tanh(conv(x, w)) * c))(w),
                           None)
      return jnp.sum(lax.scan(step, w, None, length=2)[0] ** 2)
    f = jax.jit(jax.grad(end, (0, 1)))
    labels = re.findall(r"dim_numbers = (.*?), window", f.lower(w, x).as_text())
    return f(w, x), labels

  (gw0, gx0), ref_labels = through_steps(ref)
  (gw1, gx1), labels = through_steps(new)
  canonical = "[b, 0, 1, f]x[0, 1, i, o]->[b, 0, 1, f]"
  assert len(labels) >= 10 and set(labels) == {canonical}, set(labels)
  assert set(ref_labels) != {canonical}      # what the default rules emit
  _close(gw0, gw1, 1e-4)
  _close(gx0, gx1, 1e-4)


@pytest.mark.parametrize("arch", ["resnet18", "densenet121", "mobilenet_v2",
                                  "shufflenet_v2_x0_5", "efficientnet_b0"])
def test_classifiers_switch_to_canonical_convolutions_in_nested_programs(arch):
  """The torchvision-style classifiers convolve with `model_conv`: JAX's own convolution (and
  its gradient rules) at the top level, jdd's canonical one inside `in_nested_program()` (what
  FADRM+'s teacher branches are traced in). Lowering only: no compilation."""
  from jdd import models
  from jdd.models.conv import in_nested_program
  model = models.build_model(arch, 10)
  variables = jax.eval_shape(lambda k: models.init_variables(model, k, (32, 32, 3)),
                             jax.random.key(0))
  variables = jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), variables)
  x = jnp.ones((2, 32, 32, 3))

  def labels():
    f = jax.jit(jax.grad(lambda x: jnp.sum(model.apply(variables, x, train=False))))
    return re.findall(r"dim_numbers = (.*?), window", f.lower(x).as_text())

  canonical = "[b, 0, 1, f]x[0, 1, i, o]->[b, 0, 1, f]"
  assert set(labels()) != {canonical}
  with in_nested_program():
    inside = labels()
  assert len(inside) >= 10 and set(inside) == {canonical}, set(inside)
