"""EDGE: generative image-text distillation by fine-tuning a text-to-image diffusion model.

Reference: EDGE (NeurIPS 2025, arXiv 2509.15472), released code `ichbill/EDGE` at bb18c46
(`edge_diffusion_train.py`, `edge_diffusion_sampling.py`), as described in
shared/research/edge_method.md §1. Facts carried over:

* DiffFit-style tuning: only U-Net parameters whose (diffusers) name contains 'bias', 'norm',
  'gamma' or 'y_embed' train (in the SD U-Net: every bias and every GroupNorm / LayerNorm
  affine parameter, 0.05 % of the weights); the VAE, SD's text encoder and CLIP are frozen.
  Plain SGD, lr 1e-3, no momentum, no weight decay.
* Per batch: SD text embeddings of the caption (CLIP-L, 77 tokens, no attention mask); latents
  = VAE posterior sample x 0.18215; t ~ U{0..999}; z_t = add_noise(latents, eps, t); eps_hat =
  U-Net(z_t, t, text); the one-step estimate x0 = (z_t - sqrt(1 - a_t) eps_hat) / sqrt(a_t)
  decoded by the VAE; CLIP ViT-B/32 image features of the decoded image and text features of the
  caption (with its attention mask).
* L_con: symmetric InfoNCE of the L2-normalised features with a FIXED temperature 0.1 and
  identity targets. L_div: J = normalize([I; T]) (512 + 512 -> 1024-d), the mean off-diagonal
  entry of J J^T. loss = lambda_c L_con + lambda_d L_div (both 1.0 by default).
* Sampling: one real training caption per query, PNDM 50 steps, guidance 7.5, eta 0.

Deliberate differences from the released code, each behind an `EdgeHparams` field whose
`EdgeHparams.reference()` value reproduces the released behaviour:

* `unet_input='noisy'`: the U-Net receives the noisy latents z_t. The released code passes the
  CLEAN latents (l.153) while still forming x0 from z_t, which is almost certainly a bug
  ('clean' keeps it).
* `rescale_before_decode=True`: x0 is divided by the scaling factor before the VAE decoder, as
  every SD pipeline does; the released code decodes the scaled latent (False keeps it).
* `clip_input='normalize'`: the decoded image ([-1, 1]) is mapped to [0, 1], resized to CLIP's
  input size and CLIP-normalised; the released code feeds it raw ('raw' keeps it; a resize still
  happens when the sizes differ, which the released code avoids by using 224-px images).
* `mse_lambda`: an optional noise-prediction MSE term ||eps_hat - eps||^2 (the paper's Figure 2
  draws one; the released code has none: 0.0 is the default).
* Randomness is derived (fold_in(rng, step)) and the query draw is seeded; the reference draws
  unseeded and differently per GPU. Everything runs in float32 (the reference runs fp16).

Everything here is a pure function; the driver jits `train_step` once with the static parts
(`EdgeModels`, `EdgeHparams`) bound by `functools.partial`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jdd.models.diffusion import clip as clip_lib
from jdd.models.diffusion import schedulers as sched
from jdd.models.diffusion import unet as unet_lib
from jdd.models.diffusion.vae import sample_posterior
from jdd.data.captions import CLIP_MEAN, CLIP_STD
from jdd.models.retrieval import normalize_images
from jdd.objectives.contrastive import contrastive_logits, infonce_loss

DIFFFIT_SUBSTRINGS = ("bias", "norm", "gamma", "y_embed")
UNET_INPUTS = ("noisy", "clean")
CLIP_INPUTS = ("normalize", "raw")
VAE_INPUTS = ("signed", "clip")


@dataclasses.dataclass(frozen=True)
class EdgeHparams:
  lr: float = 1e-3
  contrastive_lambda: float = 1.0
  diversity_lambda: float = 1.0
  mse_lambda: float = 0.0
  temperature: float = 0.1
  unet_input: str = "noisy"
  rescale_before_decode: bool = True
  clip_input: str = "normalize"
  scaling_factor: float = 0.18215

  def __post_init__(self):
    if self.unet_input not in UNET_INPUTS:
      raise ValueError(f"unet_input must be one of {UNET_INPUTS}, got {self.unet_input!r}")
    if self.clip_input not in CLIP_INPUTS:
      raise ValueError(f"clip_input must be one of {CLIP_INPUTS}, got {self.clip_input!r}")

  @classmethod
  def reference(cls, **kw) -> "EdgeHparams":
    """The released code's behaviour (clean U-Net input, no rescale, raw CLIP input)."""
    return cls(**{"unet_input": "clean", "rescale_before_decode": False, "clip_input": "raw",
                  **kw})


