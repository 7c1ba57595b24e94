"""The engine stays small: the cells and the backends (src/bptt/cells/, src/bptt/backends/)
hold at most 1,800 lines of code. Docstrings, comments and blank lines are not counted:
they carry the equations, shape legends and equation numbers that each derivative line
cites (docs/architecture.md, "How much code the engine is"). And the package is the house
of floors that docs/architecture.md's table draws: every module has a row, and imports
point down, or stay on their floor; a module beside the floors imports only those beside."""
import ast
import io
import re
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "bptt"
ENGINE_CODE_LINES = 1800


def code_lines(text: str) -> int:
    """Lines holding a token of code: not blank, not only a comment, not part of a
    docstring (a string that is a whole statement)."""
    lines, previous = set(), tokenize.NEWLINE
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        kind = token.type
        if kind in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                    tokenize.ENDMARKER):
            if kind in (tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
                previous = kind
            continue
        starts_statement = previous in (tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT)
        previous = kind
        if kind == tokenize.STRING and starts_statement:
            continue                                   # a docstring (or a bare string statement)
        lines.update(range(token.start[0], token.end[0] + 1))
    return len(lines)


def test_code_lines_count_code_only():
    text = '"""A docstring\nof two lines."""\n\n# a comment\nx = 1  # trailing\n\n\ndef f(a):\n' \
           '    """One line."""\n    return (a +\n            2)\n'
    assert code_lines(text) == 4                        # x = 1, def f, and the two lines of return


def test_the_cells_and_backends_hold_at_most_1800_lines_of_code():
    files = sorted((SRC / "cells").glob("*.py")) + sorted((SRC / "backends").glob("*.py"))
    counts = {f"{p.parent.name}/{p.name}": code_lines(p.read_text(encoding="utf-8")) for p in files}
    assert len(counts) > 15
    total = sum(counts.values())
    assert total <= ENGINE_CODE_LINES, f"{total} lines of code in cells/ and backends/: {counts}"


def floors_of_the_table() -> dict:
    """{path under src/bptt/: floor} from docs/architecture.md's table: a number, "beside"
    (under every floor: 0) or "top" (above them all)."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| (\d+|beside|top) \| (.+?) \|", text, re.M)
    floors = {}
    for floor, where in rows:
        for path in re.findall(r"`([^`]+)`", where):
            floors[path] = 0 if floor == "beside" else 100 if floor == "top" else int(floor)
    return floors


def floor_of(module: str, floors: dict) -> int:
    """The floor of module ``bptt.a.b``: its own row (a.b.py), else its folder's (a/); a
    package's __init__ its folder's, else the highest of its files' rows; ``bptt`` top."""
    parts = module.split(".")[1:]
    if not parts:
        return 100
    for key in ("/".join(parts) + ".py", "/".join(parts[:-1]) + "/", "/".join(parts) + "/"):
        if key in floors:
            return floors[key]
    inside = [f for path, f in floors.items() if path.startswith("/".join(parts) + "/")]
    assert inside, f"{module}: no row in docs/architecture.md's table of floors"
    return max(inside)


def imports_of(path: Path, module: str, modules: set) -> set:
    """The bptt modules ``path`` imports, at its top or inside a function alike."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif (node.module or "").split(".")[0] == "bptt":
                target = node.module
            else:
                continue
            found |= {f"{target}.{a.name}" if f"{target}.{a.name}" in modules else target for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "bptt"}
    return found - {module}


def test_imports_point_down_the_floors_of_the_architecture_table():
    floors = floors_of_the_table()
    assert {"ops/", "cells/", "model.py", "train/", "backends/", "cli.py"} <= set(floors)
    files = {}
    for p in SRC.rglob("*.py"):
        parts = p.relative_to(SRC.parent).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    upward = []
    for module, path in sorted(files.items()):
        own = floor_of(module, floors)
        for target in sorted(imports_of(path, module, set(files))):
            if floor_of(target, floors) > own:
                upward.append(f"{module} (floor {own}) imports {target} (floor {floor_of(target, floors)})")
    assert len(files) > 60
    assert not upward, "imports that point up the floors of docs/architecture.md:\n" + "\n".join(upward)
