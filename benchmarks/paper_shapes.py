"""Speed and memory of every seed computation at its paper's shapes: jdd beside a PyTorch loop.

    PYTHONPATH=. JAX_PLATFORMS=cpu python benchmarks/paper_shapes.py [--scale 0.25] [--steps 1]
        [--rows sre2l,infer,...] [--warmup 0] [--markdown FILE]
    PYTHONPATH=. python benchmarks/paper_shapes.py --gpu-suite        # every row, paper scale

One row per computation, timed in jdd (the method's step, jitted once as its driver does) and in
an equivalent PyTorch loop (`torch_reference.py`: torchvision / timm / diffusers networks in the
style of the reference code), same shapes and the same work per step, random weights and data
(a step's cost depends on its shapes, not on its values):

  sre2l          SRe2L recover step: ResNet-18 teacher (eval), 224 px, batch 100 (one image per
                 class), RandomResizedCrop + flip + roll, CE + BN-statistics loss, Adam, clip
  infer          INFER compensator step: one u added to 1000 real 224-px images (one per
                 ImageNet class), the same loss through ResNet-18, Adam on u
  fadrm          FADRM recover: ResNet-18, batch 100, stages at 200 and 224 px (half the 2000
                 steps each); reported per image, s/step x 2000 / batch, as the paper does
  fadrm_plus     FADRM+: the same, teachers ResNet-18, DenseNet-121, ShuffleNetV2 x1.0 and
                 MobileNetV2 taking turns step by step (the IN-1k teacher set)
  repblend_*     RepBlend distillation iteration at Flickr30K shapes: NFNet-L0 at 224 px
                 (frozen), 499 synthetic pairs, 768-d texts, mini-batch 20, 8 student steps,
                 TESLA (the reference's gradient) or exact (through the unroll, each
                 student step recomputed in the backward pass: jdd's default distill.remat,
                 and the PyTorch loop's `exact_remat`)
  lors_*         LoRS: the same with the whole NFNet-L0 as the student, mini-batch 40
  edge_256/512   EDGE fine-tuning step: SD-1.5 U-Net at its real widths (859.5 M parameters),
                 256 / 512 px images (32 / 64 latents), batch 128, DiffFit leaves, SGD

`--scale s` multiplies every batch (and mini-batch) by s, at least 1; the shapes each row used
are printed. On a CPU the EDGE batch is `--edge-batch` (default 2: a 512-px step costs minutes
per image on 2 cores), stated as such in the shapes. The loss CLIP and the VAE of the EDGE rows
are narrow (`benchmarks/edge.py --aux small`) so that the figures measure the U-Net; every
other network is full size.

Measured, per row and framework, each in a fresh subprocess: seconds per step (mean of
`--steps` timed steps after `--warmup`, wall clock and process CPU time, which other jobs on a
shared machine disturb less), peak memory (CPU: the process's VmHWM minus its resident size
after the imports, so weights, data and activations count and the runtime does not; GPU:
`jax.Device.memory_stats()['peak_bytes_in_use']` and `torch.cuda.max_memory_allocated()`), and
for jdd the XLA compile time and the compiled program's `memory_analysis()`. The last line is
`worst_time_ratio=<float>`, the largest jdd / PyTorch wall-time ratio over the rows run.

`--tiny` swaps every network for a narrow one at 32 px (the default test suite runs it so the
script cannot rot; its figures mean nothing). `--gpu-suite` runs every row at paper scale on a
GPU within a time budget and writes `paper_shapes_gpu.md`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import paper_workloads as workloads  # noqa: E402  (imports jax / torch only when called)

sys.path.insert(0, ROOT)
from jdd import xla_setup  # noqa: E402

xla_setup.apply()   # jdd's XLA flags, inherited by the worker processes
FADRM_STEPS = 2000          # steps per image batch in FADRM (4 stages x 500)


@dataclasses.dataclass(frozen=True)
class Row:
  name: str
  kind: str                 # recover | tm | edge
  batch: int                # the paper's batch (recover, EDGE) or mini-batch (TM)
  paper: str                # the paper's own figure, for reference
  opts: tuple = ()          # kind-specific settings, as (key, value) pairs

  def opt(self, key, default=None):
    return dict(self.opts).get(key, default)


R18 = ("resnet18",)
# --tiny's NFNet: one stage, 16-d features (what tests/test_benchmarks_tm.py uses).
TINY_NFNET = dict(depths=(1,), channels=(8,), stem_chs=8, group_size=8, num_features=16)
FADRM_PLUS = ("resnet18", "densenet121", "shufflenet_v2_x1_0", "mobilenet_v2")
ROWS = {r.name: r for r in (
    Row("sre2l", "recover", 100, "none reported (4000 steps per batch)",
        (("method", "sre2l"), ("archs", R18), ("res", (224,)), ("iterations", 4000))),
    Row("infer", "recover", 1000, "none reported (2000 steps per compensator)",
        (("method", "infer"), ("archs", R18), ("res", (224,)), ("iterations", 2000))),
    Row("fadrm", "recover", 100, "0.47 s/image, 2.9 GB (RTX 4090)",
        (("method", "fadrm"), ("archs", R18), ("res", (200, 224)), ("iterations", 2000))),
    Row("fadrm_plus", "recover", 100, "1.09 s/image, 11.0 GB (RTX 4090)",
        (("method", "fadrm"), ("archs", FADRM_PLUS), ("res", (200, 224)),
         ("iterations", 2000))),
    Row("repblend_tesla", "tm", 20, "1.71 s/iteration, 10.17 GB (GPU not stated)",
        (("which", "repblend"), ("mode", "tesla"))),
    Row("repblend_exact", "tm", 20, "(the reference has TESLA only)",
        (("which", "repblend"), ("mode", "exact"))),
    Row("lors_tesla", "tm", 40, "11.5 s/iteration, 21.78 GB (GPU not stated)",
        (("which", "lors"), ("mode", "tesla"))),
    Row("lors_exact", "tm", 40, "(the reference has TESLA only)",
        (("which", "lors"), ("mode", "exact"))),
    Row("edge_256", "edge", 128, "'18x faster than LoRS' (no absolute time)", (("px", 256),)),
    Row("edge_512", "edge", 128, "'18x faster than LoRS' (no absolute time)", (("px", 512),)),
)}


# ------------------------------------------------------------------------------ shapes
def shapes(row: Row, scale: float, tiny: bool, device: str, edge_batch: int) -> dict:
  """The concrete problem of `row`: every size the two workers build, and a description."""
  batch = max(1, int(round(row.batch * scale)))
  if row.kind == "recover":
    archs, res = row.opt("archs"), row.opt("res")
    classes = 1000
    if tiny:   # one resolution: FADRM's stages then share one compiled step
      res, classes = (64,) * len(res), 10
    full = max(res)
    if row.opt("method") == "infer":
      what = f"u (1x{full}x{full}x3) + {batch} real images"
    else:
      what = f"{batch} images"
    text = (f"{'+'.join(archs)} ({classes} classes, eval), {what} at "
            f"{'/'.join(str(r) for r in res)} px")
    return dict(kind="recover", method=row.opt("method"), archs=archs, res=res, batch=batch,
                classes=classes, jitter=4 if tiny else 32, iterations=row.opt("iterations"),
                tiny=tiny, text=text)
  if row.kind == "tm":
    res, pairs, steps = (32, 20, 2) if tiny else (224, 500, None)
    encoder = TINY_NFNET if tiny else {}      # {}: NFNet-L0 (jdd's and timm's defaults)
    setting = dict(which=row.opt("which"), res=res, pairs=pairs, syn_steps=steps,
                   mini_batch=batch, encoder=encoder)
    mode = row.opt("mode")
    if mode == "exact":   # jdd's default distill.remat; the PyTorch loop recomputes alike
      mode_text = "exact, each student step recomputed in the backward pass"
    else:
      mode_text = mode
    text = (f"{'NFNet (tiny)' if tiny else 'NFNet-L0'} at {res} px, {pairs - 1} pairs, 768-d "
            f"texts, mini-batch {batch}, {steps or 8} student steps, {mode_text}")
    return dict(kind="tm", mode=mode, setting=setting, batch=batch, tiny=tiny, text=text)
  px = row.opt("px") // 16 if tiny else row.opt("px")
  note = ""
  if device == "cpu" and not tiny:
    note = f" (paper {row.batch} x scale = {max(2, batch)}; CPU: --edge-batch)"
    batch = edge_batch
  batch = max(2, batch)       # the diversity loss averages over pairs i != j
  latent = px // 2 if tiny else px // 8
  text = (f"{'tiny U-Net' if tiny else 'SD-1.5 U-Net'}, {px} px images "
          f"({latent}x{latent} latents), batch {batch}{note}, narrow VAE + CLIP")
  return dict(kind="edge", px=px, batch=batch, tiny=tiny, text=text)


# ------------------------------------------------------------------------------ memory
def _status_mib(field: str) -> float:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1]) / 1024.0
  return float("nan")


class Memory:
  """Peak memory of a worker's timed steps.

  GPU: the device statistics (`peak_bytes_in_use`, `max_memory_allocated`). CPU: anonymous
  resident memory (`RssAnon`: heap and mmapped buffers, not the pages of the libraries' code,
  which XLA's compiler and oneDNN touch in large numbers) above its value after the imports,
  sampled every 5 ms by a thread during the timed steps, after building has returned its freed
  heap (`malloc_trim`); so it counts weights, data, state and the step's temporaries, and not
  the compiler's transient memory. The build's own peak (VmHWM, all of it) is kept beside it.
  """

  def __init__(self, framework: str, device: str):
    self.framework, self.device = framework, device
    self.base_rss, self.base = _status_mib("VmRSS"), _status_mib("RssAnon")
    self.build, self.peak, self._stop = float("nan"), 0.0, None
    if device == "gpu" and framework == "torch":
      import torch
      torch.cuda.reset_peak_memory_stats()

  def built(self) -> None:
    """Call between building and the timed steps: starts the sampler."""
    self.build = _status_mib("VmHWM") - self.base_rss
    if self.device != "cpu":
      return
    import ctypes
    import threading
    try:
      ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
      pass
    self.peak = _status_mib("RssAnon")
    self._stop = threading.Event()

    def sample():
      while not self._stop.wait(0.005):
        self.peak = max(self.peak, _status_mib("RssAnon"))
    self._thread = threading.Thread(target=sample, daemon=True)
    self._thread.start()

  def peak_mib(self) -> tuple[float, str]:
    if self.device == "gpu":
      if self.framework == "torch":
        import torch
        return torch.cuda.max_memory_allocated() / 2**20, "device"
      import jax
      stats = jax.local_devices()[0].memory_stats() or {}
      if "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 2**20, "device"
    if self._stop is not None:
      self._stop.set()
      self._thread.join()
    return max(self.peak, _status_mib("RssAnon")) - self.base, "RSS"


# ------------------------------------------------------------------------------ worker
def preload(kind: str, framework: str) -> None:
  """Import what the worker will use before its resident size is taken as the base, so the
  runtime's libraries (and jax, which the TM / EDGE helpers import on both sides) do not count
  as workload memory."""
  import numpy  # noqa: F401
  if framework == "torch":
    import torch  # noqa: F401
    import torchvision  # noqa: F401
  if kind == "tm":
    if framework == "torch":
      import timm  # noqa: F401
    import trajectory_matching  # noqa: F401
    from jdd.configs import image_text  # noqa: F401
  if kind == "edge":
    import edge  # noqa: F401
    if framework == "torch":
      import diffusers  # noqa: F401
      import transformers  # noqa: F401
  if framework == "jdd":
    import jax
    import flax  # noqa: F401
    import optax  # noqa: F401
    from jdd import models  # noqa: F401
    jax.devices()


def measure(sh: dict, args) -> dict:
  """Build one row's workload in this process, then time it (module docstring)."""
  memory = Memory(args.worker, args.device)
  if args.worker == "jdd":
    import jax
    platform = jax.default_backend()
    if (platform == "gpu") != (args.device == "gpu"):
      raise RuntimeError(f"jax runs on {platform} but the harness asked for {args.device}")
    build = {"recover": workloads.jdd_recover, "tm": workloads.jdd_tm,
             "edge": workloads.jdd_edge}[sh["kind"]]
    cycle, compile_s, xla = build(sh)
    sync = jax.block_until_ready
  else:
    import torch
    if args.device == "cpu":
      torch.set_num_threads(os.cpu_count() or 1)
    cycle, compile_s, xla = workloads.torch_workload(sh, args.device), 0.0, None

    def sync(x):
      if args.device == "gpu":
        torch.cuda.synchronize()
      return x
  memory.built()
  for _ in range(args.warmup):
    for run in cycle:
      sync(run())
  wall, cpu = [], []
  for _ in range(args.steps):
    for run in cycle:
      t, c = time.perf_counter(), time.process_time()
      sync(run())
      wall.append(time.perf_counter() - t)
      cpu.append(time.process_time() - c)
  peak, how = memory.peak_mib()
  return dict(s=statistics.fmean(wall), cpu=statistics.fmean(cpu), n=len(wall),
              compile_s=compile_s, xla_mib=xla, peak_mib=peak, memory=how,
              build_mib=memory.build)


def worker(args) -> list:
  """Every row of `--shapes` (a JSON list) in this process; a failure is that row's result."""
  todo = json.loads(args.shapes)
  for kind in sorted({sh["kind"] for sh in todo}):
    preload(kind, args.worker)
  out = []
  for sh in todo:
    try:
      out.append(measure(sh, args))
    except Exception as e:  # noqa: BLE001  (reported in the table, the other rows go on)
      text = f"{type(e).__name__}: {e}".splitlines()[0][:160]
      if "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower():
        text = "out of memory"
      out.append({"error": text})
  return out


def spawn(framework: str, todo: list, args, timeout: float | None) -> list:
  """Run `todo` (shapes) in one worker process; one result per entry."""
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
             TF_CPP_MIN_LOG_LEVEL="3")
  if args.device == "gpu":
    env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"   # the peak is what the program needs
  cmd = [sys.executable, os.path.abspath(__file__), "--worker", framework, "--shapes",
         json.dumps(todo), "--steps", str(args.steps), "--warmup", str(args.warmup),
         "--device", args.device]
  try:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
  except subprocess.TimeoutExpired:
    return [{"error": f"timed out after {timeout:.0f} s"}] * len(todo)
  for line in proc.stdout.splitlines():
    if line.startswith("RESULT "):
      return json.loads(line[7:])
  tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
  if proc.returncode in (-9, 137) or "out of memory" in proc.stderr.lower():
    tail = ["killed (out of memory?)"]
  return [{"error": f"exit {proc.returncode}: {tail[0][:160]}"}] * len(todo)


