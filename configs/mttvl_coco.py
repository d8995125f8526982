"""MTT-VL on COCO (RepBlend Table 2): `pairs=100|200|500`.

    python -m jdd.main --config configs/mttvl_coco.py:pairs=100 --workdir runs/mttvl_coco_100

Expected test recall, IR@1/5/10 | TR@1/5/10 (paper, NFNet-L0 + BERT; research §7; the model
trained on all of COCO reaches 14.6/38.9/53.2 | 20.6/46.8/61.3):

    100 pairs    MTT-VL: 1.3±0.1/5.4±0.3/9.5±0.5 | 2.5±0.3/10.0±0.5/15.7±0.4
               random: 0.3/1.3/2.7 | 0.8/3.0/5.0
    200 pairs    MTT-VL: 1.7±0.1/6.5±0.4/12.3±0.8 | 3.3±0.2/11.9±0.6/19.4±1.2
               random: 0.6/2.3/4.4 | 1.0/4.0/7.2
    500 pairs    MTT-VL: 2.5±0.5/8.9±0.7/15.8±1.5 | 5.0±0.4/17.2±1.3/26.0±1.9
               random: 1.1/5.0/8.7 | 1.9/7.5/12.5

MTT-VL has a published script only for Flickr-100 (lr_img = lr_txt = 1000, mini-batch 100,
syn_steps 8, max_start_epoch 2); every cell here uses it, max_start_epoch 2 included (not the
3 of RepBlend's Flickr-500 script), with merged normalisation on COCO. Exact MTT gradient
(`:grad_mode=tesla` for the cheap one); the unroll uses the consistent logit scale 1/0.07
(`--config.distill.reference_logit_scale=True` reproduces the reference's 2.66, research §3.4).
Evaluation: 50 + 1 epochs, InfoNCE.
COCO cells merge the two branches' normalisation; COCO-500 distils at tau 0.1 while
experts and evaluation use 0.07, as the reference (research §9 #5).
Hyperparameters: research §5.2 (jdd/configs/image_text.py TM_CELLS); 3000 iterations,
syn_steps 8, expert_epochs 1, lr_lr 1e-2, student lrs start at 0.1, outer SGD momentum 0.5.

Data (paths are read from the config only): annotations under data/coco/annotations, images under
data/coco/images, bert-base-uncased in data/bert-base-uncased, the converted timm nfnet_l0 in
data/nfnet_l0_jdd (`python -m third_party.convert_timm`). With no data on disk the run stops at
once, says which files go where, and names the offline variant: configs/mttvl_shapes.py.
Hardware: a GPU (no paper reports MTT-VL's time per iteration); 20 experts are trained first
(or point experts at a finished store). Variants: `pairs=`, `grad_mode=exact|tesla`.
"""

from jdd.configs.image_text import tm_config


def get_config(arg=None):
  return tm_config("mttvl", "coco", arg, "configs/mttvl_coco")
