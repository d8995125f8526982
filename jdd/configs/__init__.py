"""The helper package the config files import (`configs/<method>_<dataset>.py`).

A config file states one paper cell (or jdd's offline stand-in for one); what every cell of a
family shares is written here once, so that a config file is the cell's values and nothing else,
and imports its helpers like any other module instead of putting `configs/` on `sys.path`:

    classification   blocks of the decoupled methods (dataset, teacher, recover, relabel,
                     evaluate) and the smoke part they share
    sre2l, infer, fadrm   each decoupled method's base config, smoke variant and own helpers
    image_text       the image-text driver's base config, offline data, paper data, and the
                     trajectory-matching builder `tm_config` (the method's fixed choices come from
                     its `SPEC` in jdd.methods)
    edge             the EDGE builder `edge_config`, on top of image_text
    teacher_recipes  the references' squeeze recipes, for any registered architecture

Nothing here runs anything: each function returns or edits an `ml_collections.ConfigDict`, and
the config file locks it (`jdd.config.finalize`).
"""

import ml_collections


def new_config(method: str, checkpoint_every: int) -> ml_collections.ConfigDict:
  """The run fields every family's config starts with: the method, the seed, the device count
  (0: all visible), how often to log and to checkpoint, and the debug interrupt (stop after N
  loop steps, for the resume tests)."""
  c = ml_collections.ConfigDict()
  c.method = method
  c.seed = 0
  c.num_devices = 0
  c.log_every = 50
  c.checkpoint_every = checkpoint_every
  c.debug = ml_collections.ConfigDict({"interrupt_after": 0})
  return c
