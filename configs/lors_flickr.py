"""LoRS on Flickr30K (RepBlend Table 1): `pairs=100|200|500`.

    python -m jdd.main --config configs/lors_flickr.py:pairs=100 --workdir runs/lors_flickr_100

Expected test recall, IR@1/5/10 | TR@1/5/10 (paper, NFNet-L0 + BERT; research §7; the model
trained on all of Flickr30K reaches 23.16/53.98/66.62 | 33.8/65.7/76.9):

    100 pairs      LoRS: 8.3±0.2/24.1±0.2/35.1±0.3 | 11.8±0.2/35.8±0.6/49.2±0.5
               random: 1.0/4.0/6.5 | 1.3/5.9/10.1
    200 pairs      LoRS: 8.6±0.3/25.3±0.2/36.6±0.3 | 14.5±0.5/38.7±0.5/53.4±0.5
               random: 1.1/4.8/9.2 | 2.1/8.7/13.2
    500 pairs      LoRS: 10.0±0.2/28.9±0.7/41.6±0.6 | 15.5±0.7/39.8±0.4/53.7±0.3
               random: 2.4/10.5/17.4 | 5.2/18.3/25.7

LoRS: trained NFNet-L0 + text head, learned low-rank S with WBCE, TESLA gradient;
`pairs` - 1 pairs are distilled (S is charged one pair). LoRS departures from the RepBlend
script of a cell (research §5.2): Flickr-500 mini-batch 40, COCO-200 2000 iterations,
COCO-500 mini-batch 30.
Hyperparameters: research §5.2 (jdd/configs/image_text.py TM_CELLS); 3000 iterations,
syn_steps 8, expert_epochs 1, lr_lr 1e-2, student lrs start at 0.1, outer SGD momentum 0.5.

Data (paths are read from the config only): annotations under data/flickr30k/annotations, images under
data/flickr30k/images, bert-base-uncased in data/bert-base-uncased, the converted timm nfnet_l0 in
data/nfnet_l0_jdd (`python -m third_party.convert_timm`). With no data on disk the run stops at
once, says which files go where, and names the offline variant: configs/lors_shapes.py.
Hardware: a GPU (the paper reports 11.5 s per iteration); 20 experts are trained first
(or point experts at a finished store). Variants: `pairs=`, `grad_mode=exact|tesla`,
`protocol=lors|mttvl|edge` (default: LoRS's evaluator, which RepBlend's is).
"""

from jdd.configs.image_text import tm_config


def get_config(arg=None):
  return tm_config("lors", "flickr30k", arg, "configs/lors_flickr")