# ------------------------------------------------------------------------------ report
def per_unit(row: Row, sh: dict, seconds: float) -> str:
  if row.name.startswith("fadrm"):
    return f"{seconds * FADRM_STEPS / sh['batch']:.2f} s/image"
  return ""


def fmt_result(r: dict) -> str:
  if "error" in r:
    return r["error"]
  return f"{r['s']:.3f} s (CPU {r['cpu']:.2f} s)"


def fmt_mem(r: dict) -> str:
  if "error" in r:
    return "-"
  xla = f", XLA {r['xla_mib']:.0f}" if r.get("xla_mib") else ""
  return f"{r['peak_mib']:.0f}{xla}"


def ratio(a: dict, b: dict, key: str) -> float:
  if "error" in a or "error" in b or not b[key]:
    return float("nan")
  return a[key] / b[key]


def table(results: list, args, device_name: str) -> str:
  lines = [f"Command: `{' '.join(['python', 'benchmarks/paper_shapes.py'] + args.argv)}`; "
           f"device {device_name}; {time.strftime('%Y-%m-%d')}; {args.steps} timed step(s) "
           f"per row (FADRM: per resolution and teacher) after {args.warmup} warm-up.", "",
           "| row | shapes | jdd s/step (CPU s) | PyTorch s/step (CPU s) | time jdd/PyTorch | "
           "CPU jdd/PyTorch | jdd peak MiB | PyTorch peak MiB | memory jdd/PyTorch | "
           "jdd compile s | paper |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
  for row, sh, j, t in results:
    extra = ""
    if "error" not in j and "error" not in t and per_unit(row, sh, 1.0):
      extra = f"; {per_unit(row, sh, j['s'])} vs {per_unit(row, sh, t['s'])}"
    lines.append(
        f"| {row.name} | {sh['text']}{extra} | {fmt_result(j)} | {fmt_result(t)} | "
        f"{ratio(j, t, 's'):.2f} | {ratio(j, t, 'cpu'):.2f} | {fmt_mem(j)} | {fmt_mem(t)} | "
        f"{ratio(j, t, 'peak_mib'):.2f} | "
        f"{j.get('compile_s', float('nan')):.0f} | {row.paper} |")
  return "\n".join(lines)


def device_description(device: str) -> str:
  if device == "gpu" and shutil.which("nvidia-smi"):
    out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                         capture_output=True, text=True).stdout.strip()
    return out.splitlines()[0] if out else "GPU"
  return f"CPU, {os.cpu_count()} cores"


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--rows", default=",".join(ROWS), help="comma list of " + ", ".join(ROWS))
  p.add_argument("--scale", type=float, default=1.0, help="batch multiplier (0.25: quick CPU)")
  p.add_argument("--steps", type=int, default=1, help="timed steps per row (and cycle entry)")
  p.add_argument("--warmup", type=int, default=None,
                 help="untimed steps first (default 0 on CPU, where jdd is compiled ahead of "
                      "time and torch has no lazy start-up; 1 on a GPU)")
  p.add_argument("--edge-batch", type=int, default=2, help="EDGE batch on a CPU")
  p.add_argument("--tiny", action="store_true",
                 help="narrow networks at small sizes, one process per framework (tests)")
  p.add_argument("--one-process", action="store_true",
                 help="all rows in one worker per framework (memory peaks then accumulate)")
  p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
  p.add_argument("--gpu-suite", action="store_true",
                 help="every row at paper scale on the GPU within --budget seconds")
  p.add_argument("--budget", type=float, default=470.0, help="--gpu-suite's total seconds")
  p.add_argument("--markdown", default="", help="also write the table to this file")
  p.add_argument("--worker", default="", help=argparse.SUPPRESS)
  p.add_argument("--shapes", default="", help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.device == "auto":
    gpu = shutil.which("nvidia-smi") and os.environ.get("JAX_PLATFORMS", "") in ("", "cuda", "gpu")
    args.device = "gpu" if gpu else "cpu"
  args.one_process = args.one_process or args.tiny
  if args.warmup is None:
    args.warmup = 1 if args.device == "gpu" else 0
  if args.worker:
    print("RESULT " + json.dumps(worker(args)), flush=True)
    return
  args.argv = sys.argv[1:]
  names = [n for n in args.rows.split(",") if n]
  unknown = [n for n in names if n not in ROWS]
  if unknown:
    p.error(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")
  if args.gpu_suite:
    if args.device != "gpu":
      p.error("--gpu-suite needs a GPU (nvidia-smi and a CUDA jax); on a CPU use --scale")
    args.scale, names = 1.0, list(ROWS)
    args.markdown = args.markdown or os.path.join(ROOT, "paper_shapes_gpu.md")
  device_name = device_description(args.device)
  print(f"device {device_name}; scale {args.scale}; {args.steps} timed step(s), "
        f"{args.warmup} warm-up; load average {os.getloadavg()[0]:.2f}", flush=True)
  start, results = time.perf_counter(), []
  todo = [(ROWS[n], shapes(ROWS[n], args.scale, args.tiny, args.device, args.edge_batch))
          for n in names]

  def report(row, sh, j, t):
    results.append((row, sh, j, t))
    unit = per_unit(row, sh, j["s"]) if "error" not in j else ""
    print(f"[{row.name}] {sh['text']}\n  jdd {fmt_result(j)}{' = ' + unit if unit else ''}, "
          f"peak {fmt_mem(j)} MiB, compile {j.get('compile_s', float('nan')):.0f} s | "
          f"PyTorch {fmt_result(t)}, peak {fmt_mem(t)} MiB | time ratio {ratio(j, t, 's'):.2f}"
          f" | load {os.getloadavg()[0]:.2f}", flush=True)
    if args.markdown:       # after every row, so a run stopped early keeps the rows it has
      with open(args.markdown, "w") as f:
        f.write(table(results, args, device_name) + "\n")

  if args.one_process:
    got = {fw: spawn(fw, [sh for _, sh in todo], args, None) for fw in ("jdd", "torch")}
    for (row, sh), j, t in zip(todo, got["jdd"], got["torch"]):
      report(row, sh, j, t)
  else:
    for row, sh in todo:
      out = {}
      for framework in ("jdd", "torch"):
        timeout = None
        if args.gpu_suite:
          left = args.budget - (time.perf_counter() - start)
          timeout = max(5.0, min(left, 150.0))
        out[framework] = spawn(framework, [sh], args, timeout)[0]
      report(row, sh, out["jdd"], out["torch"])
  print("\n" + table(results, args, device_name))
  ratios = [ratio(j, t, "s") for _, _, j, t in results]
  ratios = [r for r in ratios if not math.isnan(r)]
  print(f"total {time.perf_counter() - start:.0f} s")
  print(f"worst_time_ratio={max(ratios) if ratios else float('nan'):.3f}")


if __name__ == "__main__":
  main()
