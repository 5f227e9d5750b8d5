"""Packaging as shipped: the Dockerfile builds every derived model file into the image and points
at docs that exist, and an editable install prints no setuptools warning."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = (REPO / "Dockerfile").read_text()


def test_dockerfile_points_only_at_files_that_exist():
    named = set(re.findall(r"\b((?:docs/)?[\w./-]+\.md)\b", DOCKERFILE))
    assert named, "the Dockerfile names its documentation"
    assert all((REPO / n).is_file() for n in named), sorted(n for n in named if not (REPO / n).is_file())


def _python_runs() -> list[str]:
    return re.findall(r'python -c "([^"]+)"', DOCKERFILE)


def test_dockerfile_builds_the_onnx_graph_into_the_image():
    runs = _python_runs()
    assert any("load_lm(None)" in r for r in runs) and any(".prepare()" in r for r in runs)


@pytest.mark.integration
def test_the_dockerfile_graph_step_builds_the_graph_that_search_uses(tmp_path):
    """Run the image's exact build step on the host, then a process whose cache is unwritable
    must find the graph there (not build it in memory)."""
    (step,) = [r for r in _python_runs() if ".prepare()" in r]
    env = {**os.environ, "KNNRAG_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", step], check=True, env=env, timeout=300)
    graphs = list((tmp_path / "onnx").glob("*.onnx"))
    assert len(graphs) == 1 and graphs[0].stat().st_size > 1e6
    probe = ("from retrieval.embed import onnx_bert\nfrom retrieval.embed.embedder import load_embedder, cache_root\n"
             "e = load_embedder(None)\nprint(type(onnx_bert.cached_graph(e.model_dir, e.model_id, cache_root() / 'onnx')).__name__)")
    out = subprocess.run([sys.executable, "-c", probe], check=True, env=env, capture_output=True, text=True, timeout=300)
    assert out.stdout.strip() == "PosixPath"


@pytest.mark.slow  # builds a wheel with pip
def test_editable_build_prints_no_setuptools_warning(tmp_path):
    """pip shows a build backend's Python warnings even with -q: setuptools' meta path finder
    strategy warned "Editable installation ... may take precedence during imports" on every setup.
    Turned into errors here, so any warning fails the build."""
    pytest.importorskip("setuptools")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, tmp_path / name)
    for pkg in ("retrieval", "lm", "mcp_server"):
        shutil.copytree(REPO / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    code = ("import warnings; warnings.simplefilter('error')\n"
            "from setuptools import build_meta\nprint(build_meta.build_editable('out'))")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "meta path finder" not in r.stdout + r.stderr
    pth = (tmp_path / "out").glob("*.whl")
    import zipfile

    (whl,) = list(pth)
    names = zipfile.ZipFile(whl).namelist()
    assert "__editable__.knnrag-0.1.0.pth" in names and not any("finder" in n for n in names)
