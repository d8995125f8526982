"""Seconds per distillation iteration and peak memory of RepBlend and LoRS trajectory matching:
jdd exact mode, jdd TESLA mode, and the same computation as a PyTorch loop.

    PYTHONPATH=. JAX_PLATFORMS=cpu python benchmarks/trajectory_matching.py \
        [--res 64] [--pairs 100] [--syn-steps 8] [--iters 5] [--which repblend,lors] \
        [--modes exact,tesla,torch,torch_tesla] [--encoder tiny2304|tiny|l0]

The torch modes need the test extra (`pip install -e .[test]`: torch and timm); without it the
torch rows are skipped with a note.

What one iteration is. jdd: `jdd.methods.tm_vl.make_step` with the student loss of
`tm_vl.make_student_loss`, the distilled state of `tm_vl.init_params` and the optimiser of
`tm_vl.outer_optimizer`, built from `configs/{repblend,lors}_flickr.py` (the Flickr-100 cell:
99 synthetic pairs + low-rank S of rank 10, alpha 3, mini-batch 20, syn_steps 8, 768-d texts,
WBCE, dropout 0.1, tau 0.07, SGD momentum 0.5) and jitted once, as the driver does; only the
expert (start, target) pair is fixed instead of read from a store. torch
(`torch_reference.make_tm_iteration`, in the style of silicx/LoRS_Distill, zhangxin-xd/RepBlend
and princetonvisualai MTT-VL): the student is a flat parameter vector per modality run through
`torch.func.functional_call` (their ReparamModule); mode `torch` unrolls with
`torch.autograd.grad(..., create_graph=True)` so the outer backward goes through all inner steps
(MTT-VL's exact unroll, i.e. the computation of jdd's exact mode), mode `torch_tesla` takes
TESLA's two passes (the LoRS / RepBlend references, jdd's tesla mode); then `torch.optim.SGD`
with four parameter groups. The NFNet is timm's NormFreeNet (what the references use); the
projection head is written there. Both sides use the same weights,
data, mini-batches and blending draws (jdd's, passed to torch through numpy).

Reduced scale (CPU): images of `--res` px (64 by default, 224 in the papers). `--encoder`:
`tiny2304` (default) is NFNet-L0's layout at reduced width (depths 1,1,1,1, channels
32,64,96,128, stem 16, group 8; 0.38 M parameters) with L0's 2304-d final conv, so the image
feature, the heads (RepBlend: image head 2304->2304, 10.6 M; text head 768->2304, 7.1 M) and
everything matched for RepBlend are full size; `tiny` is jdd's NFNET_TINY (192-d); `l0` is the
full NFNet-L0 (32.7 M; very slow for LoRS on CPU).

Measured: seconds per iteration, wall clock and process CPU time (`time.process_time`, all
threads; much less sensitive than wall time to other jobs on a shared machine), medians of
`--iters` after one warm-up iteration; jdd's compilation, `jit(...).lower(...).compile()`, is
timed separately. Torch uses `os.cpu_count()` threads, XLA its default pool. Memory: each
(method, mode) runs in its own subprocess; `peak RSS` is that process's VmHWM (includes
the Python/jax or torch runtime, weights and data), `base RSS` the high-water mark before the
first iteration, so the difference is what iterating adds. For jdd the compiled executable's
`memory_analysis()` (temp + argument + output bytes) is printed too. Before timing, a parity
check runs one iteration at dropout 0 in one process and prints the trajectory loss of jdd
exact, jdd TESLA and torch and the relative difference of the outer updates (jdd exact vs torch).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_reference  # noqa: E402  (the PyTorch loops; imports torch only when called)
ENCODERS = {
    "tiny2304": dict(depths=(1, 1, 1, 1), channels=(32, 64, 96, 128), stem_chs=16,
                     group_size=8, num_features=2304),
    "tiny": dict(depths=(1, 1, 1, 1), channels=(32, 64, 96, 128), stem_chs=16, group_size=8,
                 num_features=192),
    "l0": {},
}


@dataclasses.dataclass
class Setting:
  """One benchmark problem. None fields take the Flickr config's value."""
  which: str = "repblend"
  res: int = 64
  pairs: int = 100
  syn_steps: int | None = None
  mini_batch: int | None = None
  sim_rank: int | None = None
  text_dim: int = 768
  encoder: dict = dataclasses.field(default_factory=lambda: dict(ENCODERS["tiny2304"]))
  dropout: float | None = None
  iters: int = 1          # iterations whose schedule is prepared (warm-up + timed)
  seed: int = 0


