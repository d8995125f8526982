"""EDGE's two backends: the converted Stable Diffusion 1.5 networks, or jdd's small offline
stand-ins, each wrapped as the `EdgeSetup` that fine-tuning and sampling read.

* 'sd': converted SD-1.5 U-Net / VAE / CLIP-L text encoder and the CLIP ViT-B/32 loss model
  (`third_party/convert_diffusers.py` folder) plus the CLIP BPE tokenizer files; the reference.
* 'offline': jdd's own small models (`jdd.stages.edge_pretrain` trains them). The U-Net
  cross-attends to ONE token, the frozen offline text encoder's pooled caption embedding
  (MiniLM, 384-d; jdd's text encoders expose pooled embeddings, and a 5-word shapes caption loses
  little). The loss CLIP is the image encoder the image-text stages pretrain contrastively
  against the same embeddings, with its text head. The unconditional context is the zero
  vector, trained by dropping 10 % of the captions. Both frozen text towers are lookup tables of
  embeddings computed once: the same function of the caption as running the encoder inside the
  step, since neither is trained.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jdd.loop import RunContext
from jdd.methods import edge
from jdd.models.heads import ProjectionHead
from jdd.models.retrieval import RetrievalModel
from jdd.stages import edge_pretrain, image_text

def timer() -> Callable[[], dict]:
  """Starts a clock; calling the result gives wall and CPU (all threads) seconds since. On a
  shared machine the CPU time is the load-independent figure."""
  wall, cpu = time.time(), time.process_time()
  return lambda: {"wall": round(time.time() - wall, 1), "cpu": round(time.process_time() - cpu, 1)}


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


# ------------------------------------------------------------------------------- setup
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


def offline_setup(ctx: RunContext, texts: dict, backbone_vars, images_u8: np.ndarray,
                  timings: dict) -> EdgeSetup:
  """Pretrains the small VAE and U-Net (resumable) and wraps the offline loss CLIP: the image
  encoder the run pretrained (or `image_encoder.checkpoint`) with its text head."""
  config, data = ctx.config, ctx.data
  encoder_dir = config.image_encoder.checkpoint or os.path.join(ctx.workdir, "encoder")
  table = np.asarray(texts["train"], np.float32)
  null = np.zeros((1, table.shape[1]), np.float32)        # the unconditional context
  t = timer()
  vae, vae_vars, scale = edge_pretrain.pretrain_vae(ctx, images_u8)
  timings["pretrain_vae"] = t()
  t = timer()
  unet, unet_vars = edge_pretrain.pretrain_unet(ctx, images_u8, table, vae, vae_vars, scale)
  timings["pretrain_unet"] = t()
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
