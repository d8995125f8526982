"""Field checks: each reads one dotted config path and raises `ConfigError` in one format,
`path=value: why; valid: what would be valid`.

A path that the config does not have is skipped (returns `MISSING`): the families share checks,
and not every method's config has every field (FADRM has no `recover.iterations`, say).
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Sequence

from jdd.errors import ConfigError, MissingFile

MISSING = object()


def get(config, path: str):
  """The value at a dotted path, or MISSING."""
  node = config
  for part in path.split("."):
    try:
      if part not in node:
        return MISSING
    except TypeError:
      return MISSING
    node = node[part]
  return node


def has(config, path: str) -> bool:
  return get(config, path) is not MISSING


def fail(path: str, value, valid: str, why: str = "") -> ConfigError:
  return ConfigError.field(path, value, valid, why)


def missing(path: str, value, valid: str, why: str) -> MissingFile:
  """`fail` for a file or folder that is not there (a FileNotFoundError as well)."""
  return MissingFile(str(ConfigError.field(path, value, valid, why)))


def _range_text(kind: str, lo, hi, lo_open: bool = False) -> str:
  if lo is not None and hi is not None and not lo_open:
    return f"{kind} from {lo} to {hi}"
  parts = []
  if lo is not None:
    parts.append(f"{'>' if lo_open else '>='} {lo}")
  if hi is not None:
    parts.append(f"<= {hi}")
  return f"{kind} {' and '.join(parts)}".strip()


def integer(config, path: str, lo: int | None = None, hi: int | None = None, why: str = "",
            valid: str | None = None):
  """An int in [lo, hi] (either bound optional); returns it (MISSING if absent)."""
  v = get(config, path)
  if v is MISSING:
    return v
  text = valid or _range_text("an integer", lo, hi)
  if isinstance(v, bool) or not isinstance(v, numbers.Integral):
    raise fail(path, v, text, why or "not an integer")
  if (lo is not None and v < lo) or (hi is not None and v > hi):
    raise fail(path, v, text, why)
  return int(v)


def number(config, path: str, lo: float | None = None, hi: float | None = None,
           lo_open: bool = False, why: str = "", valid: str | None = None):
  """A real number in [lo, hi] ((lo, hi] with `lo_open`); returns it (MISSING if absent)."""
  v = get(config, path)
  if v is MISSING:
    return v
  text = valid or _range_text("a number", lo, hi, lo_open)
  if isinstance(v, bool) or not isinstance(v, numbers.Real) or v != v:
    raise fail(path, v, text, why or "not a number")
  if (lo is not None and (v <= lo if lo_open else v < lo)) or (hi is not None and v > hi):
    raise fail(path, v, text, why)
  return float(v)


def positive(config, path: str, why: str = ""):
  """A number > 0 (learning rates, temperatures)."""
  return number(config, path, lo=0.0, lo_open=True, why=why)


def choice(config, path: str, options: Iterable, why: str = ""):
  v = get(config, path)
  if v is MISSING:
    return v
  options = list(options)
  if v not in options:
    raise fail(path, v, f"one of {options}", why)
  return v


def interval(config, path: str, lo: float, hi: float, why: str = ""):
  """A pair (a, b) with lo < a <= b <= hi (crop scales)."""
  v = get(config, path)
  if v is MISSING:
    return v
  ok = (isinstance(v, Sequence) and len(v) == 2 and all(
      isinstance(x, numbers.Real) and not isinstance(x, bool) for x in v)
        and lo < v[0] <= v[1] <= hi)
  if not ok:
    raise fail(path, tuple(v) if isinstance(v, Sequence) else v,
               f"a pair (a, b) with {lo} < a <= b <= {hi}", why)
  return tuple(float(x) for x in v)


def at_most(path: str, value: int, limit: int, what: str, fix: str = "") -> None:
  """`value` <= `limit`, where the limit comes from the data (`what` says whose)."""
  if value > limit:
    raise fail(path, value, f"at most {limit}{' (' + fix + ')' if fix else ''}", what)
