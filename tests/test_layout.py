"""The engine stays small: the cells and the backends (src/bptt/cells/, src/bptt/backends/)
hold at most 1,800 lines of code. Docstrings, comments and blank lines are not counted:
they carry the equations, shape legends and equation numbers that each derivative line
cites (docs/architecture.md, "How much code the engine is")."""
import io
import tokenize
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "bptt"
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
