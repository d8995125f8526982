"""EDGE end to end: fine-tune a text-to-image diffusion model, sample pairs, evaluate them.

Reference: EDGE (NeurIPS 2025, arXiv 2509.15472), `ichbill/EDGE` at bb18c46: fine-tune SD-1.5
(`edge_diffusion_train.py`), sample one image per real training caption
(`edge_diffusion_sampling.py`), optionally add captions (`caption_synthesis_*.py`), convert to
the caption JSON (`convert_results_to_coco.py`) and score with LoRS's retrieval evaluation
(shared/research/edge_method.md §1). The losses and the sampler are `jdd.methods.edge`.

Stages, each skipped or resumed from what the workdir holds:

    data       caption JSON + images (jdd.image_text.load_data)
    text       frozen text-encoder embeddings of every caption   -> W/text_cache/
    encoder    the retrieval evaluator's image encoder (converted, or pretrained offline with
               its text head: that pair is the offline loss CLIP) -> W/encoder/
    pretrain   offline backend only: a small VAE, then a small text-conditioned U-Net, from
               scratch, DDPM noise loss            -> W/checkpoints/edge_vae, edge_unet
    finetune   EDGE's losses on the DiffFit subset -> W/checkpoints/edge_finetune
    sample     pairs from seeded real training captions, caption synthesis, export
                                                   -> W/export/{images/, annotations/, grid.png,
                                                      manifest.json (written last)}
    evaluate   the trajectory methods' retrieval evaluator on the exported pairs and on the same
               random subset                        -> W/eval/, W/results.json

Backends (`config.edge.backend`):

* 'sd': converted SD-1.5 U-Net / VAE / CLIP-L text encoder and the CLIP ViT-B/32 loss model
  (`third_party/convert_diffusers.py` folder) plus the CLIP BPE tokenizer files; the reference.
* 'offline': jdd's own small models. The U-Net cross-attends to ONE token, the frozen offline
  text encoder's pooled caption embedding (MiniLM, 384-d; jdd's text encoders expose pooled
  embeddings, and a 5-word shapes caption loses little). The loss CLIP is the image encoder the
  image-text driver pretrains contrastively against the same embeddings, with its text head.
  The unconditional context is the zero vector, trained by dropping 10 % of the captions.
  Both frozen text towers are lookup tables of embeddings computed once: the same function of
  the caption as running the encoder inside the step, since neither is trained.

Deliberate differences beyond jdd.methods.edge's: the VAE input range is a config field
('signed' [-1, 1], what SD's VAE was trained on, by default; 'clip' is the released code's
CLIP-normalised input); sampling is seeded; every stage resumes bit for bit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

import jdd
from jdd import caption_synthesis, checkpoint, image_text, mesh as mesh_lib, reporting
from jdd.data.captions import ANNOTATION_STEMS, CLIP_MEAN, CLIP_STD, load_image, pre_caption
from jdd.evaluation import retrieval
from jdd.methods import edge
from jdd.models.diffusion import schedulers as sched, unet as unet_lib, vae as vae_lib
from jdd.models.heads import ProjectionHead
from jdd.models.retrieval import RetrievalModel, encode_features, normalize_images
from jdd.stages.context import Budget, checkpointed_loop

STAGE_KEYS = ("vae", "unet", "finetune", "sample", "init")
VAE_INPUTS = ("signed", "clip")


def _now() -> tuple[float, float]:
  return time.time(), time.process_time()


def _since(t: tuple[float, float]) -> dict:
  """Wall and CPU (all threads) seconds since `t`: on a shared machine the CPU time is the
  load-independent figure."""
  return {"wall": round(time.time() - t[0], 1), "cpu": round(time.process_time() - t[1], 1)}


def _keys(seed: int) -> dict:
  base = jax.random.fold_in(jax.random.key(int(seed)), 104729)  # apart from the other drivers
  return {name: jax.random.fold_in(base, i) for i, name in enumerate(STAGE_KEYS)}


# ----------------------------------------------------------------------------- adapters
@dataclasses.dataclass(frozen=True)
class TableTextEncoder:
  """A frozen text encoder evaluated once: ids (B, L) index rows of variables['table']."""

  def apply(self, variables, ids, method: str = "text_hidden"):
    if method != "text_hidden":
      raise ValueError(f"TableTextEncoder has only 'text_hidden', not {method!r}")
    return jnp.take(variables["table"], ids, axis=0)


@dataclasses.dataclass(frozen=True)
class _Vision:
  image_size: int


@dataclasses.dataclass(frozen=True)
class _CLIPShape:
  vision: _Vision


@dataclasses.dataclass(frozen=True)
class EncoderCLIP:
  """The offline loss CLIP: the contrastively pretrained retrieval encoder and its text head.

  variables: {'image': {'params'}, 'text': {'params'}, 'table': (captions, D) embeddings};
  text ids are caption indices (B, 1). Same methods as `jdd.models.diffusion.clip.CLIP`."""

  model: RetrievalModel
  image_size: int

  @property
  def config(self) -> _CLIPShape:
    return _CLIPShape(_Vision(self.image_size))

  def apply(self, variables, x, mask=None, method: str = "image_features"):
    if method == "image_features":
      return self.model.image_embed({"image": variables["image"]["params"]}, None, x,
                                    features=False)
    if method == "text_features":
      emb = jnp.take(variables["table"], x[:, 0], axis=0)
      return self.model.text_embed({"text": variables["text"]["params"]}, emb)
    raise ValueError(f"EncoderCLIP has no method {method!r}")


def numpy_init(template, seed: int):
  """From-scratch weights without compiling Flax initialisers: kernels N(0, 1/fan_in) (LeCun
  normal, Flax's default), norm scales 1, biases 0."""
  rs = np.random.default_rng(seed)
  def draw(path, leaf):
    name = getattr(path[-1], "key", "")
    if name == "kernel":
      x = rs.standard_normal(leaf.shape, np.float32) / np.sqrt(np.prod(leaf.shape[:-1]))
      return jnp.asarray(x, leaf.dtype)
    return jnp.ones(leaf.shape, leaf.dtype) if name == "scale" else jnp.zeros(leaf.shape,
                                                                              leaf.dtype)
  return jax.tree_util.tree_map_with_path(draw, template)


def to_vae_input(images_u8: np.ndarray, mode: str) -> np.ndarray:
  x = images_u8.astype(np.float32) / 255.0
  if mode == "signed":
    return x * 2.0 - 1.0
  if mode == "clip":
    return normalize_images(images_u8, CLIP_MEAN, CLIP_STD)
  raise ValueError(f"edge.vae_input must be one of {VAE_INPUTS}, got {mode!r}")


# ----------------------------------------------------------------------------- setup
@dataclasses.dataclass
class EdgeSetup:
  """What fine-tuning and sampling need, whichever backend built it."""
  models: edge.EdgeModels
  unet_vars: dict
  frozen: dict
  tokenize: Callable          # list[str] -> (ids (n, L) int32, attention mask (n, L))
  scaling_factor: float
  info: dict


def check_sd_files(config) -> None:
  """Stops at once, naming every missing file and where it goes (backend 'sd')."""
  ec = config.edge
  need = [os.path.join(ec.sd_path, "card.json"),
          os.path.join(ec.tokenizer_path, "vocab.json"),
          os.path.join(ec.tokenizer_path, "merges.txt")]
  missing = [p for p in need if not os.path.isfile(p)]
  if missing:
    listing = "\n".join(f"  - {p}" for p in missing)
    raise FileNotFoundError(
        f"EDGE (edge.backend='sd') needs converted Stable Diffusion 1.5 weights; missing:\n"
        f"{listing}\nPut them there once, on a machine with the checkpoints (jdd never "
        f"downloads): `python -m third_party.convert_diffusers --diffusers "
        f"<stable-diffusion-v1-5 folder> --clip <clip-vit-base-patch32 folder> --out "
        f"{ec.sd_path}` (writes card.json and unet/, vae/, text_encoder/, clip/), and copy "
        f"vocab.json and merges.txt from <stable-diffusion-v1-5 folder>/tokenizer/ to "
        f"{ec.tokenizer_path}/. No weights? The offline variant runs with none: "
        f"python -m jdd.main --config configs/edge_shapes.py --workdir runs/edge_shapes")


def sd_setup(config) -> EdgeSetup:
  from transformers import CLIPTokenizer
  from jdd.models.diffusion import load_components, load_schedule
  ec = config.edge
  comps = load_components(ec.sd_path, ("unet", "vae", "text_encoder", "clip"))
  # from_pretrained reads the folder's vocab.json / merges.txt. (transformers 5's constructor
  # takes `vocab` / `merges`: given `vocab_file=` it ignores the files and builds a 2-token
  # vocabulary that maps every caption to BOS + EOS.)
  tok = CLIPTokenizer.from_pretrained(ec.tokenizer_path)

  def tokenize(captions):
    enc = tok(list(captions), padding="max_length", max_length=77, truncation=True,
              return_tensors="np")
    return enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)

  models = edge.EdgeModels(comps["unet"].model, comps["vae"].model, comps["text_encoder"].model,
                           comps["clip"].model, load_schedule(ec.sd_path))
  frozen = {k: comps[k].variables for k in ("vae", "text_encoder", "clip")}
  return EdgeSetup(models, comps["unet"].variables, frozen, tokenize,
                   float(comps["vae"].config.scaling_factor), {"sd_path": ec.sd_path})


