"""EDGE offline on jdd's generated shapes_captions: 100 pairs against the random 100 subset.

    python -m jdd.main --config configs/edge_shapes.py --workdir /work/runs/edge_shapes

Not a paper cell. Data: 2000/200/200 generated captioned scenes (64 px), MiniLM-L6 text
embeddings, a small NFNet pretrained contrastively here (10 epochs; with its text head it is
the loss CLIP, and the evaluator's backbone); then the `pretrain` stage trains a VAE
(16/32/32 channels, f = 4, 4 latent channels, 1000 steps of 16) and an SD-layout U-Net
(32/64/64 channels, cross-attention on the pooled MiniLM caption embedding, 4000 DDPM steps of
32) from scratch, long enough for its samples to show the shapes (docs/edge.md); EDGE
fine-tunes the U-Net's biases and norms for 400 steps (batch 16), samples 100 images (PNDM 50,
guidance 4) from 100 seeded real captions and exports them. Beside EDGE's set: the same
queries sampled without fine-tuning (W/no_finetune) and the oracle, the real images of the same
query captions through the same export and evaluation path (W/oracle). Evaluation: EDGE's own
evaluator (`evaluate.protocol='edge'`: the whole NFNet trained, SGD 0.1 without momentum or
decay, InfoNCE, batch 64 drop_last, crop + flip augmentation, 100 epochs scored every 5),
3 seeds per set, the random 100-pair subset drawn 3 times, epoch selected on val. Time and
results: docs/edge.md. Variants: `:smoke` (about 2 CPU-minutes; the tests run it),
`:reference` (the released code's behaviour), `:pairs=N`, `:protocol=lors|mttvl|edge`.
"""

from jdd.configs.edge import edge_config


def get_config(arg=None):
  return edge_config("shapes_captions", arg, "configs/edge_shapes")
