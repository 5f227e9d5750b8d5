"""Issue 30 over real HTTP (uvicorn on loopback, a subprocess): sessions are capped per client with
the least recently used idle one evicted instead of 503 (case 9), silent connections are closed
(case 10), and a batch array, a wrong id type or a body cut short get one clean answer (case 14)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("http30")
    port = _free_port()
    log = open(base / "stderr.log", "w+b")
    proc = subprocess.Popen(
        [sys.executable, "-m", "retrieval.cli.root", "serve", "--transport", "http", "--port", str(port),
         "--store", str(base / "store"), "--embedder", "hash-64", "--max-sessions", "20", "--sessions-per-client", "5",
         "--connection-idle-seconds", "1"],
        stdout=subprocess.DEVNULL, stderr=log, env={**os.environ, "HF_HUB_OFFLINE": "1", "KNNRAG_LOG": "INFO"})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert proc.poll() is None, (base / "stderr.log").read_text()
            time.sleep(0.2)
    yield {"port": port, "log": base / "stderr.log"}
    proc.terminate()
    proc.wait(timeout=20)
    log.close()


def request(port: int, body: bytes, session: str | None = None, cut: int | None = None) -> tuple[int, dict, bytes]:
    """One raw POST /mcp on a fresh connection: (status, headers, body)."""
    head = (f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Accept: application/json, text/event-stream\r\nContent-Length: {len(body)}\r\nConnection: close\r\n"
            + (f"Mcp-Session-Id: {session}\r\nMcp-Protocol-Version: 2025-06-18\r\n" if session else "") + "\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        if cut is not None:
            s.sendall(head.encode() + body[:cut])
            time.sleep(0.2)
            return 0, {}, b""
        s.sendall(head.encode() + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    top, _, rest = data.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, rest


def test_a_batch_array_gets_one_clean_json_rpc_error(server):
    status, _, body = request(server["port"], json.dumps([INIT, INIT]).encode())
    err = json.loads(body)
    assert status == 400 and err["id"] is None and err["error"]["code"] == -32600, body
    assert "batches" in err["error"]["message"] and "pydantic" not in body.decode()
    for bad in (b'{"jsonrpc": "2.0", "id": 1.5, "method": "ping"}', b'{"hello": "world"}', b'"just a string"'):
        status, _, body = request(server["port"], bad)
        err = json.loads(body)
        assert status == 400 and err["error"]["code"] == -32600 and "pydantic" not in body.decode(), body


def test_a_client_gone_mid_body_costs_one_log_line(server):
    request(server["port"], json.dumps(INIT).encode() + b" " * 5000, cut=40)
    time.sleep(1.0)
    log = server["log"].read_text()
    assert "disconnected after" in log and "Traceback" not in log, log[-3000:]


def test_many_initializes_evict_idle_sessions_instead_of_locking_clients_out(server):
    ids = []
    for _ in range(30):  # 6x the per-client cap
        status, headers, body = request(server["port"], json.dumps(INIT).encode())
        assert status == 200, (status, body[:300])
        ids.append(headers["mcp-session-id"])
    ping = json.dumps({"jsonrpc": "2.0", "id": 2, "method": "ping"}).encode()
    assert request(server["port"], ping, session=ids[-1])[0] == 200  # the newest session works
    assert request(server["port"], ping, session=ids[0])[0] == 404  # the stalest was closed: re-initialize


def test_silent_and_half_sent_connections_are_closed(server):
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", server["port"]), timeout=10) as silent, \
            socket.create_connection(("127.0.0.1", server["port"]), timeout=10) as half:
        half.sendall(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the rest
        assert silent.recv(1) == b"" and half.recv(1) == b""  # closed by the server, not by our timeout
    assert time.monotonic() - t0 < 8
