"""EDGE's config builder `edge_config`, on top of the image-text base (jdd.configs.image_text).

EDGE's own defaults are the released code's CLI (shared/research/edge_method.md §1.1-1.3):
SGD lr 1e-3, 10 epochs, batch 128, 224-px fine-tuning images, lambda_c = lambda_d = 1,
temperature 0.1; sampling with the diffusers pipeline defaults PNDM 50 steps, guidance 7.5,
512 px, one image per drawn real caption. The evaluation is the image-text driver's (the
trajectory methods' evaluator and random subset). `edge_config` builds a paper cell, its
`smoke`, or the offline variant (backend 'offline': a small VAE and U-Net pretrained here).
"""

import ml_collections

from jdd.config import check_variant_keys, finalize, parse_arg, smoke_value
from jdd.configs import image_text


def edge_fields(c: ml_collections.ConfigDict) -> None:
  c.method = "edge"
  c.experts.num_experts = 0
  c.edge = ml_collections.ConfigDict(dict(
      backend="sd",                       # 'sd' (converted SD-1.5) | 'offline' (jdd's small)
      sd_path="weights/sd15",             # third_party/convert_diffusers.py --out
      tokenizer_path="weights/sd15/tokenizer",  # vocab.json + merges.txt (CLIP BPE)
      vae_input="signed",                 # 'signed' [-1, 1] | 'clip' (released code)
      finetune_size=256,                  # px; released code: 224 (see edge_flickr.py)
      lr=1e-3, epochs=10, steps=0,        # steps > 0 overrides epochs x captions / batch
      batch_size=128, contrastive_lambda=1.0, diversity_lambda=1.0, mse_lambda=0.0,
      temperature=0.1, unet_input="noisy", rescale_before_decode=True, clip_input="normalize",
      pairs=100, sample_seed=0, sample_batch=8,
      captions_per_image=1, synthesizer="prompt",  # jdd.caption_synthesis.SYNTHESIZERS
      # Beside EDGE's set: its queries sampled without fine-tuning, and the real images of
      # its queries through the same export and evaluation (jdd.drivers.generative).
      checks=("oracle", "no_finetune"),
      sampler=ml_collections.ConfigDict(dict(scheduler="pndm", steps=50, guidance_scale=7.5,
                                             eta=0.0, size=512))))
  # The offline backend's from-scratch networks (unused by backend 'sd').
  c.diffusion = ml_collections.ConfigDict(dict(
      vae=ml_collections.ConfigDict(dict(
          block_out_channels=(16, 32, 32), layers_per_block=1, latent_channels=4,
          norm_num_groups=8, steps=300, batch_size=16, lr=1e-3, kl_weight=1e-6)),
      unet=ml_collections.ConfigDict(dict(
          block_out_channels=(32, 64, 64), cross_attention=(True, True, False),
          layers_per_block=1, heads=4, norm_num_groups=8, steps=600, batch_size=32, lr=1e-3,
          p_uncond=0.1))))


def apply_offline_edge(c: ml_collections.ConfigDict) -> None:
  """jdd's generated data, MiniLM, the small NFNet, and small diffusion models trained here."""
  image_text.apply_offline(c)
  c.edge.backend = "offline"
  c.edge.finetune_size = 0             # the dataset's size
  c.edge.sampler.size = int(c.dataset.image_size)
  # A generator trained long enough to draw the shapes (issue 15; docs/edge.md shows its
  # samples): VAE 1000 x 16, U-Net 4000 x 32 (the first offline sizes, 300 and 600 steps, drew
  # colour blobs at chance); EDGE's fine-tuning 400 x 16 (0.64 epoch of the 10,000 captions;
  # the reference runs 10 epochs at batch 128).
  c.diffusion.vae.steps = 1000
  c.diffusion.unet.steps = 4000
  c.edge.steps = 400
  c.edge.batch_size = 16
  c.edge.lr = 1e-3
  c.edge.sampler.guidance_scale = 4.0
  c.edge.sample_batch = 25
  c.pretrain.epochs = 10
  c.log_every = 25
  c.checkpoint_every = 100


def apply_smoke_edge(c: ml_collections.ConfigDict, args: dict | None = None) -> None:
  """Tiny everything (6 pairs, or the variant's `pairs`): the tests' end-to-end run."""
  image_text.apply_smoke(c)
  c.dataset.sizes = ml_collections.ConfigDict(dict(train=40, val=10, test=10))
  c.pretrain.epochs = 1
  c.edge.sampler.size = int(c.dataset.image_size)
  c.diffusion.vae.update(dict(block_out_channels=(8, 8), norm_num_groups=4, steps=2,
                              batch_size=4))
  c.diffusion.unet.update(dict(block_out_channels=(8, 16), cross_attention=(True, False),
                               heads=2, norm_num_groups=4, steps=2, batch_size=4))
  pairs = int(smoke_value(args, "pairs", 6))
  c.edge.update(dict(steps=3, batch_size=4, pairs=pairs, sample_batch=3))
  c.edge.sampler.steps = 3
  c.evaluate.update(dict(epochs=2, eval_every=1, seeds=1, baselines=(f"random_{pairs}",)))
  c.log_every = 1
  c.checkpoint_every = 2


def edge_config(dataset: str, arg, name: str) -> ml_collections.ConfigDict:
  """A paper cell (`pairs=100|200|500`), its `smoke` (offline, tiny), or (dataset
  'shapes_captions') the offline variant; `reference` restores the released code's behaviour
  (clean U-Net input, no rescale before decoding, raw CLIP input, CLIP-normalised VAE input)."""
  args = parse_arg(arg)
  check_variant_keys(args, {"pairs", "smoke", "reference", "protocol"}, name)
  c = image_text.base_config()
  edge_fields(c)
  offline = dataset == "shapes_captions" or bool(args.get("smoke"))
  c.offline_variant = "configs/edge_shapes.py"
  pairs = image_text.read_pairs(args, dataset, name)
  if offline:
    apply_offline_edge(c)
  else:
    image_text.apply_paper_data(c, dataset, reference="lors")  # EDGE's data code is LoRS's
  # EDGE's evaluator trains the whole NFNet and a text head (evaluation/evaluation.py, LoRS's
  # buffer.py), offline too; its optimiser and schedule are the 'edge' protocol.
  c.model.train_backbone = True
  image_text.apply_protocol(c, str(args.get("protocol", "edge")))
  c.edge.pairs = pairs
  c.evaluate.baselines = (f"random_{pairs}",)
  if args.get("reference"):
    c.edge.update(dict(unet_input="clean", rescale_before_decode=False, clip_input="raw",
                       vae_input="clip"))
  if args.get("smoke"):
    apply_smoke_edge(c, args)
  return finalize(c)
