"""EDGE on COCO: fine-tuned SD-1.5, N pairs sampled from real training captions.

    python -m jdd.main --config configs/edge_coco.py:pairs=500 --workdir runs/edge_coco500

Paper cells: COCO 100 / 200 / 500 pairs (NFNet + BERT retrieval, IR/TR@1/5/10). EDGE's own
tables were not retrievable; MDM (arXiv 2605.23482) cites EDGE's COCO-500 mean recall as
7.9 (LoRS: 13.5; random 500 subset: 7.0; below LoRS, so check it against the paper PDF),
shared/research/edge_method.md §2.

Defaults, jdd's fixes and `:reference`: as configs/edge_flickr.py (the same released-code
settings; only the dataset, its paths and the paper cells differ).

Files (jdd never downloads): converted SD-1.5 + CLIP ViT-B/32 in weights/sd15 (card.json,
third_party/convert_diffusers.py) with the CLIP tokenizer's vocab.json / merges.txt in
weights/sd15/tokenizer; COCO in data/coco (annotations/, images/); BERT in
data/bert-base-uncased; the converted NFNet-L0 in data/nfnet_l0_jdd. Missing files stop the run
at once with the list. Expected: ~49 GPU-h of fine-tuning on one A5000-class GPU (MDM's
citation); this CPU cannot run it. Variants: `pairs=100|200|500`, `smoke` (offline, tiny),
`reference`.
"""

from jdd.configs.edge import edge_config


def get_config(arg=None):
  return edge_config("coco", arg, "configs/edge_coco")
