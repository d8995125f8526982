"""Parity of jdd's diffusion networks, CLIP towers and schedulers with diffusers / transformers.

Tiny PyTorch models with random weights (tests/diffusers_fixtures.py), saved in their libraries'
layouts on disk, converted with `third_party/convert_diffusers.py` and reloaded through
`jdd.models.diffusion.load_components` (Orbax), so the converter and the loader are exercised end
to end. No pretrained weights exist offline (shared/research/stack_and_data.md §5).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from jdd.models import diffusion  # noqa: E402
from jdd.models.diffusion import schedulers as S  # noqa: E402
from third_party import convert_diffusers  # noqa: E402
from third_party.torch_to_flax import CheckpointMismatchError  # noqa: E402

from tests.diffusers_fixtures import (SD_SCHEDULER, TEXT_KW, VISION_KW, convert,  # noqa: E402
                                      randomize, write_tiny_sd)

TOL = 1e-4


def _nchw(x):
  return np.asarray(x).transpose(0, 3, 1, 2)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  """Torch models, and the jdd components converted from their files on disk."""
  root = tmp_path_factory.mktemp("sd")
  made = write_tiny_sd(root)
  out = root / "jdd"
  convert(made["pipe"], made["clip_dir"], out)
  comps = diffusion.load_components(str(out))
  return {"torch": made["torch"], "jdd": comps, "out": out, "pipe": made["pipe"]}


def test_card_records_sources_and_scheduler(converted):
  with open(converted["out"] / "card.json") as f:
    card = json.load(f)
  assert set(card["components"]) == {"unet", "vae", "text_encoder", "clip"}
  assert card["components"]["vae"]["source"]["format"] == "torch"
  assert card["components"]["unet"]["source"]["format"] == "safetensors"
  # transformers 5 saves CLIPTextModel keys without 'text_model.': the converter renames them.
  assert card["components"]["text_encoder"]["source"]["renamed"] > 0
  assert diffusion.load_schedule(str(converted["out"])) == S.ScheduleConfig()


def test_unet_noise_prediction(converted):
  unet, comp = converted["torch"]["unet"], converted["jdd"]["unet"]
  rs = np.random.RandomState(0)
  x = rs.randn(2, 4, 8, 8).astype(np.float32)
  ctx = rs.randn(2, 5, 32).astype(np.float32)
  t = np.array([3, 777])
  with torch.no_grad():
    ref = unet(torch.tensor(x), torch.tensor(t), torch.tensor(ctx)).sample.numpy()
  out = jax.jit(comp.model.apply)(comp.variables, x.transpose(0, 2, 3, 1), t, ctx)
  assert np.abs(ref).max() > 0.05
  np.testing.assert_allclose(_nchw(out), ref, atol=TOL)


def test_vae_encode_decode(converted):
  vae, comp = converted["torch"]["vae"], converted["jdd"]["vae"]
  img = np.random.RandomState(1).randn(2, 3, 16, 16).astype(np.float32)
  with torch.no_grad():
    dist = vae.encode(torch.tensor(img)).latent_dist
    dec = vae.decode(dist.mean).sample.numpy()
  m = comp.model
  mean, logvar = jax.jit(lambda v, x: m.apply(v, x, method=m.encode))(
      comp.variables, img.transpose(0, 2, 3, 1))
  out = jax.jit(lambda v, z: m.apply(v, z, method=m.decode))(comp.variables, mean)
  np.testing.assert_allclose(_nchw(mean), dist.mean.numpy(), atol=TOL)
  np.testing.assert_allclose(_nchw(logvar), dist.logvar.numpy(), atol=TOL)
  np.testing.assert_allclose(_nchw(out), dec, atol=TOL)


def _ids():
  ids = np.array([[0, 5, 7, 99, 1, 1, 1, 1], [0, 3, 4, 8, 9, 10, 99, 1]])  # 99 = max id (EOS)
  mask = (np.arange(8)[None] <= np.array([[3], [6]])).astype(np.int64)
  return ids, mask


def test_clip_text_encoder_hidden_and_pooled(converted):
  text, comp = converted["torch"]["text"], converted["jdd"]["text_encoder"]
  ids, _ = _ids()
  with torch.no_grad():  # SD calls its text encoder without an attention mask
    ref = text(input_ids=torch.tensor(ids))
  m = comp.model
  hidden, pooled = jax.jit(lambda v, i: (m.apply(v, i, method=m.text_hidden),  # no projection:
                                         m.apply(v, i, method=m.text_features)))(  # pooled EOS
      comp.variables, ids)
  np.testing.assert_allclose(hidden, ref.last_hidden_state.numpy(), atol=TOL)
  np.testing.assert_allclose(pooled, ref.pooler_output.numpy(), atol=TOL)


def test_clip_features(converted):
  clip, comp = converted["torch"]["clip"], converted["jdd"]["clip"]
  ids, mask = _ids()
  px = np.random.RandomState(2).randn(2, 3, 32, 32).astype(np.float32)
  with torch.no_grad():
    t_ref = clip.get_text_features(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
    i_ref = clip.get_image_features(pixel_values=torch.tensor(px))
  t_ref = getattr(t_ref, "pooler_output", t_ref).numpy()
  i_ref = getattr(i_ref, "pooler_output", i_ref).numpy()
  m = comp.model
  feats = jax.jit(lambda v, i, k, p: (m.apply(v, i, k, method=m.text_features),
                                       m.apply(v, p, method=m.image_features)))
  t_out, i_out = feats(comp.variables, ids, mask, px.transpose(0, 2, 3, 1))
  np.testing.assert_allclose(t_out, t_ref, atol=TOL)
  np.testing.assert_allclose(i_out, i_ref, atol=TOL)


def test_clip_vision_with_projection_and_new_eos(tmp_path):
  """CLIPVisionModelWithProjection's layout, and first-EOS pooling when eos_token_id != 2."""
  vis = randomize(transformers.CLIPVisionModelWithProjection(
      transformers.CLIPVisionConfig(**VISION_KW, projection_dim=16)), 0.2)
  vis.save_pretrained(tmp_path / "vis")
  text = randomize(transformers.CLIPTextModelWithProjection(
      transformers.CLIPTextConfig(**{**TEXT_KW, "eos_token_id": 7}, projection_dim=16)), 0.2)
  text.save_pretrained(tmp_path / "txt")
  px = np.random.RandomState(3).randn(2, 3, 32, 32).astype(np.float32)
  ids = np.array([[0, 5, 7, 99, 7, 7], [0, 9, 3, 7, 1, 1]])  # the first 7 pools, not the max id
  with torch.no_grad():
    i_ref = vis(pixel_values=torch.tensor(px)).image_embeds.numpy()
    t_ref = text(input_ids=torch.tensor(ids)).text_embeds.numpy()
  for folder, fn, inp, ref in (("vis", "image_features", px.transpose(0, 2, 3, 1), i_ref),
                               ("txt", "text_features", ids, t_ref)):
    params, config, _ = convert_diffusers.convert_component(str(tmp_path / folder), "CLIP")
    model = diffusion.clip.CLIP(config)
    out = jax.jit(lambda v, x: model.apply(v, x, method=fn))(params, inp)
    np.testing.assert_allclose(out, ref, atol=TOL)


