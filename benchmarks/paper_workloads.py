"""The workloads `paper_shapes.py` times: each row's jdd step and its PyTorch counterpart,
built from the row's shapes (a dict of sizes that `paper_shapes.shapes` makes).

jdd: the method's pure step jitted as its driver jits it (`jdd.stages.pixel_groups`,
`compensators`, `residual_matching`, `distill`, `edge_finetune`) and compiled ahead of time, so
the timed calls run the compiled program; random weights (Flax init, or N(0, 1/fan_in) for the
SD U-Net as `benchmarks/edge.py` draws them). PyTorch: the loops of `torch_reference.py`.
Each builder returns (cycle, compile seconds, XLA temp + argument + output MiB): `cycle` is the
list of closures one round of the row runs (FADRM: every resolution x every teacher).
"""

from __future__ import annotations

import dataclasses
import time

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# The PyTorch loop's gradient for each jdd mode: exact recomputes each student step in the
# backward pass, as jdd's default `distill.remat` does.
TORCH_MODE = {"exact": "exact_remat"}


# ---------------------------------------------------------------------------------- jdd
def _compile(fn, *args):
  """AOT-compile `fn` (jitted) for `args`: (compiled, seconds, XLA temp+arg+out MiB)."""
  t = time.perf_counter()
  compiled = fn.lower(*args).compile()
  seconds = time.perf_counter() - t
  mem = compiled.memory_analysis()
  mib = None
  if mem is not None:
    mib = sum(getattr(mem, f"{k}_size_in_bytes") for k in ("temp", "argument", "output")) / 2**20
  return compiled, seconds, mib


def jdd_teacher(arch: str, classes: int, tiny: bool):
  from jdd import models
  kw = {}
  if tiny and arch == "densenet121":
    kw = dict(growth_rate=8, block_config=(1, 1, 1, 1), num_init_features=16)
  elif tiny and arch == "mobilenet_v2":
    kw = dict(width_mult=0.25)
  elif tiny and arch == "shufflenet_v2_x1_0":
    arch = "shufflenet_v2_x0_5"
  return models.build_model(arch, classes, **kw)


