"""Label sources: how a student batch gets its augmented inputs and its target logits.

Student training (`jdd.evaluation.classification`) is the same loop for every method; what
differs is where the soft labels come from. A `LabelSource` says it with one pure function,

    batch_fn(operands, batch) -> (x, target_logits)

where `batch` holds the uint8 images of the step, their indices into the set (`idx`), the
epoch `epoch` and batch number `k`, plus whatever `host_fields(epochs, ks, idx)` adds from host
memory (stored logits). The student trainer asks for a whole stretch of steps at once, so
`host_fields` receives arrays (L,), (L,) and (L, b) and returns arrays with a leading L.
`operands` is the pytree the function reads on device (teacher variables, for online labels);
it is passed to `jit` as an argument, never closed over. `target` says what the second output
is: 'logits' (soft labels, softened by the evaluation's temperature) or 'probs' (hard labels:
one-hot, mixed with the batch's Mixup/CutMix weight, trained at T = 1).

Sources in jdd (built by `jdd.stages.relabel` from `config.relabel.mode`):
- 'stored' / 'online': SRe2L's FKD labels (`jdd.labels.fkd`): teacher logits per (epoch, batch)
  on the augmented, mixed batch, stored as float16 or computed online;
- 'static' / 'dynamic': INFER's (`jdd.labels.infer`): one teacher-ensemble logit vector per
  image, mixed in logit space; or the ensemble online on every augmented batch;
- 'hard': the set's own class labels, one-hot, with the same augmentation (no teacher).
With several teachers, online and FKD labels average the teachers' logits (`Ensemble`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class LabelSource:
  kind: str
  batch_fn: Callable[[Any, dict], tuple[Any, Any]]
  operands: Any = None
  host_fields: Callable[[int, int, Any], dict] | None = None
  files: tuple[str, ...] = ()       # stored label files, counted in the manifest
  description: str = ""
  target: str = "logits"            # 'logits' (soft labels) or 'probs' (hard labels)


@dataclasses.dataclass(frozen=True, eq=False)
class Ensemble:
  """Several frozen teachers behind one `apply`: the mean of their logits (float32).

  `variables` is a tuple aligned with `models`. One teacher returns its logits untouched, so a
  single-teacher run computes exactly what it did before ensembles existed.
  """
  models: tuple

  def apply(self, variables: Sequence[Any], x, train: bool = False):
    if len(variables) != len(self.models):
      raise ValueError(f"{len(self.models)} teachers but {len(variables)} variable sets")
    logits = [m.apply(v, x, train=train) for m, v in zip(self.models, variables)]
    if len(logits) == 1:
      return logits[0]
    return sum(l.astype(jnp.float32) for l in logits) / len(logits)
