"""EDGE through the driver on its 'sd' backend: converted SD parts and a CLIP BPE tokenizer.

No Stable Diffusion weights exist offline, so the `edge.sd_path` folder is made here the way a
user makes it: tiny random diffusers / transformers models (tests/diffusers_fixtures.py) saved in
their libraries' layouts and converted by `third_party/convert_diffusers.py`. `edge.tokenizer_path`
gets a tiny but real CLIP BPE tokenizer in openai's vocab.json / merges.txt layout: the 256
byte-level characters, the same with the end-of-word suffix '</w>', a few merges, then
<|startoftext|> and <|endoftext|>, so EOS (also the padding) is the largest id, where SD's text
encoder (eos_token_id = 2, the legacy value: pool at the argmax id) takes its pooled state. Both
text towers (SD's text encoder and the loss CLIP's) read those ids: their vocab is the
tokenizer's and they have the 77 positions the pipeline pads to.

The run is the shapes smoke (tests/test_edge_pipeline.py) on backend 'sd' at 16 px, so the
VAE's (f = 2) latents are the tiny U-Net's 8 x 8: fine-tuning of the DiffFit leaves, PNDM
sampling of the pairs, export and the retrieval evaluation, then a rerun that resumes. Those
tests are marked slow like the offline smoke's: the run takes about 95 s (105 CPU-seconds) on 2
CPU cores, half of it the backend-independent MiniLM captions and encoder pretraining, the rest
mostly compiling the fine-tuning step, the sampler and the evaluator. The tokenizer and
text-tower test needs no run and stays in the default suite (about 10 s).
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import jax  # noqa: E402

from tests.diffusers_fixtures import TEXT_KW, convert, write_tiny_sd  # noqa: E402
from jdd import checkpoint  # noqa: E402
from jdd.stages import edge_backends, image_text  # noqa: E402
from jdd import run as run_lib  # noqa: E402
from jdd.config import load_config, override  # noqa: E402
from jdd.data.captions import read_train_annotations  # noqa: E402
from jdd.evaluation import retrieval  # noqa: E402
from jdd.methods import edge  # noqa: E402
from jdd.models.diffusion import load_components  # noqa: E402
from tests.test_edge_pipeline import check_smoke_results  # noqa: E402
from transformers.convert_slow_tokenizer import bytes_to_unicode  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 16              # px: fine-tuning and sampling; the VAE's f = 2 gives the U-Net's 8 x 8
MERGES = [("i", "r"), ("c", "ir"), ("cir", "c"), ("l", "e</w>"), ("circ", "le</w>"), ("r", "e"),
          ("re", "d</w>"), ("a", "n"), ("an", "d</w>")]


def write_tokenizer(folder) -> dict[str, int]:
  """vocab.json and merges.txt built as openai's simple_tokenizer builds its vocabulary."""
  chars = list(bytes_to_unicode().values())   # byte-level BPE's printable byte table
  tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in MERGES] + [
      "<|startoftext|>", "<|endoftext|>"]
  vocab = {t: i for i, t in enumerate(tokens)}
  assert len(vocab) == len(tokens)
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, "vocab.json"), "w") as f:
    json.dump(vocab, f)
  with open(os.path.join(folder, "merges.txt"), "w") as f:
    f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in MERGES))
  return vocab


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
  """{'sd': converted folder, 'tokenizer': its tokenizer/ folder, 'vocab': the vocab}."""
  root = tmp_path_factory.mktemp("sd15")
  sd, tok = root / "sd15", root / "sd15" / "tokenizer"
  vocab = write_tokenizer(str(tok))
  text_kw = {**TEXT_KW, "vocab_size": len(vocab), "max_position_embeddings": 77}
  made = write_tiny_sd(root / "torch", text_kw=text_kw)
  convert(made["pipe"], made["clip_dir"], sd)
  return {"sd": str(sd), "tokenizer": str(tok), "vocab": vocab}


def sd_config(sd_folder, data_root, **extra):
  c = load_config(os.path.join(ROOT, "configs/edge_shapes.py:smoke"))
  return override(c, **{"dataset.root": str(data_root), "edge.backend": "sd",
                        "edge.sd_path": sd_folder["sd"],
                        "edge.tokenizer_path": sd_folder["tokenizer"],
                        "edge.finetune_size": SIZE, "edge.sampler.size": SIZE, **extra})


