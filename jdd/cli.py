"""The `jdd` command (installed with the package; `python -m jdd.cli` is the same):

    jdd run --config configs/<x>.py --workdir W      the pipeline (= python -m jdd.main)
    jdd eval --set PATH --dataset NAME [...]         judge a distilled set jdd did not make
    jdd export --workdir W --out DIR                 a jdd export in the portable format
    jdd reproduce --list | <cell> [--workdir W]      run a paper cell and print its verdict

`jdd eval` reads the layouts of `jdd.judge.sets` (format detected, or `--format`), evaluates the
set under jdd's protocol (docs/evaluation.md) and prints the distilled-vs-random table, ending
with one `summary:` line of key=value fields (`test_top1_mean=` for classification, `r_mean=`
for image-text). Bad input exits with status 2 and one message, as `jdd run` does.
"""

from __future__ import annotations

import argparse
import os
import sys

import jdd
from jdd import xla_setup

xla_setup.apply()   # before JAX starts a backend (jdd.xla_setup)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(jdd.__file__)))
# The base config `jdd eval` takes the dataset, teacher, student and protocol from.
BASE_CONFIGS = {
    "fashion_mnist": "configs/sre2l_fashion_mnist.py",
    "cifar10": "configs/infer_cifar10.py",   # SRe2L has no CIFAR-10 config; INFER's student
    "cifar100": "configs/sre2l_cifar100.py",
    "tiny_imagenet": "configs/sre2l_tiny.py",
    "imagenet1k": "configs/sre2l_imagenet.py",
    "shapes_captions": "configs/eval_retrieval.py",
    "flickr30k": "configs/eval_retrieval.py:dataset=flickr30k",
    "coco": "configs/eval_retrieval.py:dataset=coco",
}


def _eval_parser(p: argparse.ArgumentParser) -> None:
  p.add_argument("--set", required=True, help="the distilled set: a folder or a reference .pt")
  p.add_argument("--dataset", help=f"the real dataset it distils ({', '.join(BASE_CONFIGS)})")
  p.add_argument("--format", help="the set's layout (default: detected): jdd_export, portable, "
                 "decoupled, reference_pt, image_folder, captions")
  p.add_argument("--config", help="base config spec (default: the dataset's, BASE_CONFIGS)")
  p.add_argument("--epochs", type=int, help="student epochs of the set (evaluate.epochs)")
  p.add_argument("--seeds", type=int, help="evaluation seeds (evaluate.seeds)")
  p.add_argument("--draws", type=int, help="random-subset draws")
  p.add_argument("--teacher", help="classification: a teacher folder (card.json + variables/) "
                 "for the soft labels, instead of the base config's teacher")
  p.add_argument("--override", action="append", default=[], metavar="FIELD=VALUE",
                 help="any base-config field, e.g. dataset.data_dir=/data (repeatable)")
  p.add_argument("--workdir", help="where results go (default runs/eval_<set name>)")
  p.add_argument("--debug", action="store_true", help="show the traceback of any error")


def _parse_value(text: str):
  import ast
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def base_config(spec: str, overrides: list[str]):
  from jdd.config import load_config, override
  from jdd.errors import ConfigError
  path, _, arg = spec.partition(":")
  if not os.path.exists(path) and os.path.exists(os.path.join(ROOT, path)):
    path = os.path.join(ROOT, path)
  if not os.path.exists(path):
    raise ConfigError(f"--config {spec}: no config file {path}")
  config = load_config(path + (":" + arg if arg else ""))
  config.unlock()
  for item in overrides:
    key, eq, value = item.partition("=")
    if not eq:
      raise ConfigError(f"--override {item!r}: write FIELD=VALUE")
    try:
      override(config, **{key: _parse_value(value)})
    except KeyError as e:
      raise ConfigError(f"--override {item!r}: {e.args[0]}") from None
  config.lock()
  return config


