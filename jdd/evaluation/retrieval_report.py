"""What an image-text results.json and its printed summary say about the sets compared: rows
over several random-subset draws, the paired comparison distilled - random with its interval
and verdict, and the curves plot.

Issue 15's like-with-like rules, for retrieval:

* a random real subset is drawn `evaluate.draws` times (different keys); each draw is trained
  with the same evaluation seeds as the distilled set, so seed k of every set shares the
  initial heads, batch-order and dropout keys. A row over draws reports the mean and sample std
  over all draws x seeds, and per seed the mean over draws, which is what the comparison pairs
  with the distilled set's seed k (`jdd.evaluation.stats` docstring);
* a set that learns evaluation-time parameters (student learning rates, the similarity S) is
  compared with the random subset twice: trained with the evaluator's defaults, and with the
  distilled set's learned learning rates and S = I (`<random>_learned_lr`);
* every row carries the protocol's own number beside jdd's val-selected one, and the mean val /
  test r_mean curve that `plot_curves` draws into W/eval/curves.png.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from jdd.evaluation import stats
from jdd.evaluation.retrieval import METRICS, REFERENCE_KEYS, summarise

METRIC = "r_mean"
LEARNED_SUFFIX = "_learned_lr"


def combine_draws(per_draw: Sequence[dict]) -> dict:
  """One row from several draws of a set (each `evaluate_named`'s output): the summary over
  all draws x seeds, each seed's r_mean averaged over draws (`seed_r_mean`, what a paired
  comparison uses), the mean curve, and every draw's own rows."""
  seeds = [len(d["per_seed"]) for d in per_draw]
  if len(set(seeds)) != 1:
    raise ValueError(f"draws hold different numbers of seeds: {seeds}")
  flat = [r for d in per_draw for r in d["per_seed"]]
  summary = summarise(flat)
  summary.update(num_seeds=seeds[0], num_draws=len(per_draw), num_runs=len(flat))
  curves = [d["summary"]["curve"] for d in per_draw if "curve" in d["summary"]]
  if curves and all(c["epochs"] == curves[0]["epochs"] for c in curves):
    summary["curve"] = {"epochs": curves[0]["epochs"],
                        **{k: np.mean([c[k] for c in curves], axis=0).tolist()
                           for k in curves[0] if k != "epochs"}}
  return {"num_pairs": per_draw[0]["num_pairs"], "draws": len(per_draw),
          "seed_r_mean": seed_values(per_draw),
          "per_draw": [{"draw": i, **d} for i, d in enumerate(per_draw)],
          "per_seed": flat, "summary": summary,
          **{k: per_draw[0][k] for k in ("lr_image", "lr_text") if k in per_draw[0]}}


def seed_values(per_draw: Sequence[dict], metric: str = METRIC) -> list[float]:
  """Seed k's test `metric`, averaged over the draws."""
  return [float(np.mean([d["per_seed"][k]["test"][metric] for d in per_draw]))
          for k in range(len(per_draw[0]["per_seed"]))]


def row_seed_values(row: dict, metric: str = METRIC) -> list[float]:
  """Per-seed values of a results row, single set or combined draws."""
  if metric == METRIC and "seed_r_mean" in row:
    return list(row["seed_r_mean"])
  if "per_draw" in row:
    return seed_values(row["per_draw"], metric)
  return [float(r["test"][metric]) for r in row["per_seed"]]


def rows(results: Mapping) -> dict:
  """The evaluated sets of a results dict (every entry with a summary), in order."""
  return {k: v for k, v in results.items() if isinstance(v, dict) and "summary" in v}


def compare(results: Mapping, pairs: Iterable[tuple[str, str]],
            confidence: float = 0.95) -> list[dict]:
  """The paired difference a - b of the val-selected test r_mean over evaluation seeds, its
  interval and verdict, for each (a, b) present in `results`."""
  out = []
  for a, b in pairs:
    if a not in results or b not in results:
      continue
    diff = stats.paired_difference(row_seed_values(results[a]), row_seed_values(results[b]),
                                   confidence)
    sentence = stats.describe(a, b, diff)
    # One seed has no interval: stored as null (strict JSON has no infinity).
    diff = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in diff.items()}
    out.append({"a": a, "b": b, "metric": f"test {METRIC} (val-selected)", **diff,
                "sentence": sentence})
  return out


def default_pairs(results: Mapping, sets: Sequence[str]) -> list[tuple[str, str]]:
  """Each of `sets` against every random-subset row (defaults and learned-lr)."""
  randoms = [k for k in rows(results) if k.startswith("random_")]
  return [(s, r) for s in sets for r in randoms]


def _cell(c: dict) -> str:
  return f"{c['mean']:.2f}±{c['std']:.2f}"


