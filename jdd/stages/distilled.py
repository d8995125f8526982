"""What a classification recover stage hands on: the distilled set and where its files are.

Every recover stage (pixel groups for SRe2L and FADRM, compensators for INFER) writes its files
under `W/recover/`, `images.npy` last as the marker that the stage is complete, and returns a
`DistilledSet`. The driver's export step (`jdd.drivers.classification`) copies the files named
here, with the label files, into `W/export/` atomically (`jdd.export`).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from jdd import checkpoint, reporting


@dataclasses.dataclass
class DistilledSet:
  """images/labels: the uint8 (N, H, W, C) instances a student trains on and their int32 classes
  (for INFER these are the materialised sums, derived from the stored files).
  stored: export .npy names (without .npy) that make up the distilled set's budget.
  derived: .npy names that are recomputable from `stored` (counted separately).
  side_files: other files of the stage to export (the grid, JSON records of the initialisation).
  extra: method-specific manifest fields (e.g. INFER's budget arithmetic).
  """
  images: np.ndarray
  labels: np.ndarray
  stored: tuple[str, ...] = ("images", "labels")
  derived: tuple[str, ...] = ()
  side_files: tuple[str, ...] = ("grid.png",)
  extra: dict = dataclasses.field(default_factory=dict)


def recover_dir(workdir: str) -> str:
  return os.path.join(workdir, "recover")


def is_done(workdir: str) -> bool:
  return os.path.exists(os.path.join(recover_dir(workdir), "images.npy"))


def load(workdir: str, **fields) -> DistilledSet:
  d = recover_dir(workdir)
  return DistilledSet(np.load(os.path.join(d, "images.npy")),
                      np.load(os.path.join(d, "labels.npy")), **fields)


def save(ctx, instances: np.ndarray, arrays: dict[str, np.ndarray], per_row: int,
         step: int) -> None:
  """Writes `arrays` (name -> array; `images` written last, as the done-marker) and the grid of
  the `instances` a student trains on to W/recover, and the grid to the metric writer."""
  d = recover_dir(ctx.workdir)
  for name, arr in arrays.items():
    if name != "images":
      checkpoint.atomic_save_npy(os.path.join(d, f"{name}.npy"), arr)
  grid = reporting.image_grid(instances, nrow=per_row)
  reporting.save_png(os.path.join(d, "grid.png"), grid)
  ctx.writer.write_images(step, {"synthetic_set/grid": grid[None]})
  checkpoint.atomic_save_npy(os.path.join(d, "images.npy"), arrays["images"])


def class_major(groups: list[np.ndarray], targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(G, B, H, W, C) group images and their (G, B) classes -> class-major images and labels:
  image i of class c at c * ipc + i."""
  groups = np.concatenate(groups)
  labels = np.asarray(targets).reshape(-1)
  images = groups.reshape(-1, *groups.shape[2:])
  order = np.argsort(labels, kind="stable")
  return images[order], labels[order].astype(np.int32)
