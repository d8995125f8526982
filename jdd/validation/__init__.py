"""Every config is checked against its dataset and method before any data is read.

Before: `ipc=0` trained a teacher for 80 seconds, then died inside numpy; a teacher trained on
another dataset was found out at load time, after the data. Now `jdd.run.run` calls

    check(config, family)            before the workdir is touched: the run's fields, the
                                     family's fields, the files the config names, and, where the
                                     dataset's facts are known without reading it
                                     (`jdd.validation.datasets`), the IPC / pair budget, batch
                                     sizes, image shapes and teacher cards against them
    check_loaded(config, family, data, facts)   after loading, before anything trains: the same
                                     data checks with the loaded data's exact numbers, and
                                     (image-text) the encoder folders the config names, so that
                                     a missing paper dataset is reported first

Each failure is one `jdd.errors.ConfigError` naming the field, the value and what would be
valid (`jdd.validation.fields`); the command line prints it and exits with status 2. The
families: 'classification' (SRe2L, INFER, FADRM), 'trajectory' (experts, MTT-VL, LoRS,
RepBlend) and 'generative' (EDGE). A driver's own `check(config)` runs inside the same net:
whatever it raises (ValueError, FileNotFoundError) is reported the same way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from jdd.errors import ConfigError, MissingFile
from jdd.validation import classification, datasets, image_text
from jdd.validation.fields import fail, integer

FAMILIES = ("classification", "trajectory", "generative")


def common(config) -> None:
  """The fields every family's config starts with (`jdd.configs.new_config`)."""
  integer(config, "seed")
  integer(config, "log_every", lo=1)
  integer(config, "checkpoint_every", lo=1)
  integer(config, "debug.interrupt_after", lo=0)
  n = integer(config, "num_devices", lo=0)
  if n:
    import jax
    have = jax.device_count()
    if n > have:
      raise fail("num_devices", n, f"0 (all) to {have}",
                 f"this process sees {have} {jax.devices()[0].platform} device(s)")


@contextlib.contextmanager
def refusing() -> None:
  """Turns what the config checks raise into one `ConfigError` (message kept)."""
  try:
    yield
  except ConfigError:
    raise
  except KeyError as e:
    raise ConfigError(str(e.args[0]) if e.args else repr(e)) from e
  except FileNotFoundError as e:
    raise MissingFile(str(e)) from e
  except (ValueError, TypeError) as e:
    raise ConfigError(str(e)) from e


def check(config, family: str, driver_check: Callable | None = None):
  """All checks that need no data; returns the dataset facts they used (None if unknown)."""
  if family not in FAMILIES:
    raise ValueError(f"unknown family {family!r}; one of {FAMILIES}")
  with refusing():
    common(config)
    if family == "classification":
      classification.static(config)
      facts = classification.facts_of(config)
      if driver_check is not None:
        driver_check(config)
      if facts is not None:
        classification.with_data(config, facts)
      return facts
    image_text.static(config)
    if family == "generative":
      image_text.edge_static(config)
    if driver_check is not None:
      driver_check(config)
    facts = image_text.facts_of(config)
    if facts is not None:
      _image_text_data(config, family, facts, shapes=True)
    return facts


def check_loaded(config, family: str, data, earlier) -> None:
  """The data checks again with the loaded data's exact numbers (networks are traced only
  when `earlier`, the facts `check` had, were unknown)."""
  with refusing():
    if family == "classification":
      classification.with_data(config, datasets.from_classification_data(data),
                               shapes=earlier is None)
    else:
      image_text.files(config)
      _image_text_data(config, family, datasets.from_caption_data(data), shapes=earlier is None)


def _image_text_data(config, family: str, facts, shapes: bool) -> None:
  image_text.with_data(config, facts, shapes=shapes)
  if family == "generative":
    image_text.edge_with_data(config, facts)
