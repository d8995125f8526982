"""A 2-D convolution whose gradients stay fast inside `lax.scan` / while loops on XLA:CPU.

Why. JAX's autodiff turns the transpose of a convolution into convolutions with permuted
dimension labels (input gradient: `b01f_01oi->b01f` on a reversed kernel; weight gradient:
`f01b_i01o->01bf`, batch as the contracted feature). Outside loops XLA:CPU rewrites those into
its canonical NHWC/HWIO form (`b01f_01io->b01f`, with transpose copies around them) and hands
them to its fast Eigen kernels. Inside a while body (every `lax.scan`) it does not, and they run
on a slow generic emitter. Measured with jax 0.10.2 / XLA:CPU on a 3x3 conv, x (50, 28, 28, 32)
NHWC, w (3, 3, 32, 32) HWIO: weight gradient 25 ms alone vs 2,586 ms per step inside a scan
(100x); input gradient 40 ms vs 773 ms; the forward conv is equally fast in and out of loops.
A weight gradient written as explicit transposes around a canonical forward conv runs in 48 ms
per step inside the scan. jdd worked around the slowness by unrolling trajectory-matching
student steps on CPU (memory grows with the unroll) and by training evaluation students one
jitted call per step; `benchmarks/loop_conv.py` prints the figures for this module.

What. `conv_general_dilated` has the call signature flax's `nn.Conv(conv_general_dilated=...)`
uses and is restricted to what jdd needs: NHWC input, HWIO kernel, NHWC output, window strides,
padding ('SAME', 'VALID' or explicit, possibly asymmetric, pairs), kernel dilation and
`feature_group_count` (dense, grouped, depthwise). The forward is `lax.conv_general_dilated`
(bit-identical values), except that a grouped conv with 2 to `SPLIT_GROUPS_UP_TO` groups is
(mostly) one dense conv per group (the same sums, possibly in another order; see `_conv`). The
`jax.custom_vjp` backward builds both gradients as convolutions in the canonical layout,
i.e. the program XLA itself builds outside loops:

* input gradient: the cotangent, lhs-dilated by the stride, convolved with the spatially
  reversed kernel whose in/out channels are swapped within each group;
* weight gradient: batch and channels trade places: lhs = x as (Cin/G, H, W, G*N) and
  rhs = cotangent as (Ho, Wo, N, Cout), a forward conv with `feature_group_count=G`, window
  strides = the kernel dilation and kernel dilation = the stride, output (Cin/G, kh, kw, Cout)
  transposed to HWIO. For G > 1 this is G times less work than what XLA emits outside loops
  (a 3-D conv over a lhs-dilated group axis whose work equals the dense weight gradient's).

Memory. The reversed, regrouped kernel of the input gradient depends only on the weights, so
XLA's scheduler is free to compute every layer's copy at the start of the backward pass, and on
XLA:CPU it does: a frozen network's input gradient then holds a second copy of all its kernels at
once (12 3x3 convs of 512 channels: 110.9 MiB of temporaries, 108 MiB of them kernels; EDGE's
SD-1.5 U-Net: 5.4 GB of reversed kernels, `benchmarks/paper_shapes.py`'s edge rows). The
backward makes the kernel depend on the cotangent first (`jdd.models.remat.after`), so each
copy is made when its layer's gradient arrives and freed after it: 11.9 MiB for the same 12
convs, the same gradient values (`lax.optimization_barrier` did not do it).

Gradients of gradients (TESLA's second pass, exact trajectory gradients) use the fact that
the forward, the input gradient and the weight gradient are bilinear maps whose VJPs are made of
one another (see `_input_grad`), so they stay canonical convolutions with the forward's cost.
Left to autodiff (as `lax.conv_general_dilated` is), the transpose of a weight gradient is a
convolution whose kernel is the whole Ho x Wo cotangent map: the second-order gradient of one
grouped 3x3 conv (x 10 x 56 x 56 x 128, 2 groups) took 81 s, torch 0.8 s. The
padding of the transposed convolutions is derived here, per spatial axis, for input size H
(dilated by a: Ha = (H-1)a+1), kernel K (dilated by d: Kd = (K-1)d+1), stride s, padding
(lo, hi) and output size Ho: input gradient pads (Kd-1-lo, Ha-1-(Ho-1)s+lo) with lhs dilation
s and stride a; weight gradient pads (lo, (K-1)d+(Ho-1)s+1-Ha-lo), possibly negative, which XLA
accepts (it crops).

Higher orders. A derivative of second order also differentiates each custom rule's `fwd`
(JAX applies the custom VJP to the first derivative only). So the three `fwd` rules call the
custom functions themselves rather than the raw convolutions; when they called the raw
`lax.conv_general_dilated`, the outer derivative of an exact trajectory gradient (through the
student's weights) got JAX's own weight-gradient transposes (`f01b_i01o->01bf`), which XLA:CPU
runs at about 1 GFLOP/s: LoRS's exact gradient at 64 px took 39 s per iteration against
TESLA's 9.9, and takes 12.4 s since (`benchmarks/paper_shapes.py`'s `lors_exact` row,
docs/benchmarks.md).

Nested programs. The torchvision-style classifiers use `model_conv`: XLA's own convolution at
the top level of a program, this module's inside `in_nested_program()` (bottom of the file).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jdd.models.remat import after

CANONICAL = ("NHWC", "HWIO", "NHWC")


def _canonical_numbers():
  return lax.conv_dimension_numbers((1, 1, 1, 1), (1, 1, 1, 1), CANONICAL)


# Grouped convolutions with at most this many groups, of at least 4 input channels each, run as
# one dense convolution per group (channel slices, outputs concatenated): XLA:CPU's grouped
# convolution took 2.6x torch's CPU time on NFNet-L0's 3x3 convs with 64 channels per group
# (forward and gradients), the split one 0.6-0.9x. Depthwise and other many-group or
# few-channel convolutions keep XLA's grouped form.
SPLIT_GROUPS_UP_TO = 32


def _conv(x, w, strides, padding, lhs_dil, rhs_dil, groups, precision):
  def conv(x, w, groups):
    return lax.conv_general_dilated(x, w, strides, padding, lhs_dilation=lhs_dil,
                                    rhs_dilation=rhs_dil, dimension_numbers=CANONICAL,
                                    feature_group_count=groups, precision=precision)
  if not (1 < groups <= SPLIT_GROUPS_UP_TO and x.shape[-1] >= 4 * groups):
    return conv(x, w, groups)
  cig, cog = x.shape[-1] // groups, w.shape[-1] // groups
  return jnp.concatenate([conv(x[..., i * cig:(i + 1) * cig], w[..., i * cog:(i + 1) * cog], 1)
                          for i in range(groups)], axis=-1)


# The three bilinear maps of a convolution y = F(x, w): the forward F, the input gradient
# I(gy, w) = (dF/dx)^T gy and the weight gradient W(x, gy) = (dF/dw)^T gy. Each one's VJP is
# made of the other two (for cotangents dx, dw of I's and W's outputs):
#   F: (I(gy, w), W(x, gy));  I: (F(dx, w), W(dx, gy));  W: (I(gy, dw), F(x, dw)),
# so gradients of any order are canonical convolutions with the forward's cost. Left to
# autodiff, the transpose of the weight gradient is a convolution whose kernel is the whole
# cotangent map (Ho x Wo) over a kh x kw input padded to that size: for NFNet-L0's grouped 3x3
# convs at 56 x 56, TESLA's second pass took 81 s per layer against torch's 0.8 s.
_CFG = (2, 3, 4, 5, 6, 7, 8)   # shape, strides, padding, lhs_dil, rhs_dil, groups, precision


@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6, 7))
def _loop_conv(x, w, strides, padding, lhs_dil, rhs_dil, groups, precision):
  return _conv(x, w, strides, padding, lhs_dil, rhs_dil, groups, precision)


def _loop_conv_fwd(x, w, strides, padding, lhs_dil, rhs_dil, groups, precision):
  # The fwd rules call the custom functions themselves, not the raw convolutions: a derivative
  # of higher order differentiates the fwd, and through a raw `lax` convolution it would get
  # JAX's own transposes (module docstring, "Higher orders").
  return _loop_conv(x, w, strides, padding, lhs_dil, rhs_dil, groups, precision), (x, w)


def _loop_conv_bwd(strides, padding, lhs_dil, rhs_dil, groups, precision, res, gy):
  x, w = res
  cfg = (strides, padding, lhs_dil, rhs_dil, groups, precision)
  return (_input_grad(gy, w, x.shape, *cfg).astype(x.dtype),
          _weight_grad(x, gy, w.shape, *cfg).astype(w.dtype))


_loop_conv.defvjp(_loop_conv_fwd, _loop_conv_bwd)


def _input_grad_conv(gy, w, x_shape, strides, padding, lhs_dil, rhs_dil, groups, precision):
  """I(gy, w): the cotangent, lhs-dilated by the stride, against the reversed, regrouped kernel."""
  w = after(w, gy)   # see "Memory" in the module docstring
  kh, kw, cig, cout = w.shape
  cog = cout // groups
  wt = jnp.flip(w, (0, 1)).reshape(kh, kw, cig, groups, cog)
  wt = jnp.transpose(wt, (0, 1, 4, 3, 2)).reshape(kh, kw, cog, groups * cig)
  pads = []
  for a in range(2):
    kd = (w.shape[a] - 1) * rhs_dil[a] + 1
    ha = (x_shape[1 + a] - 1) * lhs_dil[a] + 1
    lo = padding[a][0]
    pads.append((kd - 1 - lo, ha - 1 - (gy.shape[1 + a] - 1) * strides[a] + lo))
  return _conv(gy, wt, tuple(lhs_dil), tuple(pads), tuple(strides), tuple(rhs_dil), groups,
               precision)


def _weight_grad_conv(x, gy, w_shape, strides, padding, lhs_dil, rhs_dil, groups, precision):
  """W(x, gy): batch and channels trade places, a forward conv with G groups, then HWIO."""
  n, h, wd, cin = x.shape
  cig = cin // groups
  xt = jnp.transpose(x.reshape(n, h, wd, groups, cig), (4, 1, 2, 3, 0))
  xt = xt.reshape(cig, h, wd, groups * n)
  gt = jnp.transpose(gy, (1, 2, 0, 3))
  pads = []
  for a in range(2):
    ha = (x.shape[1 + a] - 1) * lhs_dil[a] + 1
    lo = padding[a][0]
    hi = (w_shape[a] - 1) * rhs_dil[a] + (gy.shape[1 + a] - 1) * strides[a] + 1 - ha - lo
    pads.append((lo, hi))
  dw = _conv(xt, gt, tuple(rhs_dil), tuple(pads), tuple(lhs_dil), tuple(strides), groups,
             precision)
  return jnp.transpose(dw, (1, 2, 0, 3))


@partial(jax.custom_vjp, nondiff_argnums=_CFG)
def _input_grad(gy, w, x_shape, strides, padding, lhs_dil, rhs_dil, groups, precision):
  return _input_grad_conv(gy, w, x_shape, strides, padding, lhs_dil, rhs_dil, groups, precision)


def _input_grad_fwd(gy, w, *cfg):
  return _input_grad(gy, w, *cfg), (gy, w)


def _input_grad_bwd(x_shape, *rest):
  *cfg, (gy, w), dx = rest
  return (_loop_conv(dx, w, *cfg).astype(gy.dtype),
          _weight_grad(dx, gy, w.shape, *cfg).astype(w.dtype))


_input_grad.defvjp(_input_grad_fwd, _input_grad_bwd)


@partial(jax.custom_vjp, nondiff_argnums=_CFG)
def _weight_grad(x, gy, w_shape, strides, padding, lhs_dil, rhs_dil, groups, precision):
  return _weight_grad_conv(x, gy, w_shape, strides, padding, lhs_dil, rhs_dil, groups, precision)


def _weight_grad_fwd(x, gy, *cfg):
  return _weight_grad(x, gy, *cfg), (x, gy)


def _weight_grad_bwd(w_shape, *rest):
  *cfg, (x, gy), dw = rest
  return (_input_grad(gy, dw, x.shape, *cfg).astype(x.dtype),
          _loop_conv(x, dw, *cfg).astype(gy.dtype))


_weight_grad.defvjp(_weight_grad_fwd, _weight_grad_bwd)


def _pair(v, name: str) -> tuple[int, int]:
  if v is None:
    return (1, 1)
  if isinstance(v, int):
    return (v, v)
  v = tuple(int(e) for e in v)
  if len(v) != 2:
    raise ValueError(f"jdd.models.conv: {name} must have 2 entries (H, W), got {v}")
  return v


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                         padding: str | Sequence[tuple[int, int]],
                         lhs_dilation: Sequence[int] | None = None,
                         rhs_dilation: Sequence[int] | None = None,
                         dimension_numbers: Any = None, feature_group_count: int = 1,
                         batch_group_count: int = 1, precision: Any = None,
                         preferred_element_type: Any = None) -> jax.Array:
  """`lax.conv_general_dilated` for NHWC/HWIO/NHWC 2-D convs, with loop-friendly gradients.

  Drop-in for `nn.Conv(..., conv_general_dilated=conv_general_dilated)`; see the module
  docstring for what is supported and why.
  """
  if lhs.ndim != 4 or rhs.ndim != 4:
    raise ValueError(f"jdd.models.conv supports 2-D convolutions (4-D operands), got lhs "
                     f"{lhs.shape} and rhs {rhs.shape}")
  if dimension_numbers is None:
    raise ValueError("jdd.models.conv needs dimension_numbers=('NHWC', 'HWIO', 'NHWC'); got "
                     "None (lax's default NCHW/OIHW layout is not supported)")
  try:
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  except (TypeError, ValueError) as e:
    raise ValueError(f"jdd.models.conv: bad dimension_numbers {dimension_numbers!r}: {e}") from e
  if dn != _canonical_numbers():
    raise ValueError(f"jdd.models.conv supports only dimension_numbers {CANONICAL} (NHWC input, "
                     f"HWIO kernel, NHWC output), got {dimension_numbers!r}; transpose your "
                     "operands or use lax.conv_general_dilated")
  if _pair(lhs_dilation, "lhs_dilation") != (1, 1):
    raise ValueError(f"jdd.models.conv does not support lhs_dilation (transposed convs), got "
                     f"{lhs_dilation}; use lax.conv_general_dilated")
  if batch_group_count != 1:
    raise ValueError(f"jdd.models.conv does not support batch_group_count, got "
                     f"{batch_group_count}; use lax.conv_general_dilated")
  if preferred_element_type is not None:
    raise ValueError("jdd.models.conv does not support preferred_element_type; cast the "
                     "operands instead")
  groups = int(feature_group_count)
  cin, cout = lhs.shape[3], rhs.shape[3]
  if groups < 1 or cin % groups or cout % groups or rhs.shape[2] * groups != cin:
    raise ValueError(f"jdd.models.conv: feature_group_count {groups} does not fit input "
                     f"channels {cin}, kernel {rhs.shape} (HWIO, I = channels / groups)")
  strides = _pair(window_strides, "window_strides")
  rhs_dil = _pair(rhs_dilation, "rhs_dilation")
  if isinstance(padding, str):
    window = [(rhs.shape[a] - 1) * rhs_dil[a] + 1 for a in range(2)]
    pads = lax.padtype_to_pads(lhs.shape[1:3], window, strides, padding)
  else:
    pads = [tuple(int(e) for e in p) for p in padding]
    if len(pads) != 2 or any(len(p) != 2 for p in pads):
      raise ValueError(f"jdd.models.conv: padding must be 'SAME', 'VALID' or two (lo, hi) "
                       f"pairs, got {padding!r}")
  pads = tuple(tuple(int(e) for e in p) for p in pads)
  return _loop_conv(lhs, rhs, strides, pads, (1, 1), rhs_dil, groups, precision)


# ------------------------------------------------------------- the classifiers' convolution
_NESTED = contextvars.ContextVar("jdd_models_conv_nested", default=False)


@contextlib.contextmanager
def in_nested_program():
  """While tracing inside it, `model_conv` is this module's convolution.

  Wrap the tracing of a conditional's branches or a loop body that differentiates a
  torchvision-style classifier (ResNet, DenseNet, MobileNetV2, ShuffleNetV2, EfficientNet):
  there XLA:CPU runs JAX's own gradient convolutions on its slow emitter, as in loops (module
  docstring). FADRM+ picks its teacher with `lax.switch`: its ResNet-18 branch at 112 px,
  batch 8, took 0.34 s per step against 0.17 s with this module's convolutions.
  """
  token = _NESTED.set(True)
  try:
    yield
  finally:
    _NESTED.reset(token)


def model_conv(*args, **kwargs):
  """The classifiers' `nn.Conv(conv_general_dilated=...)`: `lax.conv_general_dilated` at the
  top level of a program, where XLA's own rewrite of its gradients is the leaner one (the
  ResNet-18 recover step at 224 px, batch 25: XLA buffers 679 MiB against 1,187 with this
  module's convolution, and 2.27 against 2.52 s per step), and `conv_general_dilated` inside
  `in_nested_program()`. Same forward values either way (up to the grouped-conv split)."""
  if _NESTED.get():
    return conv_general_dilated(*args, **kwargs)
  return lax.conv_general_dilated(*args, **kwargs)
