"""NFNet-L0 (timm `nfnet_l0`), the image encoder of MTT-VL, LoRS and RepBlend, as a Flax module.

Reference: timm 1.0.31 `timm/models/nfnet.py` (`NormFreeNet` with `_nfnet_cfg(depths=(1, 2, 6, 3),
feat_mult=1.5, group_size=64, bottle_ratio=0.25, attn_kwargs=dict(rd_ratio=0.25, rd_divisor=8),
act_layer='silu')`), `timm/layers/std_conv.py` (ScaledStdConv2d) and
`timm/layers/squeeze_excite.py` (SEModule); papers arXiv:2101.08692 and arXiv:2102.06171. The
references load the ImageNet weights `nfnet_l0.ra2_in1k` with `num_classes=0` and use the 2304-d
average-pooled feature (shared/research/multimodal_dd_methods.md §3.1). The pixels are what
distillation learns, so the network must be exact *and* differentiable with respect to its input.

The maths, as timm computes it for nfnet_l0:

  * ScaledStdConv2d: every conv standardises its stored weight per output channel in the forward
    pass, w_hat = (w - mean) / sqrt(var + 1e-5) * gain * gamma / sqrt(fan_in), with the biased
    variance over (in/groups, kh, kw) and fan_in = in/groups * kh * kw; every conv has a bias.
    timm folds the activation's variance-preserving constant gamma (SiLU: 1.7881293296813965,
    DeepMind's value) into that scale instead of the activation (`gamma_in_act=False`), so the
    SiLUs themselves are plain; jdd does the same, and offers timm's `gamma_in_act=True` form.
  * Padding is torch's symmetric ((stride - 1) + (k - 1)) // 2 (nfnet_l0 has `same_padding=False`,
    so a 3x3 stride-2 conv pads 1 on both sides, not Flax/TF 'SAME'); the TF-style asymmetric
    padding of timm's ScaledStdConv2dSame is available as `same_padding=True`.
  * Stem 'deep_quad': 3x3 convs to 16, 32, 64, 128 channels, strides 2, 1, 1, 2, SiLU between.
  * Blocks (pre-activation): out = act(x) * beta; shortcut = x, or, when the width or stride
    changes, 1x1 ScaledStdConv(AvgPool2x2(ceil_mode, count_include_pad=False)(out)); residual =
    conv1 1x1 -> act -> conv2 3x3 grouped (stride) -> act -> conv2b 3x3 grouped -> act -> conv3 1x1
    -> 2.0 * SE; result = residual * alpha + shortcut, alpha = 0.2, beta = 1/sqrt(expected
    variance) (reset after the first block of each stage). conv3's gain starts at 0 (timm's init
    when `skipinit=False`); with `skipinit=True` a scalar `skipinit_gain` multiplies the residual.
  * SE (timm SEModule): mean over H, W -> 1x1 conv to make_divisible(C * 0.25, 8) -> ReLU -> 1x1
    conv -> sigmoid gate, with biases.
  * final_conv 1x1 to 2304 (= int(1536 * 1.5)), SiLU, global average pool; optional dropout and
    Linear `head.fc` (num_classes=0 gives the pooled feature, as the references use it).
  * Stochastic depth (timm DropPath, per-sample, scaled by 1/keep) with rates rising linearly over
    all blocks, active only when `train=True`, drawing from the 'dropout' rng.

Module names follow timm's state dict, so the converter is a rename (see `torch_key`):
  stem.conv{1..4}.{weight,bias,gain}          -> params/stem/conv{1..4}/{kernel,bias,gain}
  stages.{i}.{j}.{conv1,conv2,conv2b,conv3}.* -> params/stages_{i}_{j}/<conv>/*
  stages.{i}.{j}.downsample.conv.*            -> params/stages_{i}_{j}/downsample/conv/*
  stages.{i}.{j}.attn_last.fc{1,2}.*          -> params/stages_{i}_{j}/attn_last/fc{1,2}/*
  stages.{i}.{j}.skipinit_gain (skipinit only)-> params/stages_{i}_{j}/skipinit_gain
  final_conv.*, head.fc.*                     -> params/final_conv/*, params/head_fc/*
Weights (O, I/g, kh, kw) become HWIO kernels; gains (O, 1, 1, 1) become (O,). The stored kernel
is timm's raw parameter: standardisation is recomputed in every forward pass, as in timm, so
training or fine-tuning the backbone updates the raw weights exactly as timm would.

Deliberate differences from timm: none in the computation. Only the 'deep_quad' stem, the NFNet
(non-RegNet) block with SE or no attention, output stride 32 and width factor 1 are implemented
(timm's NF-ResNet/NF-RegNet layouts and ECA attention are not). There is no BatchNorm, so
`init_variables` returns only `params`. Every convolution goes through
`jdd.models.conv.conv_general_dilated`: the forward is `lax.conv_general_dilated` unchanged, the
gradients are built in XLA:CPU's canonical layout so they stay fast inside `lax.scan` (that
module's docstring). The depths and widths are attributes, so tests and the
offline pipeline can build a small NFNet with the same code.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jdd.models.conv import conv_general_dilated
from jdd.models.torch_names import default_torch_key, module_key

# Variance-preserving activation constants (DeepMind nfnets, copied as numbers by timm).
GAMMAS = {"silu": 1.7881293296813965, "gelu": 1.7015043497085571, "relu": 1.7139588594436646}
ACTIVATIONS = {"silu": jax.nn.silu, "gelu": lambda x: jax.nn.gelu(x, approximate=False),
               "relu": jax.nn.relu}

# timm's pretrained_cfg of `nfnet_l0.ra2_in1k` (the references' weights, file
# nfnet_l0_ra2-45c6688d.pth): trained at 224, tested at 288 with crop 1.0, bicubic, ImageNet stats.
PRETRAINED_CFG = {
    "nfnet_l0.ra2_in1k": {
        "file": "nfnet_l0_ra2-45c6688d.pth", "input_size": (3, 224, 224),
        "test_input_size": (3, 288, 288), "crop_pct": 0.9, "test_crop_pct": 1.0,
        "interpolation": "bicubic", "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225), "num_classes": 1000, "pool_size": (7, 7),
    },
}

# timm initialises every conv with kaiming_normal_(mode='fan_in', nonlinearity='linear'), i.e. an
# untruncated N(0, 1/fan_in), biases with zeros and the classifier with N(0, 0.01).
fan_in_normal = nn.initializers.variance_scaling(1.0, "fan_in", "normal")


def make_divisible(v: float, divisor: int = 8, round_limit: float = 0.9) -> int:
  """timm's channel rounding: nearest multiple of `divisor`, never more than 10% below `v`."""
  new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
  if new_v < round_limit * v:
    new_v += divisor
  return new_v


