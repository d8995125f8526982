"""Command line: a Hugging Face BERT checkpoint -> a jdd BERT folder (Orbax + card.json).

    python -m third_party.convert_hf_bert --model ~/hf/bert-base-uncased --out weights/bert-base

`--model` is a HF folder (config.json plus model.safetensors, a sharded
model.safetensors.index.json, or pytorch_model.bin) or one weights file inside such a folder.
Safetensors are read with `safetensors.numpy`; torch is imported only for a `.bin`, and then
with `torch.load(weights_only=True)`. The folder written is what `jdd.models.bert.load_bert`
and `jdd.text_features.TextEncoder` read:

    OUT/variables     Orbax StandardCheckpointer of {'params': ...}
    OUT/config.json   the HF config, copied
    OUT/<tokenizer files and sentence-transformers metadata>, copied unchanged
    OUT/card.json     {arch: 'bert', config, add_pooler, source: {file, sha256, format, prefix,
                       dropped_heads, ignored_buffers, dropped_pooler}, files: {name: sha256}}
                      written last, so its presence marks a complete folder

Reference layout: transformers' `BertModel` state dict (bert-base-uncased is saved from
`BertForPreTraining`, so its keys carry a `bert.` prefix, TF-era `LayerNorm.gamma/beta` names
and the `cls.*` pretraining heads: the prefix and names are normalised and the heads dropped and
listed in the card, see `jdd.models.bert.prepare_hf_state_dict`). The conversion itself is the
strict generic one (`third_party.torch_to_flax.convert_state_dict`): a checkpoint that does not
fit config.json (other layer count, hidden size, vocabulary) exits with status 2 and the list of
missing, unexpected and mis-shaped keys, and nothing is written.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Sequence

import numpy as np

from third_party.torch_to_flax import CheckpointMismatchError, convert_state_dict, \
    unwrap_state_dict

POOLER_CHOICES = {"auto": "auto", "yes": True, "no": False}


def find_weights(model: str) -> tuple[str, str]:
  """(folder, weights file) for a folder or a file; prefers safetensors over torch pickles."""
  if os.path.isfile(model):
    return os.path.dirname(os.path.abspath(model)), os.path.abspath(model)
  if not os.path.isdir(model):
    raise FileNotFoundError(f"--model {model!r} is neither a folder nor a file")
  for name in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"):
    path = os.path.join(model, name)
    if os.path.exists(path):
      return os.path.abspath(model), path
  raise FileNotFoundError(f"{model} holds no model.safetensors, model.safetensors.index.json or "
                          f"pytorch_model.bin (files: {sorted(os.listdir(model))[:10]})")


def read_state_dict(path: str) -> tuple[dict[str, np.ndarray], str]:
  """(numpy state dict, format) of a weights file."""
  from jdd.models.bert import read_safetensors
  if path.endswith(".safetensors"):
    return read_safetensors(path), "safetensors"
  if path.endswith(".index.json"):
    return read_safetensors(path), "safetensors-sharded"
  import torch
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # torch explains what it refused
    raise ValueError(f"torch.load(weights_only=True) refused {path}: "
                     f"{str(e).splitlines()[0]}") from e
  return unwrap_state_dict(obj), "torch"


def convert(folder: str, weights: str, add_pooler: bool | str = "auto"):
  """(numpy {'params'}, BertConfig, add_pooler, source info) for a HF BERT checkpoint; strict."""
  from jdd.models import bert
  config_path = os.path.join(folder, "config.json")
  if not os.path.exists(config_path):
    raise FileNotFoundError(f"{folder} has no config.json next to the weights")
  config = bert.BertConfig.from_json(config_path)
  raw, fmt = read_state_dict(weights)
  state_dict, info = bert.prepare_hf_state_dict(raw)
  state_dict, pooler = bert.select_pooler(state_dict, info, add_pooler)
  template = bert.param_template(config, pooler)
  params = convert_state_dict(template, state_dict, bert.torch_key, arch="bert")
  source = {"file": os.path.basename(weights), "sha256": bert.weights_sha256(weights),
            "format": fmt, **info}
  return params, config, pooler, source


def copy_side_files(folder: str, out: str) -> dict[str, str]:
  """Tokenizer files and sentence-transformers metadata, copied; {relative name: sha256}."""
  from jdd.models.bert import sha256_file
  from jdd.text_features import SENTENCE_TRANSFORMERS_FILES, TOKENIZER_FILES
  names = ["config.json", *TOKENIZER_FILES, *SENTENCE_TRANSFORMERS_FILES]
  modules = os.path.join(folder, "modules.json")
  if os.path.exists(modules):  # e.g. 1_Pooling/config.json
    with open(modules) as f:
      names += [os.path.join(m["path"], "config.json") for m in json.load(f) if m.get("path")]
  copied = {}
  for name in names:
    src = os.path.join(folder, name)
    if os.path.isfile(src):
      dst = os.path.join(out, name)
      os.makedirs(os.path.dirname(dst), exist_ok=True)
      shutil.copyfile(src, dst)
      copied[name] = sha256_file(dst)
  return copied


def write_folder(out: str, params, config, pooler: bool, source: dict, folder: str,
                 force: bool = False) -> None:
  import orbax.checkpoint as ocp
  from jdd import checkpoint
  card_path = os.path.join(out, "card.json")
  if os.path.exists(card_path) and not force:
    raise FileExistsError(f"{out} already holds a converted model (card.json); pass --force")
  os.makedirs(out, exist_ok=True)
  if os.path.exists(card_path):
    os.remove(card_path)
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(os.path.abspath(os.path.join(out, "variables")), params, force=True)
  ckptr.wait_until_finished()
  files = copy_side_files(folder, out)
  card = {"arch": "bert", "config": config.to_dict(), "add_pooler": pooler, "source": source,
          "files": files}
  checkpoint.atomic_write_json(card_path, card)


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m third_party.convert_hf_bert",
      description="Convert a Hugging Face BERT checkpoint into a jdd BERT folder.")
  p.add_argument("--model", required=True,
                 help="HF folder (config.json + weights + tokenizer files) or a weights file")
  p.add_argument("--out", required=True, help="output folder")
  p.add_argument("--pooler", choices=sorted(POOLER_CHOICES), default="auto",
                 help="build the pooler: auto = when the checkpoint has one")
  p.add_argument("--force", action="store_true", help="replace an existing folder's contents")
  return p


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  try:
    folder, weights = find_weights(args.model)
    params, config, pooler, source = convert(folder, weights, POOLER_CHOICES[args.pooler])
    write_folder(args.out, params, config, pooler, source, folder, force=args.force)
  except (CheckpointMismatchError, ValueError, FileNotFoundError, FileExistsError,
          json.JSONDecodeError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  n = sum(int(np.prod(np.shape(v))) for v in _leaves(params))
  print(f"converted {weights} ({source['format']}, {n:,} values, {config.num_hidden_layers} "
        f"layers x {config.hidden_size}, pooler {'yes' if pooler else 'no'}, "
        f"sha256 {source['sha256'][:12]}) -> {args.out}"
        + (f"; dropped heads: {len(source['dropped_heads'])} keys" if source["dropped_heads"]
           else ""))
  return 0


def _leaves(tree):
  if isinstance(tree, dict):
    for v in tree.values():
      yield from _leaves(v)
  else:
    yield tree


if __name__ == "__main__":
  sys.exit(main())