@dataclasses.dataclass(frozen=True)
class EdgeModels:
  """The (hashable, static) modules: SD U-Net, VAE, SD text encoder, loss CLIP, schedule."""

  unet: Any
  vae: Any
  text_encoder: Any
  clip: Any
  schedule: sched.ScheduleConfig = sched.ScheduleConfig()


@flax.struct.dataclass
class EdgeState:
  step: jax.Array
  unet: Any          # {'params': ...}: trainable and frozen leaves together
  opt_state: Any


# ------------------------------------------------------------------------------ trainable mask


def to_vae_input(images_u8: np.ndarray, mode: str) -> np.ndarray:
  """uint8 images as the VAE reads them: 'signed' [-1, 1] (what SD's VAE was trained on) or
  'clip' (CLIP-normalised, the released code's input)."""
  x = images_u8.astype(np.float32) / 255.0
  if mode == "signed":
    return x * 2.0 - 1.0
  if mode == "clip":
    return normalize_images(images_u8, CLIP_MEAN, CLIP_STD)
  raise ValueError(f"edge.vae_input must be one of {VAE_INPUTS}, got {mode!r}")


def trainable_labels(unet_variables) -> Any:
  """'train' for every U-Net leaf whose diffusers key contains bias/norm/gamma/y_embed, else
  'frozen' (the reference's `mark_difffit_trainable`, applied to the torch names)."""
  def label(path, _):
    names = tuple(getattr(k, "key", str(k)) for k in path)
    key = unet_lib.torch_key(names)
    return "train" if any(s in key for s in DIFFFIT_SUBSTRINGS) else "frozen"
  return jax.tree_util.tree_map_with_path(label, unet_variables)


def optimizer(hp: EdgeHparams) -> optax.GradientTransformation:
  """SGD (no momentum, no decay) on the DiffFit leaves; exact zeros for the rest."""
  return optax.multi_transform({"train": optax.sgd(hp.lr), "frozen": optax.set_to_zero()},
                               trainable_labels)


def init(unet_variables, hp: EdgeHparams) -> EdgeState:
  return EdgeState(jnp.int32(0), unet_variables, optimizer(hp).init(unet_variables))


# ------------------------------------------------------------------------------------ losses


def contrastive_loss(image_features: jax.Array, text_features: jax.Array,
                     temperature: float = 0.1) -> jax.Array:
  """0.5 [CE(I T^T / tau, diag) + CE(T I^T / tau, diag)] on L2-normalised features."""
  return infonce_loss(contrastive_logits(image_features, text_features, temperature))


def diversity_loss(image_features: jax.Array, text_features: jax.Array) -> jax.Array:
  """Mean off-diagonal cosine similarity of the normalised concatenated pair features."""
  j = jnp.concatenate([image_features, text_features], axis=-1).astype(jnp.float32)
  j = j / jnp.maximum(jnp.linalg.norm(j, axis=-1, keepdims=True), 1e-12)  # F.normalize
  s = j @ j.T
  b = s.shape[0]
  off = s * (1.0 - jnp.eye(b, dtype=s.dtype))
  return jnp.sum(off) / (b * (b - 1))


def clip_pixels(decoded: jax.Array, clip_config: clip_lib.CLIPConfig, mode: str) -> jax.Array:
  """Decoded VAE images ([-1, 1] NHWC) -> the loss CLIP's input (see module docstring)."""
  size = clip_config.vision.image_size
  x = decoded
  if x.shape[1] != size or x.shape[2] != size:
    x = jax.image.resize(x, (x.shape[0], size, size, x.shape[3]), "bilinear")
  if mode == "normalize":
    x = clip_lib.normalize_images((x + 1.0) / 2.0)
  return x


def text_embeddings(models: EdgeModels, text_vars, input_ids: jax.Array) -> jax.Array:
  """SD conditioning: last hidden states of the SD text encoder, no attention mask."""
  return models.text_encoder.apply(text_vars, input_ids, method="text_hidden")


