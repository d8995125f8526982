"""`jdd reproduce`: run one paper cell (`jdd.judge.cells`) and say, per metric, whether jdd's
number is within the paper's tolerance, above or below it; and docs/reproduction.md, generated
from the same table (`python -m jdd.judge.reproduce --write-doc`; tests/test_judge.py fails
when the page is stale).

Why: users of the references could not tell which config, seed or protocol made their numbers
differ from the paper (LoRS_Distill #7 and #8, SRe2L #10 and #27). A cell here is one command
with its config, the paper's numbers and their tolerance, and the hardware the paper states.

The verdict compares the paper with jdd's number under the *paper's* selection protocol
(`reference_protocol_*` in results.json: the final epoch's test top-1 for classification, the
best test point or the final epoch for retrieval), since that is what the paper reports; jdd's
own headline (the test number at the validation-selected point) is printed beside it. An
offline cell's reference is jdd's own recorded headline, so there the headline is compared.
"""

from __future__ import annotations

import os
import sys

from jdd.judge.cells import CELLS, RECALLS, Cell, by_id

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOC = os.path.join(ROOT, "docs", "reproduction.md")
LABELS = {"top1": "top-1", "img_r1": "IR@1", "img_r5": "IR@5", "img_r10": "IR@10",
          "txt_r1": "TR@1", "txt_r5": "TR@5", "txt_r10": "TR@10", "r_mean": "r_mean"}


def list_text() -> str:
  lines = [f"{len(CELLS)} cells (jdd reproduce <id>; docs/reproduction.md):",
           f"{'id':34s} {'config':50s} paper"]
  for c in CELLS:
    paper = ", ".join(f"{LABELS[m]} {_pm(v)}" for m, v in c.paper.items())
    lines.append(f"{c.id:34s} {c.config:50s} {paper}" + ("  [offline]" if c.offline else ""))
  return "\n".join(lines)


def _pm(v) -> str:
  return f"{v[0]:g}" + (f"±{v[1]:g}" if v[1] else "")


# ------------------------------------------------------------------------------ verdicts
def jdd_values(cell: Cell, results: dict) -> dict:
  """metric -> (the paper-protocol value, jdd's val-selected headline), percent."""
  if "top1" in cell.paper:
    d = results["distilled"]
    return {"top1": (d.get("reference_protocol_final_epoch_test_top1_mean",
                           d["test_top1_mean"]), d["test_top1_mean"])}
  row = next(v for k, v in results.items() if k.startswith("distilled_") and isinstance(v, dict)
             and "summary" in v)
  s = row["summary"]
  ref = next((s[k] for k in s if k.startswith("reference_protocol_")), s["test"])
  return {m: (float(ref[m]["mean"]), float(s["test"][m]["mean"])) for m in cell.paper}


def verdict_rows(cell: Cell, results: dict) -> list[dict]:
  values = jdd_values(cell, results)
  rows = []
  for m, (paper, _) in cell.paper.items():
    ref, headline = values[m]
    if cell.offline:    # the reference is jdd's own recorded headline: compare like with like
      ref = headline
    tol, why = cell.tolerance(m)
    diff = ref - paper
    verdict = "within tolerance" if abs(diff) <= tol else ("above" if diff > 0 else "below")
    rows.append({"metric": LABELS[m], "paper": paper, "jdd": ref, "jdd_headline": headline,
                 "difference": diff, "tolerance": tol, "tolerance_basis": why,
                 "verdict": verdict})
  return rows


def verdict_table(cell: Cell, rows: list[dict]) -> str:
  lines = [f"\n== {cell.id}: {cell.cell} ({'jdd measurement' if cell.offline else 'paper'}: "
           f"{cell.source}) ==",
           f"{'metric':8s} {'paper':>8s} {'jdd':>8s} {'jdd - paper':>12s} {'tolerance':>10s}  "
           f"{'verdict':18s} jdd headline (val-selected)"]
  for r in rows:
    lines.append(f"{r['metric']:8s} {r['paper']:8.2f} {r['jdd']:8.2f} {r['difference']:+12.2f} "
                 f"{r['tolerance']:>10.2f}  {r['verdict']:18s} {r['jdd_headline']:.2f}")
  bases = sorted({r["tolerance_basis"] for r in rows})
  lines.append("tolerance: " + "; ".join(bases) + (
      ". jdd's column is its headline, as the recorded reference" if cell.offline else
      ". jdd's column is the paper's protocol (final epoch / best test point) from the same "
      "runs"))
  counts = {v: sum(r["verdict"] == v for r in rows) for v in ("within tolerance", "above",
                                                              "below")}
  lines.append("verdict: " + ", ".join(f"{n} {v}" for v, n in counts.items() if n))
  return "\n".join(lines)