def offline_setup(config, workdir, data, texts, keys, writer, budget, encoder_dir,
                  backbone_vars, images_u8, timings) -> EdgeSetup:
  """Pretrains the small VAE and U-Net (resumable) and wraps the offline loss CLIP."""
  table = np.asarray(texts["train"], np.float32)
  null = np.zeros((1, table.shape[1]), np.float32)        # the unconditional context
  t = _now()
  vae, vae_vars, scale = pretrain_vae(config, workdir, images_u8, keys["vae"], writer, budget)
  timings["pretrain_vae"] = _since(t)
  t = _now()
  unet, unet_vars = pretrain_unet(config, workdir, data, images_u8, table, vae, vae_vars, scale,
                                  keys["unet"], writer, budget)
  timings["pretrain_unet"] = _since(t)
  text_head = _load_text_head(encoder_dir, int(config.image_encoder.feature_dim), table.shape[1])
  clip_model = RetrievalModel(image_text.build_backbone(config),
                              int(config.image_encoder.feature_dim), train_backbone=True,
                              dropout=float(config.model.dropout))
  captions = list(data.train.captions)
  lookup = {c: i for i, c in reversed(list(enumerate(captions)))}
  lookup[""] = len(captions)

  def tokenize(caps):
    ids = np.array([[lookup[c]] for c in caps], np.int32)
    return ids, np.ones_like(ids)

  models = edge.EdgeModels(unet, vae, TableTextEncoder(), EncoderCLIP(clip_model,
                                                                      data.image_size))
  frozen = {"vae": vae_vars, "text_encoder": {"table": jnp.asarray(np.concatenate([table, null]))},
            "clip": {"image": jax.tree.map(jnp.asarray, backbone_vars), "text": text_head,
                     "table": jnp.asarray(table)}}
  return EdgeSetup(models, unet_vars, frozen, tokenize, scale,
                   {"vae": config.diffusion.vae.to_dict(), "unet": config.diffusion.unet.to_dict(),
                    "scaling_factor": scale})