@pytest.fixture(scope="module")
def sd_run(sd_folder, tmp_path_factory):
  base = tmp_path_factory.mktemp("edge_sd")
  work = str(base / "w")
  results = run_lib.run(sd_config(sd_folder, base / "data"), work)
  return base, work, results


def test_tokenizer_and_text_towers_agree(sd_folder, tmp_path):
  """sd_setup's tokenizer is the one in the files, and both text towers pool at its EOS."""
  config = sd_config(sd_folder, tmp_path / "data")
  setup = edge_backends.sd_setup(config)
  v = sd_folder["vocab"]
  bos, eos = v["<|startoftext|>"], v["<|endoftext|>"]
  ids, mask = setup.tokenize(["a red circle", ""])
  assert ids.shape == mask.shape == (2, 77) and ids.dtype == np.int32
  word = [v["a</w>"], v["red</w>"], v["circle</w>"]]        # the merges applied
  np.testing.assert_array_equal(ids[0], [bos, *word] + [eos] * 73)   # EOS pads, as SD's
  np.testing.assert_array_equal(mask[0], [1] * 5 + [0] * 72)
  np.testing.assert_array_equal(ids[1, :2], [bos, eos])              # the unconditional prompt
  assert eos == len(v) - 1                                           # the largest id

  data = image_text.load_data(config)
  captions = list(data.train.captions)
  ids, mask = setup.tokenize(captions)
  text_cfg = setup.models.text_encoder.config.text
  clip_cfg = setup.models.clip.config.text
  assert text_cfg.eos_token_id == clip_cfg.eos_token_id == 2         # legacy: pool at argmax
  assert ids.max() == eos < min(text_cfg.vocab_size, clip_cfg.vocab_size)
  assert ids.shape[1] <= min(text_cfg.max_position_embeddings, clip_cfg.max_position_embeddings)
  length = mask.sum(1)
  first_eos = np.argmax(ids == eos, axis=1)
  np.testing.assert_array_equal(first_eos, length - 1)   # no unknown (= EOS) token inside
  np.testing.assert_array_equal(ids[:, 0], bos)
  assert len({tuple(r) for r in ids}) == len(set(captions))  # distinct captions, distinct ids

  # Each tower's pooled state is its final hidden state at that EOS.
  inner = lambda mdl, i, k: mdl.text_model(i, k)      # (final hidden states, pooled)
  for name, with_mask in (("text_encoder", False), ("clip", True)):   # as the losses call them
    model, variables = getattr(setup.models, name), setup.frozen[name]
    hidden, pooled = jax.jit(lambda v, i, k: model.apply(v, i, k, method=inner))(
        variables, ids, mask if with_mask else None)
    hidden, pooled = np.asarray(hidden), np.asarray(pooled)
    assert hidden.shape == (len(captions), 77, TEXT_KW["hidden_size"]), name
    np.testing.assert_array_equal(pooled, hidden[np.arange(len(ids)), first_eos], err_msg=name)
  assert setup.scaling_factor == pytest.approx(0.18215)       # diffusers' default, from the card


@pytest.mark.slow
def test_sd_end_to_end_results(sd_run, sd_folder):
  _, work, results = sd_run
  on_disk = check_smoke_results(work, "sd")
  assert on_disk["edge"]["setup"] == {"sd_path": sd_folder["sd"]}
  assert on_disk["distilled_edge"]["pairs_budget"] == 6
  assert results["distilled_edge"]["summary"] == on_disk["distilled_edge"]["summary"]
  # Nothing is pretrained on this backend: the converted U-Net is fine-tuned directly.
  assert os.path.isdir(os.path.join(work, "checkpoints", "edge_finetune"))
  for stage in ("edge_vae", "edge_unet"):
    assert not os.path.exists(os.path.join(work, "checkpoints", stage))