def run_cell(cell_id: str, workdir: str | None = None, dry_run: bool = False,
             overrides: tuple[str, ...] = ()) -> int:
  from jdd.errors import ConfigError
  cells = by_id()
  if cell_id not in cells:
    near = [c for c in cells if cell_id in c][:5]
    raise ConfigError(f"no paper cell {cell_id!r}" + (f"; did you mean {near}?" if near else "")
                      + "; jdd reproduce --list shows them all")
  cell = cells[cell_id]
  workdir = workdir or os.path.join("runs", f"reproduce_{cell.id}")
  print(f"[jdd reproduce] {cell.id}: {cell.cell}\n  command: jdd run --config {cell.config} "
        f"--workdir {workdir}" + "".join(f" --config.{o}" for o in overrides)
        + f"\n  hardware (paper): {cell.hardware}; time (paper): {cell.time}", flush=True)
  if dry_run:
    return 0
  from jdd import run as run_lib
  from jdd.cli import base_config
  config = base_config(cell.config, list(overrides))
  results = run_lib.run(config, workdir)
  rows = verdict_rows(cell, results)
  from jdd import checkpoint
  checkpoint.atomic_write_json(os.path.join(workdir, "reproduction.json"),
                               {"cell": cell.id, "config": cell.config, "rows": rows})
  print(verdict_table(cell, rows), flush=True)
  return 0


# ------------------------------------------------------------------------------- the doc
INTRO = """\
# Reproduction cards

Generated from the table of paper cells `jdd/judge/cells.py` by
`python -m jdd.judge.reproduce --write-doc` (tests/test_judge.py fails when this page is stale):
edit the table, not this page. `jdd reproduce --list` lists the same cells, and
`jdd reproduce <id>` runs one and ends with a verdict table: per metric the paper's value,
jdd's value, their difference, the tolerance and the verdict (within tolerance / above /
below). The tolerance is twice the paper's own ± where the paper gives one, else
1 point (jdd's choice, said so in the table).

**Status: no paper config has been run by jdd yet (no GPU lent to the project so far), so every
paper-config row says "not yet run (no GPU lent)".** The measured numbers on this page come
from the offline configs (Fashion-MNIST, jdd's generated `shapes_captions`), which run on a
CPU and are not paper cells. Never read a paper number in these tables as a jdd result.

How to read the numbers: jdd's headline is the test number at the validation-selected
evaluation point, mean ± std over 3 seeds; the papers select on test, and jdd stores that
number too (`reference_protocol_*` in `results.json`), see [evaluation.md](evaluation.md).
The verdict compares the paper with the number under the paper's own protocol; expect jdd's
headline to sit slightly below it when the method reproduces.
Where to put the data and weights each command needs: [data_and_weights.md](data_and_weights.md).

Contents: [RepBlend on Flickr30K, 500 pairs, step by step](#repblend-on-flickr30k-500-pairs-step-by-step),
[SRe2L](#sre2l), [INFER](#infer), [FADRM / FADRM+](#fadrm--fadrm),
[MTT-VL, LoRS, RepBlend](#mtt-vl-lors-repblend), [EDGE](#edge),
[offline runs (measured)](#offline-runs-measured).
"""

