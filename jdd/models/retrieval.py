"""The image-text retrieval model of MTT-VL, LoRS and RepBlend, as pure functions of pytrees.

Reference: `CLIPModel_full` in `src/networks.py` of zhangxin-xd/RepBlend and silicx/LoRS_Distill
(shared/research/multimodal_dd_methods.md §3). Two image sides exist:

* trained backbone (MTT-VL, LoRS): the whole image encoder is trained and is the matched image
  trajectory; the image embedding is its raw pooled feature (no image head);
* frozen backbone (RepBlend): the encoder is frozen and an image `ProjectionHead` on its pooled
  feature is trained and matched.

The text side is always a `ProjectionHead` on precomputed, frozen text-encoder embeddings (BERT
[CLS] in the papers). The temperature is fixed (tau = 0.07 by default; never learned).

Trainable parameters are `{'image': ..., 'text': ...}` (the two trajectories that trajectory
matching compares); the frozen backbone's variables are passed separately. With a frozen
backbone, the image input may be the backbone's pooled features instead of pixels, which is
how jdd evaluates, and trains un-augmented experts: the features of un-augmented images are
computed once (`feature_encoder`, run over a split by `jdd.data.pipeline.encode_to_file`)
instead of on every step. The distillation student passes pixels.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jdd.models.heads import ProjectionHead
from jdd.objectives.contrastive import DEFAULT_TEMPERATURE, contrastive_logits


@dataclasses.dataclass(frozen=True)
class RetrievalModel:
  """An image encoder, an optional image head and a text head; see the module docstring.

  Attributes:
    backbone: Flax module mapping NHWC images to pooled features (`pre_logits=True` is passed
      when the module accepts it, e.g. `jdd.models.nfnet.NFNet`).
    feature_dim: the backbone's pooled feature size (2304 for NFNet-L0).
    train_backbone: True for MTT-VL/LoRS (backbone trained, no image head), False for RepBlend.
    embed_dim: the joint space; the text head maps to it. Without an image head it must equal
      `feature_dim` (the references use 2304 for both).
    dropout: the heads' dropout (0.1 in the references, active in train mode).
  """

  backbone: nn.Module
  feature_dim: int
  train_backbone: bool
  embed_dim: int | None = None
  dropout: float = 0.1
  temperature: float = DEFAULT_TEMPERATURE

  def __post_init__(self):
    if self.train_backbone and self.joint_dim != self.feature_dim:
      raise ValueError(
          f"a trained backbone has no image head, so embed_dim ({self.joint_dim}) must equal "
          f"feature_dim ({self.feature_dim})")

  @property
  def joint_dim(self) -> int:
    return int(self.embed_dim or self.feature_dim)

  @property
  def text_head(self) -> ProjectionHead:
    return ProjectionHead(features=self.joint_dim, dropout=self.dropout)

  @property
  def image_head(self) -> ProjectionHead | None:
    if self.train_backbone:
      return None
    return ProjectionHead(features=self.joint_dim, dropout=self.dropout)

  # ------------------------------------------------------------------------------ init
  def init(self, key: jax.Array, backbone_variables: dict, text_dim: int) -> dict:
    """Fresh trainable parameters: random heads, and the given (pretrained) backbone if trained.

    The references start every expert and every evaluation model from the pretrained encoder
    with randomly initialised projection heads.
    """
    k_img, k_txt = jax.random.split(key)
    text = self.text_head.init(k_txt, jnp.zeros((1, text_dim), jnp.float32))["params"]
    if self.train_backbone:
      image = jax.tree.map(jnp.asarray, backbone_variables["params"])
    else:
      image = self.image_head.init(k_img, jnp.zeros((1, self.feature_dim), jnp.float32))["params"]
    return {"image": image, "text": text}

  # --------------------------------------------------------------------------- forward
  def _backbone(self, variables: dict, images: jax.Array, train: bool, rng) -> jax.Array:
    rngs = {"dropout": rng} if (train and rng is not None) else None
    kwargs = {"pre_logits": True} if _accepts_pre_logits(self.backbone) else {}
    out = self.backbone.apply(variables, images, train=train, rngs=rngs, **kwargs)
    return out.astype(jnp.float32)

  def image_embed(self, params: dict, frozen: dict | None, inputs: jax.Array, *,
                  features: bool, train: bool = False, rng: jax.Array | None = None,
                  blend=None) -> jax.Array:
    """Image embeddings (unnormalised) from pixels or, with a frozen backbone, its features.

    `blend(feats) -> feats` (RepBlend's representation blending) is applied to the backbone
    feature before the image head.
    """
    k_backbone, k_head = (jax.random.split(rng) if rng is not None else (None, None))
    if features:
      if self.train_backbone:
        raise ValueError("a trained backbone needs pixels, not precomputed features")
      feats = inputs.astype(jnp.float32)
    elif self.train_backbone:
      feats = self._backbone({"params": params["image"]}, inputs, train, k_backbone)
    else:
      if frozen is None:
        raise ValueError("a frozen backbone needs its variables (`frozen`)")
      # Frozen: eval mode always, as the references keep the encoder in eval.
      feats = self._backbone(frozen, inputs, False, None)
    if blend is not None:
      feats = blend(feats)
    if self.train_backbone:
      return feats
    rngs = {"dropout": k_head} if (train and k_head is not None) else None
    return self.image_head.apply({"params": params["image"]}, feats, train=train, rngs=rngs)

  def text_embed(self, params: dict, texts: jax.Array, *, train: bool = False,
                 rng: jax.Array | None = None, blend=None) -> jax.Array:
    texts = texts.astype(jnp.float32)
    if blend is not None:
      texts = blend(texts)
    rngs = {"dropout": rng} if (train and rng is not None) else None
    return self.text_head.apply({"params": params["text"]}, texts, train=train, rngs=rngs)

  def logits(self, params: dict, frozen: dict | None, inputs: jax.Array, texts: jax.Array, *,
             features: bool, train: bool = False, rng: jax.Array | None = None,
             temperature: float | None = None, blend_image=None, blend_text=None) -> jax.Array:
    """(batch, batch) scaled cosine similarities, images x texts."""
    k_i, k_t = (jax.random.split(rng) if rng is not None else (None, None))
    u = self.image_embed(params, frozen, inputs, features=features, train=train, rng=k_i,
                         blend=blend_image)
    v = self.text_embed(params, texts, train=train, rng=k_t, blend=blend_text)
    return contrastive_logits(u, v, self.temperature if temperature is None else temperature)


def _accepts_pre_logits(module: nn.Module) -> bool:
  import inspect
  try:
    return "pre_logits" in inspect.signature(type(module).__call__).parameters
  except (TypeError, ValueError):
    return False


def encode_features(model: RetrievalModel, backbone_variables: dict, images: np.ndarray,
                    batch_size: int = 256, mean=None, std=None) -> np.ndarray:
  """Frozen-backbone pooled features of (N, H, W, C) images (uint8 or float), batched.

  uint8 images are scaled to [0, 1] and normalised with `mean`/`std` when given. The last batch
  is padded to the full batch size so the forward compiles once.
  """
  apply = _feature_fn(model)
  n = len(images)
  out = None
  for s in range(0, n, batch_size):
    x = np.asarray(images[s:s + batch_size])
    rows = len(x)
    x = normalize_images(x, mean, std)
    if rows < batch_size and n > batch_size:
      x = np.concatenate([x, np.repeat(x[-1:], batch_size - rows, 0)])
    f = np.asarray(apply(backbone_variables, jnp.asarray(x)))[:rows]
    if out is None:
      out = np.empty((n, f.shape[-1]), np.float32)
    out[s:s + rows] = f
  return out if out is not None else np.zeros((0, model.feature_dim), np.float32)


def feature_encoder(model: RetrievalModel, backbone_variables: dict):
  """x (normalised NHWC pixels) -> the frozen backbone's pooled features, jitted once per model
  (what `jdd.data.pipeline.encode_to_file` runs over a split)."""
  apply = _feature_fn(model)
  return lambda x: apply(backbone_variables, jnp.asarray(x))


_FEATURE_FNS: dict[int, Any] = {}


def _feature_fn(model: RetrievalModel):
  """One jitted backbone forward per model object, so every split reuses its compilation."""
  fn = _FEATURE_FNS.get(id(model))
  if fn is None or fn[0] is not model:
    fn = (model, jax.jit(lambda v, x: model._backbone(v, x, False, None)))
    _FEATURE_FNS[id(model)] = fn
  return fn[1]


def normalize_images(x: np.ndarray, mean=None, std=None) -> np.ndarray:
  """uint8 or [0, 1] float NHWC -> float32 normalised with per-channel mean/std (if given)."""
  x = np.asarray(x)
  x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
  if mean is not None:
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
  return x


def param_count(tree: Any) -> int:
  return int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(tree)))
