"""Python definitions from the standard `ast`, for when the tree-sitter grammar wheels are missing.

The same records as code_syntax.parse: definitions (decorators and the comments right above
included) and the statement starts a long definition may be cut at.
"""
from __future__ import annotations

import ast

from retrieval.ingest.code_syntax import Definition, Syntax

_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def parse_python(text: str) -> Syntax:
    try:
        tree = ast.parse(text)
    except SyntaxError as e:
        return Syntax([], [], f"syntax error near line {e.lineno} (python); chunked by lines instead")
    except ValueError as e:  # NUL bytes
        return Syntax([], [], f"cannot parse as Python: {e}; chunked by lines instead")
    lines = text.splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))

    def at(lineno: int, col: int) -> int:  # ast columns count UTF-8 bytes
        line = lines[lineno - 1] if lineno - 1 < len(lines) else ""
        return starts[lineno - 1] + len(line.encode("utf-8")[:col].decode("utf-8", "replace"))

    defs: list[Definition] = []
    cuts: set[tuple[int, int]] = set()
    for node in ast.walk(tree):
        for field in ("body", "orelse", "finalbody", "handlers"):
            for stmt in getattr(node, field, None) or []:
                if isinstance(stmt, ast.stmt) and not lines[stmt.lineno - 1][: stmt.col_offset].strip():
                    cuts.add((starts[stmt.lineno - 1], stmt.col_offset))
        if not isinstance(node, _DEFS):
            continue
        first = min([node.lineno] + [d.lineno for d in node.decorator_list])
        while first > 1 and lines[first - 2].lstrip().startswith("#"):
            first -= 1
        start = starts[first - 1] + len(lines[first - 1]) - len(lines[first - 1].lstrip())
        end = at(node.end_lineno or node.lineno, node.end_col_offset or 0)
        sig = at(node.lineno, node.col_offset)
        body = at(node.body[0].lineno, node.body[0].col_offset) if node.body else end
        kind = "class" if isinstance(node, ast.ClassDef) else "function"
        defs.append(Definition(start, end, node.name, kind, sig, body, ""))
    defs.sort(key=lambda d: (d.start, -d.end))
    return Syntax(defs, sorted(cuts), None)