STEP_BY_STEP = """\
## RepBlend on Flickr30K, 500 pairs, step by step

For a new user with a GPU and the Flickr30K files.

1. **Install** ([install.md](install.md)): `pip install -e '.[cuda]'` on the GPU machine; the
   NFNet conversion below also needs the test extra (`pip install -e '.[test]'`: torch, timm).
2. **Put the files** ([data_and_weights.md](data_and_weights.md#image-caption-datasets-flickr30k-coco)),
   relative to the repository root:
   - `data/flickr30k/annotations/flickr30k_{train,val,test}.json` (BLIP / LAVIS Karpathy splits);
   - `data/flickr30k/images/flickr30k-images/*.jpg`;
   - `data/bert-base-uncased/` (the Hugging Face folder: `config.json`, weights, tokenizer files);
   - `data/nfnet_l0_jdd/`, converted once from timm's `nfnet_l0_ra2-45c6688d.pth`:
     `python -m third_party.convert_timm --arch nfnet_l0 --checkpoint nfnet_l0_ra2-45c6688d.pth --num-classes 0 --out data/nfnet_l0_jdd`.
3. **Run**: `jdd reproduce repblend-flickr30k-500`, which is

   ```bash
   python -m jdd.main --config configs/repblend_flickr.py:pairs=500 --workdir runs/reproduce_repblend-flickr30k-500
   ```

   It encodes the captions with BERT, computes the frozen NFNet features, trains 20 expert
   trajectories (10 epochs each; epochs 0..4 stored), distils 499 pairs + the low-rank
   similarity (rank 20, alpha 0.01, 3000 iterations, syn_steps 8, mini-batch 20, TESLA gradient,
   blending alpha 1), then evaluates them and the random 500-pair subset over 3 seeds, and
   prints the verdict table. Killed, the same command resumes
   ([cli.md](cli.md#stages-skipping-and-resume)).
4. **How long**: not measured by jdd. The basis is the RepBlend poster's efficiency table
   (research `multimodal_dd_methods.md` §7.5, GPU model not stated, dataset and pair count of the
   timing not stated): expert buffers 40 min per trajectory x 20 experts = about 13.3 h, and
   distillation 1.71 s per iteration x 3000 iterations = 5,130 s, about 1.4 h; peak GPU memory
   10.17 GB. Evaluation time is not stated. So plan for roughly 15 h on one GPU of that class
   before evaluation; the experts can be spread over several GPUs
   ([cli.md](cli.md#several-gpus)).
5. **What to expect**: the `repblend-flickr30k-500` row below; the model trained on all of
   Flickr30K reaches 23.16/53.98/66.62 | 33.8/65.7/76.9 (research §7.1).
"""

FAMILIES = {
    "sre2l": ("SRe2L", "Method: [sre2l.md](sre2l.md). ResNet-18 student, test top-1 %. Data "
              "flags: CIFAR `--config.dataset.data_dir=/data/tfds`; Tiny "
              "`--config.dataset.data_dir=/data/tiny-imagenet-200`; ImageNet "
              "`--config.dataset.data_dir=/data/tfds "
              "--config.teacher.checkpoint=teachers/r18_in1k` "
              "(a converted torchvision ResNet-18); `jdd reproduce <id>` takes them as "
              "`--override dataset.data_dir=...`. Hardware and time: not stated in the research "
              "notes (the paper gives only relative speed-ups against MTT, research §3.5)."),
    "infer": ("INFER", "Method: [infer.md](infer.md). ResNet-18 student, test top-1 %, INFER "
              "Tables 1 and 2 (research `unimodal_dd_methods.md` §4.6). `dynamic=True` is "
              "INFER+Dyn. Data flags as SRe2L's, plus one teacher folder per teacher "
              "(`--config.teachers.<name>.checkpoint=DIR`, names in the config docstring) unless "
              "the squeeze stage trains them. Hardware and time: not stated (research §4.6: \"no "
              "recover-time or memory numbers were found\"). The paper's random real subset on "
              "ImageNet-1k (CR 0.78 % / 3.90 %) reaches 10.5 / 31.4 (§4.6)."),
    "fadrm": ("FADRM / FADRM+", "Method: [fadrm.md](fadrm.md). ResNet-18 student, test top-1 %, "
              "FADRM's table (research `unimodal_dd_methods.md` §5.6), with "
              "`--config.dataset.data_dir=...` and the converted teachers "
              "(`--config.teachers.<name>.checkpoint=DIR`, names in each config's docstring). "
              "Hardware and time (FADRM's efficiency table, research §5.6): recover on one RTX "
              "4090 takes 0.47 s per image for FADRM and 1.09 s per image for FADRM+ (peak 2.9 / "
              "11.0 GB), measured on ImageNet-1k; relabelling and student training times are not "
              "stated, nor are the other datasets' times. `plus=True` selects FADRM+. The FADRM+ "
              "ImageNet IPC 1 variant needs an AlexNet teacher that jdd's registry does not have "
              "yet ([fadrm.md](fadrm.md#configs))."),
    "trajectory": ("MTT-VL, LoRS, RepBlend", "Method: "
                   "[trajectory_matching.md](trajectory_matching.md). NFNet-L0 + BERT, test "
                   "recall %, IR@1/5/10 | TR@1/5/10; RepBlend Tables 1 (Flickr30K) and 2 (COCO), "
                   "research `multimodal_dd_methods.md` §7.1-7.2 (the MTT-VL and coreset columns "
                   "are the MTT-VL paper's), with the files of "
                   "[data_and_weights.md]"
                   "(data_and_weights.md#image-caption-datasets-flickr30k-coco) "
                   "in place. Hardware and time (research §7.5, RepBlend poster, GPU model not "
                   "stated): RepBlend 1.71 s per iteration, 40 min and 0.73 GB per expert "
                   "trajectory, 10.17 GB peak; LoRS 11.5 s per iteration, 70 min and 1.63 GB per "
                   "trajectory, 21.78 GB peak (LoRS issue #7 reproduced it on 40 GB A100s). "
                   "MTT-VL: not stated. Evaluation: not stated. Full-data model: Flickr30K "
                   "23.16/53.98/66.62 | 33.8/65.7/76.9; COCO 14.6/38.9/53.2 | 20.6/46.8/61.3."),
    "edge": ("EDGE", "Method and status: [edge.md](edge.md). Needs the converted SD-1.5 + CLIP "
             "ViT-B/32 folder in `weights/sd15` (plus the CLIP tokenizer's `vocab.json` / "
             "`merges.txt` in `weights/sd15/tokenizer`), and the caption data, BERT and NFNet-L0 "
             "where the trajectory-matching configs read them "
             "([data_and_weights.md](data_and_weights.md#pretrained-weights)). EDGE's own tables "
             "could not be retrieved; the only numbers are those MDM cites from EDGE for 500 "
             "pairs (research `edge_method.md` §2, with its caveat that the COCO value is below "
             "LoRS and should be checked against the paper PDF), so "
             "`configs/edge_flickr.py:pairs=100` "
             "/ `:pairs=200` and `configs/edge_coco.py:pairs=100` / `:pairs=200` have no cell. "
             "Mean recall = the mean of IR@1/5/10 and TR@1/5/10."),
    "offline": ("Offline runs (measured)", "Not paper cells: the same pipelines on data that jdd "
                "generates, on 2 CPU cores; the reference numbers are jdd's own recorded "
                "measurement (mean ± std over 3 seeds, test recalls at the val-selected epoch), "
                "so `jdd reproduce <id>` checks that jdd still reproduces itself. The "
                "Fashion-MNIST configs' numbers are in [fashion_mnist.md](fashion_mnist.md) "
                "(ten rows under issue 15's protocol, each with its command; not cells here, "
                "since their verdicts compare with a random subset, not with one number)."),
}