def summary_lines(results: Mapping) -> list[str]:
  """The printed table: every set's recalls (mean ± std over its runs), how many runs, the
  learning rates it trained at, the protocol's number; then each comparison in words."""
  proto = results.get("protocol", {})
  lines = [f"\n== {results['method']} on {results['dataset']}: test recalls at the val-selected "
           f"epoch, mean ± std over runs; protocol {proto.get('name', '?')} "
           f"({proto.get('source', '')}) =="]
  head = "  ".join(f"{m:>11}" for m in METRICS)
  lines.append(f"{'set':>28} {'pairs':>5} {'runs':>9} {'lr img/txt':>13}  {head}  "
               "protocol's number (r_mean)")
  for name, r in rows(results).items():
    s = r["summary"]
    runs = (f"{r['draws']}x{len(r['per_draw'][0]['per_seed'])}" if "per_draw" in r
            else str(s["num_seeds"]))
    if r.get("lr_image") is None:
      lrs = "default"
    elif proto.get("shared_lr"):       # MTT-VL: the image rate for both modalities
      lrs = f"{r['lr_image']:.3g} both"
    else:
      lrs = f"{r['lr_image']:.3g}/{r['lr_text']:.3g}"
    cells = "  ".join(f"{_cell(s['test'][m]):>11}" for m in METRICS)
    ref = next((f"{_cell(s[k][METRIC])} ({k.removeprefix('reference_protocol_')})"
                for k in REFERENCE_KEYS if k in s), "")
    lines.append(f"{name:>28} {r['num_pairs']:>5} {runs:>9} {lrs:>13}  {cells}  {ref}")
  comps = results.get("comparisons", [])
  if comps:
    lines.append("paired over evaluation seeds (random rows: mean over draws per seed):")
    lines += [f"  {c['sentence']}" for c in comps]
  return lines


# ------------------------------------------------------------------------------- curves
_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
            (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def plot_curves(path: str, curves: Mapping[str, dict], title: str) -> None:
  """Two panels (val and test r_mean against epoch), one line per set, written as a PNG.

  Drawn with PIL (no plotting dependency): axes with tick labels, a legend under the panels.
  """
  import io

  from PIL import Image, ImageDraw

  from jdd.checkpoint import atomic_write_bytes
  curves = {k: c for k, c in curves.items() if c and c.get("epochs")}
  if not curves:
    return
  pw, ph, margin, top = 420, 300, 50, 30
  legend_h = 18 * len(curves) + 10
  img = Image.new("RGB", (2 * pw + 3 * margin, ph + 2 * margin + top + legend_h), "white")
  d = ImageDraw.Draw(img)
  d.text((margin, 8), title, fill="black")
  values = [v for c in curves.values() for k in ("val_r_mean", "test_r_mean")
            for v in c.get(k, [])]
  lo, hi = (math.floor(min(values)), math.ceil(max(values))) if values else (0, 1)
  hi = max(hi, lo + 1)
  e_max = max(max(c["epochs"]) for c in curves.values()) or 1
  for p, split in enumerate(("val", "test")):
    x0, y0 = margin + p * (pw + margin), top + margin // 2
    d.rectangle([x0, y0, x0 + pw, y0 + ph], outline="black")
    d.text((x0 + pw // 2 - 40, y0 - 14), f"{split} r_mean (%)", fill="black")
    for t in range(5):
      v = lo + (hi - lo) * t / 4
      y = y0 + ph - ph * t / 4
      d.line([x0 - 4, y, x0, y], fill="black")
      d.text((x0 - 40, y - 6), f"{v:.1f}", fill="black")
      e = e_max * t / 4
      x = x0 + pw * t / 4
      d.line([x, y0 + ph, x, y0 + ph + 4], fill="black")
      d.text((x - 8, y0 + ph + 6), f"{round(e, 1):g}", fill="black")
    d.text((x0 + pw // 2 - 14, y0 + ph + 18), "epoch", fill="black")
    for i, c in enumerate(curves.values()):
      ys = c.get(f"{split}_r_mean")
      if not ys:
        continue
      pts = [(x0 + pw * e / e_max, y0 + ph - ph * (v - lo) / (hi - lo))
             for e, v in zip(c["epochs"], ys)]
      colour = _COLOURS[i % len(_COLOURS)]
      if len(pts) > 1:
        d.line(pts, fill=colour, width=2)
      for x, y in pts:
        d.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
  ly = top + ph + margin + 30
  for i, name in enumerate(curves):
    colour = _COLOURS[i % len(_COLOURS)]
    d.line([margin, ly + 18 * i + 6, margin + 24, ly + 18 * i + 6], fill=colour, width=3)
    d.text((margin + 32, ly + 18 * i), name, fill="black")
  buf = io.BytesIO()
  img.save(buf, format="PNG")
  atomic_write_bytes(path, buf.getvalue())
