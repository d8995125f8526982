"""Config files, their variants, and the checks that catch a mistyped key early.

Configs are Python files under `configs/` with `get_config(arg=None) -> ConfigDict`. The
argument after a colon picks a variant: `configs/sre2l_cifar100.py:smoke` or
`configs/sre2l_cifar100.py:ipc=10,smoke`. Every returned config is locked, so assigning a
field that does not exist fails at once (with ml_collections' "did you mean" hint) instead of
being silently ignored half-way through a GPU run.

Variants compose: every key given after the colon is honoured whatever else is given, or the
combination is refused. `smoke` shrinks a run but keeps the `ipc` or `pairs` the user asked for
(`configs/sre2l_fashion_mnist.py:ipc=5,smoke` is a smoke run at IPC 5; an IPC the smoke data
cannot serve is then refused by `jdd.validation`, naming the field). The smoke builders take
the variant dict for that (`smoke_value`), and tests/test_cli.py checks every config's every
variant key under `smoke`.

`explain_flag_error` turns what absl and ml_collections raise for a bad `--config` or
`--config.a.b=v` into one line for the command line (a mistyped field name gets the fields
that exist and the closest one).
"""

from __future__ import annotations

import ast
import contextlib
import difflib
import importlib.util
import os

import ml_collections

from jdd.errors import ConfigError


class UnknownVariant(ConfigError):
  """A variant key the config does not accept; `known` holds those it does."""

  def __init__(self, message: str, known: set[str]):
    super().__init__(message)
    self.known = set(known)


def parse_arg(arg: str | None) -> dict:
  """Parses `a=1,b=x,smoke` into {'a': 1, 'b': 'x', 'smoke': True}."""
  out = {}
  if not arg:
    return out
  for part in arg.split(","):
    part = part.strip()
    if not part:
      continue
    if "=" in part:
      key, value = part.split("=", 1)
      try:
        out[key.strip()] = ast.literal_eval(value.strip())
      except (ValueError, SyntaxError):
        out[key.strip()] = value.strip()
    else:
      out[part] = True
  return out


def check_variant_keys(args: dict, known: set[str], config_name: str) -> None:
  unknown = sorted(set(args) - known)
  if unknown:
    raise UnknownVariant(
        f"{config_name}: unknown variant option(s) {unknown}; this config accepts "
        f"{sorted(known)} (e.g. `--config {config_name}.py:{sorted(known)[0]}=...`).", known)


def smoke_value(args: dict | None, key: str, default):
  """The value a smoke variant gives `key`: the user's, when the variant string set it."""
  return args[key] if args and key in args else default


def variant_keys(path: str) -> set[str]:
  """The variant keys a config file accepts (asked of the file itself)."""
  try:
    load_config(path + ":__no_such_variant__")
  except UnknownVariant as e:
    return e.known
  raise ValueError(f"{path} accepts any variant key")


def load_config(spec: str) -> ml_collections.ConfigDict:
  """Loads `path.py[:arg]` the way `--config` does, for notebooks and tests."""
  path, _, arg = spec.partition(":")
  if not os.path.exists(path):
    raise FileNotFoundError(f"config file {path!r} does not exist")
  module_spec = importlib.util.spec_from_file_location(
      "jdd_config_" + os.path.basename(path).removesuffix(".py"), path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def override(config: ml_collections.ConfigDict, **dotted) -> ml_collections.ConfigDict:
  """`override(cfg, **{'recover.iterations': 5})`: the notebook twin of `--config.x.y=v`.

  Raises KeyError naming the bad key when a path does not exist.
  """
  for dotted_key, value in dotted.items():
    problem = missing_key(config, dotted_key)
    if problem:
      raise KeyError(problem)
    node = config
    parts = dotted_key.split(".")
    for i, part in enumerate(parts):
      if i == len(parts) - 1:
        with node.ignore_type() if value is None or node[part] is None else (
            contextlib.nullcontext()):
          node[part] = value
      else:
        node = node[part]
  return config


def missing_key(config, dotted_key: str) -> str | None:
  """None when `dotted_key` names a field of `config`; else what is wrong, with the closest
  field name and the fields that exist."""
  node, parts = config, dotted_key.split(".")
  for i, part in enumerate(parts):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      where = ".".join(parts[:i]) or "the config"
      if not isinstance(node, ml_collections.ConfigDict):
        return (f"config key {dotted_key!r} does not exist: {where} is a value "
                f"({type(node).__name__}), not a group of fields")
      fields = sorted(node.keys())
      close = difflib.get_close_matches(part, fields, n=1)
      hint = f"; did you mean {'.'.join(parts[:i] + close)!r}?" if close else ""
      return (f"config key {dotted_key!r} does not exist: {where} has no field {part!r}"
              f"{hint} (its fields: {', '.join(fields)})")
    node = node[part]
  return None


def _flag_values(argv: list[str], name: str) -> list[tuple[str, str]]:
  """[(flag as typed, value)] of `--name=v` / `--name v` / `--name.x=v` arguments."""
  out = []
  for i, arg in enumerate(argv):
    if not arg.startswith(f"--{name}"):
      continue
    flag, eq, value = arg.partition("=")
    if not eq and i + 1 < len(argv) and flag == f"--{name}":
      value = argv[i + 1]
    out.append((flag, value))
  return out


REQUIRED_EXAMPLES = {
    "--config": "a config file and variant, e.g. --config configs/sre2l_fashion_mnist.py:smoke",
    "--workdir": "the folder for checkpoints, the export and results, e.g. --workdir runs/x",
}


def explain_flag_error(argv: list[str], exc: BaseException) -> str:
  """One line for a command line that did not parse (see the module docstring)."""
  configs = [(f, v) for f, v in _flag_values(argv, "config") if f == "--config"]
  if configs:
    spec = configs[-1][1]
    path = spec.partition(":")[0]
    if not os.path.isfile(path):
      return (f"--config {spec}: no config file {path!r} (the configs are configs/*.py, e.g. "
              "configs/sre2l_fashion_mnist.py)")
    try:
      config = load_config(spec)
    except Exception as e:  # the config file's own error (a variant it refuses, ...)
      return f"--config {spec}: {_one_line(e)}"
    for flag, value in _flag_values(argv, "config."):
      path = flag[len("--config."):]
      problem = missing_key(config, path)
      if problem:
        return f"{flag}={value}: {problem}"
      if f"{flag}={value}" in str(exc):   # absl could not parse the value for this field
        current = config
        for part in path.split("."):
          current = current[part]
        kind = type(current).__name__
        return (f"{flag}={value}: {path} holds {'an' if kind[0] in 'aeiou' else 'a'} {kind} "
                f"(now {current!r}), and {value!r} does not parse as one "
                f"({_one_line(exc).split(': ', 1)[-1]})")
  message = _one_line(exc).removeprefix("flag ")
  if "must have a value other than None" in message:
    name = message.partition("=")[0]
    example = REQUIRED_EXAMPLES.get(name, "")
    return f"{name} is required{' (' + example + ')' if example else ''}"
  return message


def _one_line(e: BaseException) -> str:
  text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
  return " ".join(str(text).split())


def finalize(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Locks a config so that mistyped fields fail loudly."""
  config.lock()
  return config
