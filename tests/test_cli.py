"""The command line on bad input: every row of docs/cli.md's table, one test each.

Each bad input runs `python -m jdd.main` in a subprocess and must exit with status 2, one
message naming the field (no traceback), in under 10 s of CPU, leaving nothing in the workdir
but, at most, its lock. Also here: variants compose with `smoke`, the header comes first, and
`--debug` brings the traceback back.
"""

import glob
import json
import os
import re
import resource
import subprocess
import sys
import time

import pytest

from jdd import run as run_lib
from jdd.config import load_config, variant_keys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
FM = "configs/sre2l_fashion_mnist.py"
FM_SMOKE = FM + ":smoke"
INFER = "configs/infer_fashion_mnist.py"
FADRM = "configs/fadrm_fashion_mnist.py:smoke"
REPBLEND = "configs/repblend_shapes.py:smoke"


def _card(tmp, **changes):
  """A teacher folder whose card.json says what `changes` say (else the smoke teacher's)."""
  folder = os.path.join(tmp, "teacher")
  os.makedirs(os.path.join(folder, "variables"), exist_ok=True)
  card = {"arch": "convnet", "kwargs": {"width": 16, "depth": 3}, "num_classes": 10,
          "image_shape": [28, 28, 1], "dataset": "fashion_mnist", "mean": [0.286],
          "std": [0.353], **changes}
  json.dump(card, open(os.path.join(folder, "card.json"), "w"))
  return ["--config.teacher.checkpoint=" + folder]