def _rss_mib() -> float:
  """This process's resident-set high-water mark in MiB: VmHWM of /proc/self/status, which
  starts afresh at exec (`ru_maxrss` does not: a worker would report its parent's peak)."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) / 1024.0
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0   # Linux: KiB


# ------------------------------------------------------------------------- jdd side
def distill_config(s: Setting):
  """The Flickr config of the method (its `distill` and `model` fields), with the overrides."""
  from jdd.config import load_config
  cell = s.pairs if s.pairs in (100, 200, 500) else 100
  c = load_config(os.path.join(ROOT, f"configs/{s.which}_flickr.py:pairs={cell}"))
  dc = c.distill
  dc.pairs = s.pairs
  for name in ("syn_steps", "mini_batch", "sim_rank"):
    if getattr(s, name) is not None:
      dc[name] = getattr(s, name)
  dropout = float(c.model.dropout if s.dropout is None else s.dropout)
  return dc, dropout, float(c.model.temperature)


def _ravel(tree) -> np.ndarray:
  """The flat float32 vector of a pytree, in `jax.tree.leaves` order (what the expert store
  keeps per modality), computed in numpy so that building a problem compiles nothing."""
  import jax
  return np.concatenate([np.ravel(np.asarray(x, np.float32)) for x in jax.tree.leaves(tree)])


def _unraveler(tree):
  """flat vector -> pytree shaped like `tree` (the inverse of `_ravel`, traceable)."""
  import jax
  leaves, treedef = jax.tree.flatten(tree)
  shapes = [np.shape(x) for x in leaves]
  offsets = np.cumsum([0] + [int(np.prod(sh)) for sh in shapes])

  def unravel(v):
    return treedef.unflatten([v[offsets[i]:offsets[i + 1]].reshape(sh)
                              for i, sh in enumerate(shapes)])
  return unravel


def problem_meta(s: Setting) -> dict:
  """What the torch loop needs to know of the problem (config values and shapes; no jax)."""
  from jdd.methods import lors, repblend, tm_vl
  spec = {"repblend": repblend.SPEC, "lors": lors.SPEC}[s.which]
  dc, dropout, tau = distill_config(s)
  return dict(which=s.which, train_backbone=spec.train_backbone,
              feature_dim=int(s.encoder.get("num_features", 2304)), text_dim=s.text_dim,
              dropout=dropout, tau=tau, syn_steps=int(dc.syn_steps),
              mini_batch=int(dc.mini_batch), sim_alpha=float(dc.sim_alpha),
              sim_rank=int(dc.sim_rank), merge=bool(dc.merge_branches), blend=bool(dc.blend),
              encoder=s.encoder, lr_img=float(dc.lr_img), lr_txt=float(dc.lr_txt),
              lr_lr=float(dc.lr_lr), lr_sim=float(dc.lr_sim), momentum=float(dc.momentum),
              n=tm_vl.num_synthetic(dc, spec), res=s.res)


def build_problem(s: Setting, torch_arrays: bool = True) -> dict:
  """Model, weights, distilled state, expert pair and per-iteration schedule (deterministic in
  s.seed), plus (`torch_arrays`) the numpy arrays the torch loop needs (`arrays`, torch names
  and layouts)."""
  import jax
  import jax.numpy as jnp
  from jdd import models
  from jdd.convert import to_state_dict
  from jdd.methods import lors, repblend, tm_vl
  from jdd.models import heads, nfnet
  from jdd.models.retrieval import RetrievalModel
  from jdd.objectives import trajectory

  spec = {"repblend": repblend.SPEC, "lors": lors.SPEC}[s.which]
  dc, dropout, tau = distill_config(s)
  rng = np.random.default_rng(s.seed)
  backbone = nfnet.NFNet(**s.encoder)
  feat = int(s.encoder.get("num_features", 2304))
  model = RetrievalModel(backbone, feat, train_backbone=spec.train_backbone, dropout=dropout,
                         temperature=tau)
  # Jitted: an eager Flax init dispatches (and compiles) every op separately.
  variables = jax.jit(lambda k: models.init_variables(backbone, k, (s.res, s.res, 3)))(
      jax.random.key(s.seed))

  def randomise(path, x):
    # timm starts conv3's gain at 0, which would make every residual branch vanish.
    name = str(getattr(path[-1], "key", path[-1]))
    x = np.asarray(x)
    if name == "gain":
      return jnp.asarray(0.5 + rng.random(x.shape, np.float32))
    if name == "bias":
      return jnp.asarray(0.1 * rng.standard_normal(x.shape, np.float32))
    return jnp.asarray(x)

  variables = jax.tree_util.tree_map_with_path(randomise, variables)
  theta0 = jax.device_get(jax.jit(lambda k, v: model.init(k, v, s.text_dim))(
      jax.random.key(s.seed + 1), variables))
  # A stand-in expert epoch: the target is the start moved by small noise (numpy: no compiles).
  target = jax.tree.map(lambda p: p + 0.01 * rng.standard_normal(p.shape).astype(np.float32),
                        theta0)
  n = tm_vl.num_synthetic(dc, spec)
  images = rng.standard_normal((n, s.res, s.res, 3), np.float32)
  texts = rng.standard_normal((n, s.text_dim), np.float32)
  params = tm_vl.init_params(dc, spec, jax.random.key(s.seed + 2), images, texts)

  flat = {m: _ravel(theta0[m]) for m in trajectory.MODALITIES}
  unravels = {m: _unraveler(theta0[m]) for m in trajectory.MODALITIES}
  batch = {"start": {m: jnp.asarray(v) for m, v in flat.items()},
           "target": {m: jnp.asarray(_ravel(target[m])) for m in trajectory.MODALITIES}}
  key_step = jax.random.key(s.seed + 3)

  problem = dict(model=model, spec=spec, dc=dc, variables=variables, params=params,
                 batch=batch, unravels=unravels, key_step=key_step, meta=problem_meta(s),
                 num_student_params={m: int(flat[m].size) for m in flat})
  if not torch_arrays:
    return problem

  # The per-iteration draws exactly as make_step derives them from its rng (jitted once).
  steps, b = int(dc.syn_steps), int(dc.mini_batch)

  @jax.jit
  def schedule(r):
    idx = trajectory.minibatch_indices(jax.random.fold_in(r, 0), n, b, steps)
    keys = trajectory.step_keys(jax.random.fold_in(r, 1), steps)
    lam, perm = jax.vmap(lambda k: tm_vl.blend_draw(jax.random.split(k)[0], b,
                                                    float(dc.blend_alpha)))(keys)
    return idx, lam, perm

  draws = [jax.device_get(schedule(jax.random.fold_in(key_step, it))) for it in range(s.iters)]
  idx, lam, perm = ([np.asarray(d[j]) for d in draws] for j in range(3))

  def torch_named(tree, key_fn):
    return {k: np.asarray(v, np.float32) for k, v in to_state_dict({"params": tree},
                                                                   key_fn).items()}

  bb_key = nfnet.torch_key
  head_key = heads.torch_key
  img_key = bb_key if spec.train_backbone else head_key
  arrays = {f"bb.{k}": v for k, v in torch_named(variables["params"], bb_key).items()}
  for m, fn in (("image", img_key), ("text", head_key)):
    arrays.update({f"start.{m}.{k}": v for k, v in torch_named(theta0[m], fn).items()})
    arrays.update({f"target.{m}.{k}": v for k, v in torch_named(target[m], fn).items()})
  arrays.update(images=np.ascontiguousarray(images.transpose(0, 3, 1, 2)), texts=texts,
                sim_diag=np.asarray(params["sim"]["diag"]),
                sim_left=np.asarray(params["sim"]["left"]),
                sim_right=np.asarray(params["sim"]["right"]),
                lr_image=np.float32(params["lr_image"]), lr_text=np.float32(params["lr_text"]),
                idx=np.stack(idx), lam=np.stack(lam), perm=np.stack(perm))
  return {**problem, "arrays": arrays}


def run_jdd(problem: dict, mode: str, iters: int, warmup: int = 1) -> dict:
  """Compiles the driver's step once, runs warm-up + timed iterations; the first iteration's
  loss and outer update are returned for the parity check."""
  import jax
  from jdd.methods import tm_vl
  dc = problem["dc"]
  dc.grad_mode = mode
  model, spec = problem["model"], problem["spec"]
  frozen = None if spec.train_backbone else problem["variables"]
  loss_fn = tm_vl.make_student_loss(model, frozen, spec, dc)
  tx = tm_vl.outer_optimizer(dc)
  unravels = problem["unravels"]
  step = jax.jit(tm_vl.make_step(loss_fn, tx, lambda m, v: unravels[m](v),
                                 problem["meta"]["n"], dc))
  params = problem["params"]
  state = {"params": params, "opt": tx.init(params)}
  batch, key = problem["batch"], problem["key_step"]
  base_rss = _rss_mib()
  t = time.perf_counter()
  compiled = step.lower(state, batch, jax.random.fold_in(key, 0)).compile()
  compile_s = time.perf_counter() - t
  mem = compiled.memory_analysis()
  mem_bytes = None
  if mem is not None:
    mem_bytes = {k: int(getattr(mem, f"{k}_size_in_bytes")) for k in ("temp", "argument",
                                                                       "output")}
  times, cpu, first = [], [], None
  for it in range(warmup + iters):
    t, c = time.perf_counter(), time.process_time()
    new, metrics = compiled(state, batch, jax.random.fold_in(key, it))
    jax.block_until_ready(new)
    times.append(time.perf_counter() - t)
    cpu.append(time.process_time() - c)
    if it == 0:
      first = {"loss": float(metrics["loss"]),
               "update": {k: np.asarray(new["params"][k]) - np.asarray(params[k])
                          for k in ("images", "texts", "lr_image", "lr_text")}}
      first["update"].update({f"sim_{k}": np.asarray(new["params"]["sim"][k])
                              - np.asarray(params["sim"][k]) for k in params["sim"]})
    state = new
  return dict(mode=mode, loss0=first["loss"], update0=first["update"], compile_s=compile_s,
              times=times[warmup:], median_s=statistics.median(times[warmup:]),
              cpu_s=statistics.median(cpu[warmup:]),
              memory_analysis=mem_bytes, base_rss_mib=base_rss, peak_rss_mib=_rss_mib())


# ------------------------------------------------------------------------ torch side
def run_torch(arrays: dict, meta: dict, iters: int, warmup: int = 1,
              threads: int | None = None, float64: bool = False, grad_mode: str = "exact"
              ) -> dict:
  """The reference-style loop (`torch_reference.make_tm_iteration`); same return fields as
  `run_jdd`. `float64=True` runs it in double precision: the parity check's yardstick for how
  far two float32 computations of this loss may differ by rounding alone."""
  import torch
  iteration, leaf = torch_reference.make_tm_iteration(arrays, meta, threads=threads,
                                                      float64=float64, grad_mode=grad_mode)
  init = {k: v.detach().clone().numpy() for k, v in leaf.items()}
  base_rss = _rss_mib()
  times, cpu, loss0, update0 = [], [], None, None
  for it in range(warmup + iters):
    t0, c0 = time.perf_counter(), time.process_time()
    loss = iteration(it)
    times.append(time.perf_counter() - t0)
    cpu.append(time.process_time() - c0)
    if it == 0:
      loss0 = loss
      update0 = {k: v.detach().numpy() - init[k] for k, v in leaf.items()}
      update0["images"] = update0["images"].transpose(0, 2, 3, 1)
  return dict(mode={"exact": "torch", "exact_remat": "torch_remat"}.get(grad_mode, "torch_tesla"),
              loss0=loss0,
              update0=update0, compile_s=0.0, times=times[warmup:],
              median_s=statistics.median(times[warmup:]), cpu_s=statistics.median(cpu[warmup:]),
              memory_analysis=None,
              base_rss_mib=base_rss, peak_rss_mib=_rss_mib(), torch=torch.__version__,
              threads=torch.get_num_threads())


# ------------------------------------------------------------------------------ parity
def rel_diff(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def parity(s: Setting) -> dict:
  """One iteration at dropout 0 (dropout masks come from different generators): the loss of
  jdd exact, jdd TESLA and torch, and the relative difference of each outer update, jdd exact
  vs torch (both differentiate through the whole unroll). The same torch loop in float64 gives
  the rounding yardstick: float32 torch vs float64 torch."""
  s = dataclasses.replace(s, dropout=0.0, iters=1)
  problem = build_problem(s)
  exact = run_jdd(problem, "exact", iters=1, warmup=0)
  tesla = run_jdd(problem, "tesla", iters=1, warmup=0)
  torch_ = run_torch(problem["arrays"], problem["meta"], iters=1, warmup=0)
  torch64 = run_torch(problem["arrays"], problem["meta"], iters=1, warmup=0, float64=True)
  updates = {k: rel_diff(exact["update0"][k], torch_["update0"][k]) for k in exact["update0"]}
  rounding = {k: rel_diff(torch_["update0"][k], torch64["update0"][k]) for k in updates}
  return {"loss_exact": exact["loss0"], "loss_tesla": tesla["loss0"],
          "loss_torch": torch_["loss0"], "loss_torch_float64": torch64["loss0"],
          "loss_rel_diff_exact_torch": rel_diff(exact["loss0"], torch_["loss0"]),
          "loss_rel_diff_exact_torch64": rel_diff(exact["loss0"], torch64["loss0"]),
          "loss_rel_diff_torch_torch64": rel_diff(torch_["loss0"], torch64["loss0"]),
          "update_rel_diff_exact_torch": updates,
          "update_rel_diff_torch_torch64": rounding}


# ----------------------------------------------------------------------------- driver
def _worker(args) -> None:
  """One (method, mode) in this process; prints one JSON line."""
  s = Setting(**json.loads(args.setting))
  if args.worker == "parity":
    out = parity(s)
  elif args.worker in ("torch", "torch_tesla"):
    with np.load(args.problem) as z:
      arrays = {k: z[k] for k in z.files}
    with open(args.problem + ".json") as f:
      meta = json.load(f)
    out = run_torch(arrays, meta, iters=args.iters,
                    grad_mode="exact" if args.worker == "torch" else "tesla")
  else:
    problem = build_problem(s)
    out = run_jdd(problem, args.worker, iters=args.iters)
    out["student_params"] = problem["num_student_params"]
  out.pop("update0", None)
  print("RESULT " + json.dumps(out), flush=True)


def _spawn(argv: list[str]) -> dict:
  env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
  proc = subprocess.run([sys.executable, os.path.abspath(__file__), *argv], env=env,
                        capture_output=True, text=True)
  for line in proc.stdout.splitlines():
    if line.startswith("RESULT "):
      return json.loads(line[7:])
  raise RuntimeError(f"worker {argv[:2]} failed (status {proc.returncode}):\n"
                     f"{proc.stderr[-3000:]}")


def _fmt_mem(m: dict | None) -> str:
  if not m:
    return "-"
  return f"{sum(m.values()) / 2**20:.0f} (t {m['temp'] / 2**20:.0f})"


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--res", type=int, default=64)
  p.add_argument("--pairs", type=int, default=100)
  p.add_argument("--syn-steps", type=int, default=None, help="default: the config's (8)")
  p.add_argument("--iters", type=int, default=5, help="timed iterations after 1 warm-up")
  p.add_argument("--which", default="repblend,lors")
  p.add_argument("--modes", default="exact,tesla,torch")
  p.add_argument("--encoder", default="tiny2304", choices=sorted(ENCODERS))
  p.add_argument("--no-parity", action="store_true")
  p.add_argument("--worker", default="", help=argparse.SUPPRESS)
  p.add_argument("--setting", default="", help=argparse.SUPPRESS)
  p.add_argument("--problem", default="", help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.worker:
    _worker(args)
    return
  modes = [m for m in args.modes.split(",") if m]
  try:
    import timm  # noqa: F401
    import torch  # noqa: F401
  except ImportError:
    print("torch/timm not installed (pip install -e .[test]): torch rows skipped")
    modes = [m for m in modes if not m.startswith("torch")]
  print(f"load average {os.getloadavg()}; {os.cpu_count()} CPUs; res {args.res}, pairs "
        f"{args.pairs}, encoder {args.encoder} {ENCODERS[args.encoder] or '(nfnet_l0)'}")
  rows = []
  with tempfile.TemporaryDirectory() as work:
    for which in [w for w in args.which.split(",") if w]:
      s = Setting(which=which, res=args.res, pairs=args.pairs, syn_steps=args.syn_steps,
                  encoder=dict(ENCODERS[args.encoder]), iters=args.iters + 1)
      setting = json.dumps(dataclasses.asdict(s))
      torch_modes = [m for m in modes if m.startswith("torch")]
      if "torch" in modes and not args.no_parity:
        par = _spawn(["--worker", "parity", "--setting", setting])
        print(f"[{which}] parity, 1 iteration at dropout 0: trajectory loss jdd exact "
              f"{par['loss_exact']:.6f}, jdd tesla {par['loss_tesla']:.6f}, torch "
              f"{par['loss_torch']:.6f} (rel. diff exact/torch "
              f"{par['loss_rel_diff_exact_torch']:.1e}; torch float64 "
              f"{par['loss_torch_float64']:.6f}: rel. diff jdd {par['loss_rel_diff_exact_torch64']:.1e}"
              f", torch float32 {par['loss_rel_diff_torch_torch64']:.1e})", flush=True)
        print(f"[{which}] outer-update rel. diff jdd exact vs torch (torch float32 vs float64): "
              + ", ".join(f"{k} {v:.1e} ({par['update_rel_diff_torch_torch64'][k]:.1e})"
                          for k, v in par["update_rel_diff_exact_torch"].items()), flush=True)
      if torch_modes:
        problem = build_problem(s)
        path = os.path.join(work, f"{which}.npz")
        np.savez(path, **problem["arrays"])
        with open(path + ".json", "w") as f:
          json.dump(problem["meta"], f)
        del problem
      for mode in modes:
        argv = ["--worker", mode, "--setting", setting, "--iters", str(args.iters)]
        r = _spawn(argv + (["--problem", path] if mode in torch_modes else []))
        rows.append((which, mode, r))
        print(f"[{which}] {mode}: {r['median_s']:.3f} s/iteration, CPU {r['cpu_s']:.3f} s "
              f"(medians of {args.iters}; compile {r['compile_s']:.1f} s), peak RSS {r['peak_rss_mib']:.0f} MiB "
              f"(base {r['base_rss_mib']:.0f}), XLA memory {_fmt_mem(r['memory_analysis'])} MiB"
              f", loss at it. 0 {r['loss0']:.5f}; load {os.getloadavg()[0]:.2f}", flush=True)
  print("\n| method | mode | s/iteration | CPU s/iteration | compile s | peak RSS MiB | "
        "RSS added MiB | XLA temp+arg+out MiB | s/it jdd/torch | CPU s jdd/torch | "
        "RSS added jdd/torch |")
  print("|---|---|---|---|---|---|---|---|---|---|---|")
  for which, mode, r in rows:
    ref_mode = "torch_tesla" if mode == "tesla" and any(
        w == which and m == "torch_tesla" for w, m, _ in rows) else "torch"
    ref = next((q for w, m, q in rows if w == which and m == ref_mode), None)
    added = r["peak_rss_mib"] - r["base_rss_mib"]
    ratio_t = ratio_c = ratio_m = "-"
    if ref is not None and not mode.startswith("torch"):
      ratio_t = f"{r['median_s'] / ref['median_s']:.2f}"
      ratio_c = f"{r['cpu_s'] / ref['cpu_s']:.2f}"
      ref_added = ref["peak_rss_mib"] - ref["base_rss_mib"]
      ratio_m = f"{added / ref_added:.2f}" if ref_added > 0 else "-"
    print(f"| {which} | {mode} | {r['median_s']:.3f} | {r['cpu_s']:.3f} | {r['compile_s']:.1f} | "
          f"{r['peak_rss_mib']:.0f} | {added:.0f} | {_fmt_mem(r['memory_analysis'])} | "
          f"{ratio_t} | {ratio_c} | {ratio_m} |")
  print(f"load average at the end {os.getloadavg()}")


if __name__ == "__main__":
  main()
