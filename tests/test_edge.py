"""EDGE fine-tuning and sampling on tiny random jdd networks (no weights exist offline).

Checks: the DiffFit mask selects exactly the bias and norm leaves; a step changes only those and
compiles once; the U-Net input option (noisy, or the released code's clean latents); the
contrastive and diversity losses against plain PyTorch implementations; seeded pair sampling.
"""

from __future__ import annotations

import dataclasses
import zlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdd.methods import edge
from jdd.models.diffusion import clip, unet, vae

VOCAB, LENGTH = 50, 8
UNET_CFG = unet.UNetConfig(sample_size=8, block_out_channels=(16, 32), layers_per_block=1,
                           down_block_types=(unet.CROSS_DOWN, unet.PLAIN_DOWN),
                           up_block_types=(unet.PLAIN_UP, unet.CROSS_UP),
                           attention_head_dim=2, cross_attention_dim=16, norm_num_groups=4)
VAE_CFG = vae.VAEConfig(block_out_channels=(8, 8), layers_per_block=1, norm_num_groups=4)
TEXT = clip.TowerConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                        num_attention_heads=2, vocab_size=VOCAB, max_position_embeddings=LENGTH)
VISION = clip.TowerConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                          num_attention_heads=2, image_size=16, patch_size=8)
SD_TEXT_CFG = clip.CLIPConfig(TEXT, None, projection_dim=0)
LOSS_CLIP_CFG = clip.CLIPConfig(TEXT, VISION, projection_dim=8)


def tokenize(captions):
  """A stand-in for the CLIP tokenizer: BOS 0, hashed word ids, EOS = the largest id, EOS pad."""
  out = np.full((len(captions), LENGTH), VOCAB - 1, np.int32)
  for i, c in enumerate(captions):
    words = [1 + zlib.crc32(w.encode()) % (VOCAB - 2) for w in c.split()][:LENGTH - 2]
    out[i, :len(words) + 1] = [0] + words
  return out


def random_variables(template, seed):
  """Kernels ~ N(0, 1/fan_in), norm gains 1 + N(0, 0.05^2), biases and the rest N(0, 0.05^2)."""
  rs = np.random.RandomState(seed)
  def draw(path, leaf):
    name = getattr(path[-1], "key", "")
    x = rs.randn(*leaf.shape).astype(np.float32)
    if name == "kernel":
      x = x / np.sqrt(np.prod(leaf.shape[:-1]))
    else:
      x = 1.0 + 0.05 * x if name == "scale" else 0.05 * x
    return x.astype(leaf.dtype)
  return jax.tree_util.tree_map_with_path(draw, template)


@pytest.fixture(scope="module")
def setup():
  return build()


def build():
  key = jax.random.key(0)
  models = edge.EdgeModels(unet.UNet2DConditionModel(UNET_CFG), vae.AutoencoderKL(VAE_CFG),
                           clip.CLIP(SD_TEXT_CFG), clip.CLIP(LOSS_CLIP_CFG))

  # Random weights from the shapes alone (numpy): compiling the Flax initialisers of four
  # networks costs far more than the tests themselves on a shared 2-core machine.
  unet_vars = random_variables(unet.param_template(UNET_CFG, LENGTH), 0)
  frozen = {"vae": random_variables(vae.param_template(VAE_CFG), 1),
            "text_encoder": random_variables(clip.param_template(SD_TEXT_CFG), 2),
            "clip": random_variables(clip.param_template(LOSS_CLIP_CFG), 3)}
  captions = ["a dog runs on the beach", "two cats sleep", "a red car in the street",
              "children play football", "a bowl of fruit", "a man rides a horse"]
  ids = tokenize(captions[:4])
  batch = {"images": jax.random.uniform(key, (4, 16, 16, 3), minval=-1, maxval=1),
           "input_ids": ids,
           "attention_mask": (np.arange(LENGTH)[None] <= np.argmax(ids, 1)[:, None]).astype(
               np.int32)}
  return models, unet_vars, frozen, batch, captions


