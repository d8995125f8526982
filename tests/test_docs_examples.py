"""docs/api.md stays true: it is what scripts/gen_api_docs.py generates from the current code,
and every ```python example in it runs (each in a fresh namespace, tiny inputs)."""

import importlib.util
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
API = ROOT / "docs" / "api.md"


def _load_generator():
  spec = importlib.util.spec_from_file_location("gen_api_docs", ROOT / "scripts" / "gen_api_docs.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _examples() -> list[tuple[str, str]]:
  """(the `### name` heading above it, code) of every python block of docs/api.md."""
  out, heading = [], "?"
  for match in re.finditer(r"^### `([^`]+)`|^```python\n(.*?)^```", API.read_text(), re.S | re.M):
    if match.group(1):
      heading = match.group(1)
    else:
      out.append((heading, match.group(2)))
  return out


def test_api_page_is_up_to_date():
  assert API.read_text(encoding="utf-8") == _load_generator().render(), (
      "docs/api.md is stale: run `python scripts/gen_api_docs.py` and commit the result")


def test_every_entry_has_an_example():
  examples = _examples()
  headings = re.findall(r"^### `([^`]+)`", API.read_text(), re.M)
  assert len(examples) == len(headings) >= 25
  assert [h for h, _ in examples] == headings


# The two examples that compile a whole distillation step (~4-6 s of CPU each) run with the
# slow tests (`bash scripts/test.sh --all`), keeping the default run of this file under ~20 s.
HEAVY = {"jdd.methods.sre2l.step", "jdd.objectives.trajectory.value_and_grad"}


@pytest.mark.parametrize("name,code", [
    pytest.param(h, c, id=h, marks=[pytest.mark.slow] if h in HEAVY else [])
    for h, c in _examples()])
def test_api_example_runs(name, code):
  exec(compile(code, f"docs/api.md:{name}", "exec"), {"__name__": "docs_example"})


def test_documented_config_specs_load():
  """Every `configs/x.py[:variant]` the reproduction cards and the CLI page name exists and
  accepts its variant (EDGE's configs are skipped until issue 8 adds them)."""
  from jdd.config import load_config
  specs = set()
  for page in ("reproduction.md", "cli.md", "data_and_weights.md"):
    text = (ROOT / "docs" / page).read_text()
    specs.update(re.findall(r"configs/[a-z0-9_]+\.py(?::[A-Za-z0-9_=.,]+)?", text))
  assert "configs/repblend_flickr.py:pairs=500" in specs and len(specs) > 60
  for spec in sorted(specs):
    path = ROOT / spec.partition(":")[0]
    if path.name.startswith("edge_") and not path.exists():
      continue
    assert load_config(str(ROOT / spec)) is not None, spec