def one_step_x0(unet_vars, latents: jax.Array, context: jax.Array, rng: jax.Array,
                models: EdgeModels, hp: EdgeHparams) -> dict[str, jax.Array]:
  """Noise the (scaled) latents at t ~ U{0..T-1}, predict eps, and form the one-step x0.

  Returns t, noise, noisy, unet_input (noisy, or the clean latents for the reference option),
  eps_hat and x0 = (noisy - sqrt(1 - a_t) eps_hat) / sqrt(a_t) (always from the noisy latents,
  as the reference does).
  """
  k_t, k_noise = jax.random.split(rng)
  acp = sched.alphas_cumprod(models.schedule)
  t = jax.random.randint(k_t, (latents.shape[0],), 0, models.schedule.num_train_timesteps)
  noise = jax.random.normal(k_noise, latents.shape, latents.dtype)
  noisy = sched.add_noise(acp, latents, noise, t)
  unet_in = noisy if hp.unet_input == "noisy" else latents
  eps_hat = models.unet.apply(unet_vars, unet_in, t, context)
  return {"t": t, "noise": noise, "noisy": noisy, "unet_input": unet_in, "eps_hat": eps_hat,
          "x0": sched.predict_x0(acp, noisy, eps_hat, t)}


def loss_fn(unet_vars, frozen, batch, rng, models: EdgeModels, hp: EdgeHparams):
  """EDGE's objective for one batch: (loss, metrics).

  batch: 'images' (B, H, W, 3) in the VAE's input range, 'input_ids' (B, L) int, and
  'attention_mask' (B, L) for the loss CLIP's text tower. frozen: {'vae', 'text_encoder',
  'clip'} variables.
  """
  k_post, k_step = jax.random.split(rng)
  images, ids = batch["images"], batch["input_ids"]
  mask = batch.get("attention_mask")
  context = jax.lax.stop_gradient(text_embeddings(models, frozen["text_encoder"], ids))
  mean, logvar = models.vae.apply(frozen["vae"], images, method="encode")
  latents = jax.lax.stop_gradient(sample_posterior(k_post, mean, logvar) * hp.scaling_factor)
  out = one_step_x0(unet_vars, latents, context, k_step, models, hp)
  z = out["x0"] / hp.scaling_factor if hp.rescale_before_decode else out["x0"]
  decoded = models.vae.apply(frozen["vae"], z, method="decode")
  pixels = clip_pixels(decoded, models.clip.config, hp.clip_input)
  img_f = models.clip.apply(frozen["clip"], pixels, method="image_features")
  txt_f = models.clip.apply(frozen["clip"], ids, mask, method="text_features")
  con = contrastive_loss(img_f, txt_f, hp.temperature)
  div = diversity_loss(img_f, txt_f)
  mse = jnp.mean((out["eps_hat"] - out["noise"]) ** 2)
  loss = hp.contrastive_lambda * con + hp.diversity_lambda * div + hp.mse_lambda * mse
  return loss, {"loss": loss, "contrastive": con, "diversity": div, "mse": mse}


def train_step(state: EdgeState, batch, rng: jax.Array, frozen, *, models: EdgeModels,
               hp: EdgeHparams) -> tuple[EdgeState, dict]:
  """One SGD step on the DiffFit leaves. `rng` is the run's base key; the step's draws come
  from fold_in(rng, state.step), so a resumed run repeats them exactly. Bind `models` and `hp`
  with functools.partial, then jit once."""
  key = jax.random.fold_in(rng, state.step)
  grads, metrics = jax.grad(loss_fn, has_aux=True)(state.unet, frozen, batch, key, models, hp)
  updates, opt_state = optimizer(hp).update(grads, state.opt_state, state.unet)
  params = optax.apply_updates(state.unet, updates)
  return EdgeState(state.step + 1, params, opt_state), metrics


# ---------------------------------------------------------------------------------- sampling


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  """Diffusers' StableDiffusionPipeline defaults, as EDGE samples (PNDM 50, cfg 7.5, 512 px)."""

  scheduler: str = "pndm"   # or 'ddim'
  steps: int = 50
  guidance_scale: float = 7.5
  eta: float = 0.0          # DDIM only
  height: int = 512
  width: int = 512

  def __post_init__(self):
    if self.scheduler not in ("pndm", "ddim"):
      raise ValueError(f"scheduler must be 'pndm' or 'ddim', got {self.scheduler!r}")