def _metric_cell(cell: Cell) -> str:
  if "top1" in cell.paper:
    return _pm(cell.paper["top1"])
  if set(cell.paper) == set(RECALLS):
    v = [_pm(cell.paper[m]) for m in RECALLS]
    return "/".join(v[:3]) + " \\| " + "/".join(v[3:])
  return ", ".join(f"{LABELS[m]} {_pm(v)}" for m, v in cell.paper.items())


def render() -> str:
  out = [INTRO, STEP_BY_STEP]
  for family, (title, prose) in FAMILIES.items():
    cells = [c for c in CELLS if c.family == family]
    out.append(f"## {title}\n\n{_wrap(prose)}\n")
    random = any(c.random for c in cells)
    head = ("| cell id | config spec | paper cell | paper | tolerance |"
            + (" random subset |" if random else "") + " hardware | time | jdd measured |")
    out.append(head)
    out.append("|" + "---|" * (head.count("|") - 1))
    for c in cells:
      tol = sorted({c.tolerance(m)[0] for m in c.paper})
      tol_text = "/".join(f"{t:g}" for t in tol) + ("" if all(v[1] for v in c.paper.values())
                                                     else " (no ± given)")
      row = (f"| `{c.id}` | `{c.config}` | {c.cell} | {_metric_cell(c)} | {tol_text} |"
             + (f" {c.random or ''} |" if random else "")
             + f" {c.hardware} | {c.time} | {c.jdd} |")
      out.append(row)
    out.append("")
  return "\n".join(out).rstrip() + "\n"


def _wrap(text: str, width: int = 96) -> str:
  words, lines, line = text.split(), [], ""
  for w in words:
    if line and len(line) + 1 + len(w) > width:
      lines.append(line)
      line = w
    else:
      line = f"{line} {w}" if line else w
  return "\n".join(lines + [line])


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if argv == ["--write-doc"]:
    with open(DOC, "w", encoding="utf-8") as f:
      f.write(render())
    print(f"wrote {DOC} ({len(CELLS)} cells)")
    return 0
  print("usage: python -m jdd.judge.reproduce --write-doc   (the command is `jdd reproduce`)")
  return 2


if __name__ == "__main__":
  sys.exit(main())