def _load_text_head(encoder_dir: str, joint_dim: int, text_dim: int) -> dict:
  path = os.path.abspath(os.path.join(encoder_dir, "text_head"))
  if not os.path.isdir(path):
    raise FileNotFoundError(
        f"the offline loss CLIP needs the pretrained encoder's text head at {path}: leave "
        "image_encoder.checkpoint empty so the run pretrains the encoder (and its text head)")
  template = jax.eval_shape(lambda: {"params": ProjectionHead(features=joint_dim).init(
      jax.random.key(0), jnp.zeros((1, text_dim)))["params"]})
  return ocp.StandardCheckpointer().restore(path, template)


# ------------------------------------------------------------------------------ pretrain
def vae_config(config) -> vae_lib.VAEConfig:
  v = config.diffusion.vae
  return vae_lib.VAEConfig(block_out_channels=tuple(v.block_out_channels),
                           layers_per_block=int(v.layers_per_block),
                           latent_channels=int(v.latent_channels),
                           norm_num_groups=int(v.norm_num_groups),
                           sample_size=int(config.dataset.image_size))


def unet_config(config, latent_size: int, latent_channels: int,
                text_dim: int) -> unet_lib.UNetConfig:
  """SD's layout (cross-attention blocks down, mirrored up) at reduced widths."""
  u = config.diffusion.unet
  down = tuple(unet_lib.CROSS_DOWN if c else unet_lib.PLAIN_DOWN for c in u.cross_attention)
  up = tuple(unet_lib.CROSS_UP if c else unet_lib.PLAIN_UP for c in reversed(u.cross_attention))
  return unet_lib.UNetConfig(sample_size=latent_size, in_channels=latent_channels,
                             out_channels=latent_channels, down_block_types=down,
                             up_block_types=up, block_out_channels=tuple(u.block_out_channels),
                             layers_per_block=int(u.layers_per_block),
                             attention_head_dim=int(u.heads), cross_attention_dim=text_dim,
                             norm_num_groups=int(u.norm_num_groups))


