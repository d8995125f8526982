"""Image-text trajectory matching (MTT-VL, LoRS, RepBlend; and `experts` alone): experts,
distill, evaluate, each skipped or resumed from what the workdir holds.

    data, text, encoder, features   the shared image-text stages  (jdd.stages.image_text)
    experts    expert trajectories in one memory-mapped store -> W/experts/
                                                                  (jdd.stages.experts)
    distill    trajectory matching of `config.method` -> W/checkpoints/distill, W/distill/,
               W/export/                                          (jdd.stages.distill)
    evaluate   the retrieval evaluator (`evaluate.protocol`) on the distilled pairs and on
               the configured real-pair sets (random subset drawn `evaluate.draws` times, at
               the evaluator's default and at the distilled set's learned learning rates;
               herding subset; the full train split), several seeds; paired comparisons
               and curves                                         -> W/eval/, W/results.json

Each method is its `SPEC` (`jdd.methods.<method>`): what it trains, matches and learns.
"""

from __future__ import annotations

import os

from jdd.evaluation import retrieval_protocols as protocols
from jdd.methods import lors, mttvl, repblend
from jdd.stages import distill, experts, image_text

SPECS = {"mttvl": mttvl.SPEC, "lors": lors.SPEC, "repblend": repblend.SPEC}
METHODS = ("experts", *SPECS)


def check(config) -> None:
  if config.method not in METHODS:
    raise ValueError(f"config.method={config.method!r} is not a trajectory-matching method "
                     f"({list(METHODS)})")
  protocols.check_config(config)


load_data = image_text.load_data
print_summary = image_text.print_summary


def run(ctx) -> dict:
  config = ctx.config
  enc = image_text.encoders(ctx)
  ev = image_text.evaluator(ctx, enc)
  results = image_text.results_header(ctx, enc, ev.model)
  if config.experts.num_experts:
    store = experts.train_experts(ctx, ev.model, enc.backbone_vars, ev.inputs["train"],
                                  enc.texts["train"], ctx.data.train.image_index,
                                  features=ev.features)
    results["experts"] = experts.manifest(store, config.experts)
  if config.method in SPECS:
    store = experts.ExpertStore(os.path.join(ctx.workdir, "experts"))
    pairs, summary = distill.distill_stage(ctx, ev, enc.texts, store, SPECS[config.method])
    results["distill"] = summary
    name = f"distilled_{config.method}"
    results[name] = {"pairs_budget": int(config.distill.pairs),
                     **image_text.evaluate_named(ctx, ev, name, pairs)}
  else:
    name, pairs = None, None
  results.update(image_text.evaluate_baselines(ctx, ev, enc.texts, learned=pairs))
  return image_text.finish_results(ctx, results, [name] if name else [])
