"""docs/custom_cell.md runs as written: its `# mgu.py` and `# mgu_compiled.py` blocks are
saved as those files, the other Python blocks run in order in one namespace and print
exactly the ```text block after each, and its `bptt train --cell mgu:MGU` command beats
the adding task's baseline."""
import contextlib
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "custom_cell.md"
FENCE = re.compile(r"```(\w+)\n(.*?)```", re.S)


def blocks():
    return [(kind, body) for kind, body in FENCE.findall(DOC.read_text(encoding="utf-8"))]


@pytest.fixture()
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("mgu", None)
    sys.modules.pop("mgu_compiled", None)


def files(kind_body):
    """{file name: text} of the blocks that start with `# <name>.py`."""
    return {body.split("\n", 1)[0][2:]: body for kind, body in kind_body
            if kind == "python" and re.match(r"# \w+\.py\n", body)}


def test_every_python_block_prints_what_the_page_shows(in_tmp):
    found = blocks()
    saved = files(found)
    assert set(saved) == {"mgu.py", "mgu_compiled.py"}
    for name, text in saved.items():
        (in_tmp / name).write_text(text, encoding="utf-8")
    namespace, ran = {}, 0
    for i, (kind, body) in enumerate(found):
        if kind != "python" or body in saved.values():
            continue
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(body, f"{DOC.name} block {i}", "exec"), namespace)
        shown = found[i + 1]
        assert shown[0] == "text", f"block {i} is not followed by its output"
        assert out.getvalue() == shown[1], (i, out.getvalue())
        ran += 1
    assert ran >= 4


def test_the_train_command_beats_the_baseline(in_tmp):
    (in_tmp / "mgu.py").write_text(next(b for k, b in blocks() if k == "python" and b.startswith("# mgu.py\n")),
                                   encoding="utf-8")
    console = next(b for k, b in blocks() if k == "console")
    command, *shown = console.strip().splitlines()
    argv = command.removeprefix("$ bptt ").split()
    done = subprocess.run([sys.executable, "-m", "bptt", *argv], capture_output=True, text=True, timeout=600,
                          cwd=in_tmp, env=os.environ | {"PYTHONPATH": ""})
    assert done.returncode == 0, done.stderr
    last = done.stdout.strip().splitlines()[-1]
    assert last.split(":")[0] == shown[-1].split(":")[0] == "validation adding"
    loss = float(re.search(r"loss ([\d.]+)", last).group(1))
    assert loss < 0.167 / 20, last                   # the page shows 0.00098
    assert '"cell": "mgu:MGU"' in next(in_tmp.glob("runs/*/config.json")).read_text()