def _opt(lr: float, steps: int) -> optax.GradientTransformation:
  warm = max(1, min(100, steps // 10))
  return optax.adam(optax.warmup_cosine_decay_schedule(0.0, lr, warm, max(steps, warm + 1)))


def _param_loop(stage, workdir, params, step, batch_fn, steps, key, config, writer, budget):
  opt_state = step.opt.init(params)

  def step_fn(state, batch, rng):
    p, o, metrics = step.fn(state["params"], state["opt"], batch, rng)
    return {"params": p, "opt": o}, metrics
  state = checkpointed_loop(stage, workdir, {"params": params, "opt": opt_state},
                            jax.jit(step_fn), batch_fn, steps, key, config, writer, budget)
  return state["params"]


@dataclasses.dataclass(frozen=True)
class _Step:
  fn: Callable
  opt: optax.GradientTransformation


def _encode_all(vae, vae_vars, x: np.ndarray, batch: int = 64):
  enc = jax.jit(lambda v, x: vae.apply(v, x, method="encode"))
  outs = [enc(vae_vars, jnp.asarray(x[s:s + batch])) for s in range(0, len(x), batch)]
  return (np.concatenate([np.asarray(m) for m, _ in outs]),
          np.concatenate([np.asarray(lv) for _, lv in outs]))


def pretrain_vae(config, workdir, images_u8, key, writer, budget):
  """The small VAE from scratch; its scaling factor is 1 / std of the train posterior means
  (how SD's 0.18215 was chosen)."""
  v, seed = config.diffusion.vae, int(config.seed)
  cfg = vae_config(config)
  model = vae_lib.AutoencoderKL(cfg)
  steps, b, n = int(v.steps), int(v.batch_size), len(images_u8)
  opt = _opt(float(v.lr), steps)
  step = _Step(functools.partial(edge.vae_pretrain_step, vae=model, opt=opt,
                                 kl_weight=float(v.kl_weight)), opt)
  mode = str(config.edge.vae_input)

  def batch_fn(i):
    idx = np.random.default_rng([seed, 1, i]).choice(n, b, replace=False)
    return jnp.asarray(to_vae_input(images_u8[idx], mode))
  params = numpy_init(vae_lib.param_template(cfg), seed * 7 + 1)
  params = _param_loop("edge_vae", workdir, params, step, batch_fn, steps, key, config, writer,
                       budget)
  mean, _ = _encode_all(model, params, to_vae_input(images_u8[:512], mode))
  return model, params, float(np.float32(1.0 / np.std(mean)))


def pretrain_unet(config, workdir, data, images_u8, table, vae, vae_vars, scale, key, writer,
                  budget):
  """The small text-conditioned U-Net from scratch (DDPM loss, 10 % null captions)."""
  u, seed = config.diffusion.unet, int(config.seed)
  f = 2 ** (len(vae.config.block_out_channels) - 1)
  cfg = unet_config(config, data.image_size // f, vae.config.latent_channels, table.shape[1])
  model = unet_lib.UNet2DConditionModel(cfg)
  steps, b = int(u.steps), int(u.batch_size)
  means, logvars = _encode_all(vae, vae_vars, to_vae_input(images_u8,
                                                           str(config.edge.vae_input)))
  n = len(means)
  index = data.train.image_index
  order = np.argsort(index, kind="stable")
  starts = np.searchsorted(index[order], np.arange(n + 1))
  null = jnp.zeros((1, 1, table.shape[1]), jnp.float32)
  opt = _opt(float(u.lr), steps)
  step = _Step(functools.partial(edge.ddpm_pretrain_step, unet=model,
                                 schedule=sched.ScheduleConfig(), opt=opt, scaling_factor=scale,
                                 p_uncond=float(u.p_uncond)), opt)

  def batch_fn(i):
    rs = np.random.default_rng([seed, 2, i])
    idx = rs.choice(n, b, replace=False)
    pick = rs.integers(0, 1 << 30, b)
    caps = order[starts[idx] + pick % (starts[idx + 1] - starts[idx])]  # one caption per image
    return {"mean": jnp.asarray(means[idx]), "logvar": jnp.asarray(logvars[idx]),
            "context": jnp.asarray(table[caps][:, None, :]), "null": null}
  params = numpy_init(unet_lib.param_template(cfg, 1), seed * 7 + 2)
  params = _param_loop("edge_unet", workdir, params, step, batch_fn, steps, key, config, writer,
                       budget)
  return model, params


# ------------------------------------------------------------------------------ finetune
def hparams(config) -> edge.EdgeHparams:
  ec = config.edge
  return edge.EdgeHparams(lr=float(ec.lr), contrastive_lambda=float(ec.contrastive_lambda),
                          diversity_lambda=float(ec.diversity_lambda),
                          mse_lambda=float(ec.mse_lambda), temperature=float(ec.temperature),
                          unet_input=str(ec.unet_input),
                          rescale_before_decode=bool(ec.rescale_before_decode),
                          clip_input=str(ec.clip_input))


def finetune_steps(config, data) -> int:
  ec = config.edge
  return int(ec.steps) or int(ec.epochs) * max(1, len(data.train) // int(ec.batch_size))


def check_latent_size(models: edge.EdgeModels, size: int) -> None:
  """jdd's U-Net needs latents divisible by 2**(downsamplers) (diffusers would pass an
  explicit upsample size instead), so e.g. SD at 224 px (28 x 28 latents) must run at 256."""
  f = 2 ** (len(models.vae.config.block_out_channels) - 1)
  g = 2 ** (len(models.unet.config.block_out_channels) - 1)
  if size % (f * g):
    raise ValueError(f"images of {size} px give {size / f:g}-px latents, which the U-Net's "
                     f"{len(models.unet.config.block_out_channels) - 1} downsamplers cannot "
                     f"halve evenly: use a multiple of {f * g} (edge.finetune_size / "
                     "edge.sampler.size)")


def finetune(config, workdir, data, setup: EdgeSetup, images_u8, key, writer, budget):
  """EDGE's fine-tuning on real (image, caption) pairs, checkpointed and resumable."""
  ec = config.edge
  hp = dataclasses.replace(hparams(config), scaling_factor=setup.scaling_factor)
  captions = list(data.train.captions)
  b, n = int(ec.batch_size), len(captions)
  ids_all, mask_all = setup.tokenize(captions)
  seed = int(config.seed)
  size = int(ec.finetune_size) or data.image_size
  check_latent_size(setup.models, size)
  if size != data.image_size:
    images_u8 = None

  def batch_fn(i):
    cap = np.random.default_rng([seed, 3, i]).choice(n, b, replace=False)
    img_idx = data.train.image_index[cap]
    imgs = images_u8[img_idx] if images_u8 is not None else np.stack(
        [load_image(data.image_path("train", int(j)), size, "uint8") for j in img_idx])
    return {"images": jnp.asarray(to_vae_input(imgs, str(ec.vae_input))),
            "input_ids": jnp.asarray(ids_all[cap]), "attention_mask": jnp.asarray(mask_all[cap])}

  step = jax.jit(functools.partial(edge.train_step, models=setup.models, hp=hp))
  frozen = jax.tree.map(jnp.asarray, setup.frozen)
  state = edge.init(jax.tree.map(jnp.asarray, setup.unet_vars), hp)
  state = checkpointed_loop("edge_finetune", workdir, state,
                            lambda s, batch, k: step(s, batch, k, frozen), batch_fn,
                            finetune_steps(config, data), key, config, writer, budget)
  return state.unet


# -------------------------------------------------------------------------------- sample
def sampler_config(config) -> edge.SamplerConfig:
  sc = config.edge.sampler
  return edge.SamplerConfig(scheduler=str(sc.scheduler), steps=int(sc.steps),
                            guidance_scale=float(sc.guidance_scale), eta=float(sc.eta),
                            height=int(sc.size), width=int(sc.size))


def _sha256(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def sample_and_export(config, workdir, data, setup: EdgeSetup, unet_vars, texts,
                      image_embed) -> dict:
  """Samples the pairs, adds captions, writes W/export (manifest last); returns the manifest."""
  ec = config.edge
  edir = os.path.join(workdir, "export")
  mpath = os.path.join(edir, "manifest.json")
  if os.path.exists(mpath):
    print("[sample] export/manifest.json exists: skipped", flush=True)
    return checkpoint.read_json(mpath)
  sampler = sampler_config(config)
  check_latent_size(setup.models, sampler.height)
  captions = list(data.train.captions)
  seed = int(ec.sample_seed)
  t = time.time()
  images, prompts, idx = edge.sample_pairs(
      unet_vars, setup.frozen, captions, lambda c: setup.tokenize(c)[0], int(ec.pairs), seed,
      models=setup.models, sampler=sampler, batch_size=int(ec.sample_batch),
      scaling_factor=setup.scaling_factor)
  sample_seconds = time.time() - t
  images_u8 = np.round(images * 255.0).astype(np.uint8)
  k = int(ec.captions_per_image)
  req = caption_synthesis.SynthesisRequest(
      images=images_u8, prompts=prompts, prompt_ids=idx, k=k, train_captions=captions,
      train_text=texts["train"], image_embed=image_embed,
      train_joint=None if image_embed is None else image_embed.text_bank())
  caps = caption_synthesis.synthesize(str(ec.synthesizer), req)
  stem = ANNOTATION_STEMS.get(data.name, data.name)
  entries, files = [], {}
  for i, img in enumerate(images_u8):
    rel = f"images/{i}.png"
    reporting.save_png(os.path.join(edir, rel), img)
    entries += [{"image": rel, "caption": c, "image_id": f"edge_{i}"} for c in caps[i]]
  ann_rel = f"annotations/{stem}_train.json"
  checkpoint.atomic_write_json(os.path.join(edir, ann_rel), entries)
  grid = reporting.image_grid(images_u8[:64], nrow=min(8, len(images_u8)))
  reporting.save_png(os.path.join(edir, "grid.png"), grid)
  for rel in [f"images/{i}.png" for i in range(len(images_u8))] + [ann_rel]:
    p = os.path.join(edir, rel)
    files[rel] = {"bytes": os.path.getsize(p), "sha256": _sha256(p)}
  image_bytes = sum(v["bytes"] for r, v in files.items() if r.startswith("images/"))
  caption_bytes = sum(len(c.encode()) for cs in caps for c in cs)
  manifest = {
      "method": "edge", "dataset": data.name, "seed": seed, "num_pairs": len(entries),
      "query_caption_ids": [int(i) for i in idx], "prompts": prompts,
      "sampler": dataclasses.asdict(sampler), "scaling_factor": setup.scaling_factor,
      "synthesizer": str(ec.synthesizer),
      "budget": caption_synthesis.budget(len(images_u8), k, image_bytes, caption_bytes),
      "raw_uint8_image_bytes": int(images_u8.nbytes), "annotation": ann_rel,
      "image_root": ".", "files": files, "sample_seconds": round(sample_seconds, 1),
      "reload": "jdd.data.captions.read_train_annotations(<export>/" + ann_rel + ", 30); image "
                "paths are <export> joined with each entry's 'image'"}
  checkpoint.atomic_write_json(mpath, manifest)
  return manifest


class JointImageEmbed:
  """The loss CLIP's image tower (for 'image_retrieval' caption synthesis), offline only."""

  def __init__(self, setup: EdgeSetup, image_size: int):
    clip, frozen = setup.models.clip, setup.frozen["clip"]
    self._img = jax.jit(lambda v, x: clip.apply(v, x, method="image_features"))
    self._txt = jax.jit(lambda v, ids: clip.apply(v, ids, method="text_features"))
    self.frozen, self.size = frozen, image_size

  def __call__(self, images_u8):
    x = normalize_images(images_u8, CLIP_MEAN, CLIP_STD)
    return np.concatenate([np.asarray(self._img(self.frozen, jnp.asarray(x[s:s + 64])))
                           for s in range(0, len(x), 64)])

  def text_bank(self):
    n = self.frozen["table"].shape[0]
    ids = np.arange(n, dtype=np.int32)[:, None]
    return np.concatenate([np.asarray(self._txt(self.frozen, jnp.asarray(ids[s:s + 1024])))
                           for s in range(0, n, 1024)])


def exported_pairs(config, workdir, data, manifest, texts, model, backbone_vars, features):
  """The exported pairs as the evaluator's PairSet, read back from the export folder (what
  anyone evaluating the export sees: PNGs resized to the dataset's size, cleaned captions)."""
  from jdd.data.captions import read_train_annotations
  edir = os.path.join(workdir, "export")
  pairs = read_train_annotations(os.path.join(edir, manifest["annotation"]), data.max_words[0])
  imgs = np.stack([load_image(os.path.join(edir, p), data.image_size, "uint8")
                   for p in pairs.image_paths])
  inputs = (encode_features(model, backbone_vars, imgs, mean=CLIP_MEAN, std=CLIP_STD)
            if features else normalize_images(imgs, CLIP_MEAN, CLIP_STD))
  return retrieval.PairSet(inputs[pairs.image_index],
                           caption_embeddings(config, list(pairs.captions), data, texts))


def caption_embeddings(config, caps, data, texts) -> np.ndarray:
  """Text embeddings of exported captions: the cached ones for real training captions, the
  text encoder for new strings (e.g. from an LLM synthesizer)."""
  lookup = {c: i for i, c in enumerate(data.train.captions)}
  unknown = sorted({c for c in caps if c not in lookup})
  extra = {}
  if unknown:
    from jdd import text_features
    tc = config.text_encoder
    path = image_text.offline_text_encoder_path() if tc.path == "minilm" else tc.path
    enc = text_features.TextEncoder(path, pooling=tc.pooling, batch_size=int(tc.batch_size))
    cleaned = [pre_caption(c, data.max_words[0]) for c in unknown]
    extra = dict(zip(unknown, enc.encode(cleaned)))
  return np.stack([texts["train"][lookup[c]] if c in lookup else extra[c] for c in caps])


# ----------------------------------------------------------------------------------- run
def run(config, workdir: str) -> dict:
  """Runs every EDGE stage of `config` in `workdir` (resuming); returns results."""
  t0 = time.time()
  if config.method != "edge":
    raise ValueError(f"jdd.edge_pipeline runs method 'edge', got {config.method!r}")
  ec = config.edge
  if ec.backend not in ("sd", "offline"):
    raise ValueError(f"edge.backend must be 'sd' or 'offline', got {ec.backend!r}")
  if ec.vae_input not in VAE_INPUTS:
    raise ValueError(f"edge.vae_input must be one of {VAE_INPUTS}, got {ec.vae_input!r}")
  if ec.synthesizer not in caption_synthesis.SYNTHESIZERS or (
      ec.synthesizer == "image_retrieval" and ec.backend != "offline"):
    raise ValueError(f"edge.synthesizer={ec.synthesizer!r}: choose one of "
                     f"{sorted(caption_synthesis.SYNTHESIZERS)} ('image_retrieval' is offline "
                     "only: its caption bank is the offline loss CLIP's embedding table)")
  if ec.backend == "sd":
    check_sd_files(config)           # first: missing weights stop the run at once
  data = image_text.load_data(config)
  os.makedirs(workdir, exist_ok=True)
  checkpoint.atomic_write_json(os.path.join(workdir, "config.json"),
                               json.loads(config.to_json_best_effort()))
  mesh = mesh_lib.make_mesh(config.get("num_devices") or None)
  it_keys, keys = image_text._keys(config.seed), _keys(config.seed)
  writer = reporting.create_writer(workdir)
  budget = Budget(int(config.debug.interrupt_after))
  timings = {}
  print(f"[jdd] edge ({ec.backend}) on {data!r}; workdir {workdir}", flush=True)
  with jax.set_mesh(mesh) if hasattr(jax, "set_mesh") else contextlib.nullcontext():
    t = _now()
    texts, text_identity = image_text.text_embeddings(config, data, workdir)
    backbone_vars, encoder_card = image_text.image_encoder(config, workdir, data, texts, it_keys,
                                                           writer, budget)
    timings["text_and_encoder"] = _since(t)
    small = data.train.num_images * data.image_size ** 2 * 3 <= (1 << 29)
    images_u8 = data.load_images("train", dtype="uint8") if small else None
    if ec.backend == "sd":
      setup = sd_setup(config)
    else:
      edir = config.image_encoder.checkpoint or os.path.join(workdir, "encoder")
      setup = offline_setup(config, workdir, data, texts, keys, writer, budget, edir,
                            backbone_vars, images_u8, timings)
    t = _now()
    unet_vars = finetune(config, workdir, data, setup, images_u8, keys["finetune"], writer,
                         budget)
    timings["finetune"] = _since(t)
    t = _now()
    embed = JointImageEmbed(setup, data.image_size) if (
        ec.synthesizer == "image_retrieval" and ec.backend == "offline") else None
    manifest = sample_and_export(config, workdir, data, setup, unet_vars, texts, embed)
    timings["sample_export"] = _since(t)
    t = _now()
    model = image_text.build_model(config)
    features = not model.train_backbone
    inputs = image_text.image_inputs(config, workdir, data, model, backbone_vars)
    splits = image_text.eval_splits(data, inputs, texts)
    pairs = exported_pairs(config, workdir, data, manifest, texts, model, backbone_vars,
                           features)
    results = {"jdd_version": jdd.__version__, "method": "edge", "dataset": data.name,
               "backend": str(ec.backend),
               "text_encoder": {k: text_identity[k] for k in ("encoder", "weights_sha256",
                                                              "pooling", "max_length")},
               "image_encoder": {k: encoder_card.get(k) for k in ("arch", "kwargs")},
               "model": {"train_backbone": model.train_backbone, "joint_dim": model.joint_dim,
                         "temperature": model.temperature},
               "edge": {"setup": setup.info, "finetune_steps": finetune_steps(config, data),
                        "hparams": dataclasses.asdict(hparams(config)),
                        "export": {k: manifest[k] for k in ("seed", "num_pairs", "budget",
                                                            "sampler", "synthesizer")}},
               "selection": "evaluation epoch selected on val; test reported. "
                            "reference_protocol_best_test is the references' best-test number"}
    name = "distilled_edge"
    results[name] = {"num_pairs": int(len(pairs.texts)), "pairs_budget": int(ec.pairs),
                     **image_text.evaluate_named(name, pairs, config, workdir, model,
                                                 backbone_vars, splits, features)}
    for bname, bpairs in image_text.baseline_sets(config, data, inputs, texts, it_keys).items():
      results[bname] = {"num_pairs": int(len(bpairs.texts)),
                        **image_text.evaluate_named(bname, bpairs, config, workdir, model,
                                                    backbone_vars, splits, features)}
    timings["evaluate"] = _since(t)
  results["stage_seconds_this_process"] = timings
  results["wall_seconds_this_process"] = round(time.time() - t0, 1)
  results["cpu_seconds_this_process"] = round(time.process_time(), 1)
  checkpoint.atomic_write_json(os.path.join(workdir, "results.json"), results)
  writer.flush()
  image_text.print_summary(results)
  return results
