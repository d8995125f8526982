"""SRe2L's base config and smoke variant; configs/sre2l_<dataset>.py fill in the paper's values.

SRe2L (squeeze, recover, relabel) is the decoupled family's first method: one teacher
(`c.teacher`), one resolution recovered for `recover.iterations` steps, soft labels stored per
epoch and batch (`relabel.mode='stored'`, counted in the manifest) or computed online
(`'online'`). Its block values are jdd.configs.classification's defaults.
"""

import ml_collections

from jdd.config import smoke_value
from jdd.configs import classification, new_config


def base_config() -> ml_collections.ConfigDict:
  c = new_config("sre2l", checkpoint_every=100)
  c.dataset = classification.dataset_config()
  c.teacher_cache = "auto"   # jdd.stages.teacher_cache: '' trains every teacher in the workdir
  c.teacher = classification.teacher("resnet18", {"stem": "cifar"})
  c.recover = classification.recover_config(iterations=1000, jitter_symmetric=False)
  c.relabel = classification.relabel_config(mode="stored")  # 'stored' | 'online'
  c.evaluate = classification.evaluate_config()
  return c


def apply_smoke(c: ml_collections.ConfigDict, args: dict | None = None) -> None:
  """Shrinks any SRe2L config to a CPU run of a minute or two (what the tests use): the cell's
  teacher becomes a ConvNet-3 squeezed for one epoch (its other recipe fields stay the cell's),
  IPC 2 (or the variant's `ipc`), 20 recover iterations, 6 student epochs."""
  c.teacher.arch = "convnet"
  c.teacher.kwargs = ml_collections.ConfigDict(classification.SMOKE_CONVNET)
  c.teacher.update(classification.SMOKE_TEACHER_RECIPE)
  c.recover.ipc = int(smoke_value(args, "ipc", 2))
  c.recover.iterations = 20
  c.recover.groups_per_step = 2
  classification.shrink(c, student_epochs=6, eval_every=3, log_every=10)
