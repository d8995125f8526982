"""LoRS on COCO (RepBlend Table 2): `pairs=100|200|500`.

    python -m jdd.main --config configs/lors_coco.py:pairs=100 --workdir runs/lors_coco_100

Expected test recall, IR@1/5/10 | TR@1/5/10 (paper, NFNet-L0 + BERT; research §7; the model
trained on all of COCO reaches 14.6/38.9/53.2 | 20.6/46.8/61.3):

    100 pairs      LoRS: 1.8±0.1/7.1±0.2/12.2±0.2 | 3.3±0.2/12.2±0.3/19.6±0.3
               random: 0.3/1.3/2.7 | 0.8/3.0/5.0
    200 pairs      LoRS: 2.4±0.1/9.3±0.2/15.5±0.2 | 4.3±0.1/14.2±0.3/22.6±0.2
               random: 0.6/2.3/4.4 | 1.0/4.0/7.2
    500 pairs      LoRS: 2.8±0.2/9.9±0.5/16.5±0.7 | 5.3±0.5/18.3±1.5/27.9±1.4
               random: 1.1/5.0/8.7 | 1.9/7.5/12.5

LoRS: trained NFNet-L0 + text head, learned low-rank S with WBCE, TESLA gradient;
`pairs` - 1 pairs are distilled (S is charged one pair). LoRS departures from the RepBlend
script of a cell (research §5.2): Flickr-500 mini-batch 40, COCO-200 2000 iterations,
COCO-500 mini-batch 30.
COCO cells merge the two branches' normalisation; COCO-500 distils at tau 0.1 while
experts and evaluation use 0.07, as the reference (research §9 #5).
Hyperparameters: research §5.2 (jdd/configs/image_text.py TM_CELLS); 3000 iterations,
syn_steps 8, expert_epochs 1, lr_lr 1e-2, student lrs start at 0.1, outer SGD momentum 0.5.

Data (paths are read from the config only): annotations under data/coco/annotations, images under
data/coco/images, bert-base-uncased in data/bert-base-uncased, the converted timm nfnet_l0 in
data/nfnet_l0_jdd (`python -m third_party.convert_timm`). With no data on disk the run stops at
once, says which files go where, and names the offline variant: configs/lors_shapes.py.
Hardware: a GPU (the paper reports 11.5 s per iteration); 20 experts are trained first
(or point experts at a finished store). Variants: `pairs=`, `grad_mode=exact|tesla`,
`protocol=lors|mttvl|edge` (default: LoRS's evaluator, which RepBlend's is).
"""

from jdd.configs.image_text import tm_config


def get_config(arg=None):
  return tm_config("lors", "coco", arg, "configs/lors_coco")
