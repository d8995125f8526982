"""The image-text configs' shared fields and the trajectory-matching builder `tm_config`.

The values are the references' (shared/research/multimodal_dd_methods.md §2-§6); each
configs/<method>_<dataset>.py names its method and dataset, and `tm_config` builds the paper cell
(or jdd's offline variant) from the tables here. A trajectory-matching method's fixed choices
(trained or frozen backbone, learned similarity, blending, loss, default gradient) are its
`SPEC` in jdd.methods.<method>, written into the config by `apply_method`: nowhere else.
`apply_offline` switches any config to jdd's generated `shapes_captions` data, the offline MiniLM
text encoder and a small NFNet pretrained here, so the pipeline runs with no download;
`apply_paper_data` points it at the paper's data and converted weights. EDGE's builder
(jdd.configs.edge) starts from the same base config.
"""

import ml_collections

from jdd.config import check_variant_keys, finalize, parse_arg, smoke_value
from jdd.configs import new_config
from jdd.evaluation import retrieval_protocols as protocols
from jdd.methods import lors, mttvl, repblend, tm_vl
from jdd.models.nfnet import NFNET_TINY

# config.method -> the trajectory-matching method's fixed choices.
SPECS = {"mttvl": mttvl.SPEC, "lors": lors.SPEC, "repblend": repblend.SPEC}

PAPER_PAIRS = (100, 200, 500)
PAPER_PATHS = {"flickr30k": ("data/flickr30k/annotations", "data/flickr30k/images"),
               "coco": ("data/coco/annotations", "data/coco/images")}


def base_config() -> ml_collections.ConfigDict:
  c = new_config("experts", checkpoint_every=200)

  c.dataset = ml_collections.ConfigDict(dict(
      name="flickr30k", ann_dir="", image_root="", image_size=224, reference="repblend",
      max_words=0, max_words_eval=0,
      # shapes_captions only: generate it under `root` (deterministic; reused when present)
      generate=False, root="", generate_seed=0,
      sizes=ml_collections.ConfigDict(dict(train=2000, val=200, test=200)),
      # image reading (jdd.data.pipeline): decoding threads (0: one per CPU) and the MiB of
      # decoded images a split may keep in memory (it keeps them only if all of them fit)
      threads=0, cache_mb=512))

  # The references' train transform (jdd.data.randaugment): RandomResizedCrop(scale
  # (min_scale, 1), bicubic), flip, RandomAugment(num_ops, magnitude) over the op list of
  # `ops` ('lors': LoRS / MTT-VL's 10 ops; 'repblend': the same without AutoContrast).
  # Used where experts.augment / distill.init_augment say so.
  c.train_transform = ml_collections.ConfigDict(dict(
      ops="lors", num_ops=2, magnitude=5.0, min_scale=0.5, flip=True))

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
      train_backbone=False,  # frozen backbone + image head (RepBlend's); True: trained, no head
      embed_dim=0, dropout=0.1, temperature=0.07))

  c.experts = ml_collections.ConfigDict(dict(
      num_experts=20, epochs=10, batch_size=128, lr_image=0.1, lr_text=0.1, momentum=0.0,
      weight_decay=0.0,
      keep_epochs=0,     # store (and train) epochs 0..keep_epochs (0: all `epochs`);
                         # distillation reads 0..max_start_epoch + expert_epochs
      augment=False,     # train on the train transform's pixels (the references' buffers)
      parallel=0,        # cached features: experts per program (vmap; 0 = as many as fit)
      shard=""))         # 'i/n': this process trains experts i, i+n, ...

  # The retrieval evaluator. `protocol` names the reference evaluator whose optimiser and
  # schedule the fields below hold (jdd.evaluation.retrieval_protocols; `apply_protocol` writes
  # them, and a run refuses fields that contradict the name): 'lors' | 'mttvl' | 'edge' |
  # 'custom'.
  c.evaluate = ml_collections.ConfigDict(dict(
      protocol="lors", epochs=100, batch_size=128, batching="first", lr_image=0.1, lr_text=0.1,
      shared_lr=False, momentum=0.9, weight_decay=5e-4, lr_step=True, augment=False,
      extra_epoch=True, grid="start", reference="best_test", eval_every=20, loss="wbce",
      seeds=3,
      draws=3,                     # random-subset draws per random_N row (different keys)
      learned_lr_baselines=True,   # random_N again at a distilled set's learned lrs, S = I
      baselines=("random_100",),
      full_train_epochs=10))  # the 'full_train' baseline's epochs (0: evaluate.epochs)

  # Trajectory matching (MTT-VL, LoRS, RepBlend; research §5.1-5.2). The paper cell's values
  # come from TM_CELLS. similarity, charge_similarity, loss, grad_mode, blend and blend_alpha
  # are declared here only: `apply_method` writes the method's SPEC into them (the configs
  # without a trajectory method, experts and EDGE, carry these values unused).
  c.distill = ml_collections.ConfigDict(dict(
      pairs=100,               # the pair budget; LoRS/RepBlend distil pairs - 1 (S is charged)
      charge_similarity=True,
      iterations=3000, syn_steps=8, expert_epochs=1, max_start_epoch=2, mini_batch=20,
      lr_img=100.0, lr_txt=100.0, lr_lr=1e-2, lr_sim=10.0, momentum=0.5,
      lr_init_image=0.1, lr_init_text=0.1,   # student learning rates (lr_teacher_img/txt)
      similarity="lowrank",    # 'lowrank' | 'full' | 'none' (MTT-VL)
      sim_rank=10, sim_alpha=3.0,
      loss="wbce",             # 'wbce' | 'infonce'
      merge_branches=False,    # COCO: one denominator for both modalities
      grad_mode="tesla",       # 'tesla' (constant memory) | 'exact' (through the unroll)
      # exact mode: recompute each student step in the backward pass (`jax.checkpoint`)
      # instead of keeping its activations. Same values; on 2 CPU cores also faster at
      # Flickr30K shapes (RepBlend, mini-batch 5: 9.7 against 14.6 s per iteration, XLA
      # buffers 1.0 against 6.9 GiB; docs/benchmarks.md). False keeps them (a GPU with room).
      remat=True,
      blend=False, blend_alpha=1.0,
      temperature=0.0,         # student tau; 0 = model.temperature
      reference_logit_scale=False,  # MTT-VL's log(1/tau) multiplier (research §3.4)
      init="real",             # 'real' pairs | 'noise'
      init_augment=False,      # real init images through the train transform (reference)
      clamp_lr=0.0,            # > 0: floor for the learned student lrs (reference --clamp_lr)
      eval_every=150, eval_seeds=1))
  c.offline_variant = ""       # printed when the dataset is missing
  return c


