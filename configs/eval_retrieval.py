"""The fixed retrieval recipe of `jdd eval` for image-text sets, whatever method made them.

    jdd eval --set runs/lors_shapes/export --dataset shapes_captions
    jdd eval --set distilled_2000.pt --dataset flickr30k

One recipe, so that sets of MTT-VL, LoRS, RepBlend and EDGE (or any caption set) are scored
alike (jdd.judge.image_text): LoRS's / RepBlend's evaluator (`evaluate.protocol='lors'`: SGD
momentum 0.9, weight decay 5e-4, x0.1 at epoch Epoch // 2 + 1, Epoch + 1 = 101 epochs of
ceil(N / 128) batches, WBCE against the set's similarity or I, the set's learned learning rates
or 0.1) on a frozen image backbone with a projection head per modality (RepBlend's model: the
cheapest of the references' and the same for every encoder), 3 seeds, the test recalls at the
val-selected epoch; the baseline is random real pairs of the set's count, 3 draws, also at the
set's learned learning rates with S = I. The encoder and data are the dataset's: offline
(`shapes_captions`: MiniLM-L6, a small NFNet pretrained contrastively in the workdir) or the
paper data and converted weights (data_and_weights.md).

Variants: `dataset=shapes_captions|flickr30k|coco`, `smoke` (the tests' CPU minute).
"""

from jdd.config import check_variant_keys, finalize, parse_arg
from jdd.configs.image_text import apply_smoke, tm_config


def get_config(arg=None):
  args = parse_arg(arg)
  check_variant_keys(args, {"dataset", "smoke"}, "configs/eval_retrieval")
  dataset = str(args.get("dataset", "shapes_captions"))
  c = tm_config("repblend", dataset, None, "configs/eval_retrieval")
  c.unlock()
  c.evaluate.seeds = 3
  c.evaluate.draws = 3
  c.evaluate.learned_lr_baselines = True
  c.experts.num_experts = 0
  if args.get("smoke"):
    apply_smoke(c)
    c.experts.num_experts = 0
  return finalize(c)
