"""Command line: `python -m jdd.main --config configs/<x>.py[:variant] --workdir W`.

Any field can be overridden with `--config.a.b=value`; a field that does not exist is an error.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from jdd import run

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:arg]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, export and results.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax and clu log every save at INFO
  run.run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