# id -> (argv after `python -m jdd.main` (without --workdir), what stderr must say). `{tmp}` is
# the test's folder; a callable builds its extra arguments there. docs/cli.md lists every id.
ROWS = {
    # the command line itself
    "missing_config_file": (["--config", "configs/sre2l_nope.py"], "no config file"),
    "unknown_variant": (["--config", FM + ":smok"], "unknown variant option(s) ['smok']"),
    "mistyped_field": (["--config", FM_SMOKE, "--config.recover.iteration=5"],
                       "did you mean 'recover.iterations'?"),
    "wrong_type": (["--config", FM_SMOKE, "--config.recover.ipc=two"],
                   "recover.ipc holds an int (now 2)"),
    "unknown_flag": (["--config", FM_SMOKE, "--epochs=3"], "Unknown command line flag 'epochs'"),
    "missing_workdir": (["--config", FM_SMOKE], "--workdir is required"),
    # budgets the data cannot serve
    "ipc_zero": (["--config", FM + ":ipc=0"], "recover.ipc=0"),
    "ipc_beyond_smoke_data": (["--config", FM + ":ipc=7000,smoke=True"],
                              "recover.ipc=7000: the random-subset baseline"),
    "infer_ipc_below_smallest": (["--config", INFER + ":smoke,ipc=1"],
                                 "the smallest IPC that works is 2"),
    "pairs_beyond_data": (["--config", REPBLEND + ",pairs=500"], "distill.pairs=500"),
    "pairs_one_with_charged_similarity": (["--config", REPBLEND + ",pairs=1"],
                                          "distill.pairs=1"),
    "paper_pairs": (["--config", "configs/repblend_flickr.py:pairs=300"],
                    "pairs must be 100, 200 or 500"),
    # networks
    "unknown_method": (["--config", FM_SMOKE, "--config.method=sre3l"], "method='sre3l'"),
    "unknown_teacher_arch": (["--config", FM_SMOKE, "--config.teacher.arch=resnet19"],
                             "teacher.arch='resnet19'"),
    "unknown_student_arch": (["--config", FM_SMOKE, "--config.evaluate.student.arch=vit_b16"],
                             "evaluate.student.arch='vit_b16'"),
    "teacher_other_dataset": (["--config", FM_SMOKE, lambda tmp: _card(tmp, dataset="cifar10")],
                              "trained on 'cifar10'"),
    "teacher_other_class_count": (["--config", FM_SMOKE,
                                   lambda tmp: _card(tmp, num_classes=100)], "num_classes=100"),
    "teacher_other_channels": (["--config", FM_SMOKE,
                                lambda tmp: _card(tmp, image_shape=[28, 28, 3])],
                               "image_shape=[28, 28, 3]"),
    "teacher_folder_missing": (["--config", FM_SMOKE,
                                "--config.teacher.checkpoint={tmp}/nowhere"],
                               "teacher.checkpoint="),
    # data
    "image_size_of_another_dataset": (["--config", FM_SMOKE, "--config.dataset.image_size=32"],
                                      "dataset.image_size=32"),
    "val_size_below_classes": (["--config", FM_SMOKE, "--config.dataset.val_size=5"],
                               "dataset.val_size=5"),
    "missing_dataset": (["--config", FM_SMOKE, "--config.dataset.name=cifar10",
                         "--config.dataset.data_dir={tmp}/nowhere"],
                        "dataset 'cifar10' not found"),
    "missing_text_encoder": (["--config", "configs/experts_shapes.py:smoke",
                              "--config.dataset.root={tmp}/data",
                              "--config.text_encoder.path={tmp}/bert"], "text_encoder.path="),
    # optimisation and evaluation settings
    "recover_lr_zero": (["--config", FM_SMOKE, "--config.recover.lr=0.0"], "recover.lr=0.0"),
    "student_lr_negative": (["--config", FM_SMOKE, "--config.evaluate.lr=-0.001"],
                            "evaluate.lr=-0.001"),
    "eval_every_past_epochs": (["--config", FM_SMOKE, "--config.evaluate.eval_every=50"],
                               "evaluate.eval_every=50"),
    "teacher_batch_beyond_data": (["--config", FM_SMOKE, "--config.teacher.batch_size=5000"],
                                  "teacher.batch_size=5000"),
    "classes_per_batch_not_a_divisor": (["--config", FM_SMOKE,
                                         "--config.recover.classes_per_batch=3"],
                                        "recover.classes_per_batch=3"),
    "relabel_mode_unknown": (["--config", FM_SMOKE, "--config.relabel.mode=soft"],
                             "relabel.mode='soft'"),
    "bssl_splits_vs_accumulation": (["--config", FADRM, "--config.relabel.num_splits=3"],
                                    "relabel.num_splits=3"),
    "fadrm_budgets_vs_resolutions": (["--config", FADRM, "--config.recover.budgets=(8,)"],
                                     "recover.budgets=(8,)"),
    "mini_batch_beyond_pairs": (["--config", REPBLEND, "--config.distill.mini_batch=50"],
                                "distill.mini_batch=50"),
    "expert_epochs_not_stored": (["--config", REPBLEND, "--config.distill.max_start_epoch=9"],
                                 "distill.max_start_epoch=9"),
    "baseline_malformed": (["--config", REPBLEND, "--config.evaluate.baselines=('randm_5',)"],
                           "evaluate.baselines="),
    "too_many_devices": (["--config", FM_SMOKE, "--config.num_devices=64"], "num_devices=64"),
    # contradictory choices
    "blend_on_a_method_without_it": (["--config", "configs/lors_shapes.py:smoke",
                                      "--config.distill.blend=True"], "distill.blend=True"),
    "grad_mode_unknown": (["--config", REPBLEND + ",grad_mode=fast"],
                          "distill.grad_mode='fast'"),
    "edge_captions_vs_synthesizer": (["--config", "configs/edge_shapes.py:smoke",
                                      "--config.edge.captions_per_image=2"],
                                     "edge.captions_per_image=2"),
    "edge_sd_weights_missing": (["--config", "configs/edge_flickr.py",
                                 "--config.edge.sd_path={tmp}/sd15",
                                 "--config.edge.tokenizer_path={tmp}/sd15/tokenizer"],
                                "sd15/card.json"),
}


def _argv(row, tmp):
  argv = []
  for a in ROWS[row][0]:
    argv += a(tmp) if callable(a) else [a.format(tmp=tmp)]
  return argv


@pytest.mark.parametrize("row", sorted(ROWS))
def test_bad_input(row, tmp_path):
  workdir = str(tmp_path / "w")
  argv = _argv(row, str(tmp_path))
  if row != "missing_workdir":
    argv += ["--workdir", workdir]
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  t0 = time.time()
  r = subprocess.run([sys.executable, "-m", "jdd.main", *argv], cwd=ROOT, env=ENV,
                     capture_output=True, text=True, timeout=300)
  wall = time.time() - t0
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
  assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
  assert "Traceback" not in r.stderr, r.stderr
  assert ROWS[row][1] in r.stderr, r.stderr
  assert r.stderr.startswith("jdd: error: "), r.stderr
  # CPU seconds, not wall: the shared machine's load must not decide the verdict.
  assert cpu < 10, f"{cpu:.1f} s of CPU ({wall:.1f} s wall)"
  assert not os.path.exists(workdir) or os.listdir(workdir) in ([], [".lock"])


