"""Teachers trained once: a cache keyed by everything that decides a teacher's weights.

A converged teacher is the costliest part of an offline run (a ConvNet-3 squeezed for 20 epochs
of Fashion-MNIST is half an hour of two CPU cores), and SRe2L, INFER and FADRM on one dataset
use the same teachers. A teacher's weights are a pure function of its architecture, its squeeze
recipe, the training split and the seed, so jdd trains each such teacher once:

    digest = sha256 of the canonical JSON of
             {role, card (arch, kwargs, classes, image shape, dataset, normalisation),
              recipe (every squeeze field of the teacher block), split (dataset name, val_size,
              val_seed, max_train, image_size), seed (config.seed)}
    training key = fold_in(keys['squeeze'], first 31 bits of the digest)   (jdd.stages.teachers)

so a teacher is the same network whichever config or teacher name asks for it. `role` keeps
apart two networks of one spec trained for different purposes (the full-data student of the
DD-Ranking ceiling is not the teacher, even when it has the teacher's architecture and recipe).

Look-up order: the teachers shipped with jdd (`jdd/assets/teachers/<digest[:16]>/`, each file
listed with its sha256 in `jdd/assets/teachers/SHA256SUMS`), then `config.teacher_cache`
('auto': `$JDD_CACHE_DIR/teachers`, else `~/.cache/jdd/teachers`; '' turns the cache off, as
the smoke variants do). A teacher trained by a run is copied in after its card is written,
through a staging folder and a rename, so the cache never holds half a teacher.

    python -m jdd.stages.teacher_cache --config configs/sre2l_fashion_mnist.py --ship

squeezes (or finds) the config's teachers and its full-data student and copies them into
`jdd/assets/teachers/` with their checksums: the command that made the shipped weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile

import jdd
from jdd import checkpoint

SHIPPED_DIR = os.path.join(os.path.dirname(os.path.abspath(jdd.__file__)), "assets", "teachers")
SUMS = "SHA256SUMS"
RECIPE_FIELDS = ("epochs", "batch_size", "optimizer", "lr", "momentum", "weight_decay",
                 "warmup_epochs", "lr_per_epoch", "crop_padding", "flip")
SPLIT_FIELDS = ("name", "val_size", "val_seed", "max_train", "image_size")


def _plain(v):
  if hasattr(v, "to_dict"):
    v = v.to_dict()
  if isinstance(v, dict):
    return {str(k): _plain(x) for k, x in sorted(v.items())}
  if isinstance(v, (list, tuple)):
    return [_plain(x) for x in v]
  if isinstance(v, float) and v == int(v):
    return int(v) if abs(v) < 2**53 else v
  return v


def spec(tc, card: dict, dataset_cfg, seed: int, role: str = "teacher") -> dict:
  """The fields that decide a squeezed network's weights (module docstring)."""
  return _plain({
      "role": role, "card": card,
      "recipe": {k: tc.get(k) for k in RECIPE_FIELDS},
      "split": {k: dataset_cfg.get(k) for k in SPLIT_FIELDS},
      "seed": int(seed)})


def digest(spec_dict: dict) -> str:
  text = json.dumps(spec_dict, sort_keys=True, separators=(",", ":"))
  return hashlib.sha256(text.encode()).hexdigest()


def key_index(digest_hex: str) -> int:
  """The 31-bit integer folded into keys['squeeze'] to train the network of `digest_hex`."""
  return int(digest_hex[:8], 16) & 0x7FFFFFFF


def cache_root(config) -> str | None:
  where = str(config.get("teacher_cache", "") or "")
  if not where:
    return None
  if where == "auto":
    base = os.environ.get("JDD_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache",
                                                            "jdd")
    return os.path.join(base, "teachers")
  return os.path.abspath(os.path.expanduser(where))


def entry_name(digest_hex: str) -> str:
  return digest_hex[:16]


def _complete(folder: str, digest_hex: str) -> bool:
  marker = os.path.join(folder, "spec.json")
  if not (os.path.exists(os.path.join(folder, "card.json")) and os.path.exists(marker)):
    return False
  with open(marker) as f:
    return json.load(f).get("digest") == digest_hex


def lookup(config, digest_hex: str) -> str | None:
  """The folder of a cached (or shipped) network with this digest, or None. A shipped
  network whose files do not match SHA256SUMS is refused with the file that differs."""
  shipped = os.path.join(SHIPPED_DIR, entry_name(digest_hex))
  if _complete(shipped, digest_hex):
    verify_shipped(entry_name(digest_hex))
    return shipped
  root = cache_root(config)
  if root is not None:
    folder = os.path.join(root, entry_name(digest_hex))
    if _complete(folder, digest_hex):
      return folder
  return None