def jdd_recover(sh: dict):
  import functools
  import jax
  import jax.numpy as jnp
  from jdd import models
  from jdd.methods import fadrm, infer, sre2l
  full, b, classes = max(sh["res"]), sh["batch"], sh["classes"]
  mods = [jdd_teacher(a, classes, sh["tiny"]) for a in sh["archs"]]
  teachers = tuple(jax.jit(lambda k, m=m: models.init_variables(m, k, (full, full, 3)))(
      jax.random.key(i)) for i, m in enumerate(mods))
  targets = (jnp.arange(b, dtype=jnp.int32) % classes)[None]
  ids = jnp.zeros((1,), jnp.int32)
  common = dict(r_bn=0.01, first_bn_multiplier=10.0, random_resized_crop=True,
                crop_scale=(0.08, 1.0), flip=True, jitter=sh["jitter"], mean=MEAN, std=STD)
  key = jax.random.key(7)
  if sh["method"] in ("sre2l", "infer"):
    hp = sre2l.RecoverHParams(iterations=sh["iterations"], lr=0.25, jitter_symmetric=False,
                              **common)
    if sh["method"] == "sre2l":
      state = sre2l.init(jax.random.key(1), ids, b, (full, full, 3), hp)
      batch = {"targets": targets, "group_ids": ids}
      fn = jax.jit(functools.partial(sre2l.step, model=mods[0], hp=hp), donate_argnums=0)
    else:
      hp = infer.InferHParams(**dataclasses.asdict(hp), clip_in_loss=False)
      state = infer.init(1, (full, full, 3), hp)
      real = jax.random.normal(jax.random.key(2), (1, b, full, full, 3))
      batch = {"real": real, "targets": targets, "unit_ids": ids}
      fn = jax.jit(functools.partial(infer.step, model=mods[0], hp=hp), donate_argnums=0)
    compiled, compile_s, xla = _compile(fn, state, batch, key, teachers[0])
    holder = [state]

    def run():
      holder[0], _ = compiled(holder[0], batch, jax.random.fold_in(key, 1), teachers[0])
      return holder[0]
    return [run], compile_s, xla
  # FADRM / FADRM+: the stages' resolutions, each with its own compiled step.
  hp = fadrm.FadrmHParams(resolutions=sh["res"], budgets=(sh["iterations"] // len(sh["res"]),)
                          * len(sh["res"]), lr=0.25, alpha=0.5, **common)
  # Donated state, as jdd.stages.residual_matching jits it; each stage's state gets its own
  # copy of the patches, since a donated state consumes them.
  fn = jax.jit(functools.partial(fadrm.step, models=tuple(mods), hp=hp), donate_argnums=0)
  patches = jax.random.uniform(jax.random.key(9), (1, b, full, full, 3), minval=-1, maxval=1)
  batch = {"targets": targets, "group_ids": ids}
  cycle, compile_s, xla, programs = [], 0.0, 0.0, {}
  for index, stage in enumerate(fadrm.stage_schedule(hp.resolutions, hp.budgets)):
    state = fadrm.init(jnp.copy(patches), hp)
    state = fadrm.enter_stage(state, hp, stage) if index else state
    if stage.resolution not in programs:      # as jit's cache: one program per resolution
      compiled, seconds, mib = _compile(fn, state, batch, key, teachers)
      programs[stage.resolution] = compiled
      compile_s, xla = compile_s + seconds, max(xla, mib or 0.0)
    compiled = programs[stage.resolution]
    holder = [state, 0]

    def run(compiled=compiled, holder=holder):
      holder[1] += 1
      holder[0], _ = compiled(holder[0], batch, jax.random.fold_in(key, holder[1]), teachers)
      return holder[0]
    cycle += [run] * len(mods)
  return cycle, compile_s, xla or None


def tm_setting(sh: dict):
  import trajectory_matching as tmb
  return tmb, tmb.Setting(iters=1, **sh["setting"])


def jdd_tm(sh: dict):
  import jax
  from jdd.methods import tm_vl
  tmb, s = tm_setting(sh)
  problem = tmb.build_problem(s, torch_arrays=False)
  dc = problem["dc"]
  dc.grad_mode = sh["mode"]
  spec, unravels = problem["spec"], problem["unravels"]
  frozen = None if spec.train_backbone else problem["variables"]
  loss_fn = tm_vl.make_student_loss(problem["model"], frozen, spec, dc)
  tx = tm_vl.outer_optimizer(dc)
  fn = jax.jit(tm_vl.make_step(loss_fn, tx, lambda m, v: unravels[m](v), problem["meta"]["n"],
                               dc))
  state = {"params": problem["params"], "opt": tx.init(problem["params"])}
  batch, key = problem["batch"], problem["key_step"]
  del problem
  compiled, compile_s, xla = _compile(fn, state, batch, key)
  holder, count = [state], [0]

  def run():
    count[0] += 1
    holder[0], _ = compiled(holder[0], batch, jax.random.fold_in(key, count[0]))
    return holder[0]
  return [run], compile_s, xla


def edge_configs(sh: dict) -> dict:
  """jdd configs and the matching diffusers / transformers keyword arguments."""
  import edge as edge_bench
  from jdd.models.diffusion import unet, vae
  px = sh["px"]
  if sh["tiny"]:
    u = dict(block_out_channels=(32, 64), layers_per_block=1, attention_head_dim=2,
             down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
             up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), norm_num_groups=8)
    v = dict(block_out_channels=(8, 8), layers_per_block=1, norm_num_groups=8)
  else:
    u = {}
    v = dict(block_out_channels=(32, 32, 32, 32), layers_per_block=1)
  ucfg = unet.UNetConfig(sample_size=px // 2 ** (len(v["block_out_channels"]) - 1), **u)
  vcfg = vae.VAEConfig(sample_size=px, **v)
  text_cfg, clip_cfg = edge_bench.SMALL_TEXT, edge_bench.SMALL_CLIP

  def tower(t, vision=False):
    d = dict(hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
             num_hidden_layers=t.num_hidden_layers, num_attention_heads=t.num_attention_heads,
             hidden_act=t.hidden_act)
    if vision:
      d.update(image_size=t.image_size, patch_size=t.patch_size)
    else:
      d.update(vocab_size=t.vocab_size, max_position_embeddings=t.max_position_embeddings)
    return d

  torch_kw = dict(
      unet_kw=dict(sample_size=ucfg.sample_size, block_out_channels=ucfg.block_out_channels,
                   layers_per_block=ucfg.layers_per_block,
                   down_block_types=ucfg.down_block_types, up_block_types=ucfg.up_block_types,
                   attention_head_dim=ucfg.attention_head_dim,
                   cross_attention_dim=ucfg.cross_attention_dim,
                   norm_num_groups=ucfg.norm_num_groups),
      vae_kw=dict(block_out_channels=vcfg.block_out_channels,
                  layers_per_block=vcfg.layers_per_block, norm_num_groups=vcfg.norm_num_groups,
                  down_block_types=("DownEncoderBlock2D",) * len(vcfg.block_out_channels),
                  up_block_types=("UpDecoderBlock2D",) * len(vcfg.block_out_channels),
                  latent_channels=4, sample_size=px),
      text_kw=tower(text_cfg.text),
      clip_kw=dict(text_config=tower(clip_cfg.text),
                   vision_config=tower(clip_cfg.vision, vision=True),
                   projection_dim=clip_cfg.projection_dim))
  return dict(ucfg=ucfg, vcfg=vcfg, text_cfg=text_cfg, clip_cfg=clip_cfg, torch_kw=torch_kw)


def jdd_edge(sh: dict):
  import functools
  import edge as edge_bench
  import jax
  import jax.numpy as jnp
  import numpy as np
  from jdd.methods import edge
  from jdd.models.diffusion import clip, unet, vae
  c = edge_configs(sh)
  models = edge.EdgeModels(unet.UNet2DConditionModel(c["ucfg"]), vae.AutoencoderKL(c["vcfg"]),
                           clip.CLIP(c["text_cfg"]), clip.CLIP(c["clip_cfg"]))
  unet_vars = edge_bench.random_like(unet.param_template(c["ucfg"]), 0)
  frozen = {"vae": edge_bench.random_like(vae.param_template(c["vcfg"]), 1),
            "text_encoder": edge_bench.random_like(clip.param_template(c["text_cfg"]), 2),
            "clip": edge_bench.random_like(clip.param_template(c["clip_cfg"]), 3)}
  b, px = sh["batch"], sh["px"]
  rs = np.random.default_rng(0)
  batch = {"images": jnp.asarray(rs.uniform(-1, 1, (b, px, px, 3)).astype(np.float32)),
           "input_ids": jnp.asarray(rs.integers(1, 49000, (b, 77)).astype(np.int32)),
           "attention_mask": jnp.ones((b, 77), jnp.int32)}
  hp = edge.EdgeHparams()
  state = edge.init(unet_vars, hp)
  del unet_vars
  key = jax.random.key(0)
  # As jdd.stages.edge_finetune jits it (the state donated).
  fn = jax.jit(functools.partial(edge.train_step, models=models, hp=hp), donate_argnums=0)
  compiled, compile_s, xla = _compile(fn, state, batch, key, frozen)
  holder = [state]

  def run():
    holder[0], m = compiled(holder[0], batch, key, frozen)
    return m["loss"]
  return [run], compile_s, xla


# ----------------------------------------------------------------------- torch workers
def torch_workload(sh: dict, device: str):
  import torch_reference as ref
  dev = "cuda" if device == "gpu" else "cpu"
  if sh["kind"] == "recover":
    kind = "compensator" if sh["method"] == "infer" else "pixels"
    return ref.recover_loop(kind, sh["archs"], sh["res"], sh["batch"], sh["classes"],
                            sh["jitter"], sh["iterations"], dev, sh["tiny"])
  if sh["kind"] == "tm":
    tmb, s = tm_setting(sh)
    meta = tmb.problem_meta(s)
    iteration, _ = ref.make_tm_iteration(ref.tm_inputs(meta, iters=64), meta,
                                         grad_mode=TORCH_MODE.get(sh["mode"], sh["mode"]),
                                         device=dev)
    count = [0]

    def run():
      count[0] += 1
      return iteration(count[0] % 64)
    return [run]
  kw = edge_configs(sh)["torch_kw"]
  return ref.edge_loop(**kw, batch=sh["batch"], px=sh["px"], device=dev)