def apply_protocol(c: ml_collections.ConfigDict, name: str) -> None:
  """Writes reference evaluator `name`'s fields (retrieval_protocols.PROTOCOLS) into
  `c.evaluate`: what it fixes, its loss when it has its own, and its epochs and scoring
  interval (which a config may change afterwards)."""
  if name not in protocols.PROTOCOLS:
    raise ValueError(f"protocol={name!r}: choose one of {sorted(protocols.PROTOCOLS)}")
  p = protocols.PROTOCOLS[name]
  c.evaluate.protocol = name
  c.evaluate.update(protocols.fixed_values(name))
  c.evaluate.epochs = p.epochs
  c.evaluate.eval_every = p.eval_every


def apply_offline(c: ml_collections.ConfigDict, root: str = "runs/data") -> None:
  """jdd's offline substitutes (generated shapes_captions, MiniLM, a small pretrained NFNet);
  every set evaluated with 3 seeds, every random subset drawn 3 times."""
  c.dataset.name = "shapes_captions"
  c.dataset.generate = True
  c.dataset.root = root
  c.dataset.image_size = 64
  c.text_encoder.path = "minilm"
  c.image_encoder.arch = "nfnet_l0"
  c.image_encoder.kwargs = ml_collections.ConfigDict(dict(NFNET_TINY))
  c.image_encoder.feature_dim = NFNET_TINY["num_features"]
  c.image_encoder.checkpoint = ""
  c.evaluate.seeds = 3
  c.evaluate.draws = 3


def apply_paper_data(c: ml_collections.ConfigDict, dataset: str, reference: str) -> None:
  """A paper cell's data and weights: `dataset` (flickr30k | coco) under data/, read with the
  caption handling of `reference` (its max words), bert-base-uncased and the converted
  NFNet-L0 (jdd never downloads: a missing file stops the run with the list)."""
  c.dataset.name = dataset
  c.dataset.ann_dir, c.dataset.image_root = PAPER_PATHS[dataset]
  c.dataset.reference = reference
  c.text_encoder.path = "data/bert-base-uncased"
  c.image_encoder.checkpoint = "data/nfnet_l0_jdd"


def read_pairs(args: dict, dataset: str, name: str) -> int:
  """The `pairs` variant (default 100): one of the paper cells', except offline."""
  pairs = int(args.get("pairs", 100))
  if dataset != "shapes_captions" and pairs not in PAPER_PAIRS:
    raise ValueError(f"{name}: pairs must be 100, 200 or 500 (the paper cells), got {pairs}")
  return pairs


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
  c.evaluate.draws = 2
  c.evaluate.baselines = ("random_20",)
  c.evaluate.full_train_epochs = 2
  c.log_every = 5
  c.checkpoint_every = 5