def test_converter_is_strict(converted, tmp_path, capsys):
  """A config that does not fit the weights fails with the offending keys and writes nothing."""
  bad = tmp_path / "bad"
  os.makedirs(bad)
  for part in ("unet", "vae", "text_encoder"):
    os.symlink(converted["pipe"] / part, bad / part)
  os.remove(bad / "unet")
  os.makedirs(bad / "unet")
  with open(converted["pipe"] / "unet" / "config.json") as f:
    cfg = json.load(f)
  cfg["layers_per_block"] = 1
  with open(bad / "unet" / "config.json", "w") as f:
    json.dump(cfg, f)
  os.symlink(converted["pipe"] / "unet" / "diffusion_pytorch_model.safetensors",
             bad / "unet" / "diffusion_pytorch_model.safetensors")
  with pytest.raises(CheckpointMismatchError) as err:
    convert_diffusers.convert(str(bad), None)
  assert "down_blocks.0.resnets.1.conv1.weight" in err.value.unexpected
  assert convert_diffusers.main(["--diffusers", str(bad), "--out", str(tmp_path / "o")]) == 2
  assert "unexpected keys" in capsys.readouterr().err
  assert not os.path.exists(tmp_path / "o" / "card.json")


def _torch_shape(path, leaf):
  s = tuple(leaf.shape)
  if path[-1] == "kernel" and len(s) == 4:
    return (s[3], s[2], s[0], s[1])
  return (s[1], s[0]) if path[-1] == "kernel" and len(s) == 2 else s


def _flat(tree, prefix=()):
  if isinstance(tree, dict):
    for k, v in tree.items():
      yield from _flat(v, prefix + (k,))
  else:
    yield prefix, tree


