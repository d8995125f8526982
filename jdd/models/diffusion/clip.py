"""jdd's CLIP text and vision towers with projections (Flax linen), for SD's text encoder and
EDGE's CLIP ViT-B/32 losses.

Reference: Hugging Face transformers' `CLIPTextModel` / `CLIPTextModelWithProjection` /
`CLIPVisionModelWithProjection` / `CLIPModel` (read in transformers 5.23). Facts carried over:
pre-LayerNorm transformer layers (x + attn(ln1(x)), then x + mlp(ln2(x))) with biased q/k/v/out
projections, the query scaled by head_dim**-0.5, `quick_gelu` (x * sigmoid(1.702 x)) in the MLP.
Text: token + learned absolute position embeddings, a causal mask (combined with the padding
mask when one is given), `final_layer_norm` on every position; the pooled state is taken at the
EOS token: the position of the largest id when the config's eos_token_id is the legacy 2 (the
openai checkpoints and SD's text encoder), else the first position holding eos_token_id.
Vision: a bias-free patch conv (stride = patch), a learned class embedding prepended, position
embeddings, `pre_layrnorm` (sic), the encoder, `post_layernorm` on the class token. Features are
the bias-free `text_projection` / `visual_projection` of the pooled states.

Deliberate differences: images are NHWC; no position-embedding interpolation for other image
sizes (a wrong size is an error, as in transformers without `interpolate_pos_encoding`); no
dropout (CLIP uses p = 0). Parameter paths follow the `CLIPModel` state dict ('text_model.',
'vision_model.', 'text_projection', 'visual_projection', 'logit_scale'); transformers 5's bare
`CLIPTextModel` saves its keys without the 'text_model.' prefix, which
`third_party/convert_diffusers.py` adds back.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jdd.models.diffusion.layers import layer_norm
from jdd.models.torch_names import default_torch_key

ACTIVATIONS = {"quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
               "gelu": lambda x: jax.nn.gelu(x, approximate=False)}
# CLIP image normalisation (openai), applied by the processor outside the network.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclasses.dataclass(frozen=True)
class TowerConfig:
  """One tower of a transformers CLIP config (defaults: ViT-B/32's text tower)."""

  hidden_size: int = 512
  intermediate_size: int = 2048
  num_hidden_layers: int = 12
  num_attention_heads: int = 8
  hidden_act: str = "quick_gelu"
  layer_norm_eps: float = 1e-5
  # text only
  vocab_size: int = 49408
  max_position_embeddings: int = 77
  eos_token_id: int = 2
  # vision only
  image_size: int = 224
  patch_size: int = 32
  num_channels: int = 3

  def __post_init__(self):
    if self.hidden_act not in ACTIVATIONS:
      raise ValueError(f"hidden_act {self.hidden_act!r} not supported ({sorted(ACTIVATIONS)})")
    if self.hidden_size % self.num_attention_heads:
      raise ValueError("hidden_size must be a multiple of num_attention_heads")

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "TowerConfig":
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names and v is not None})


VIT_B32_VISION = TowerConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12)


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
  """Which towers exist and the projection width (0: no projection, e.g. SD's text encoder)."""

  text: TowerConfig | None = TowerConfig()
  vision: TowerConfig | None = VIT_B32_VISION
  projection_dim: int = 512
  logit_scale: bool = False  # CLIPModel checkpoints carry one (unused by jdd's losses)

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "CLIPConfig":
    """From a transformers config.json: CLIPModel (text_config + vision_config), or a single
    CLIPTextModel[WithProjection] / CLIPVisionModelWithProjection config."""
    kind = d.get("model_type", "clip")
    arch = (d.get("architectures") or [""])[0]
    if kind == "clip":
      return cls(TowerConfig.from_dict(d.get("text_config", {})),
                 TowerConfig.from_dict(d.get("vision_config", {})),
                 d.get("projection_dim", 512), logit_scale=True)
    proj = d.get("projection_dim", 512) if arch.endswith("WithProjection") else 0
    if kind == "clip_text_model":
      return cls(TowerConfig.from_dict(d), None, proj)
    if kind == "clip_vision_model":
      return cls(None, TowerConfig.from_dict(d), proj)
    raise ValueError(f"config.json model_type {kind!r} is not a CLIP model")

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