# ----------------------------------------------------------- trajectory matching cells
# research §5.2 (the references' shell scripts). Keys: (dataset, pairs). `lors` holds LoRS's
# departures from the RepBlend script of the same cell.
TM_CELLS = {
    ("flickr30k", 100): dict(max_start_epoch=2, lr_img=100.0, lr_txt=100.0, lr_sim=10.0,
                             sim_rank=10, sim_alpha=3.0, mini_batch=20),
    ("flickr30k", 200): dict(max_start_epoch=2, lr_img=1000.0, lr_txt=1000.0, lr_sim=10.0,
                             sim_rank=5, sim_alpha=1.0, mini_batch=20),
    ("flickr30k", 500): dict(max_start_epoch=3, lr_img=1000.0, lr_txt=1000.0, lr_sim=100.0,
                             sim_rank=20, sim_alpha=0.01, mini_batch=20, eval_every=300,
                             lors=dict(mini_batch=40)),
    ("coco", 100): dict(max_start_epoch=2, lr_img=1000.0, lr_txt=1000.0, lr_sim=5.0,
                        sim_rank=10, sim_alpha=1.0, mini_batch=20, merge_branches=True),
    ("coco", 200): dict(max_start_epoch=2, lr_img=1000.0, lr_txt=1000.0, lr_sim=50.0,
                        sim_rank=20, sim_alpha=1.0, mini_batch=20, merge_branches=True,
                        lors=dict(iterations=2000)),
    ("coco", 500): dict(max_start_epoch=2, lr_img=5000.0, lr_txt=5000.0, lr_sim=500.0,
                        sim_rank=40, sim_alpha=1.0, mini_batch=20, merge_branches=True,
                        temperature=0.1, lors=dict(mini_batch=30)),
}
# MTT-VL's own settings (princetonvisualai/multimodal_dataset_distillation at c696fd6): its
# README command, the only published one (Flickr 100: syn_steps 8, expert_epochs 1,
# max_start_epoch 2, lr_img = lr_txt = 1000, lr_lr 1e-2), and its `distill.py` defaults where
# the command sets nothing (Iteration 50,000, mini-batch 100). Its code has no option for the
# settings LoRS/RepBlend scripts add per cell: the trajectory loss always normalises each
# modality by its own distance (no `--merge_loss_branches`), the unroll's temperature is fixed
# at 0.07 (no tau 0.1 for COCO-500), and no script raises max_start_epoch to 3 (Flickr-500).
# So every MTT-VL cell uses the values below and none of a RepBlend cell's; the periodic
# evaluation during distillation runs every 1000 iterations (the reference: 5 networks every
# 50, i.e. 1000 evaluations in a 50,000-iteration run).
MTTVL_CELL = dict(max_start_epoch=2, lr_img=1000.0, lr_txt=1000.0, mini_batch=100,
                  iterations=50000, merge_branches=False, temperature=0.0, eval_every=1000)


def apply_method(c: ml_collections.ConfigDict, spec: tm_vl.MethodSpec) -> None:
  """Writes a trajectory-matching method's fixed choices (its `SPEC`, see `tm_vl.MethodSpec`)
  into a base config. The pair budget charges S one pair whenever the method learns it."""
  c.method = spec.name
  c.model.train_backbone = spec.train_backbone
  c.distill.similarity = spec.similarity_kind
  c.distill.charge_similarity = spec.similarity
  c.distill.blend = spec.blend
  c.distill.blend_alpha = spec.blend_alpha
  c.distill.loss = spec.loss
  c.distill.grad_mode = spec.grad_mode
  c.evaluate.loss = spec.loss


def cell_settings(method: str, dataset: str, pairs: int) -> dict:
  """The `distill` fields of a paper cell for `method` (the offline variant uses Flickr-100's):
  the RepBlend script, with LoRS's departures, or MTT-VL's own settings (`MTTVL_CELL`, its
  mini-batch capped at the pair count) whatever the dataset."""
  cell = dict(TM_CELLS[("flickr30k", 100) if dataset == "shapes_captions" else (dataset, pairs)])
  lors_departures = cell.pop("lors", {})
  if method == "lors":
    cell.update(lors_departures)
  if method == "mttvl":
    cell = dict(MTTVL_CELL)
    cell["mini_batch"] = min(cell["mini_batch"], pairs)
  return cell