def test_full_size_layouts_match_reference_state_dicts():
  """SD 1.5's U-Net and VAE and CLIP ViT-B/32 at full size: every jdd leaf names a reference key
  of the right shape and vice versa (torch 'meta' tensors, jax.eval_shape: nothing allocated).
  Also the counts of edge_method.md §1.1: 859.52 M U-Net parameters in 686 leaves, of which the
  DiffFit mask trains 404 leaves holding 0.444 M."""
  from jdd.methods import edge
  with torch.device("meta"):
    refs = {"unet": diffusers.UNet2DConditionModel(sample_size=64, cross_attention_dim=768),
            "vae": diffusers.AutoencoderKL(
                down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4,
                block_out_channels=(128, 256, 512, 512), layers_per_block=2, sample_size=512),
            "clip": transformers.CLIPModel(transformers.CLIPConfig())}
  mine = {"unet": (diffusion.unet.param_template(diffusion.unet.UNetConfig()),
                   diffusion.unet.torch_key),
          "vae": (diffusion.vae.param_template(diffusion.vae.VAEConfig()),
                  diffusion.vae.torch_key),
          "clip": (diffusion.clip.param_template(diffusion.clip.CLIPConfig(logit_scale=True)),
                   diffusion.clip.torch_key)}
  for name, ref in refs.items():
    template, key = mine[name]
    want = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    got = {key(p): _torch_shape(p, leaf) for p, leaf in _flat(template)}
    assert got == want, (name, sorted(set(got) ^ set(want))[:5])
  leaves = list(_flat(mine["unet"][0]))
  labels = dict(_flat(edge.trainable_labels(mine["unet"][0])))
  size = lambda ls: sum(int(np.prod(leaf.shape)) for _, leaf in ls)
  trained = [(p, leaf) for p, leaf in leaves if labels[p] == "train"]
  assert (len(leaves), len(trained)) == (686, 404)
  assert round(size(leaves) / 1e6, 2) == 859.52 and round(size(trained) / 1e6, 3) == 0.444


# ------------------------------------------------------------------------------- schedulers


def _sched(cls, drop):
  return cls(**{k: v for k, v in SD_SCHEDULER.items() if k not in drop})


def test_ddpm_add_noise():
  ddpm = _sched(diffusers.DDPMScheduler, ("set_alpha_to_one", "skip_prk_steps"))
  acp = S.alphas_cumprod(S.ScheduleConfig())
  np.testing.assert_allclose(acp, ddpm.alphas_cumprod.numpy(), rtol=2e-6)
  rs = np.random.RandomState(0)
  x0, noise = rs.randn(2, 3, 4, 4, 2).astype(np.float32)
  t = np.array([0, 500, 999])
  ref = ddpm.add_noise(torch.tensor(x0), torch.tensor(noise), torch.tensor(t)).numpy()
  np.testing.assert_allclose(S.add_noise(acp, x0, noise, t), ref, atol=1e-5)


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_ddim_step(eta):
  steps, cfg = 10, S.ScheduleConfig()
  acp = S.alphas_cumprod(cfg)
  ddim = _sched(diffusers.DDIMScheduler, ("skip_prk_steps",))
  ddim.set_timesteps(steps)
  np.testing.assert_array_equal(ddim.timesteps.numpy(), S.ddim_timesteps(cfg, steps))
  rs = np.random.RandomState(1)
  x, eps = rs.randn(2, 2, 4, 4, 3).astype(np.float32)
  key = jax.random.key(5)
  z = np.asarray(jax.random.normal(key, x.shape, jnp.float32))  # jdd's eta noise, given to both
  step = jax.jit(lambda e, t, x: S.ddim_step(cfg, acp, steps, e, t, x, eta, key))
  for t in ddim.timesteps.tolist():  # every step on the same inputs (the last has t_prev < 0)
    ref = ddim.step(torch.tensor(eps), t, torch.tensor(x), eta=eta,
                    variance_noise=torch.tensor(z)).prev_sample.numpy()
    out = step(eps, jnp.int32(t), x)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_pndm_plms_sequence():
  steps, cfg = 10, S.ScheduleConfig()
  acp = S.alphas_cumprod(cfg)
  pndm = _sched(diffusers.PNDMScheduler, ("clip_sample",))
  pndm.set_timesteps(steps)
  np.testing.assert_array_equal(pndm.timesteps.numpy(), S.pndm_timesteps(cfg, steps))
  rs = np.random.RandomState(2)
  x = rs.randn(2, 4, 4, 3).astype(np.float32)
  x_ref, state = x.copy(), S.pndm_init(x.shape)
  step = jax.jit(lambda st, e, t, x: S.pndm_step(cfg, acp, steps, st, e, t, x))
  for t in pndm.timesteps.tolist():  # the stateful multistep: both sides see the same eps
    eps = rs.randn(*x.shape).astype(np.float32)
    x_ref = pndm.step(torch.tensor(eps), t, torch.tensor(x_ref)).prev_sample.numpy()
    x, state = step(state, eps, jnp.int32(t), x)
    np.testing.assert_allclose(x, x_ref, rtol=1e-4, atol=1e-4 * np.abs(x_ref).max())


def test_cfg_combine():
  u, c = np.float32([1.0, 2.0]), np.float32([3.0, 1.0])
  np.testing.assert_allclose(S.cfg_combine(u, c, 7.5), u + 7.5 * (c - u))