class CLIPAttention(nn.Module):
  config: TowerConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask):
    c = self.config
    heads, d = c.num_attention_heads, c.hidden_size // c.num_attention_heads
    dense = lambda name: nn.Dense(c.hidden_size, dtype=self.dtype, name=name)
    split = lambda t: t.reshape(t.shape[:2] + (heads, d)).astype(jnp.float32)
    q, k, v = (split(dense(n)(x)) for n in ("q_proj", "k_proj", "v_proj"))
    scores = jnp.einsum("bqhd,bkhd->bhqk", q * (d ** -0.5), k)
    if mask is not None:
      scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    out = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v)
    return dense("out_proj")(out.reshape(x.shape).astype(self.dtype))


class CLIPMLP(nn.Module):
  config: TowerConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = self.config
    x = ACTIVATIONS[c.hidden_act](nn.Dense(c.intermediate_size, dtype=self.dtype, name="fc1")(x))
    return nn.Dense(c.hidden_size, dtype=self.dtype, name="fc2")(x)


class CLIPEncoderLayer(nn.Module):
  config: TowerConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask):
    c = self.config
    x = x + CLIPAttention(c, self.dtype, name="self_attn")(
        layer_norm(c.layer_norm_eps, "layer_norm1", self.dtype)(x), mask)
    return x + CLIPMLP(c, self.dtype, name="mlp")(
        layer_norm(c.layer_norm_eps, "layer_norm2", self.dtype)(x))


class CLIPEncoder(nn.Module):
  config: TowerConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask):
    for i in range(self.config.num_hidden_layers):
      x = CLIPEncoderLayer(self.config, self.dtype, name=f"layers_{i}")(x, mask)
    return x


class CLIPTextEmbeddings(nn.Module):
  config: TowerConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, ids):
    c = self.config
    if ids.shape[1] > c.max_position_embeddings:
      raise ValueError(f"sequence length {ids.shape[1]} > {c.max_position_embeddings}")
    tok = nn.Embed(c.vocab_size, c.hidden_size, dtype=self.dtype, name="token_embedding")(ids)
    pos = nn.Embed(c.max_position_embeddings, c.hidden_size, dtype=self.dtype,
                   name="position_embedding")(jnp.arange(ids.shape[1])[None])
    return tok + pos


class CLIPTextTransformer(nn.Module):
  """(last hidden states after final_layer_norm, pooled EOS states)."""

  config: TowerConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, ids, attention_mask=None):
    c = self.config
    length = ids.shape[1]
    mask = jnp.tril(jnp.ones((length, length), bool))[None, None]
    if attention_mask is not None:
      mask = mask & attention_mask.astype(bool)[:, None, None, :]
    x = CLIPTextEmbeddings(c, self.dtype, name="embeddings")(ids)
    x = CLIPEncoder(c, self.dtype, name="encoder")(x, mask)
    x = layer_norm(c.layer_norm_eps, "final_layer_norm", self.dtype)(x)
    if c.eos_token_id == 2:
      eos = jnp.argmax(ids, axis=-1)
    else:
      eos = jnp.argmax((ids == c.eos_token_id).astype(jnp.int32), axis=-1)
    pooled = jnp.take_along_axis(x, eos[:, None, None], axis=1)[:, 0]
    return x.astype(jnp.float32), pooled.astype(jnp.float32)


class CLIPVisionEmbeddings(nn.Module):
  config: TowerConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, pixels):
    c = self.config
    if pixels.shape[1] != c.image_size or pixels.shape[2] != c.image_size:
      raise ValueError(f"image size {pixels.shape[1:3]} != model image_size {c.image_size}")
    p = c.patch_size
    patches = nn.Conv(c.hidden_size, (p, p), strides=(p, p), padding="VALID", use_bias=False,
                      dtype=self.dtype, name="patch_embedding")(pixels.astype(self.dtype))
    b = patches.shape[0]
    patches = patches.reshape(b, -1, c.hidden_size)
    cls = self.param("class_embedding", nn.initializers.normal(1.0), (c.hidden_size,))
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(self.dtype), (b, 1, c.hidden_size)),
                         patches], axis=1)
    pos = nn.Embed(x.shape[1], c.hidden_size, dtype=self.dtype, name="position_embedding")
    return x + pos(jnp.arange(x.shape[1])[None])


