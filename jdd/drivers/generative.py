"""Generative image-text distillation (EDGE): fine-tune a text-to-image diffusion model, sample
pairs, evaluate them; each stage skipped or resumed from what the workdir holds.

Reference: EDGE (NeurIPS 2025, arXiv 2509.15472), `ichbill/EDGE` at bb18c46: fine-tune SD-1.5
(`edge_diffusion_train.py`), sample one image per real training caption
(`edge_diffusion_sampling.py`), optionally add captions (`caption_synthesis_*.py`), convert to
the caption JSON (`convert_results_to_coco.py`) and score with LoRS's retrieval evaluation
(shared/research/edge_method.md §1). The losses and the sampler are `jdd.methods.edge`.

    data, text, encoder   the shared image-text stages (jdd.stages.image_text); the encoder
                          with its text head is also the offline loss CLIP
    pretrain   offline backend only: a small VAE, then a small text-conditioned U-Net, from
               scratch, DDPM noise loss   -> W/checkpoints/edge_vae, edge_unet
                                                               (jdd.stages.edge_pretrain)
    finetune   EDGE's losses on the DiffFit subset -> W/checkpoints/edge_finetune
                                                               (jdd.stages.edge_finetune)
    sample     pairs from seeded real training captions, caption synthesis, export
               -> W/export/{images/, annotations/, grid.png, manifest.json}
                                                               (jdd.stages.edge_export)
    checks     `edge.checks`: the same queries sampled with the pretrained, un-fine-tuned
               U-Net (-> W/no_finetune/), and the oracle: the real images of the same query
               captions through the same writer and reader (-> W/oracle/)
    evaluate   the retrieval evaluator (EDGE's own protocol by default, `evaluate.protocol`)
               on the exported pairs, the checks and the random subset drawn several times;
               paired comparisons and curves   -> W/eval/, W/results.json

Backends (`config.edge.backend`, `jdd.stages.edge_backends`): 'sd', converted SD-1.5 weights
(the reference); 'offline', jdd's small stand-ins trained here.

Deliberate differences beyond jdd.methods.edge's: the VAE input range is a config field
('signed' [-1, 1], what SD's VAE was trained on, by default; 'clip' is the released code's
CLIP-normalised input); sampling is seeded; every stage resumes bit for bit.
"""

from __future__ import annotations

import dataclasses

from jdd import caption_synthesis
from jdd.evaluation import retrieval_protocols as protocols
from jdd.loop import RunContext
from jdd.methods import edge
from jdd.stages import edge_backends, edge_export, edge_finetune, image_text
from jdd.stages.edge_backends import timer

# The checks beside EDGE's set (issue 15): its queries sampled without fine-tuning, and the
# real images of its queries through the same export and evaluation path.
NO_FINETUNE, ORACLE = "edge_no_finetune", "oracle_real_queries"
CHECKS = ("no_finetune", "oracle")

load_data = image_text.load_data
print_summary = image_text.print_summary


def check(config) -> None:
  if config.method != "edge":
    raise ValueError(f"the generative driver runs method 'edge', got {config.method!r}")
  ec = config.edge
  if ec.backend not in ("sd", "offline"):
    raise ValueError(f"edge.backend must be 'sd' or 'offline', got {ec.backend!r}")
  if ec.vae_input not in edge.VAE_INPUTS:
    raise ValueError(f"edge.vae_input must be one of {edge.VAE_INPUTS}, got {ec.vae_input!r}")
  if ec.synthesizer not in caption_synthesis.SYNTHESIZERS or (
      ec.synthesizer == "image_retrieval" and ec.backend != "offline"):
    raise ValueError(f"edge.synthesizer={ec.synthesizer!r}: choose one of "
                     f"{sorted(caption_synthesis.SYNTHESIZERS)} ('image_retrieval' is offline "
                     "only: its caption bank is the offline loss CLIP's embedding table)")
  unknown = sorted(set(ec.checks) - set(CHECKS))
  if unknown:
    raise ValueError(f"edge.checks has {unknown}: choose from {list(CHECKS)}")
  protocols.check_config(config)
  if ec.backend == "sd":
    edge_backends.check_sd_files(config)   # missing weights stop the run at once


def run(ctx: RunContext) -> dict:
  config, data = ctx.config, ctx.data
  ec = config.edge
  print(f"[edge] backend {ec.backend}", flush=True)
  timings = {}
  t = timer()
  enc = image_text.encoders(ctx)
  timings["text_and_encoder"] = t()
  small = data.train.num_images * data.image_size ** 2 * 3 <= (1 << 29)
  images_u8 = data.load_images("train", dtype="uint8") if small else None
  if ec.backend == "sd":
    setup = edge_backends.sd_setup(config)
  else:
    setup = edge_backends.offline_setup(ctx, enc.texts, enc.backbone_vars, images_u8, timings)
  t = timer()
  unet_vars = edge_finetune.finetune(ctx, setup, images_u8)
  timings["finetune"] = t()
  t = timer()
  embed = edge_export.JointImageEmbed(setup, data.image_size) if (
      ec.synthesizer == "image_retrieval" and ec.backend == "offline") else None
  manifest = edge_export.sample_and_export(ctx, setup, unet_vars, enc.texts, embed)
  timings["sample_export"] = t()
  checks = {}
  if "no_finetune" in ec.checks:
    t = timer()
    checks[NO_FINETUNE] = ("no_finetune", edge_export.sample_and_export(
        ctx, setup, setup.unet_vars, enc.texts, embed, name="no_finetune", label=NO_FINETUNE))
    timings["sample_export_no_finetune"] = t()
  if "oracle" in ec.checks:
    checks[ORACLE] = ("oracle", edge_export.oracle_export(ctx))
  t = timer()
  ev = image_text.evaluator(ctx, enc)
  pairs = edge_export.exported_pairs(ctx, ev, manifest, enc.texts)
  results = image_text.results_header(ctx, enc, ev.model)
  results["backend"] = str(ec.backend)
  results["edge"] = {"setup": setup.info,
                     "finetune_steps": edge_finetune.finetune_steps(config, data),
                     "hparams": dataclasses.asdict(edge_finetune.hparams(config)),
                     "export": {k: manifest[k] for k in ("seed", "num_pairs", "budget", "sampler",
                                                         "synthesizer")}}
  results["distilled_edge"] = {"pairs_budget": int(ec.pairs),
                               **image_text.evaluate_named(ctx, ev, "distilled_edge", pairs)}
  for label, (folder, m) in checks.items():
    results[label] = {"folder": folder, **image_text.evaluate_named(
        ctx, ev, label, edge_export.exported_pairs(ctx, ev, m, enc.texts, name=folder))}
  results.update(image_text.evaluate_baselines(ctx, ev, enc.texts))
  image_text.finish_results(ctx, results, ["distilled_edge", *checks],
                            extra_pairs=(("distilled_edge", NO_FINETUNE),))
  timings["evaluate"] = t()
  results["stage_seconds_this_process"] = timings
  return results
