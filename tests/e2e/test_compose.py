"""docker-compose.yml against the Compose Specification schema, and the services' commands run on the host.

There is no Docker engine on these machines, so we check what can be checked without one:
- the file validates against the official compose-spec JSON schema (tests/data/compose-spec.json,
  verbatim from github.com/compose-spec/compose-spec schema/compose-spec.json, Apache-2.0);
- the shape we promise: an `mcp` service on streamable HTTP with a healthcheck, a named volume
  and a non-root user; a one-shot `indexer`; the Dockerfile installs CPU torch first;
- the exact commands the services run (indexer command, mcp command, healthcheck test) work on
  the host, with only the container paths (/data, /docs) and the port mapped to temp ones.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

jsonschema = pytest.importorskip("jsonschema")
yaml = pytest.importorskip("yaml")

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "tests" / "data" / "compose-spec.json"
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _knnrag() -> list[str]:
    exe = shutil.which("knnrag") or str(Path(sys.executable).with_name("knnrag"))
    return [exe] if Path(exe).exists() else [sys.executable, "-m", "retrieval.cli.root"]


def test_compose_file_validates_against_compose_spec():
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(_compose()), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_schema_rejects_a_broken_compose_file():
    """The validation above can fail: a typo'd key and a wrong type are caught."""
    bad = _compose()
    bad["services"]["mcp"]["helthcheck"] = bad["services"]["mcp"].pop("healthcheck")
    bad["services"]["indexer"]["ports"] = "8000"
    errors = list(jsonschema.Draft7Validator(json.loads(SCHEMA.read_text())).iter_errors(bad))
    assert len(errors) >= 2


def test_compose_shape():
    c = _compose()
    mcp, indexer = c["services"]["mcp"], c["services"]["indexer"]
    assert mcp["command"][0] == "serve" and "--transport" in mcp["command"]
    assert mcp["command"][mcp["command"].index("--transport") + 1] == "http"
    assert mcp["healthcheck"]["test"][0] == "CMD"
    assert "stores" in c["volumes"]
    assert any(v.startswith("stores:") for v in mcp["volumes"]) and any(v.startswith("stores:") for v in indexer["volumes"])
    for svc in (mcp, indexer):
        assert not str(svc.get("user", "0")).startswith("0"), "services must not run as root"
    assert indexer["restart"] == "no" and indexer["command"][0] == "index"
    assert all(p.startswith("127.0.0.1:") for p in mcp["ports"]), "publish on loopback by default"


def test_every_service_can_build_its_image():
    """`docker compose up` on a fresh machine builds what it cannot pull: no knnrag image is published."""
    services = _compose()["services"]
    for name, svc in services.items():
        assert svc.get("build"), f"service {name} has no build: a machine without the image would try to pull {svc['image']}"
    by_image: dict[str, list] = {}
    for svc in services.values():
        by_image.setdefault(svc["image"], []).append(svc["build"])
    assert all(b == builds[0] for builds in by_image.values() for b in builds), "one image, one build recipe"
    assert services["ray-worker"]["build"]["args"]["KNNRAG_EXTRAS"] == "ray"


def test_dockerfile_installs_cpu_torch_first_and_drops_root():
    text = DOCKERFILE.read_text()
    runs = [m.group(1) for m in re.finditer(r"^RUN (.+)$", text, re.M)]
    assert "torch==2.13.0" in runs[0] and "whl/cpu" in runs[0]
    assert re.search(r"^USER (?!root)\S+", text, re.M)
    assert "HEALTHCHECK" in text and "/healthz" in text


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _host_args(args: list[str], data: Path, docs: Path, port: int) -> list[str]:
    """Map the container's /data and /docs to temp folders and port 8000 to a free one."""
    out = []
    for a in args:
        a = a.replace("/data", str(data)).replace("/docs", str(docs))
        out.append(str(port) if a == "8000" else a.replace(":8000", f":{port}"))
    return out


@pytest.fixture()
def docs(tmp_path: Path) -> Path:
    d = tmp_path / "docs"
    d.mkdir()
    (d / "guide.md").write_text("# Guide\n\nPath parameters are declared with curly braces in the route.\n")
    (d / "faq.md").write_text("# FAQ\n\nThe server listens on port 8000 by default.\n")
    return d


def test_indexer_command_builds_a_store(tmp_path: Path, docs: Path):
    cmd = _compose()["services"]["indexer"]["command"]
    data = tmp_path / "data"
    data.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    args = _host_args(cmd, data, docs, 0)
    if "--embedder" not in args:
        args += ["--embedder", "hash-64"]  # the image uses the bundled MiniLM; the test the fast fake
    r = subprocess.run(_knnrag() + args, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert report["files_seen"] == 2 and report["added"] == 2, report
    assert (data / "store").is_dir()


@pytest.mark.slow  # an HTTP server process and its healthcheck: 2.3 s CPU
def test_mcp_command_and_healthcheck_on_the_host(tmp_path: Path, docs: Path):
    svc = _compose()["services"]["mcp"]
    port = _free_port()
    data = tmp_path / "data"
    data.mkdir()
    args = _host_args(svc["command"], data, docs, port) + ["--embedder", "hash-64"]
    i = args.index("--host")
    args[i + 1] = "127.0.0.1"  # 0.0.0.0 in the container; loopback is enough for the check
    proc = subprocess.Popen(_knnrag() + args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        test = svc["healthcheck"]["test"]
        assert test[0] == "CMD"
        health = _host_args(test[1:], data, docs, port)
        health[0] = sys.executable if health[0] == "python" else health[0]
        ok = False
        for _ in range(120):
            if proc.poll() is not None:
                break
            if subprocess.run(health, capture_output=True, timeout=30).returncode == 0:
                ok = True
                break
            time.sleep(0.5)
        assert ok, f"healthcheck never passed; server stderr: {proc.stderr.read()[-2000:] if proc.poll() is not None else ''}"
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    # and the healthcheck fails when nothing listens (it can fail)
    assert subprocess.run(health, capture_output=True, timeout=30).returncode != 0


def test_ray_profile_head_and_worker():
    """Optional `ray` profile: a head and a worker from an image with the ray extra; never in the default set."""
    c = _compose()
    head, worker = c["services"]["ray-head"], c["services"]["ray-worker"]
    for svc in (head, worker):
        assert svc["profiles"] == ["ray"] and svc["entrypoint"] == ["ray"] and svc["command"][0] == "start"
        assert "--block" in svc["command"] and svc["environment"]["RAY_AUTH_MODE"] == "token"
        assert not str(svc.get("user", "0")).startswith("0") and any(v.startswith("stores:") for v in svc["volumes"])
    assert "--head" in head["command"] and head["build"]["args"]["KNNRAG_EXTRAS"] == "ray"
    port = next(a.split("=")[1] for a in head["command"] if a.startswith("--port="))
    addr = next(a.split("=", 1)[1] for a in worker["command"] if a.startswith("--address="))
    assert addr.endswith(f":{port}") or addr.endswith(f":-127.0.0.1:{port}}}")
    assert 'KNNRAG_EXTRAS:+[$KNNRAG_EXTRAS]' in DOCKERFILE.read_text()