def apply_offline_tm(c: ml_collections.ConfigDict) -> None:
  """The trajectory-matching offline variant's scale (on top of `apply_offline`)."""
  # The paper cells' outer lrs are scaled to BERT-size embeddings and to experts whose epoch
  # is 1,132 steps; the offline experts' epochs are 78 steps (smoke: 9) and MiniLM
  # embeddings have norm 1, so the outer lrs are lowered and the student lrs floored.
  c.distill.update(dict(lr_img=1.0, lr_txt=0.005, lr_sim=0.1, lr_lr=1e-4, clamp_lr=1e-3))
  # 32 px keeps each method's one command under 20 minutes on 2 CPU cores: LoRS and MTT-VL
  # train the whole NFNet (experts, unroll, evaluation), 4x the work per image at 64 px.
  c.dataset.image_size = 32
  if c.method == "mttvl":
    # MTT-VL's mini-batch 100 is every pair at every inner step of an exact (second-order)
    # unroll through the whole NFNet; offline it uses the other methods' 20.
    c.distill.mini_batch = 20
  c.experts.num_experts = 5
  c.experts.epochs = c.experts.keep_epochs   # later epochs are never read
  c.distill.iterations = 300
  c.distill.eval_every = 100
  c.log_every = 10
  c.checkpoint_every = 50


def apply_smoke_tm(c: ml_collections.ConfigDict, args: dict | None = None) -> None:
  """The trajectory-matching smoke: `apply_smoke`, then 10 pairs (or the variant's `pairs`)
  distilled for 6 iterations of 3 student steps."""
  apply_smoke(c)
  c.experts.epochs = c.experts.keep_epochs
  pairs = int(smoke_value(args, "pairs", 10))
  c.distill.pairs = pairs
  c.distill.iterations = 6
  c.distill.syn_steps = 3
  c.distill.mini_batch = max(1, min(4, pairs - 1))
  c.distill.sim_rank = 2
  c.distill.eval_every = 4
  c.evaluate.baselines = (f"random_{pairs}",)
  c.evaluate.epochs = 2
  c.evaluate.eval_every = 1
  c.log_every = 2
  c.checkpoint_every = 3


def default_protocol(method: str) -> str:
  """The evaluator of a method's own paper: MTT-VL's for MTT-VL, LoRS's for LoRS and RepBlend
  (RepBlend's `src/epoch.py` is LoRS's), EDGE's for EDGE."""
  return {"mttvl": "mttvl", "edge": "edge"}.get(method, "lors")


def tm_config(method: str, dataset: str, arg, name: str) -> ml_collections.ConfigDict:
  """A trajectory-matching config: a paper cell (`pairs=100|200|500`, `smoke`) or, for
  dataset='shapes_captions', jdd's offline variant (100 pairs vs the random 100 subset);
  `protocol=lors|mttvl|edge` evaluates with another reference's evaluator."""
  args = parse_arg(arg)
  check_variant_keys(args, {"pairs", "smoke", "grad_mode", "protocol"}, name)
  c = base_config()
  apply_method(c, SPECS[method])
  # `smoke` of a paper config runs its cell's settings on the offline data (a CPU minute).
  offline = dataset == "shapes_captions" or bool(args.get("smoke"))
  c.offline_variant = f"configs/{method}_shapes.py"
  pairs = read_pairs(args, dataset, name)
  if offline:
    apply_offline(c)
  else:
    apply_paper_data(c, dataset, reference="lors" if method == "lors" else "repblend")
  apply_protocol(c, str(args.get("protocol", default_protocol(method))))
  c.distill.pairs = pairs
  c.distill.update(cell_settings(method, dataset, pairs))
  # COCO-500 distils at tau 0.1 while experts and evaluation use 0.07 (research §9 #5): kept
  # as the reference, since the experts' trajectories were made at 0.07.
  c.experts.keep_epochs = int(c.distill.max_start_epoch) + int(c.distill.expert_epochs)
  # The references train their experts on, and start the synthetic images from, augmented
  # images (train transform; RepBlend's op list lacks AutoContrast). The offline variants do
  # not: their captions name left/right relations, which a flip would falsify.
  c.train_transform.ops = "repblend" if method == "repblend" else "lors"
  c.experts.augment = c.distill.init_augment = dataset != "shapes_captions"
  c.evaluate.baselines = (f"random_{pairs}",)
  if offline:
    apply_offline_tm(c)
  if "grad_mode" in args:
    c.distill.grad_mode = str(args["grad_mode"])
  if args.get("smoke"):
    apply_smoke_tm(c, args)
  return finalize(c)
