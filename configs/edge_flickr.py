"""EDGE on Flickr30K: fine-tuned SD-1.5, N pairs sampled from real training captions.

    python -m jdd.main --config configs/edge_flickr.py:pairs=500 --workdir runs/edge_flickr500

Paper cells: Flickr30K 100 / 200 / 500 pairs (NFNet + BERT retrieval, IR/TR@1/5/10). EDGE's own
tables were not retrievable; MDM (arXiv 2605.23482) cites EDGE's Flickr30K-500 mean recall as
25.8 (LoRS: 31.6; random 500 subset: 14.1), shared/research/edge_method.md §2.

Defaults are the released code's: SD-1.5 DiffFit tuning (biases and norms), SGD lr 1e-3,
10 epochs of batch 128 (at 256 px, not the released 224: jdd's U-Net needs latents divisible
by 8, where diffusers passes an explicit upsample size), lambda_c = lambda_d = 1, tau 0.1;
sampling PNDM 50 steps, guidance 7.5, 512 px, one image per drawn caption (the export is
resized to 224 for evaluation).
jdd's fixes (noisy U-Net input, rescale before decoding, CLIP-normalised loss input, [-1, 1]
VAE input) are on; `:reference` restores the released behaviour.

Files (jdd never downloads): converted SD-1.5 + CLIP ViT-B/32 in weights/sd15 (card.json,
third_party/convert_diffusers.py) with the CLIP tokenizer's vocab.json / merges.txt in
weights/sd15/tokenizer; Flickr30K in data/flickr30k (annotations/, images/); BERT in
data/bert-base-uncased; the converted NFNet-L0 in data/nfnet_l0_jdd. Missing files stop the run
at once with the list. Expected: ~12.5 GPU-h of fine-tuning on one A5000-class GPU (MDM's
citation); this CPU cannot run it. Variants: `pairs=100|200|500`, `smoke` (offline, tiny),
`reference`.
"""

from jdd.configs.edge import edge_config


def get_config(arg=None):
  return edge_config("flickr30k", arg, "configs/edge_flickr")