def store(folder: str, root: str | None, spec_dict: dict, digest_hex: str) -> str | None:
  """Copies a finished teacher folder (card.json + variables/) into `root` atomically."""
  if root is None:
    return None
  final = os.path.join(root, entry_name(digest_hex))
  if _complete(final, digest_hex):
    return final
  os.makedirs(root, exist_ok=True)
  stage = tempfile.mkdtemp(prefix=".staging-", dir=root)
  try:
    for name in ("card.json", "variables"):
      src = os.path.join(folder, name)
      dst = os.path.join(stage, name)
      (shutil.copytree if os.path.isdir(src) else shutil.copy2)(src, dst)
    with open(os.path.join(stage, "spec.json"), "w") as f:
      json.dump({"digest": digest_hex, "spec": spec_dict}, f, indent=1, sort_keys=True)
    if os.path.exists(final):   # an incomplete leftover of an older jdd
      shutil.rmtree(final)
    os.replace(stage, final)
  except BaseException:
    shutil.rmtree(stage, ignore_errors=True)
    raise
  return final


def _files(folder: str) -> list[str]:
  out = []
  for dirpath, _, names in os.walk(folder):
    out += [os.path.relpath(os.path.join(dirpath, n), SHIPPED_DIR) for n in names]
  return sorted(out)


def read_sums() -> dict[str, str]:
  path = os.path.join(SHIPPED_DIR, SUMS)
  if not os.path.exists(path):
    return {}
  sums = {}
  with open(path) as f:
    for line in f:
      if line.strip():
        h, name = line.split(maxsplit=1)
        sums[name.strip()] = h
  return sums


def verify_shipped(entry: str | None = None) -> int:
  """Checks every shipped file (of `entry`, or all) against SHA256SUMS; returns the count."""
  sums = read_sums()
  prefix = "" if entry is None else entry + os.sep
  names = [n for n in sums if n.startswith(prefix)]
  on_disk = [n for n in _files(SHIPPED_DIR) if n != SUMS and n.startswith(prefix)]
  extra = sorted(set(on_disk) - set(names))
  if extra:
    raise ValueError(f"shipped teacher files not listed in {SUMS}: {extra}")
  for name in names:
    path = os.path.join(SHIPPED_DIR, name)
    if not os.path.exists(path) or checkpoint.sha256_file(path) != sums[name]:
      raise ValueError(f"shipped teacher file {name} is missing or does not match its sha256 in "
                       f"{os.path.join(SHIPPED_DIR, SUMS)}; restore it with git checkout")
  return len(names)


def ship(folders: list[str]) -> None:
  """Copies cache entries into jdd/assets/teachers and rewrites SHA256SUMS."""
  os.makedirs(SHIPPED_DIR, exist_ok=True)
  for folder in folders:
    dst = os.path.join(SHIPPED_DIR, os.path.basename(folder.rstrip(os.sep)))
    if os.path.abspath(folder) != os.path.abspath(dst):
      if os.path.exists(dst):
        shutil.rmtree(dst)
      shutil.copytree(folder, dst)
  digest = lambda n: checkpoint.sha256_file(os.path.join(SHIPPED_DIR, n))
  lines = [f"{digest(n)}  {n}\n" for n in _files(SHIPPED_DIR) if n != SUMS]
  with open(os.path.join(SHIPPED_DIR, SUMS), "w") as f:
    f.writelines(lines)


def main(argv=None) -> None:
  import argparse

  import jax

  from jdd import mesh as mesh_lib
  from jdd.config import load_config
  from jdd.data import load_classification
  from jdd.loop import RunContext
  from jdd.stages import teachers

  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--config", required=True, help="a classification config, `file.py[:variant]`")
  p.add_argument("--workdir", default="", help="where squeeze runs (default: a temporary dir)")
  p.add_argument("--ship", action="store_true", help="copy the networks into jdd/assets")
  args = p.parse_args(argv)
  config = load_config(args.config)
  if cache_root(config) is None:
    raise SystemExit("the config's teacher_cache is off ('') ; use a config whose cache is on")
  data = load_classification(config.dataset)
  workdir = args.workdir or tempfile.mkdtemp(prefix="jdd-squeeze-")
  ctx = RunContext.create(config, workdir, data, mesh=mesh_lib.make_mesh(None))
  with jax.set_mesh(ctx.mesh):
    ctx.teachers = teachers.squeeze(ctx)
    ceiling = teachers.full_data_student(ctx)
  folders = [t.card["cache_folder"] for t in ctx.teachers]
  if ceiling is not None and ceiling["cache_folder"] not in folders:
    folders.append(ceiling["cache_folder"])
  for f in folders:
    print(f)
  if args.ship:
    ship([f for f in folders if not f.startswith(SHIPPED_DIR)])
    print(f"shipped {verify_shipped()} files under {SHIPPED_DIR}")


if __name__ == "__main__":
  main()
