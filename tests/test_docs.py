"""The documents: a README of at most 200 lines whose links resolve, a performance page
generated from benchmarks/results/ and current, a custom-cell notebook that is the page,
every page of the site's navigation present, no word of how the project was built, and a
derivation page that holds every equation label the code cites and every code line it quotes."""
import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


def test_readme_is_a_front_page_whose_links_resolve():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    assert "pip install -e '.[test]' && bptt train" in text and "python -m pytest" in text
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install -e '.[test]'" in ci and "python -m pytest" in ci
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    assert len(links) >= 10
    for link in links:
        if not link.startswith("http"):
            assert (ROOT / link).exists(), link


def test_the_performance_page_is_generated_from_the_recorded_results():
    report = load(ROOT / "benchmarks" / "report.py", "report")
    assert (ROOT / "docs" / "performance.md").read_text(encoding="utf-8") == report.render(), \
        "docs/performance.md is not current: run python benchmarks/report.py"
    recorded = list((ROOT / "benchmarks" / "results").glob("*/*.md"))
    assert recorded
    for path in recorded:          # each table carries the stamp of its machine and its command
        text = path.read_text(encoding="utf-8")
        assert text.startswith("command: `python benchmarks/") or "python benchmarks/" in text.split("\n")[0], path
        assert re.search(r"# 20\d\d-\d\d-\d\d · .+ · (AVX2|AVX-512|SSE/other).* · \d+ cores · ", text), path


def test_the_custom_cell_notebook_is_the_page():
    notebooks = load(ROOT / "tools" / "notebooks.py", "notebooks")
    assert notebooks.NOTEBOOK.read_text(encoding="utf-8") == notebooks.text(), \
        "docs/tutorials/custom_cell.ipynb differs from docs/custom_cell.md: run python tools/notebooks.py"


def test_the_notebook_tool_refuses_an_unknown_argument_and_writes_nothing(tmp_path):
    notebooks = load(ROOT / "tools" / "notebooks.py", "notebooks")
    notebooks.NOTEBOOK = tmp_path / "custom_cell.ipynb"
    with pytest.raises(SystemExit) as stop:
        notebooks.main(["--chek"])
    assert stop.value.code == 2 and not notebooks.NOTEBOOK.exists()
    notebooks.main([])
    assert notebooks.NOTEBOOK.read_text(encoding="utf-8") == notebooks.text()


def test_every_page_of_the_navigation_exists():
    nav = re.findall(r":\s+(\S+\.(?:md|ipynb))\s*$", (ROOT / "mkdocs.yml").read_text(), re.M)
    assert len(nav) >= 14
    for page in nav:
        assert (ROOT / "docs" / page).exists(), page


NARRATIVE = re.compile(r"\bsessions?\b|\bissue \d+|\bRESULTS\.md\b|\bwe tried\b|\bwas tried\b|\bround of work\b"
                       r"|\bthis project's machine\b|\bnot measured yet\b", re.I)


@pytest.mark.parametrize("folder", ["README.md", "docs", "src", "benchmarks", "examples", "tools"])
def test_no_word_of_how_the_project_was_built(folder):
    root = ROOT / folder
    files = [root] if root.is_file() else [p for p in root.rglob("*") if p.suffix in (".md", ".py", ".ipynb", ".sh")
                                            and "egg-info" not in str(p)]
    found = [f"{p.relative_to(ROOT)}:{i + 1}: {line.strip()}" for p in files
             for i, line in enumerate(p.read_text(encoding="utf-8").splitlines()) if NARRATIVE.search(line)]
    assert not found, "\n".join(found[:20])


def test_every_exported_callable_that_takes_x_gives_its_shapes():
    """The API reference is built from the docstrings: whatever bptt and bptt.through_time
    export that takes arrays x says their shapes (x time-major, (T, B, D))."""
    import inspect

    import bptt
    import bptt.through_time

    missing = []
    for module in (bptt, bptt.through_time):
        for name in module.__all__:
            obj = getattr(module, name)
            if not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            takes_x = inspect.isfunction(obj) and "x" in inspect.signature(obj).parameters or any(
                "x" in inspect.signature(f).parameters for _, f in inspect.getmembers(obj, inspect.isfunction))
            if takes_x and "(T, B, D)" not in (inspect.getdoc(obj) or ""):
                missing.append(f"{module.__name__}.{name}")
    assert not missing, missing


LABEL = r"\((?:LN|PR|[A-Z])[0-9]+\)"


def test_every_equation_label_the_code_cites_is_on_the_derivation_page():
    """A label counts as defined where it ends a line of docs/derivation.md (an equation's
    tag), and every code line the page quotes with a label comment is one of the code's."""
    page = (ROOT / "docs" / "derivation.md").read_text(encoding="utf-8")
    defined = set()
    for line in page.splitlines():
        tail = re.search(rf"((?:{LABEL}[ ,]*)+)$", line.rstrip())
        if tail:
            defined.update(re.findall(LABEL, tail.group(1)))
    src = {p: p.read_text(encoding="utf-8") for p in sorted((ROOT / "src" / "bptt").rglob("*.py"))}
    missing = sorted({f"{p.relative_to(ROOT)}: {label}" for p, text in src.items()
                      for label in re.findall(LABEL, text) if label not in defined})
    assert not missing, missing
    code = "\n".join(src.values())
    quoted = re.findall(rf"`([^`]*#\s*{LABEL}[^`]*)`", page)
    assert quoted
    for line in quoted:
        statement, comment = (part.strip() for part in line.split("#", 1))
        assert re.search(re.escape(statement) + r"\s*#\s*" + re.escape(comment), code), line
