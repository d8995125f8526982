"""Writes the notebooks in colabs/ from the cell lists below (run it after editing them).

    python colabs/build_notebooks.py

Why a generator: notebook JSON is awkward to review and to edit by hand, and every notebook
shares its first (Colab install) cell; the cells live here as plain text, and the committed
`.ipynb` files are this script's output. `tests/test_colabs.py` checks that the committed
files equal what this script writes, and executes every notebook at small scale.

Notebooks are nbformat 4.5 JSON with outputs cleared. Code cells are plain Python (no `%` or
`!` magics), so the test suite can run them without a Jupyter kernel.
"""

from __future__ import annotations

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from notebook_cells import NOTEBOOKS  # noqa: E402


def notebook_json(stem: str, cells: list[tuple[str, str]]) -> dict:
  """nbformat 4.5: every cell has an id, code cells have empty outputs and no count."""
  out = []
  for i, (kind, text) in enumerate(cells):
    source = text.strip("\n").splitlines(keepends=True)
    cell = {"cell_type": kind, "id": f"{stem}-{i:02d}", "metadata": {}, "source": source}
    if kind == "code":
      cell.update(execution_count=None, outputs=[])
    out.append(cell)
  return {"cells": out, "nbformat": 4, "nbformat_minor": 5,
          "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python",
                                      "name": "python3"},
                       "language_info": {"name": "python"},
                       "colab": {"provenance": []}}}


def render(stem: str) -> str:
  return json.dumps(notebook_json(stem, NOTEBOOKS[stem]), indent=1, ensure_ascii=False) + "\n"


def main() -> None:
  for stem in NOTEBOOKS:
    path = os.path.join(HERE, f"{stem}.ipynb")
    with open(path, "w", encoding="utf-8") as f:
      f.write(render(stem))
    print(f"wrote {path}")


if __name__ == "__main__":
  main()