@pytest.mark.slow
def test_sd_export(sd_run):
  _, work, _ = sd_run
  edir = os.path.join(work, "export")
  manifest = json.load(open(os.path.join(edir, "manifest.json")))
  assert manifest["num_pairs"] == 6 and manifest["scaling_factor"] == pytest.approx(0.18215)
  assert (manifest["sampler"]["height"], manifest["sampler"]["width"]) == (SIZE, SIZE)
  assert (manifest["sampler"]["scheduler"], manifest["sampler"]["steps"]) == ("pndm", 3)
  pairs = read_train_annotations(os.path.join(edir, manifest["annotation"]), 30)
  assert len(pairs) == 6 and pairs.num_images == 6
  assert list(pairs.captions) == manifest["prompts"]          # k = 1: the prompt captions
  for rel, entry in manifest["files"].items():
    blob = open(os.path.join(edir, rel), "rb").read()
    assert len(blob) == entry["bytes"] and hashlib.sha256(blob).hexdigest() == entry["sha256"]
  from PIL import Image
  images = [np.asarray(Image.open(os.path.join(edir, p))) for p in pairs.image_paths]
  assert all(im.shape == (SIZE, SIZE, 3) and im.dtype == np.uint8 for im in images)
  assert all(im.std() > 0 for im in images)
  assert len({im.tobytes() for im in images}) == 6             # one sample per query
  np.testing.assert_array_equal(manifest["query_caption_ids"],
                                edge.draw_queries(40 * 5, 6, manifest["seed"]))
  assert os.path.exists(os.path.join(edir, "grid.png"))


@pytest.mark.slow
def test_finetune_changes_only_difffit_leaves(sd_run, sd_folder):
  """The fine-tuned U-Net in the workdir differs from the converted one exactly where the
  DiffFit mask trains (biases and norms), and there in many leaves."""
  _, work, _ = sd_run
  converted = load_components(sd_folder["sd"], ("unet",))["unet"].variables
  template = edge.init(jax.tree.map(np.asarray, converted), edge.EdgeHparams())
  ckpt = checkpoint.StageCheckpointer(work, "edge_finetune")
  try:
    state, step = ckpt.restore_or(template)
  finally:
    ckpt.close()
  assert step == 3 and int(state.step) == 3
  labels = edge.trainable_labels(converted)
  flat = lambda t: dict(jax.tree_util.tree_flatten_with_path(t)[0])
  before, after, lab = flat(converted), flat(state.unet), flat(labels)
  assert before.keys() == after.keys() == lab.keys()
  changed = {p for p in before if not np.array_equal(before[p], np.asarray(after[p]))}
  trainable = {p for p, label in lab.items() if label == "train"}
  assert changed <= trainable                       # every frozen leaf is bit for bit the same
  assert len(changed) >= len(trainable) // 2, (len(changed), len(trainable))
  # Independently of the mask: only biases and norm scales moved (tests/test_edge.py's rule).
  names = [tuple(getattr(k, "key", str(k)) for k in p) for p in changed]
  assert all(n[-1] == "bias" or (n[-1] == "scale" and "norm" in n[-2]) for n in names)
  assert any(n[-1] == "scale" for n in names) and any(n[-1] == "bias" for n in names)


@pytest.mark.slow
def test_rerun_resumes_without_recomputation(sd_run, sd_folder, monkeypatch):
  base, work, results = sd_run
  edir = os.path.join(work, "export")
  manifest = json.load(open(os.path.join(edir, "manifest.json")))
  files = {rel: open(os.path.join(edir, rel), "rb").read()
           for rel in [*manifest["files"], "manifest.json", "grid.png"]}

  def fail(*a, **k):
    raise AssertionError("recomputed on resume")
  monkeypatch.setattr(edge, "train_step", fail)      # fine-tuning: restored at its last step
  monkeypatch.setattr(edge, "sample_pairs", fail)    # sampling: the manifest marks it done
  monkeypatch.setattr(retrieval, "train_and_score", fail)  # evaluation: W/eval/ holds each seed
  again = run_lib.run(sd_config(sd_folder, base / "data"), work)
  for name in ("distilled_edge", "random_6"):
    assert again[name]["summary"] == results[name]["summary"]
    assert again[name]["per_seed"] == results[name]["per_seed"]
  for rel, blob in files.items():
    assert open(os.path.join(edir, rel), "rb").read() == blob