def latent_shape(models: EdgeModels, sampler: SamplerConfig, batch: int) -> tuple[int, ...]:
  """(B, H / f, W / f, latent channels), f = 2**(VAE blocks - 1) (8 for SD)."""
  vc = models.vae.config
  f = 2 ** (len(vc.block_out_channels) - 1)
  if sampler.height % f or sampler.width % f:
    raise ValueError(f"image size {sampler.height}x{sampler.width} is not a multiple of {f}")
  return (batch, sampler.height // f, sampler.width // f, vc.latent_channels)


def sample_latents(unet_vars, context: jax.Array, uncond: jax.Array, rng: jax.Array, *,
                   models: EdgeModels, sampler: SamplerConfig) -> jax.Array:
  """Guided denoising from N(0, I) latents under `context` (B, L, D); `uncond` (1 or B, L, D)
  is the empty prompt's embedding. Returns the final (scaled) latents."""
  cfg, acp = models.schedule, sched.alphas_cumprod(models.schedule)
  b = context.shape[0]
  shape = latent_shape(models, sampler, b)
  k_init, k_eta = jax.random.split(rng)
  x = jax.random.normal(k_init, shape, jnp.float32)  # init_noise_sigma = 1 for both
  both = jnp.concatenate([jnp.broadcast_to(uncond, context.shape), context], axis=0)

  def eps_at(x, t):
    e = models.unet.apply(unet_vars, jnp.concatenate([x, x], axis=0), t, both)
    return sched.cfg_combine(e[:b], e[b:], sampler.guidance_scale)

  if sampler.scheduler == "ddim":
    ts = jnp.asarray(sched.ddim_timesteps(cfg, sampler.steps))
    def body(x, inp):
      i, t = inp
      return sched.ddim_step(cfg, acp, sampler.steps, eps_at(x, t), t, x, sampler.eta,
                             jax.random.fold_in(k_eta, i)), None
    x, _ = jax.lax.scan(body, x, (jnp.arange(ts.shape[0]), ts))
    return x
  ts = jnp.asarray(sched.pndm_timesteps(cfg, sampler.steps))
  def body(carry, t):
    x, st = carry
    x, st = sched.pndm_step(cfg, acp, sampler.steps, st, eps_at(x, t), t, x)
    return (x, st), None
  (x, _), _ = jax.lax.scan(body, (x, sched.pndm_init(shape)), ts)
  return x


def sample_images(unet_vars, frozen, input_ids: jax.Array, uncond_ids: jax.Array,
                  rng: jax.Array, *, models: EdgeModels, sampler: SamplerConfig,
                  scaling_factor: float = 0.18215) -> jax.Array:
  """Images in [0, 1] (B, H, W, 3) for tokenised prompts (diffusers' pipeline postprocessing)."""
  context = text_embeddings(models, frozen["text_encoder"], input_ids)
  uncond = text_embeddings(models, frozen["text_encoder"], uncond_ids)
  z = sample_latents(unet_vars, context, uncond, rng, models=models, sampler=sampler)
  images = models.vae.apply(frozen["vae"], z / scaling_factor, method="decode")
  return jnp.clip(images / 2.0 + 0.5, 0.0, 1.0)


@functools.lru_cache(maxsize=8)
def _jitted_sampler(models: EdgeModels, sampler: SamplerConfig, scaling_factor: float):
  """One compiled sampler per (models, sampler settings), reused across calls."""
  return jax.jit(functools.partial(sample_images, models=models, sampler=sampler,
                                   scaling_factor=scaling_factor))


def draw_queries(num_captions: int, num_queries: int, seed: int) -> np.ndarray:
  """Indices of the captions used as prompts: a seeded draw without replacement (the
  reference's `random.sample`, but recorded and identical on every host)."""
  if num_queries > num_captions:
    raise ValueError(f"cannot draw {num_queries} distinct captions from {num_captions}")
  return np.random.default_rng(seed).choice(num_captions, num_queries, replace=False)


def sample_pairs(unet_vars, frozen, captions: Sequence[str],
                 tokenize: Callable[[Sequence[str]], np.ndarray], num_queries: int, seed: int,
                 *, models: EdgeModels, sampler: SamplerConfig, batch_size: int = 8,
                 scaling_factor: float = 0.18215,
                 spread: Callable | None = None) -> tuple[np.ndarray, list[str], np.ndarray]:
  """(images (N, H, W, 3) float32 in [0, 1], their prompt captions, caption indices).

  Each drawn caption is one query and one pair, as in the reference (ipc = 1). Batch k's noise
  is fold_in(key(seed), k); the last batch is padded with repeats so the sampler compiles once.
  `tokenize(list of str) -> (n, 77) int ids` is the SD tokenizer (supplied by the caller).
  Batch k depends on k alone, so `spread(num_batches, batch_fn)` may sample the batches
  elsewhere and must return their stack, each (batch_size, H, W, 3) float32
  (`jdd.distributed.spread_arrays`).
  """
  idx = draw_queries(len(captions), num_queries, seed)
  prompts = [captions[i] for i in idx]
  fn = _jitted_sampler(models, sampler, scaling_factor)
  uncond = jnp.asarray(tokenize([""]))
  base = jax.random.key(seed)
  starts = list(range(0, num_queries, batch_size))

  def batch(k):
    chunk = prompts[starts[k]:starts[k] + batch_size]
    padded = chunk + [chunk[-1]] * (batch_size - len(chunk))
    ids = jnp.asarray(tokenize(padded))
    return np.asarray(fn(unet_vars, frozen, ids, uncond, jax.random.fold_in(base, k)))

  batches = spread(len(starts), batch) if spread is not None else [batch(k) for k in
                                                                   range(len(starts))]
  out = [b[:len(prompts[s:s + batch_size])] for b, s in zip(batches, starts)]
  return np.concatenate(out, axis=0), prompts, idx


# ------------------------------------------------------------- offline pretraining (jdd's own)
# EDGE starts from SD-1.5; offline, jdd trains a small VAE and U-Net from scratch first. These
# are the textbook objectives (not from the EDGE code): the VAE's L1 reconstruction plus a small
# KL term (SD's autoencoder recipe without its perceptual and adversarial terms), and the DDPM
# noise-prediction loss with caption dropout for classifier-free guidance.


def vae_pretrain_step(params, opt_state, images: jax.Array, rng: jax.Array, *, vae,
                      opt: optax.GradientTransformation, kl_weight: float):
  """One step of L1(x, decode(z)) + kl_weight KL(q(z|x) || N(0, I)), z ~ q(z|x)."""
  def loss_of(p):
    mean, logvar = vae.apply(p, images, method="encode")
    rec = vae.apply(p, sample_posterior(rng, mean, logvar), method="decode")
    l1 = jnp.mean(jnp.abs(rec - images))
    kl = 0.5 * jnp.mean(jnp.sum(mean ** 2 + jnp.exp(logvar) - 1.0 - logvar, axis=(1, 2, 3)))
    return l1 + kl_weight * kl, {"l1": l1, "kl": kl}
  (loss, aux), grads = jax.value_and_grad(loss_of, has_aux=True)(params)
  updates, opt_state = opt.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, {"loss": loss, **aux}


def ddpm_pretrain_step(params, opt_state, batch, rng: jax.Array, *, unet,
                       schedule: sched.ScheduleConfig, opt: optax.GradientTransformation,
                       scaling_factor: float, p_uncond: float):
  """One DDPM step: ||eps - unet(z_t, t, c)||^2 with z = scale x posterior sample and the
  context replaced by the null context (`batch['null']`) with probability p_uncond."""
  k_post, k_t, k_noise, k_drop = jax.random.split(rng, 4)
  z = sample_posterior(k_post, batch["mean"], batch["logvar"]) * scaling_factor
  acp = sched.alphas_cumprod(schedule)
  t = jax.random.randint(k_t, (z.shape[0],), 0, schedule.num_train_timesteps)
  noise = jax.random.normal(k_noise, z.shape, z.dtype)
  drop = jax.random.uniform(k_drop, (z.shape[0], 1, 1)) < p_uncond
  context = jnp.where(drop, batch["null"], batch["context"])
  noisy = sched.add_noise(acp, z, noise, t)

  def loss_of(p):
    return jnp.mean((unet.apply(p, noisy, t, context) - noise) ** 2)
  loss, grads = jax.value_and_grad(loss_of)(params)
  updates, opt_state = opt.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, {"loss": loss}
