"""EDGE offline on jdd's generated shapes_captions: 100 pairs against the random 100 subset.

    python -m jdd.main --config configs/edge_shapes.py --workdir /work/runs/edge_shapes

Not a paper cell. Data: 2000/200/200 generated captioned scenes (64 px), MiniLM-L6 text
embeddings, a small NFNet pretrained contrastively here (10 epochs; with its text head it is
the loss CLIP and, frozen, the evaluator's backbone); then the `pretrain` stage trains a VAE
(16/32/32 channels, f = 4, 4 latent channels, 300 steps of 16) and an SD-layout U-Net
(32/64/64 channels, cross-attention on the pooled MiniLM caption embedding, 600 DDPM steps of
32) from scratch; EDGE fine-tunes the U-Net's biases and norms for 100 steps (batch 16),
samples 100 images (PNDM 50, guidance 4) from 100 seeded real captions, exports them and
evaluates them with the retrieval evaluator (3 seeds, 100 epochs, val-selected) next to the
random 100-pair subset. Sized for 30 min on 2 idle CPU cores (an estimate from measured CPU
seconds per step; docs/edge.md). Variants: `:smoke` (about 2 CPU-minutes; the tests run it),
`:reference` (the released code's behaviour), `:pairs=N`.
"""

from jdd.configs.edge import edge_config


def get_config(arg=None):
  return edge_config("shapes_captions", arg, "configs/edge_shapes")
