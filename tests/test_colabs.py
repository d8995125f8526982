"""The notebooks in colabs/ run top to bottom at small scale, so they cannot rot.

Each notebook is executed without a Jupyter kernel: its code cells run in order with `exec` in
one namespace, with JDD_NOTEBOOK_SMOKE=1 (tiny sizes) and JDD_NOTEBOOK_WORKDIR set to a tmp
folder, from the repository root. A cell that raises fails the test with the notebook's name
and the cell's index. The notebooks are also checked to be valid nbformat-4 JSON with no stored
outputs and no IPython magics (which `exec` could not run), and to equal what
colabs/build_notebooks.py writes from colabs/notebook_cells.py.

All three run in the default suite. The quickstart (SRe2L and INFER) and image-text (RepBlend)
notebooks compile whole pipelines, about a CPU minute each at their smallest on an idle
machine, so each has a test file of its own (tests/test_colab_quickstart.py,
tests/test_colab_image_text.py): the suite's workers take whole files, and three notebooks in
one file would leave one worker running them alone at the end.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import re
import traceback

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLABS = os.path.join(ROOT, "colabs")
NOTEBOOKS = sorted(glob.glob(os.path.join(COLABS, "*.ipynb")))


def _name(path: str) -> str:
  return os.path.basename(path).removesuffix(".ipynb")


def load_notebook(path: str) -> dict:
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def code_cells(nb: dict) -> list[tuple[int, str]]:
  """(index among all cells, source) of every code cell."""
  return [(i, "".join(c["source"])) for i, c in enumerate(nb["cells"])
          if c["cell_type"] == "code"]


def execute_notebook(path: str, workdir: str) -> dict:
  """Runs every code cell of `path` in one namespace; returns the namespace."""
  nb = load_notebook(path)
  namespace = {"__name__": "__main__"}
  for index, source in code_cells(nb):
    try:
      exec(compile(source, f"{_name(path)}.ipynb[cell {index}]", "exec"), namespace)
    except Exception:
      pytest.fail(f"{_name(path)}.ipynb: cell {index} raised\n{traceback.format_exc()}",
                  pytrace=False)
  return namespace


def test_notebooks_exist():
  assert {_name(p) for p in NOTEBOOKS} == {"quickstart", "image_text", "research"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_name)
def test_valid_nbformat4_without_outputs(path):
  nb = load_notebook(path)
  assert nb["nbformat"] == 4 and nb["nbformat_minor"] >= 5, path
  assert isinstance(nb["metadata"], dict)
  ids = [c["id"] for c in nb["cells"]]
  assert len(set(ids)) == len(ids) and all(re.fullmatch(r"[A-Za-z0-9_-]{1,64}", i) for i in ids)
  kinds = [c["cell_type"] for c in nb["cells"]]
  assert kinds[0] == "markdown" and "code" in kinds
  for i, cell in enumerate(nb["cells"]):
    assert cell["cell_type"] in ("markdown", "code"), (path, i)
    assert isinstance(cell["source"], list) and all(isinstance(s, str) for s in cell["source"])
    assert isinstance(cell["metadata"], dict)
    if cell["cell_type"] == "code":
      assert cell["outputs"] == [] and cell["execution_count"] is None, (
          f"{_name(path)}.ipynb cell {i} has stored outputs; clear them")
    else:
      assert "outputs" not in cell and "execution_count" not in cell
  sources = code_cells(nb)
  for i, source in sources:
    compile(source, f"{_name(path)}[{i}]", "exec")        # plain Python, no magics
    assert not re.search(r"^\s*[%!]", source, re.M), f"{_name(path)} cell {i} has a magic"
  # The first code cell installs jdd in Colab only; a parameters cell reads the smoke flag.
  assert "google.colab" in sources[0][1] and "JDD_GIT_URL" in sources[0][1]
  assert any("JDD_NOTEBOOK_SMOKE" in s for _, s in sources)


def test_notebooks_are_the_generator_output():
  spec = importlib.util.spec_from_file_location("build_notebooks",
                                                os.path.join(COLABS, "build_notebooks.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  for path in NOTEBOOKS:
    with open(path, encoding="utf-8") as f:
      assert f.read() == module.render(_name(path)), (
          f"{path} differs from colabs/notebook_cells.py: run python colabs/build_notebooks.py")


def run_at_small_scale(name: str, tmp_path, monkeypatch) -> dict:
  """Executes colabs/<name>.ipynb with JDD_NOTEBOOK_SMOKE=1 in a tmp workdir; its namespace."""
  path = os.path.join(COLABS, name + ".ipynb")
  workdir = str(tmp_path / name)
  monkeypatch.setenv("JDD_NOTEBOOK_SMOKE", "1")
  monkeypatch.setenv("JDD_NOTEBOOK_WORKDIR", workdir)
  monkeypatch.delenv("JDD_ROOT", raising=False)
  monkeypatch.chdir(ROOT)
  namespace = execute_notebook(path, workdir)
  assert namespace["SMOKE"] is True
  assert namespace["ROOT"] == ROOT
  return namespace


# Most of a minute on 2 cores; its drivers run end to end in the runner tests: slow.
@pytest.mark.slow
def test_research_notebook_runs_at_small_scale(tmp_path, monkeypatch):
  run_at_small_scale("research", tmp_path, monkeypatch)


def test_every_notebook_has_a_run_test():
  for path in NOTEBOOKS:
    name = _name(path)
    own_file = os.path.join(ROOT, "tests", f"test_colab_{name}.py")
    assert name == "research" or os.path.isfile(own_file), f"{name}.ipynb: no {own_file}"
