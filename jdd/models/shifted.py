"""Window operations as shifted slices: XLA-CPU's grouped convolution and max-pool gradient are
slow, and the latter memory-hungry.

Depthwise convolution. MobileNetV2, ShuffleNetV2 and EfficientNet-B0 are FADRM+ and INFER
teachers; each depthwise 3x3 (5x5) convolution is, in PyTorch, a oneDNN kernel, and in XLA on a
CPU a `feature_group_count = C` convolution that runs several times slower than the formulation
here (`benchmarks/window_ops.py` times both at MobileNetV2's ImageNet shapes). A
depthwise convolution is a sum of kh x kw shifted (and strided) copies of the input, each scaled
per channel, which XLA fuses into one elementwise loop. The gradient is written the same way
(`jax.custom_vjp`): the input gradient is the correlation of the stride-dilated output gradient
with the flipped kernel, the kernel gradient one reduction per tap.

Max pooling. The gradient of XLA's `reduce_window` max is a select-and-scatter, which XLA-CPU
expands into a variadic reduce-window carrying five int32 index arrays of the padded input's
size (400 MB of the 1 GB a ResNet-18 recover step at 224 px and batch 25 holds, for its one
stem max-pool). Here the pool is the maximum of the shifted slices and its gradient goes, per
window, to the first maximal element in row-major order, which is where torch's max_pool2d
routes it (ties otherwise split the gradient in jax).

Both rules are ordinary jax code, so reverse-over-reverse differentiation still works; forward
mode does not (`jax.custom_vjp`), which nothing in jdd uses.

`DepthwiseConv` has exactly the parameters of `nn.Conv(features, kernel, feature_group_count=
features, use_bias=False)` (`kernel` of shape (kh, kw, 1, C)), so converted checkpoints and the
torch names are unchanged. Both use the shifted form on the CPU and XLA's own operations
elsewhere (cuDNN's kernels are fast); `impl` forces either.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax


def _taps(xp: jax.Array, kh: int, kw: int, stride: int, out_hw: tuple[int, int]):
  """(i, j, slice of padded x feeding output tap (i, j)) for every kernel position."""
  n, _, _, c = xp.shape
  oh, ow = out_hw
  for i in range(kh):
    for j in range(kw):
      yield i, j, lax.slice(xp, (0, i, j, 0),
                            (n, i + (oh - 1) * stride + 1, j + (ow - 1) * stride + 1, c),
                            (1, stride, stride, 1))


def _shifted(xp: jax.Array, kernel: jax.Array, stride: int, out_hw: tuple[int, int]):
  """sum_ij xp[:, i::s, j::s] * kernel[i, j, 0] over a padded input, accumulated in order."""
  kh, kw = kernel.shape[:2]
  acc = None
  for i, j, tap in _taps(xp, kh, kw, stride, out_hw):
    term = tap * kernel[i, j, 0]
    acc = term if acc is None else acc + term
  return acc


def _out_size(size: int, kernel: int, stride: int, pad: tuple[int, int]) -> int:
  return (size + pad[0] + pad[1] - kernel) // stride + 1


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def depthwise_conv(x: jax.Array, kernel: jax.Array, stride: int,
                   padding: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
  """NHWC depthwise cross-correlation (torch Conv2d with groups = C), explicit padding."""
  return _forward(x, kernel, stride, padding)


def _forward(x, kernel, stride, padding):
  kh, kw = kernel.shape[:2]
  xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
  out_hw = (_out_size(x.shape[1], kh, stride, padding[0]),
            _out_size(x.shape[2], kw, stride, padding[1]))
  return _shifted(xp, kernel, stride, out_hw)


def _fwd(x, kernel, stride, padding):
  return _forward(x, kernel, stride, padding), (x, kernel)


def _bwd(stride, padding, res, g):
  x, kernel = res
  kh, kw = kernel.shape[:2]
  h, w = x.shape[1:3]
  oh, ow = g.shape[1:3]
  # dx[h] = sum_i g_dilated[h + p - i] k[i]: a stride-1 correlation of the output gradient,
  # dilated by the stride and padded by (k - 1 - p) before / whatever reaches h + k - 2 after,
  # with the kernel flipped.
  pads = []
  for size, k, out, (lo_pad, _) in ((h, kh, oh, padding[0]), (w, kw, ow, padding[1])):
    lo = k - 1 - lo_pad
    hi = size + k - 2 - lo - stride * (out - 1)
    pads.append((lo, hi, stride - 1))
  gd = lax.pad(g, jnp.zeros((), g.dtype), ((0, 0, 0), pads[0], pads[1], (0, 0, 0)))
  dx = _shifted(gd, kernel[::-1, ::-1], 1, (h, w))
  xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
  dk = jnp.zeros_like(kernel)
  for i, j, tap in _taps(xp, kh, kw, stride, (oh, ow)):
    dk = dk.at[i, j, 0].set(jnp.sum(tap * g, axis=(0, 1, 2)).astype(kernel.dtype))
  return dx.astype(x.dtype), dk


depthwise_conv.defvjp(_fwd, _bwd)


def use_shifted(impl: str) -> bool:
  if impl not in ("auto", "shifted", "xla"):
    raise ValueError(f"impl must be 'auto', 'shifted' or 'xla', got {impl!r}")
  return impl == "shifted" or (impl == "auto" and jax.default_backend() == "cpu")


def _pool_out(x, window, stride, pad):
  xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=-jnp.inf)
  out_hw = tuple(_out_size(n, window, stride, (pad, pad)) for n in x.shape[1:3])
  return xp, out_hw


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x: jax.Array, window: int, stride: int, pad: int) -> jax.Array:
  xp, out_hw = _pool_out(x, window, stride, pad)
  out = None
  for _, _, tap in _taps(xp, window, window, stride, out_hw):
    out = tap if out is None else jnp.maximum(out, tap)
  return out


def _pool_fwd(x, window, stride, pad):
  out = _max_pool(x, window, stride, pad)
  return out, (x, out)


def _pool_bwd(window, stride, pad, res, g):
  x, out = res
  xp, out_hw = _pool_out(x, window, stride, pad)
  hp, wp = xp.shape[1:3]
  zero = jnp.zeros((), g.dtype)
  taken = jnp.zeros(out.shape, bool)
  dxp = None
  for i, j, tap in _taps(xp, window, window, stride, out_hw):
    hit = (tap == out) & ~taken          # the first maximum of each window, row-major
    taken = taken | hit
    back = lax.pad(jnp.where(hit, g, zero), zero,
                   ((0, 0, 0), (i, hp - i - (stride * (out_hw[0] - 1) + 1), stride - 1),
                    (j, wp - j - (stride * (out_hw[1] - 1) + 1), stride - 1), (0, 0, 0)))
    dxp = back if dxp is None else dxp + back
  return (dxp[:, pad:hp - pad, pad:wp - pad],)


_max_pool.defvjp(_pool_fwd, _pool_bwd)


def max_pool(x: jax.Array, window: int, stride: int, pad: int, impl: str = "auto") -> jax.Array:
  """torch's MaxPool2d(window, stride, pad) on NHWC: -inf padding, gradient to the first
  maximum of each window; shifted slices on the CPU (module docstring), else reduce_window."""
  if use_shifted(impl):
    return _max_pool(x, int(window), int(stride), int(pad))
  xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=-jnp.inf)
  return nn.max_pool(xp, (window, window), strides=(stride, stride), padding="VALID")


class DepthwiseConv(nn.Module):
  """`nn.Conv(C, kernel_size, strides, padding, feature_group_count=C, use_bias=False)` on a
  C-channel input, with the same `kernel` parameter; see the module docstring."""

  features: int
  kernel_size: tuple[int, int]
  strides: tuple[int, int] = (1, 1)
  padding: tuple[tuple[int, int], tuple[int, int]] = ((0, 0), (0, 0))
  kernel_init: Callable = nn.initializers.lecun_normal()
  dtype: Any = None
  impl: str = "auto"          # 'auto' (shifted on CPU) | 'shifted' | 'xla'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if x.shape[-1] != self.features:
      raise ValueError(f"a depthwise conv of {self.features} channels got {x.shape[-1]}")
    if self.strides[0] != self.strides[1]:
      raise ValueError(f"DepthwiseConv needs equal strides, got {self.strides}")
    kernel = self.param("kernel", self.kernel_init, (*self.kernel_size, 1, self.features),
                        jnp.float32)
    dtype = self.dtype or jnp.result_type(x.dtype, jnp.float32)
    x, kernel = x.astype(dtype), kernel.astype(dtype)
    padding = tuple(tuple(int(p) for p in pair) for pair in self.padding)
    if use_shifted(self.impl):
      return depthwise_conv(x, kernel, int(self.strides[0]), padding)
    return lax.conv_general_dilated(x, kernel, self.strides, padding,
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                    feature_group_count=self.features)