def test_docs_table_lists_every_row_and_only_rows():
  text = open(os.path.join(ROOT, "docs", "cli.md")).read()
  cited = set(re.findall(r"test_bad_input\[(\w+)\]", text))
  assert cited == set(ROWS), (sorted(set(ROWS) - cited), sorted(cited - set(ROWS)))
  for test in re.findall(r"tests/test_\w+\.py::(\w+)", text):
    assert any(f"def {test}(" in open(f).read() for f in glob.glob(os.path.join(ROOT, "tests",
                                                                                   "*.py"))), test


def test_debug_brings_the_traceback_back(tmp_path):
  argv = [sys.executable, "-m", "jdd.main", "--config", FM + ":ipc=0", "--workdir",
          str(tmp_path / "w")]
  for extra, env in (([], dict(ENV, JDD_DEBUG="1")), (["--debug"], ENV)):
    r = subprocess.run(argv + extra, cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 1 and "Traceback" in r.stderr and "recover.ipc=0" in r.stderr


# --------------------------------------------------------------------------- variants
PAIRS = {True: 20, False: 100}   # offline (shapes) configs take any pair count; paper ones 100


def _configs():
  return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "configs",
                                                                          "*.py")))


@pytest.mark.parametrize("path", _configs())
def test_every_variant_key_survives_smoke(path):
  """`key=value,smoke` keeps what `key` asked for, for every key of every config."""
  path = os.path.join(ROOT, path)
  keys = variant_keys(path)
  if "smoke" not in keys:
    pytest.skip("no smoke variant")
  smoke = load_config(path + ":smoke").to_dict()
  for key in sorted(keys - {"smoke"}):
    if key == "ipc":
      assert load_config(path + ":ipc=4,smoke").recover.ipc == 4
    elif key == "pairs":
      n = PAIRS["shapes" in path]
      c = load_config(path + f":pairs={n},smoke")
      assert (c.edge.pairs if c.method == "edge" else c.distill.pairs) == n
      assert tuple(c.evaluate.baselines) == (f"random_{n}",)
    elif key == "grad_mode":
      assert load_config(path + ":grad_mode=exact,smoke").distill.grad_mode == "exact"
    elif key == "dataset":   # configs/eval_retrieval.py: the recipe on another dataset
      assert load_config(path + ":dataset=flickr30k,smoke").dataset.name == "flickr30k"
    elif key == "protocol":
      for name in ("lors", "mttvl", "edge"):
        assert load_config(path + f":protocol={name},smoke").evaluate.protocol == name
    else:  # a switch (plus, dynamic, reference, trained_backbone): it must change the config
      assert load_config(path + f":{key},smoke").to_dict() != smoke, key


@pytest.mark.parametrize("path", [p for p in _configs() if "imagenet" not in p])
def test_smoke_variants_pass_validation(path):
  """No false refusals: every smoke run jdd ships passes the checks that need no data (the
  ImageNet smokes are refused, rightly: their val_size 500 cannot be split over 1000 classes)."""
  path = os.path.join(ROOT, path)
  if "smoke" in variant_keys(path):
    run_lib.validate(load_config(path + ":smoke"))


# --------------------------------------------------------------------------- output
def test_the_header_is_the_first_line(tmp_path):
  """No TensorFlow/absl/XLA start-up line before jdd's header (TF_CPP_MIN_LOG_LEVEL unset)."""
  env = {k: v for k, v in ENV.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
  proc = subprocess.Popen([sys.executable, "-m", "jdd.main", "--config", FM_SMOKE, "--workdir",
                           str(tmp_path / "w")], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  try:
    first = proc.stdout.readline()
  finally:
    proc.kill()
    proc.wait()
  assert re.match(r"\[jdd\] sre2l on fashion_mnist; devices: \d+ x cpu; workdir ", first), first


def test_the_last_lines_say_where_the_outputs_are(tmp_path, capsys):
  for name in ("export", "logs"):
    os.makedirs(tmp_path / name)
  (tmp_path / "results.json").write_text("{}")
  run_lib.print_outputs(str(tmp_path), 75.0)
  out = capsys.readouterr().out
  assert f"done in 0:01:15; outputs in {tmp_path}" in out
  assert "export/" in out and "results.json" in out and "logs/" in out
  assert "config.json" not in out   # only what exists is listed
