"""Build docs/tutorials/custom_cell.ipynb from docs/custom_cell.md, so that the page and the
notebook are one text: prose becomes markdown cells, a ```python block that starts with
`# name.py` becomes a cell that writes that file, every other ```python block a code cell,
and the ```text blocks (the outputs the page shows) are left for the notebook's own run.
The files go into a folder of the notebook's own, removed by its last cell.

    python tools/notebooks.py          # rewrite the notebook
    python tools/notebooks.py --check  # exit 1 if the notebook differs from the page

The documentation build executes the notebook (mkdocs-jupyter); tests/test_custom_cell_doc.py
checks that it is current."""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "custom_cell.md"
NOTEBOOK = ROOT / "docs" / "tutorials" / "custom_cell.ipynb"
FENCE = re.compile(r"```(\w+)\n(.*?)```\n?", re.S)
SETUP = ("# The files this notebook writes go into a folder of their own, which Python imports from.\n"
         "import os, sys, tempfile\n"
         "folder = tempfile.mkdtemp(prefix='bptt-custom-cell-')\n"
         "os.chdir(folder)\n"
         "sys.path.insert(0, folder)")
CLEANUP = ("# The folder of this notebook's files goes with it.\n"
           "import shutil\n"
           "os.chdir(tempfile.gettempdir())\n"
           "shutil.rmtree(folder)")


def _cell(kind, text):
    lines = text.strip("\n").splitlines(keepends=True)
    cell = {"cell_type": kind, "metadata": {}, "source": lines}
    if kind == "code":
        cell |= {"execution_count": None, "outputs": []}
    return cell


def build(page: str) -> dict:
    cells, at = [_cell("code", SETUP)], 0
    for m in FENCE.finditer(page):
        prose = page[at:m.start()].strip("\n")
        if prose:
            cells.append(_cell("markdown", prose))
        kind, body = m.groups()
        if kind == "python":
            first = body.split("\n", 1)[0]
            if re.fullmatch(r"# \w+\.py", first):
                body = f"%%writefile {first[2:]}\n" + body
            cells.append(_cell("code", body))
        elif kind != "text":
            cells.append(_cell("markdown", f"```{kind}\n{body}```"))
        at = m.end()
    rest = page[at:].strip("\n")
    if rest:
        cells.append(_cell("markdown", rest))
    cells.append(_cell("code", CLEANUP))
    return {"cells": cells, "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python",
                                                        "name": "python3"}},
            "nbformat": 4, "nbformat_minor": 4}


def text() -> str:
    return json.dumps(build(PAGE.read_text(encoding="utf-8")), indent=1, ensure_ascii=False) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description="Build docs/tutorials/custom_cell.ipynb from docs/custom_cell.md.")
    parser.add_argument("--check", action="store_true", help="exit 1 if the notebook differs from the page; "
                                                              "write nothing")
    # an unknown argument (--chek) is an error, not a silent rewrite that exits 0
    if parser.parse_args(argv).check:
        current = NOTEBOOK.read_text(encoding="utf-8") if NOTEBOOK.exists() else ""
        sys.exit(0 if current == text() else f"{NOTEBOOK} differs from {PAGE}: run python tools/notebooks.py")
    NOTEBOOK.write_text(text(), encoding="utf-8")


if __name__ == "__main__":
    main()