class CLIPVisionTransformer(nn.Module):
  """(last hidden states, post_layernorm(class token))."""

  config: TowerConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, pixels):
    c = self.config
    x = CLIPVisionEmbeddings(c, self.dtype, name="embeddings")(pixels)
    x = layer_norm(c.layer_norm_eps, "pre_layrnorm", self.dtype)(x)
    x = CLIPEncoder(c, self.dtype, name="encoder")(x, None)
    pooled = layer_norm(c.layer_norm_eps, "post_layernorm", self.dtype)(x[:, 0])
    return x.astype(jnp.float32), pooled.astype(jnp.float32)


class CLIP(nn.Module):
  """The towers and projections of `config`. Methods (call via `apply(..., method=...)`):

  `text_hidden(ids, mask)` -> (B, L, D) last hidden states (SD's conditioning);
  `text_features(ids, mask)` -> (B, projection_dim) (the pooled state if projection_dim == 0);
  `image_features(pixels NHWC, CLIP-normalised)` -> (B, projection_dim).
  """

  config: CLIPConfig
  dtype: Any = jnp.float32

  def setup(self):
    c = self.config
    if c.text is not None:
      self.text_model = CLIPTextTransformer(c.text, self.dtype)
      if c.projection_dim:
        self.text_projection = nn.Dense(c.projection_dim, use_bias=False, dtype=self.dtype)
    if c.vision is not None:
      self.vision_model = CLIPVisionTransformer(c.vision, self.dtype)
      if c.projection_dim:
        self.visual_projection = nn.Dense(c.projection_dim, use_bias=False, dtype=self.dtype)
    if c.logit_scale:
      self.logit_scale = self.param("logit_scale", nn.initializers.constant(np.log(1 / 0.07)),
                                    ())

  def text_hidden(self, ids, attention_mask=None):
    return self.text_model(ids, attention_mask)[0]

  def text_features(self, ids, attention_mask=None):
    pooled = self.text_model(ids, attention_mask)[1]
    if not self.config.projection_dim:
      return pooled
    return self.text_projection(pooled.astype(self.dtype)).astype(jnp.float32)

  def image_features(self, pixels):
    pooled = self.vision_model(pixels)[1]
    if not self.config.projection_dim:
      return pooled
    return self.visual_projection(pooled.astype(self.dtype)).astype(jnp.float32)

  def __call__(self, ids=None, pixels=None):
    """Init helper: runs every tower that exists."""
    out = []
    if self.config.text is not None:
      out.append(self.text_features(ids))
    if self.config.vision is not None:
      out.append(self.image_features(pixels))
    if self.config.logit_scale:
      out.append(self.logit_scale)
    return out


def init_params(config: CLIPConfig, rng: jax.Array):
  ids = jnp.zeros((1, 2), jnp.int32)
  v = config.vision
  pixels = None if v is None else jnp.zeros((1, v.image_size, v.image_size, v.num_channels))
  return CLIP(config).init(rng, ids, pixels)


def param_template(config: CLIPConfig):
  return jax.eval_shape(lambda: init_params(config, jax.random.key(0)))


def torch_key(path: tuple[str, ...]) -> str:
  """transformers `CLIPModel`-layout key of a jdd variable path (raw parameters kept as named)."""
  if path[-1] in ("class_embedding", "logit_scale"):
    return ".".join(path[1:])
  return default_torch_key(path)


def normalize_images(images01: jax.Array) -> jax.Array:
  """[0, 1] NHWC images -> CLIP's normalised input (the processor's mean/std step)."""
  return (images01 - jnp.asarray(CLIP_MEAN)) / jnp.asarray(CLIP_STD)
