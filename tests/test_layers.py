"""The architecture as a test: imports point down (mcp_server -> lm -> retrieval), no module cycles.

An AST pass over the three packages, counting every import, also those inside functions (a lazy
import is still a dependency). Relative imports are not used in this code base, so they are refused.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"retrieval": 0, "lm": 1, "mcp_server": 2}


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in LAYERS:
        for p in (ROOT / pkg).rglob("*.py"):
            rel = p.relative_to(ROOT).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            mods[".".join(parts)] = p
    return mods


def _imports(path: Path, known: set[str]) -> set[str]:
    """The project modules that `path` imports (a `from pkg import name` of a submodule counts as it)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] in LAYERS}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import"
            if node.module and node.module.split(".")[0] in LAYERS:
                subs = {f"{node.module}.{a.name}" for a in node.names} & known
                out |= subs or {node.module}
    return {m for m in out if m in known}


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {m: _imports(p, known) - {m} for m, p in mods.items()}


def test_imports_point_down():
    upward = [(m, d) for m, deps in _graph().items() for d in deps
              if LAYERS[d.split(".")[0]] > LAYERS[m.split(".")[0]]]
    assert not upward, f"imports that point up the layers: {upward}"


def test_no_import_cycles():
    graph = _graph()
    # a package's __init__ importing its own submodules is not a cycle worth refusing; none do today
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, f"import cycles: {cycles}"


def test_the_check_sees_an_upward_import(tmp_path):
    """The pass itself must be able to fail: a planted upward import is found."""
    p = tmp_path / "x.py"
    p.write_text("def f():\n    from lm.knnlm import KNNLM\n")
    assert _imports(p, {"lm.knnlm"}) == {"lm.knnlm"}


MAX_FUNCTION_LINES, MAX_FILE_LINES = 80, 400


def test_functions_and_files_stay_small():
    """nanoGPT-sized pieces: a function at most 80 lines, a file at most 400 (tests included)."""
    long_funcs, long_files = [], []
    for p in [*_modules().values(), *(ROOT / "tests").rglob("*.py")]:
        src = p.read_text()
        if src.count("\n") > MAX_FILE_LINES:
            long_files.append(f"{p.relative_to(ROOT)} ({src.count(chr(10))} lines)")
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno:
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long_funcs.append(f"{p.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    assert not long_funcs and not long_files, {"functions": long_funcs, "files": long_files}
