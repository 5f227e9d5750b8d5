"""benchmarks/ is a package with one runner: every bench_NAME.py names its PEER, has main(argv), takes --quick,
imports no other bench script, touches neither sys.path nor BENCHMARKS.md, and holds no absolute path."""
from __future__ import annotations

import ast
import importlib
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
MODULES = sorted(BENCH.glob("*.py"))
BENCHES = [p for p in MODULES if p.name.startswith("bench_")]


def test_there_are_benchmarks():
    assert len(BENCHES) >= 15


def test_list_names_every_benchmark_with_its_peer():
    out = subprocess.run([sys.executable, "-m", "benchmarks", "--list"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    for p in BENCHES:
        name = p.stem.removeprefix("bench_")
        line = next((ln for ln in out.stdout.splitlines() if ln.split()[:1] == [name]), None)
        assert line is not None and "peer:" in line, (name, out.stdout[:500])


@pytest.mark.parametrize("path", BENCHES, ids=lambda p: p.stem)
def test_bench_module_contract(path: Path):
    mod = importlib.import_module(f"benchmarks.{path.stem}")
    assert isinstance(mod.PEER, str) and len(mod.PEER) > 10
    params = list(inspect.signature(mod.main).parameters)
    assert params[:1] == ["argv"], params
    assert "--quick" in path.read_text(), f"{path.name} has no --quick"
    assert "record(" in path.read_text(), f"{path.name} records nothing in benchmarks/results/"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.stem)
def test_no_path_hacks_no_cross_imports_no_benchmarks_md(path: Path):
    src = path.read_text()
    tree = ast.parse(src)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "insert" and ast.unparse(node.value) == "sys.path":
            pytest.fail(f"{path.name}:{node.lineno}: sys.path.insert")
        if isinstance(node, ast.ImportFrom) and node.module:
            mod = node.module
            assert not mod.startswith(("bench_", "benchmarks.bench_")), f"{path.name}:{node.lineno} imports {mod}"
        if isinstance(node, ast.Import):
            for a in node.names:
                assert not a.name.startswith(("bench_", "benchmarks.bench_")), f"{path.name}:{node.lineno} imports {a.name}"
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            assert not node.value.startswith(("/work/", "/home/", "/root/", "/usr/lib/", "/tmp/")), \
                f"{path.name}:{node.lineno}: absolute path {node.value!r}"
    if path.name != "report.py":
        assert 'open(ROOT / "BENCHMARKS.md"' not in src and '"BENCHMARKS.md").open("a"' not in src, path.name


def test_record_appends_one_line_per_target(tmp_path, monkeypatch):
    import json

    from benchmarks import common

    monkeypatch.setenv("KNNRAG_BENCH_RESULTS", str(tmp_path))
    monkeypatch.setattr(common, "INVOCATION", ["demo", "--quick"])
    row = common.record("demo", "a target", 2.0, 4.0, "ms", peer_name="peer", higher_is_better=False, quick=True)
    common.record("demo", "a target", 3.0, None, "ms")
    lines = [json.loads(x) for x in (tmp_path / "demo.jsonl").read_text().splitlines()]
    assert [r["ours"] for r in lines] == [2.0, 3.0]
    assert row["ratio"] == 0.5 and lines[1]["ratio"] is None
    assert row["command"] == "python -m benchmarks demo --quick" and row["quick"] is True
    assert common.percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