def _leaves(tree):
  return {tuple(getattr(k, "key", str(k)) for k in p): v
          for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_mask_selects_exactly_bias_and_norm_leaves(setup):
  _, unet_vars, *_ = setup
  labels = _leaves(edge.trainable_labels(unet_vars))
  # Independent rule on jdd's names: Dense/Conv biases and GroupNorm/LayerNorm scale+bias.
  for path, label in labels.items():
    expected = path[-1] == "bias" or (path[-1] == "scale" and "norm" in path[-2])
    assert (label == "train") == expected, path
  norms = [p for p in labels if "norm" in p[-2]]
  assert norms and all(labels[p] == "train" for p in norms)
  assert any(p[-2] == "conv_norm_out" for p in norms)
  n_train = sum(v == "train" for v in labels.values())
  assert 0 < n_train < len(labels)


def test_step_changes_only_trainable_leaves_and_compiles_once(setup):
  models, unet_vars, frozen, batch, _ = setup
  hp = edge.EdgeHparams(lr=0.5, mse_lambda=0.3)
  state = edge.init(unet_vars, hp)
  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(state, batch, rng, frozen):
    return edge.train_step(state, batch, rng, frozen, models=models, hp=hp)

  rng = jax.random.key(1)
  s1, m1 = step(state, batch, rng, frozen)
  s2, m2 = step(s1, batch, rng, frozen)
  assert int(s2.step) == 2
  for m in (m1, m2):
    assert all(np.isfinite(float(v)) for v in m.values()), m
    np.testing.assert_allclose(m["loss"], m["contrastive"] + m["diversity"] + 0.3 * m["mse"],
                               rtol=1e-5)
  labels = _leaves(edge.trainable_labels(unet_vars))
  before, after = _leaves(unet_vars), _leaves(s2.unet)
  changed = {p for p in before if not np.array_equal(before[p], after[p])}
  trainable = {p for p, lab in labels.items() if lab == "train"}
  assert changed <= trainable  # nothing frozen moved, bit for bit
  assert len(changed) >= 0.9 * len(trainable), (len(changed), len(trainable))
  # Derived randomness: the same state, batch and key give the same step.
  s1b, _ = step(state, batch, rng, frozen)
  chex.assert_trees_all_equal(s1.unet, s1b.unet)


class StubUNet:
  """A cheap stand-in for the U-Net (plumbing tests need no compiled network): eps depends on
  the input, the timestep and the text, so a wrong wire changes the result."""

  def apply(self, variables, x, t, context):
    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (x.shape[0],))
    return (variables["w"] * x + t[:, None, None, None] / 1000.0
            + jnp.mean(context, axis=(1, 2))[:, None, None, None])


@pytest.mark.parametrize("mode", ["noisy", "clean"])
def test_unet_input_option_and_x0(setup, mode):
  models, _, frozen, batch, _ = setup
  models = dataclasses.replace(models, unet=StubUNet())
  stub_vars = {"w": jnp.float32(0.5)}
  hp = edge.EdgeHparams(unet_input=mode)
  latents = jax.random.normal(jax.random.key(2), (4, 8, 8, 4))
  context = jax.random.normal(jax.random.key(4), (4, LENGTH, 16))
  out = edge.one_step_x0(stub_vars, latents, context, jax.random.key(3), models, hp)
  want_in = out["noisy"] if mode == "noisy" else latents
  np.testing.assert_array_equal(out["unet_input"], want_in)
  np.testing.assert_allclose(out["eps_hat"], StubUNet().apply(stub_vars, want_in, out["t"],
                                                              context), atol=1e-6)
  acp = np.asarray(edge.sched.alphas_cumprod(models.schedule))[np.asarray(out["t"])]
  a = acp[:, None, None, None]
  np.testing.assert_allclose(out["noisy"], np.sqrt(a) * latents + np.sqrt(1 - a) * out["noise"],
                             atol=1e-5)
  np.testing.assert_allclose(out["x0"], (out["noisy"] - np.sqrt(1 - a) * out["eps_hat"])
                             / np.sqrt(a), rtol=1e-4, atol=1e-4)


def test_reference_hparams():
  ref = edge.EdgeHparams.reference()
  assert (ref.unet_input, ref.rescale_before_decode, ref.clip_input) == ("clean", False, "raw")
  assert (ref.lr, ref.temperature, ref.contrastive_lambda, ref.diversity_lambda,
          ref.mse_lambda) == (1e-3, 0.1, 1.0, 1.0, 0.0)
  with pytest.raises(ValueError):
    edge.EdgeHparams(unet_input="latent")