def conv_padding(size: int, kernel: int, stride: int, same: bool) -> tuple[int, int]:
  """(low, high) padding of one spatial axis.

  torch/timm's static padding is symmetric, ((stride - 1) + (kernel - 1)) // 2; TF 'SAME' (timm's
  `*Same` convs, `same_padding=True`) puts the odd pixel at the end and depends on the size.
  """
  if not same:
    p = ((stride - 1) + (kernel - 1)) // 2
    return p, p
  total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def standardise(kernel: jax.Array, gain: jax.Array, gamma: float, eps: float) -> jax.Array:
  """Scaled weight standardisation of an HWIO kernel, per output channel (timm ScaledStdConv2d)."""
  fan_in = int(np.prod(kernel.shape[:-1]))
  mean = jnp.mean(kernel, axis=(0, 1, 2), keepdims=True)
  var = jnp.mean(jnp.square(kernel - mean), axis=(0, 1, 2), keepdims=True)
  scale = gain * (gamma * fan_in ** -0.5)
  return (kernel - mean) / jnp.sqrt(var + eps) * scale   # exact, unlike XLA-CPU's fused rsqrt


def avg_pool_2x2_ceil(x: jax.Array) -> jax.Array:
  """torch AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False) on NHWC.

  An odd side gets one more output whose window holds only the last row/column, averaged over
  the cells it actually covers.
  """
  n, h, w, c = x.shape
  ho, wo = (h + 1) // 2, (w + 1) // 2
  x = jnp.pad(x, ((0, 0), (0, 2 * ho - h), (0, 2 * wo - w), (0, 0)))
  total = x.reshape(n, ho, 2, wo, 2, c).sum(axis=(2, 4))
  count = np.pad(np.ones((h, w)), ((0, 2 * ho - h), (0, 2 * wo - w))).reshape(ho, 2, wo, 2)
  return total / jnp.asarray(count.sum(axis=(1, 3))[None, :, :, None], x.dtype)


