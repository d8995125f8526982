"""Fields every image-text config shares (data, encoders, experts, retrieval evaluation).

The values are the references' (shared/research/multimodal_dd_methods.md §2-§6); each
configs/<method>_<dataset>.py sets its paper cell's values, and `apply_offline` switches any of
them to jdd's generated `shapes_captions` data, the offline MiniLM text encoder and a small NFNet
pretrained here, so the pipeline runs with no download.
"""

import ml_collections

from jdd.models.nfnet import NFNET_TINY


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.method = "experts"
  c.seed = 0
  c.num_devices = 0
  c.log_every = 50
  c.checkpoint_every = 200

  c.dataset = ml_collections.ConfigDict(dict(
      name="flickr30k", ann_dir="", image_root="", image_size=224, reference="repblend",
      max_words=0, max_words_eval=0,
      # shapes_captions only: generate it under `root` (deterministic; reused when present)
      generate=False, root="", generate_seed=0,
      sizes=ml_collections.ConfigDict(dict(train=2000, val=200, test=200))))

  c.text_encoder = ml_collections.ConfigDict(dict(
      path="",           # a Hugging Face BERT folder (bert-base-uncased), or 'minilm' offline
      pooling="auto",    # 'auto': [CLS] for plain BERT (the references), the folder's own for ST
      batch_size=64, cache_dir=""))

  c.image_encoder = ml_collections.ConfigDict(dict(
      arch="nfnet_l0", kwargs=ml_collections.ConfigDict({}), feature_dim=2304,
      checkpoint=""))    # converted timm nfnet_l0 (third_party/convert_timm.py); '' = pretrain

  c.pretrain = ml_collections.ConfigDict(dict(   # offline encoder pretraining (contrastive)
      epochs=30, batch_size=100, lr=2e-3, weight_decay=1e-4))

  c.model = ml_collections.ConfigDict(dict(
      train_backbone=False,  # RepBlend: frozen backbone + image head; MTT-VL/LoRS: True
      embed_dim=0, dropout=0.1, temperature=0.07))

  c.experts = ml_collections.ConfigDict(dict(
      num_experts=20, epochs=10, batch_size=128, lr_image=0.1, lr_text=0.1, momentum=0.0,
      weight_decay=0.0,
      keep_epochs=0,     # store epochs 0..keep_epochs (0: all); distillation reads
                         # 0..max_start_epoch + expert_epochs
      shard=""))         # 'i/n': this process trains experts i, i+n, ...

  c.evaluate = ml_collections.ConfigDict(dict(
      epochs=100, batch_size=128, lr_image=0.1, lr_text=0.1, momentum=0.9, weight_decay=5e-4,
      lr_step=True, eval_every=20, loss="wbce", seeds=3,
      baselines=("random_100",)))

  c.debug = ml_collections.ConfigDict({"interrupt_after": 0})
  return c


def apply_offline(c: ml_collections.ConfigDict, root: str = "runs/data") -> None:
  """jdd's offline substitutes: generated shapes_captions, MiniLM, a small pretrained NFNet."""
  c.dataset.name = "shapes_captions"
  c.dataset.generate = True
  c.dataset.root = root
  c.dataset.image_size = 64
  c.text_encoder.path = "minilm"
  c.image_encoder.arch = "nfnet_l0"
  c.image_encoder.kwargs = ml_collections.ConfigDict(dict(NFNET_TINY))
  c.image_encoder.feature_dim = NFNET_TINY["num_features"]
  c.image_encoder.checkpoint = ""


def apply_smoke(c: ml_collections.ConfigDict) -> None:
  """Shrinks an offline config to a CPU run of a minute or two (what the tests use)."""
  c.dataset.sizes = ml_collections.ConfigDict(dict(train=120, val=30, test=30))
  c.dataset.image_size = 32
  c.pretrain.epochs = 2
  c.pretrain.batch_size = 40
  c.experts.num_experts = 2
  c.experts.epochs = 2
  c.experts.batch_size = 64
  c.evaluate.epochs = 4
  c.evaluate.eval_every = 2
  c.evaluate.seeds = 2
  c.evaluate.baselines = ("random_20",)
  c.log_every = 5
  c.checkpoint_every = 5