def test_losses_match_plain_torch():
  torch = pytest.importorskip("torch")
  F = torch.nn.functional
  rs = np.random.RandomState(0)
  img, txt = rs.randn(2, 6, 8).astype(np.float32)

  def torch_contrastive(i, t, tau=0.1):
    i, t = F.normalize(i, dim=1), F.normalize(t, dim=1)
    labels = torch.arange(i.shape[0])
    return 0.5 * (F.cross_entropy(i @ t.T / tau, labels) + F.cross_entropy(t @ i.T / tau, labels))

  def torch_diversity(i, t):
    j = F.normalize(torch.cat([i, t], dim=1), dim=1)
    s = j @ j.T
    s = s - torch.diag(torch.diag(s))
    b = s.shape[0]
    return s.sum() / (b * (b - 1))

  ti, tt = torch.tensor(img), torch.tensor(txt)
  np.testing.assert_allclose(edge.contrastive_loss(img, txt, 0.1), torch_contrastive(ti, tt),
                             rtol=1e-5)
  np.testing.assert_allclose(edge.diversity_loss(img, txt), torch_diversity(ti, tt), rtol=1e-5,
                             atol=1e-7)


def test_sample_pairs_is_seeded(setup):
  models, unet_vars, frozen, _, captions = setup
  sampler = edge.SamplerConfig(scheduler="pndm", steps=3, height=16, width=16)
  kw = dict(models=models, sampler=sampler, batch_size=2)
  imgs, prompts, idx = edge.sample_pairs(unet_vars, frozen, captions, tokenize, 3, seed=7, **kw)
  assert imgs.shape == (3, 16, 16, 3) and imgs.min() >= 0 and imgs.max() <= 1
  assert prompts == [captions[i] for i in idx] and len(set(idx.tolist())) == 3
  again, prompts2, _ = edge.sample_pairs(unet_vars, frozen, captions, tokenize, 3, seed=7, **kw)
  np.testing.assert_array_equal(imgs, again)
  assert prompts2 == prompts
  other, _, idx3 = edge.sample_pairs(unet_vars, frozen, captions, tokenize, 3, seed=8, **kw)
  assert not np.array_equal(other, imgs)


def test_ddim_sampling_with_guidance(setup):
  models, _, _, _, _ = setup
  models = dataclasses.replace(models, unet=StubUNet())
  stub_vars = {"w": jnp.float32(0.3)}
  sampler = edge.SamplerConfig(scheduler="ddim", steps=3, height=16, width=16,
                               guidance_scale=3.0)
  context = jax.random.normal(jax.random.key(5), (2, LENGTH, 16))
  empty = jax.random.normal(jax.random.key(6), (1, LENGTH, 16))
  z = edge.sample_latents(stub_vars, context, empty, jax.random.key(0), models=models,
                          sampler=sampler)
  assert z.shape == (2, 8, 8, 4)
  # By hand: the same guided DDIM loop in Python (the diffusers pipeline's order of work).
  cfg, acp = models.schedule, edge.sched.alphas_cumprod(models.schedule)
  x = jax.random.normal(jax.random.split(jax.random.key(0))[0], z.shape)
  for t in edge.sched.ddim_timesteps(cfg, 3):
    e_u = StubUNet().apply(stub_vars, x, t, jnp.broadcast_to(empty, context.shape))
    e_c = StubUNet().apply(stub_vars, x, t, context)
    x = edge.sched.ddim_step(cfg, acp, 3, e_u + 3.0 * (e_c - e_u), jnp.int32(t), x)
  np.testing.assert_allclose(z, x, rtol=1e-5, atol=1e-5)


def test_ddpm_pretrain_step_drops_captions_to_the_null_context(setup):
  """p_uncond = 1 must train exactly as if every caption were the null context; p_uncond = 0
  uses the captions (a different loss)."""
  import optax
  models, unet_vars, *_ = setup
  rs = np.random.RandomState(0)
  shape = (3, 8, 8, 4)
  batch = {"mean": rs.randn(*shape).astype(np.float32),
           "logvar": np.full(shape, -4.0, np.float32),
           "context": rs.randn(3, 1, 16).astype(np.float32),
           "null": np.zeros((1, 1, 16), np.float32)}
  opt = optax.sgd(0.1)
  step = jax.jit(lambda b, p_uncond: edge.ddpm_pretrain_step(
      unet_vars, opt.init(unet_vars), b, jax.random.key(3), unet=models.unet,
      schedule=models.schedule, opt=opt, scaling_factor=0.5, p_uncond=p_uncond)[2]["loss"],
      static_argnums=1)
  nulled = {**batch, "context": np.zeros_like(batch["context"])}
  np.testing.assert_allclose(step(batch, 1.0), step(nulled, 0.0), rtol=1e-6)
  assert abs(float(step(batch, 0.0)) - float(step(nulled, 0.0))) > 1e-6
