"""The HTTP binding's Host / Origin allow-lists and the refusal to serve a network address without a token.

Driven in-process through the ASGI app (Starlette's TestClient runs the SDK's session manager in
the app's lifespan), so each refusal is the real middleware answering a real request.
"""
from __future__ import annotations

import json

import pytest
from starlette.testclient import TestClient

from mcp_server.http import HttpConfig, allowed_hosts, allowed_origins, build_app
from mcp_server.server import ServerConfig, build_server
from retrieval.errors import InvalidInputError

INIT = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}})
HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


@pytest.fixture()
def client(tmp_path):
    cfg = HttpConfig(port=8123)
    app = build_app(build_server(ServerConfig(store=tmp_path / "store", embedder="hash-64")), cfg)
    with TestClient(app, base_url="http://127.0.0.1:8123") as c:
        yield c


def post(c: TestClient, **headers: str) -> int:
    return c.post("/mcp", content=INIT, headers={**HEADERS, **headers}).status_code


def test_host_allow_list_is_exact(client):
    assert post(client, Host="127.0.0.1:8123") == 200
    assert post(client, Host="localhost:8123") == 200
    for evil in ("127.0.0.1:80@evil.com", "127.0.0.1:8123@evil.com", "localhost:8123.evil.com",
                 "127.0.0.1:9999", "evil.example", "127.0.0.1"):
        assert post(client, Host=evil) == 421, evil


def test_only_the_servers_own_origin_by_default(client):
    assert post(client) == 200  # no Origin: not a browser
    assert post(client, Origin="http://127.0.0.1:8123") == 200
    assert post(client, Origin="http://localhost:8123") == 200
    for evil in ("http://localhost:3000", "http://127.0.0.1:5173", "http://evil.example", "null",
                 "http://127.0.0.1:8123@evil.com", "https://127.0.0.1:8123.evil.com"):
        assert post(client, Origin=evil) == 403, evil


def test_extra_hosts_and_origins_are_exact_values():
    cfg = HttpConfig(port=8000, allowed_hosts=("mcp.example:8443",), allowed_origins=("https://app.example",))
    assert "mcp.example:8443" in allowed_hosts(cfg) and not any("*" in h for h in allowed_hosts(cfg))
    assert allowed_origins(cfg)[-1] == "https://app.example"
    for bad in ("mcp.example:*", "127.0.0.1:80@evil.com", "http://mcp.example", "*"):
        with pytest.raises(InvalidInputError, match="--allowed-host"):
            HttpConfig(allowed_hosts=(bad,))
    for bad in ("http://localhost:*", "https://app.example/path", "app.example", "null"):
        with pytest.raises(InvalidInputError, match="--allowed-origin"):
            HttpConfig(allowed_origins=(bad,))


def test_network_address_without_token_is_refused_unless_asked_for():
    with pytest.raises(InvalidInputError, match="without a bearer token") as e:
        HttpConfig(host="0.0.0.0")
    assert "--allow-unauthenticated" in e.value.hint and "KNNRAG_MCP_TOKEN" in e.value.hint
    with pytest.raises(InvalidInputError):
        HttpConfig(host="192.168.1.5")
    HttpConfig(host="0.0.0.0", allow_unauthenticated=True)
    HttpConfig(host="0.0.0.0", token="t" * 32)
    HttpConfig(host="127.0.0.1")
    HttpConfig(host="::1")
    with pytest.raises(InvalidInputError, match="out of range"):
        HttpConfig(port=0)


def test_bound_address_is_allowed_as_host_and_origin():
    cfg = HttpConfig(host="10.0.0.7", port=9000, allow_unauthenticated=True)
    assert "10.0.0.7:9000" in allowed_hosts(cfg) and "http://10.0.0.7:9000" in allowed_origins(cfg)
    wild = HttpConfig(host="0.0.0.0", port=9000, allow_unauthenticated=True)
    assert not any(h.startswith("0.0.0.0") for h in allowed_hosts(wild))


def test_json_response_mode_answers_with_one_json_body(tmp_path):
    cfg = HttpConfig(port=8124, replies="json")
    app = build_app(build_server(ServerConfig(store=tmp_path / "store", embedder="hash-64")), cfg)
    with TestClient(app, base_url="http://127.0.0.1:8124") as c:
        r = c.post("/mcp", content=INIT, headers={**HEADERS, "Host": "127.0.0.1:8124"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    assert r.json()["result"]["serverInfo"]["name"] == "knnrag"