def cmd_eval(args) -> int:
  from jdd.errors import ConfigError
  from jdd.judge import classification, image_text, sets
  fmt = args.format or sets.detect(args.set)
  if args.dataset is None and args.config is None and fmt in ("jdd_export", "portable"):
    args.dataset = sets.dataset_of(args.set, fmt)   # a jdd export says which
  if args.config is None:
    if args.dataset not in BASE_CONFIGS:
      raise ConfigError(f"--dataset {args.dataset!r}: one of {sorted(BASE_CONFIGS)}, or give "
                        "--config configs/<x>.py for another dataset")
    spec = BASE_CONFIGS[args.dataset]
  else:
    spec = args.config
  config = base_config(spec, args.override)
  if args.dataset and config.dataset.name != args.dataset:
    raise ConfigError(f"--dataset {args.dataset} but the config {spec} is for "
                      f"{config.dataset.name}")
  workdir = args.workdir or os.path.join(
      "runs", "eval_" + os.path.basename(os.path.normpath(args.set)).replace(".", "_"))
  if config.dataset.name in ("shapes_captions", "flickr30k", "coco"):
    s = sets.read(args.set, fmt)
    if not isinstance(s, sets.PairSet):
      raise ConfigError(f"--set {args.set} is a classification set; {config.dataset.name} is an "
                        "image-caption dataset")
    config = image_text.prepare_config(config, s, epochs=args.epochs, seeds=args.seeds,
                                       draws=args.draws)
    image_text.print_summary(image_text.evaluate(s, config, workdir))
    return 0
  from jdd.data import load_classification
  data = load_classification(config.dataset)
  s = sets.read(args.set, fmt, image_shape=data.image_shape, class_names=data.class_names)
  if not isinstance(s, sets.ClassSet):
    raise ConfigError(f"--set {args.set} holds image-text pairs; {config.dataset.name} is a "
                      "classification dataset")
  config = classification.prepare_config(config, s, epochs=args.epochs, seeds=args.seeds,
                                         draws=args.draws, teacher=args.teacher)
  classification.print_summary(classification.evaluate(s, config, workdir))
  return 0


def cmd_export(args) -> int:
  from jdd.judge import portable
  src = args.export or os.path.join(args.workdir, "export")
  manifest = portable.write(src, args.out, workdir=args.workdir)
  print(f"[jdd export] {src} -> {args.out}: {len(manifest['files'])} files, "
        f"{sum(f['bytes'] for f in manifest['files'].values())} bytes (docs/export_format.md)")
  return 0


def cmd_reproduce(args) -> int:
  from jdd.judge import reproduce
  if args.list or not args.cell:
    print(reproduce.list_text())
    return 0
  return reproduce.run_cell(args.cell, workdir=args.workdir, dry_run=args.dry_run,
                           overrides=tuple(args.override))


def main(argv=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if argv and argv[0] == "run":   # the pipeline's own flags (absl), untouched
    from absl import app
    from jdd import main as jdd_main
    app.run(jdd_main.main, argv=["jdd run", *argv[1:]], flags_parser=jdd_main._parse)
    return 0
  from jdd import reporting
  reporting.quiet_third_party()
  parser = argparse.ArgumentParser(prog="jdd", description=__doc__.split("\n\n")[0])
  sub = parser.add_subparsers(dest="command", required=True)
  sub.add_parser("run", help="the pipeline: jdd run --config ... --workdir ... (jdd.main)")
  _eval_parser(sub.add_parser("eval", help="evaluate a distilled set under jdd's protocol"))
  ex = sub.add_parser("export", help="write a jdd export in the portable format")
  ex.add_argument("--workdir", help="a finished run (its export/ and labels are read)")
  ex.add_argument("--export", help="an export folder (default WORKDIR/export)")
  ex.add_argument("--out", required=True, help="the portable folder to write")
  ex.add_argument("--debug", action="store_true")
  rp = sub.add_parser("reproduce", help="run one paper cell and print its verdict table")
  rp.add_argument("cell", nargs="?", help="a cell id (jdd reproduce --list)")
  rp.add_argument("--list", action="store_true", help="list every paper cell")
  rp.add_argument("--workdir", help="default runs/reproduce_<cell>")
  rp.add_argument("--dry-run", action="store_true", help="print the command, run nothing")
  rp.add_argument("--override", action="append", default=[], metavar="FIELD=VALUE",
                  help="a config field of the cell's run, e.g. dataset.data_dir=/data/tfds")
  rp.add_argument("--debug", action="store_true")
  args = parser.parse_args(argv)
  if args.command == "export" and not (args.workdir or args.export):
    parser.error("jdd export needs --workdir W or --export DIR")
  from jdd import errors
  with errors.reported(debug=getattr(args, "debug", False)):
    return {"eval": cmd_eval, "export": cmd_export, "reproduce": cmd_reproduce}[args.command](args)


if __name__ == "__main__":
  sys.exit(main())
