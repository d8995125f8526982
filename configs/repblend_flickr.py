"""RepBlend on Flickr30K (RepBlend Table 1): `pairs=100|200|500`.

    python -m jdd.main --config configs/repblend_flickr.py:pairs=100 --workdir runs/repblend_flickr_100

Expected test recall, IR@1/5/10 | TR@1/5/10 (paper, NFNet-L0 + BERT; research §7; the model
trained on all of Flickr30K reaches 23.16/53.98/66.62 | 33.8/65.7/76.9):

    100 pairs  RepBlend: 11.5±0.4/32.0±0.7/44.5±0.6 | 16.2±0.8/41.7±0.9/55.5±0.4
               random: 1.0/4.0/6.5 | 1.3/5.9/10.1
    200 pairs  RepBlend: 12.7±0.8/34.7±0.6/47.6±0.5 | 18.6±0.7/46.0±0.8/60.0±0.6
               random: 1.1/4.8/9.2 | 2.1/8.7/13.2
    500 pairs  RepBlend: 17.0±0.6/42.5±0.5/55.9±0.6 | 22.5±0.4/53.2±0.3/66.7±0.3
               random: 2.4/10.5/17.4 | 5.2/18.3/25.7

RepBlend: frozen NFNet-L0, image and text projection heads matched symmetrically,
representation blending (alpha_2 = 1), learned low-rank S with WBCE, TESLA gradient;
`pairs` - 1 pairs are distilled (S is charged one pair).
Hyperparameters: research §5.2 (jdd/configs/image_text.py TM_CELLS); 3000 iterations,
syn_steps 8, expert_epochs 1, lr_lr 1e-2, student lrs start at 0.1, outer SGD momentum 0.5.

Data (paths are read from the config only): annotations under data/flickr30k/annotations, images under
data/flickr30k/images, bert-base-uncased in data/bert-base-uncased, the converted timm nfnet_l0 in
data/nfnet_l0_jdd (`python -m third_party.convert_timm`). With no data on disk the run stops at
once, says which files go where, and names the offline variant: configs/repblend_shapes.py.
Hardware: a GPU (the paper reports 1.71 s per iteration); 20 experts are trained first
(or point experts at a finished store). Variants: `pairs=`, `grad_mode=exact|tesla`,
`protocol=lors|mttvl|edge` (default: LoRS's evaluator, which RepBlend's is).
"""

from jdd.configs.image_text import tm_config


def get_config(arg=None):
  return tm_config("repblend", "flickr30k", arg, "configs/repblend_flickr")
