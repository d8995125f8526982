"""W/eval/curves.png: validation (and test) top-1 against training step for every set compared.

One panel per label mode; in each, the distilled set and the random subset, each line the mean
over that set's students at every evaluation point. Validation is a solid line. Test is a
dashed line where the students scored the test split at every point
(`evaluate.test_every_eval`), else a dot per student at its validation-selected point (the
only place the test split is scored then). Drawn with Pillow, jdd's one imaging dependency,
so that a plot never needs matplotlib.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

COLOURS = {"distilled": (31, 119, 180), "random_subset": (255, 127, 14)}
LABELS = {"distilled": "distilled set", "random_subset": "random subset"}
W, H, LEFT, RIGHT, TOP, BOTTOM = 440, 320, 52, 14, 48, 40


def _mean_curve(students: list[dict], field: str):
  steps = [p["step"] for p in students[0]["curve"]]
  rows = [[p.get(field) for p in s["curve"]] for s in students]
  if any(v is None for row in rows for v in row):
    return None
  return np.asarray(steps, float), np.mean(np.asarray(rows, float), 0) * 100


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
  step = (hi - lo) / max(n - 1, 1)
  return [lo + i * step for i in range(n)]


def _dashed(draw, points, colour, width=2, dash=6):
  for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
    length = max(((x1 - x0) ** 2 + (y1 - y0) ** 2) ** 0.5, 1e-9)
    for t in np.arange(0.0, length, 2 * dash):
      a, b = t / length, min(t + dash, length) / length
      draw.line([(x0 + a * (x1 - x0), y0 + a * (y1 - y0)),
                 (x0 + b * (x1 - x0), y0 + b * (y1 - y0))], fill=colour, width=width)


def _panel(mode_name: str, sets: dict[str, list[dict]]) -> Image.Image:
  img = Image.new("RGB", (W, H), "white")
  d = ImageDraw.Draw(img)
  font = ImageFont.load_default()
  series, dots = [], []
  for name, students in sets.items():
    val = _mean_curve(students, "val_top1")
    series.append((name, "val", *val))
    test = _mean_curve(students, "test_top1")
    if test is not None:
      series.append((name, "test", *test))
    else:
      dots += [(name, s["selected_step"], s["test_top1"] * 100) for s in students]
  xs = np.concatenate([s[2] for s in series])
  ys = np.concatenate([s[3] for s in series] + [np.asarray([v for *_, v in dots] or [np.nan])])
  ys = ys[np.isfinite(ys)]
  x0, x1 = 0.0, float(xs.max())
  y0, y1 = float(np.floor(ys.min() - 1)), float(np.ceil(ys.max() + 1))
  px = lambda x: LEFT + (x - x0) / max(x1 - x0, 1e-9) * (W - LEFT - RIGHT)
  py = lambda y: H - BOTTOM - (y - y0) / max(y1 - y0, 1e-9) * (H - TOP - BOTTOM)
  d.rectangle([LEFT, TOP, W - RIGHT, H - BOTTOM], outline=(0, 0, 0))
  for y in _ticks(y0, y1):
    d.line([(LEFT - 4, py(y)), (LEFT, py(y))], fill=(0, 0, 0))
    d.line([(LEFT + 1, py(y)), (W - RIGHT - 1, py(y))], fill=(230, 230, 230))
    d.text((4, py(y) - 6), f"{y:.1f}", fill=(0, 0, 0), font=font)
  for x in _ticks(x0, x1):
    d.line([(px(x), H - BOTTOM), (px(x), H - BOTTOM + 4)], fill=(0, 0, 0))
    d.text((px(x) - 12, H - BOTTOM + 6), f"{int(round(x))}", fill=(0, 0, 0), font=font)
  d.text((W // 2 - 30, H - 14), "optimiser step", fill=(0, 0, 0), font=font)
  d.text((LEFT, 4), f"{mode_name}: top-1 %", fill=(0, 0, 0), font=font)
  names = list(sets)
  for name, what, sx, sy in series:
    pts = [(px(a), py(b)) for a, b in zip(sx, sy)]
    colour = COLOURS.get(name, (80, 80, 80))
    if what == "val" and len(pts) > 1:
      d.line(pts, fill=colour, width=2)
    elif what == "test":
      _dashed(d, pts, colour)
    lx, ly = LEFT + (0 if what == "val" else 190), 20 + 13 * names.index(name)
    if what == "val":
      d.line([(lx, ly + 5), (lx + 14, ly + 5)], fill=colour, width=2)
    else:
      _dashed(d, [(lx, ly + 5), (lx + 14, ly + 5)], colour, dash=3)
    d.text((lx + 17, ly), f"{LABELS.get(name, name)} {what}", fill=(0, 0, 0), font=font)
  for name, x, y in dots:
    cx, cy = px(x), py(y)
    d.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=COLOURS.get(name, (80, 80, 80)))
  if dots:
    d.text((LEFT + 4, TOP + 4), "dots: test at the selected point", fill=(90, 90, 90), font=font)
  return img


def plot(modes: dict[str, dict[str, list[dict]]], mode_names: dict[str, str],
         path: str) -> None:
  """`modes[mode][set]` = that set's student records (with `curve`); one panel per mode."""
  panels = [_panel(mode_names.get(m, m), sets) for m, sets in modes.items() if sets]
  out = Image.new("RGB", (W * len(panels), H), "white")
  for i, p in enumerate(panels):
    out.paste(p, (i * W, 0))
  out.save(path)
