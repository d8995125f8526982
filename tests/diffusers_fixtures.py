"""Tiny random Stable Diffusion / CLIP checkpoints on disk (imported by the tests, not a test).

Shared by tests/test_diffusion_parity.py and tests/test_edge_sd_backend.py: diffusers /
transformers models with random weights everywhere, saved in their libraries' on-disk layouts (a
diffusers pipeline folder with unet/, vae/, text_encoder/ and scheduler/, and a transformers
CLIPModel folder), for `third_party/convert_diffusers.py` to convert. No pretrained weights exist
offline (shared/research/stack_and_data.md §5).
"""

from __future__ import annotations

import json
import os
import pathlib

import diffusers
import torch
import transformers

SD_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                    beta_schedule="scaled_linear", set_alpha_to_one=False, steps_offset=1,
                    skip_prk_steps=True, clip_sample=False)
UNET_KW = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
               layers_per_block=2, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
               up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
               attention_head_dim=4, norm_num_groups=8)
VAE_KW = dict(in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
              down_block_types=("DownEncoderBlock2D",) * 2,
              up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4,
              sample_size=16)
TEXT_KW = dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=4, max_position_embeddings=12, eos_token_id=2,
               bos_token_id=0, pad_token_id=1)
VISION_KW = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, image_size=32, patch_size=8)


def randomize(module, std=0.1):
  """Random weights everywhere (norm gains included), so every parameter matters."""
  gen = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for p in module.parameters():
      p.copy_(torch.randn(p.shape, generator=gen) * std)
  return module.eval()


def write_tiny_sd(root, text_kw=None) -> dict:
  """Random SD pipeline parts (UNET_KW, VAE_KW, a CLIPTextModel of `text_kw`) saved under
  root/pipe, and a random CLIPModel (`text_kw` + VISION_KW towers) under root/clip.

  The VAE is saved as a torch pickle, the rest as safetensors, so the converter reads both.
  Returns {'torch': {unet, vae, text, clip}, 'pipe': Path, 'clip_dir': Path}.
  """
  text_kw = TEXT_KW if text_kw is None else text_kw
  pipe, clip_dir = pathlib.Path(root) / "pipe", pathlib.Path(root) / "clip"
  unet = randomize(diffusers.UNet2DConditionModel(**UNET_KW))
  vae = randomize(diffusers.AutoencoderKL(**VAE_KW))
  text = randomize(transformers.CLIPTextModel(transformers.CLIPTextConfig(**text_kw)), 0.2)
  clip_cfg = transformers.CLIPConfig(text_config=text_kw, vision_config=VISION_KW,
                                     projection_dim=16)
  clip = randomize(transformers.CLIPModel(clip_cfg), 0.2)
  unet.save_pretrained(pipe / "unet")
  vae.save_pretrained(pipe / "vae", safe_serialization=False)  # torch pickle
  text.save_pretrained(pipe / "text_encoder")
  os.makedirs(pipe / "scheduler")
  with open(pipe / "scheduler" / "scheduler_config.json", "w") as f:
    json.dump({"_class_name": "PNDMScheduler", **SD_SCHEDULER}, f)
  clip.save_pretrained(clip_dir)
  return {"torch": {"unet": unet, "vae": vae, "text": text, "clip": clip}, "pipe": pipe,
          "clip_dir": clip_dir}


def convert(pipe, clip_dir, out) -> None:
  """The command line's conversion into `out` (card.json + unet/ vae/ text_encoder/ clip/)."""
  from third_party import convert_diffusers
  assert convert_diffusers.main(["--diffusers", str(pipe), "--clip", str(clip_dir),
                                 "--out", str(out)]) == 0
