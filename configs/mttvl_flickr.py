"""MTT-VL on Flickr30K (RepBlend Table 1): `pairs=100|200|500`.

    python -m jdd.main --config configs/mttvl_flickr.py:pairs=100 --workdir runs/mttvl_flickr_100

Expected test recall, IR@1/5/10 | TR@1/5/10 (paper, NFNet-L0 + BERT; research §7; the model
trained on all of Flickr30K reaches 23.16/53.98/66.62 | 33.8/65.7/76.9):

    100 pairs    MTT-VL: 4.7±0.2/15.7±0.5/24.6±1.0 | 9.9±0.3/28.3±0.5/39.1±0.7
               random: 1.0/4.0/6.5 | 1.3/5.9/10.1
    200 pairs    MTT-VL: 4.6±0.9/16.0±1.6/25.5±2.6 | 10.2±0.8/28.7±1.0/41.9±1.9
               random: 1.1/4.8/9.2 | 2.1/8.7/13.2
    500 pairs    MTT-VL: 6.6±0.3/20.2±1.2/30.0±2.1 | 13.3±0.6/32.8±1.8/46.8±0.8
               random: 2.4/10.5/17.4 | 5.2/18.3/25.7

MTT-VL's own settings (its code, princetonvisualai/multimodal_dataset_distillation at c696fd6,
checked line by line; jdd/configs/image_text.py MTTVL_CELL): the README's only command
(Flickr-100: lr_img = lr_txt = 1000, syn_steps 8, expert_epochs 1, max_start_epoch 2,
lr_lr 1e-2) and `distill.py`'s defaults where the command sets nothing (50,000 iterations,
mini-batch 100). Every cell uses them: MTT-VL's code has no merged-branch normalisation (each
modality is divided by its own distance), no temperature option (0.07) and no script with
max_start_epoch 3, so the COCO merging, COCO-500's tau 0.1 and Flickr-500's max_start 3 of the
LoRS/RepBlend scripts are not MTT-VL's and are not used. Exact MTT gradient
(`:grad_mode=tesla` for the cheap one); the unroll uses the consistent logit scale 1/0.07
(`--config.distill.reference_logit_scale=True` reproduces the reference's 2.66, research §3.4).
Evaluation: MTT-VL's evaluator (`evaluate.protocol='mttvl'`: 50 + 1 epochs, batch 64, the
learned image lr for both modalities, momentum 0.9, weight decay 5e-4, no decay before the
final evaluation, InfoNCE); jdd selects the epoch on val and reports test, with MTT-VL's own
number (the final epoch's test) beside it; `:protocol=lors` evaluates with LoRS's evaluator.
Periodic evaluation during distillation every 1000 iterations (the reference: every 50).
Outer optimiser: SGD momentum 0.5; student lrs start at 0.1.

Data (paths are read from the config only): annotations under data/flickr30k/annotations, images under
data/flickr30k/images, bert-base-uncased in data/bert-base-uncased, the converted timm nfnet_l0 in
data/nfnet_l0_jdd (`python -m third_party.convert_timm`). With no data on disk the run stops at
once, says which files go where, and names the offline variant: configs/mttvl_shapes.py.
Hardware: a GPU (no paper reports MTT-VL's time per iteration); 20 experts are trained first
(or point experts at a finished store). Variants: `pairs=`, `grad_mode=exact|tesla`,
`protocol=mttvl|lors|edge`.
"""

from jdd.configs.image_text import tm_config


def get_config(arg=None):
  return tm_config("mttvl", "flickr30k", arg, "configs/mttvl_flickr")
