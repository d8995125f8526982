"""EDGE fine-tuning steps/s and sampling images/s with SD-1.5-shaped networks, random weights.

    PYTHONPATH=. JAX_PLATFORMS=cpu python benchmarks/edge.py [--latent 16] [--batch 1]
        [--steps 3] [--sample-steps 10]

The SD-1.5 U-Net at its real shape (320/640/1280/1280 channels, 8 heads, cross-attention on
77 x 768 text states; 859.5 M parameters). `--aux full` also builds the SD VAE
(128/256/512/512), the CLIP-L text encoder (12 x 768) and the CLIP ViT-B/32 loss model (224 px);
the default `--aux small` uses a narrow VAE of the same depth (f = 8) and 1-layer CLIP towers so
that the figures measure the U-Net and the run fits in the shared machine's memory (the full set
was killed for memory at 23 GB shared). Only the resolution is reduced: `--latent 16` means
16 x 16 latents, i.e. 128-px images (SD samples 64 x 64 latents, 512 px). The fine-tuning step
is `jdd.methods.edge.train_step` (DiffFit leaves only, SGD; the state is donated);
`--skip-finetune` times sampling only; sampling is
`jdd.methods.edge.sample_images` (PNDM, classifier-free guidance: two U-Net evaluations per
step, batched). Compilation is excluded; each timing is the best of `--repeats` runs.
"""

from __future__ import annotations

import argparse
import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from jdd.methods import edge
from jdd.models.diffusion import clip, unet, vae

SD_TEXT = clip.CLIPConfig(clip.TowerConfig(hidden_size=768, intermediate_size=3072,
                                           num_attention_heads=12), None, projection_dim=0)
LOSS_CLIP = clip.CLIPConfig(clip.TowerConfig(),
                            clip.TowerConfig(hidden_size=768, intermediate_size=3072,
                                             num_attention_heads=12, image_size=224,
                                             patch_size=32), projection_dim=512)
# --aux small: SD-L text states keep their 768-d width (the U-Net's cross-attention input).
SMALL_TEXT = clip.CLIPConfig(clip.TowerConfig(hidden_size=768, intermediate_size=768,
                                              num_hidden_layers=1, num_attention_heads=12),
                             None, projection_dim=0)
SMALL_CLIP = clip.CLIPConfig(clip.TowerConfig(hidden_size=64, intermediate_size=128,
                                              num_hidden_layers=1, num_attention_heads=2),
                             clip.TowerConfig(hidden_size=64, intermediate_size=128,
                                              num_hidden_layers=1, num_attention_heads=2,
                                              image_size=64, patch_size=32), projection_dim=32)


def random_like(template, seed: int):
  """Kernels N(0, 1/fan_in), norm scales 1, the rest N(0, 0.02^2): numpy, no Flax init."""
  rs = np.random.default_rng(seed)
  def draw(path, leaf):
    name = getattr(path[-1], "key", "")
    x = rs.standard_normal(leaf.shape, np.float32)
    if name == "kernel":
      x /= np.sqrt(np.prod(leaf.shape[:-1]))
    elif name == "scale":
      x = np.ones(leaf.shape, np.float32)
    else:
      x *= 0.02
    return jnp.asarray(x, leaf.dtype)
  return jax.tree_util.tree_map_with_path(draw, template)


def best_of(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return min(times)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--latent", type=int, default=16, help="latent side (image side / 8)")
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--steps", type=int, default=3, help="timed fine-tuning steps per repeat")
  p.add_argument("--sample-steps", type=int, default=10, help="PNDM steps of the timed run")
  p.add_argument("--repeats", type=int, default=2)
  p.add_argument("--aux", choices=("small", "full"), default="small")
  p.add_argument("--skip-finetune", action="store_true",
                 help="sampling only (forward passes: less memory than a training step)")
  args = p.parse_args()
  full = args.aux == "full"
  ucfg = unet.UNetConfig(sample_size=args.latent)
  vcfg = vae.VAEConfig(sample_size=args.latent * 8) if full else vae.VAEConfig(
      block_out_channels=(32, 32, 32, 32), layers_per_block=1, sample_size=args.latent * 8)
  text_cfg, clip_cfg = (SD_TEXT, LOSS_CLIP) if full else (SMALL_TEXT, SMALL_CLIP)
  models = edge.EdgeModels(unet.UNet2DConditionModel(ucfg), vae.AutoencoderKL(vcfg),
                           clip.CLIP(text_cfg), clip.CLIP(clip_cfg))
  t = time.perf_counter()
  unet_vars = random_like(unet.param_template(ucfg), 0)
  frozen = {"vae": random_like(vae.param_template(vcfg), 1),
            "text_encoder": random_like(clip.param_template(text_cfg), 2),
            "clip": random_like(clip.param_template(clip_cfg), 3)}
  n_unet = sum(x.size for x in jax.tree.leaves(unet_vars))
  print(f"U-Net {n_unet / 1e6:.2f} M parameters; weights drawn in {time.perf_counter() - t:.0f}s")
  b, px = args.batch, args.latent * 8
  rs = np.random.default_rng(0)
  ids = rs.integers(1, 49000, (b, 77)).astype(np.int32)
  batch = {"images": jnp.asarray(rs.uniform(-1, 1, (b, px, px, 3)).astype(np.float32)),
           "input_ids": jnp.asarray(ids), "attention_mask": jnp.ones((b, 77), jnp.int32)}
  hp = edge.EdgeHparams()
  state, key = edge.init(unet_vars, hp), jax.random.key(0)
  if not args.skip_finetune:
    state = bench_finetune(args, models, hp, state, batch, key, frozen)
  bench_sampling(args, models, state.unet, frozen, batch["input_ids"], key)
  print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def bench_finetune(args, models, hp, state, batch, key, frozen):
  # The state is donated: the U-Net's 3.4 GB is updated in place rather than copied.
  step = jax.jit(functools.partial(edge.train_step, models=models, hp=hp), donate_argnums=0)
  t = time.perf_counter()
  state, _ = jax.block_until_ready(step(state, batch, key, frozen))
  print(f"fine-tuning step compiled and ran once in {time.perf_counter() - t:.0f}s")
  holder = [state]

  def run_steps():
    for _ in range(args.steps):
      holder[0], m = step(holder[0], batch, key, frozen)
    return m["loss"]
  dt = best_of(run_steps, args.repeats) / args.steps
  px = args.latent * 8
  print(f"fine-tuning: {1 / dt:.4f} steps/s ({dt:.2f} s/step; batch {args.batch}, {px}x{px} px, "
        f"{args.latent}x{args.latent} latents, aux networks {args.aux})")
  return holder[0]


def bench_sampling(args, models, unet_vars, frozen, input_ids, key):
  b, px = args.batch, args.latent * 8
  sampler = edge.SamplerConfig(steps=args.sample_steps, height=px, width=px)
  sample = jax.jit(functools.partial(edge.sample_images, models=models, sampler=sampler))
  uncond = input_ids[:1]
  t = time.perf_counter()
  jax.block_until_ready(sample(unet_vars, frozen, input_ids, uncond, key))
  print(f"sampler compiled and ran once in {time.perf_counter() - t:.0f}s")
  ds = best_of(lambda: sample(unet_vars, frozen, input_ids, uncond, key), args.repeats)
  per_50 = ds / args.sample_steps * 50
  print(f"sampling: {b / ds:.4f} images/s at {args.sample_steps} PNDM steps ({ds:.1f} s per "
        f"batch of {b}); ~{b / per_50:.4f} images/s at EDGE's 50 steps (guidance 7.5)")

if __name__ == "__main__":
  main()