@dataclasses.dataclass(frozen=True)
class NFStyle:
  """Settings every conv and activation of one network shares (timm's NfCfg fields)."""

  act: str = "silu"
  gamma_in_act: bool = False
  std_conv_eps: float = 1e-5
  same_padding: bool = False

  def activate(self, x: jax.Array) -> jax.Array:
    y = ACTIVATIONS[self.act](x)
    return y * GAMMAS[self.act] if self.gamma_in_act else y

  @property
  def conv_gamma(self) -> float:
    return 1.0 if self.gamma_in_act else GAMMAS[self.act]


class ScaledStdConv(nn.Module):
  """timm ScaledStdConv2d on NHWC: weight standardised in every forward pass, bias, gain."""

  features: int
  kernel_size: int = 1
  stride: int = 1
  groups: int = 1
  style: NFStyle = NFStyle()
  gain_init: float = 1.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cin, k, s = x.shape[-1], self.kernel_size, self.stride
    if cin % self.groups or self.features % self.groups:
      raise ValueError(f"{self.name}: {cin} -> {self.features} channels do not split into "
                       f"{self.groups} groups")
    kernel = self.param("kernel", fan_in_normal, (k, k, cin // self.groups, self.features),
                        jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    gain = self.param("gain", nn.initializers.constant(self.gain_init), (self.features,),
                      jnp.float32)
    w = standardise(kernel, gain, self.style.conv_gamma, self.style.std_conv_eps)
    pads = [conv_padding(x.shape[1 + a], k, s, self.style.same_padding) for a in range(2)]
    y = conv_general_dilated(x.astype(self.dtype), w.astype(self.dtype), (s, s), pads,
                             dimension_numbers=("NHWC", "HWIO", "NHWC"),
                             feature_group_count=self.groups)
    return y + bias.astype(self.dtype)


class SqueezeExcite(nn.Module):
  """timm SEModule (1x1 convs with bias, ReLU, sigmoid gate) on NHWC."""

  rd_channels: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    s = jnp.mean(x.astype(jnp.float32), axis=(1, 2), keepdims=True).astype(self.dtype)
    s = nn.Conv(self.rd_channels, (1, 1), kernel_init=fan_in_normal, dtype=self.dtype,
                conv_general_dilated=conv_general_dilated, name="fc1")(s)
    s = nn.Conv(x.shape[-1], (1, 1), kernel_init=fan_in_normal, dtype=self.dtype,
                conv_general_dilated=conv_general_dilated, name="fc2")(nn.relu(s))
    return x * jax.nn.sigmoid(s)


class Downsample(nn.Module):
  """timm DownsampleAvg: 2x2 average pool (ceil mode) when strided, then a 1x1 ScaledStdConv."""

  features: int
  stride: int
  style: NFStyle
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.stride == 2:
      x = avg_pool_2x2_ceil(x)
    elif self.stride != 1:
      raise ValueError(f"NFNet downsample stride must be 1 or 2, got {self.stride}")
    return ScaledStdConv(self.features, 1, style=self.style, dtype=self.dtype, name="conv")(x)


class NFBlock(nn.Module):
  """timm NormFreeBlock in the NFNet form (reg=False): SE after conv3, extra 3x3 conv optional."""

  out_chs: int
  stride: int
  beta: float
  alpha: float
  group_size: int | None
  bottle_ratio: float
  ch_div: int
  extra_conv: bool
  skipinit: bool
  se_ratio: float | None
  se_divisor: int
  attn_gain: float
  drop_path_rate: float
  style: NFStyle
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    mid = make_divisible(self.out_chs * self.bottle_ratio, self.ch_div)
    groups = mid // self.group_size if self.group_size else 1
    if groups < 1:
      raise ValueError(f"{self.name}: group_size {self.group_size} exceeds the {mid} bottleneck "
                       "channels")
    if self.group_size and self.group_size % self.ch_div == 0:
      mid = self.group_size * groups  # timm's correction, so groups divide mid exactly
    conv = lambda f, k, name, stride=1, g=1, gain=1.0: ScaledStdConv(
        f, k, stride, g, self.style, gain, self.dtype, name=name)
    act = self.style.activate

    out = act(x) * self.beta
    shortcut = x
    if x.shape[-1] != self.out_chs or self.stride != 1:
      shortcut = Downsample(self.out_chs, self.stride, self.style, self.dtype,
                            name="downsample")(out)
    out = conv(mid, 1, "conv1")(out)
    out = conv(mid, 3, "conv2", self.stride, groups)(act(out))
    if self.extra_conv:
      out = conv(mid, 3, "conv2b", 1, groups)(act(out))
    out = conv(self.out_chs, 1, "conv3", gain=1.0 if self.skipinit else 0.0)(act(out))
    if self.se_ratio:
      rd = make_divisible(self.out_chs * self.se_ratio, self.se_divisor, round_limit=0.0)
      out = self.attn_gain * SqueezeExcite(rd, self.dtype, name="attn_last")(out)
    if train and self.drop_path_rate > 0.0:
      keep = 1.0 - self.drop_path_rate
      mask = jax.random.bernoulli(self.make_rng("dropout"), keep, (out.shape[0], 1, 1, 1))
      out = out * mask.astype(out.dtype)
      if keep > 0.0:  # timm leaves a rate-1 path at zero rather than dividing by zero
        out = out / keep
    if self.skipinit:
      out = out * self.param("skipinit_gain", nn.initializers.zeros, (), jnp.float32)
    return out * self.alpha + shortcut


class Stem(nn.Module):
  """timm's 'deep_quad' stem: four 3x3 convs (C/8, C/4, C/2, C), strides (2, 1, 1, 2)."""

  features: int
  style: NFStyle
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = self.features
    for i, (f, s) in enumerate(zip((c // 8, c // 4, c // 2, c), (2, 1, 1, 2))):
      if i:
        x = self.style.activate(x)
      x = ScaledStdConv(f, 3, s, style=self.style, dtype=self.dtype, name=f"conv{i + 1}")(x)
    return x


class NFNet(nn.Module):
  """timm NormFreeNet (NFNet layout) on NHWC images; defaults are exactly `nfnet_l0`.

  `__call__(x, train=False)` returns float32 logits, or the pooled feature (2304-d for L0) when
  `num_classes == 0` or `pre_logits=True`. Inputs are normalised images (timm's mean/std,
  `PRETRAINED_CFG`); any spatial size works.

  Attributes (timm NfCfg names): depths and channels per stage (channels are rounded to
  multiples of `ch_div`), stem_chs, group_size, bottle_ratio, num_features of the final conv
  (0: none), se_ratio/se_divisor of the SE layers (None: no SE), alpha, attn_gain, extra_conv,
  skipinit, act, gamma_in_act, std_conv_eps, same_padding, drop_rate (dropout before the
  classifier) and drop_path_rate (stochastic depth at the last block).
  """

  num_classes: int = 0
  depths: Sequence[int] = (1, 2, 6, 3)
  channels: Sequence[int] = (256, 512, 1536, 1536)
  stem_chs: int = 128
  group_size: int | None = 64
  bottle_ratio: float = 0.25
  num_features: int = 2304
  se_ratio: float | None = 0.25
  se_divisor: int = 8
  alpha: float = 0.2
  attn_gain: float = 2.0
  ch_div: int = 8
  extra_conv: bool = True
  skipinit: bool = False
  act: str = "silu"
  gamma_in_act: bool = False
  std_conv_eps: float = 1e-5
  same_padding: bool = False
  drop_rate: float = 0.0
  drop_path_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, pre_logits: bool = False) -> jax.Array:
    if x.ndim != 4:
      raise ValueError(f"NFNet expects NHWC images, got shape {x.shape}")
    if self.act not in GAMMAS:
      raise ValueError(f"NFNet act must be one of {tuple(GAMMAS)}, got {self.act!r}")
    if len(self.depths) != len(self.channels):
      raise ValueError(f"NFNet depths {self.depths} and channels {self.channels} differ in length")
    style = NFStyle(self.act, self.gamma_in_act, self.std_conv_eps, self.same_padding)
    x = Stem(make_divisible(self.stem_chs, self.ch_div), style, self.dtype, name="stem")(
        x.astype(self.dtype))
    rates = np.linspace(0.0, self.drop_path_rate, sum(self.depths))
    expected_var, b = 1.0, 0
    for i, (depth, chs) in enumerate(zip(self.depths, self.channels)):
      for j in range(depth):
        x = NFBlock(
            out_chs=make_divisible(chs, self.ch_div), stride=2 if (i > 0 and j == 0) else 1,
            beta=1.0 / expected_var ** 0.5, alpha=self.alpha, group_size=self.group_size,
            bottle_ratio=self.bottle_ratio, ch_div=self.ch_div, extra_conv=self.extra_conv,
            skipinit=self.skipinit, se_ratio=self.se_ratio, se_divisor=self.se_divisor,
            attn_gain=self.attn_gain, drop_path_rate=float(rates[b]), style=style,
            dtype=self.dtype, name=f"stages_{i}_{j}")(x, train)
        if j == 0:
          expected_var = 1.0  # the shortcut of a stage's first block is a fresh conv
        expected_var += self.alpha ** 2
        b += 1
    if self.num_features:
      x = ScaledStdConv(make_divisible(self.num_features, self.ch_div), 1, style=style,
                        dtype=self.dtype, name="final_conv")(x)
    x = style.activate(x)
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    if self.num_classes == 0 or pre_logits:
      return x
    x = nn.Dropout(self.drop_rate, deterministic=not train)(x)
    x = nn.Dense(self.num_classes, kernel_init=nn.initializers.normal(0.01), dtype=self.dtype,
                 name="head_fc")(x.astype(self.dtype))
    return x.astype(jnp.float32)


# Small NFNet of the same code for tests and CPU pipelines (90k parameters, 192-d feature).
NFNET_TINY = dict(depths=(1, 1, 1, 1), channels=(32, 64, 96, 128), stem_chs=16, group_size=8,
                  num_features=192)

NAMINGS = {"timm": {"head_fc": "head.fc"}}


def torch_key(path: tuple[str, ...], naming: str = "timm") -> str | tuple[str, Any]:
  """The timm state-dict key of a jdd NFNet variable (see the module docstring).

  Gains are stored as (O,) in jdd and (O, 1, 1, 1) in timm, so their entry carries a reshape.
  """
  if naming not in NAMINGS:
    raise ValueError(f"NFNet naming must be one of {tuple(NAMINGS)}, got {naming!r}")
  collection, *modules, leaf = path
  if collection == "params" and leaf in ("gain", "skipinit_gain"):
    key = ".".join([module_key(m) for m in modules] + [leaf])
    return (key, lambda v: np.reshape(v, (-1,))) if leaf == "gain" else key
  return default_torch_key(path, NAMINGS[naming])
