"""`knnrag serve` over stdio, fed raw bytes: every line that is not a valid message gets a JSON-RPC
error (so the client never waits forever), and a client hanging up ends the server quietly."""
from __future__ import annotations

import json
import os
import select
import subprocess
import sys

import pytest

from mcp_server.stdio import PARSE_ERROR, _recover_id, parse_line

INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}}


def start(tmp_path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "retrieval.cli.root", "serve", "--store", str(tmp_path / "store"),
                             "--embedder", "hash-64"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def send(proc: subprocess.Popen, raw: bytes) -> None:
    assert proc.stdin is not None
    proc.stdin.write(raw + b"\n")
    proc.stdin.flush()


def reply(proc: subprocess.Popen, timeout: float = 30.0) -> dict:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "no reply: the client would wait forever"
    return json.loads(proc.stdout.readline())


def test_malformed_lines_get_json_rpc_errors(tmp_path):
    proc = start(tmp_path)
    try:
        send(proc, json.dumps(INIT).encode())
        assert reply(proc)["id"] == 1
        send(proc, json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}).encode())
        cases = [
            (b"this is not json", None, PARSE_ERROR),
            (b'{"jsonrpc": "2.0", "id": 7, "method": "ping", "params": {"x": "\\ud800"}}', 7, PARSE_ERROR),
            (b'{"jsonrpc": "2.0", "id": 8, "method": "tools/call", "params": {"name": "search", "arguments": '
             b'{"query": ' + b"[" * 300 + b"]" * 300 + b"}}}", 8, PARSE_ERROR),
            (b'{"jsonrpc": "2.0", "id": 9, "method": "ping", "params": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
             9, PARSE_ERROR),
            (b"[" * 100_000, None, PARSE_ERROR),
            (b'{"jsonrpc": "2.0", "id": "s1", "method": "ping", "params": {"x": "\xed\xa0\x80"}}', "s1", PARSE_ERROR),
            (b'{"id": 10, "hello": "world"}', 10, -32600),
            # issue 30 case 13: an id that is not a string or an integer was read as a notification
            *[(b'{"jsonrpc": "2.0", "id": ' + bad + b', "method": "ping"}', None, -32600)
              for bad in (b'{"a": 1}', b"[1]", b"1.5", b"true", b"null")],
        ]
        for raw, rid, code in cases:
            send(proc, raw)
            got = reply(proc)
            assert got["jsonrpc"] == "2.0" and got["id"] == rid and got["error"]["code"] == code, (raw[:80], got)
            assert got["error"]["message"]
        # issue 30 case 11: a request has a byte budget, and the answer says what to do
        big = json.dumps({"jsonrpc": "2.0", "id": 12, "method": "tools/call", "params": {
            "name": "add_texts", "arguments": {"texts": ["w " * 9_000_000]}}}).encode()
        send(proc, big)
        got = reply(proc)
        assert got["error"]["code"] == PARSE_ERROR and "send less per call" in got["error"]["message"], got
        send(proc, json.dumps({"jsonrpc": "2.0", "id": 11, "method": "ping"}).encode())
        assert reply(proc) == {"jsonrpc": "2.0", "id": 11, "result": {}}  # still serving
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_client_hanging_up_ends_the_server_quietly(tmp_path):
    proc = start(tmp_path)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    send(proc, json.dumps(INIT).encode())
    assert reply(proc)["id"] == 1
    proc.stdout.close()  # the client stops reading, then asks for more
    send(proc, json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}).encode())
    send(proc, json.dumps({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}).encode())
    send(proc, json.dumps({"jsonrpc": "2.0", "id": 3, "method": "tools/list"}).encode())
    proc.stdin.close()
    assert proc.wait(timeout=30) == 0
    err = proc.stderr.read().decode()
    assert "Traceback" not in err and "Pipe to stdout was broken" not in err and "BrokenPipe" not in err, err[-2000:]


@pytest.mark.parametrize("line, rid", [
    (b'{"jsonrpc":"2.0","id":42,"method":"x","params":' + b"[" * 5000, 42),
    (b'{"jsonrpc":"2.0","method":"x","params":{"id":5}', None),  # a nested "id" is not the request's
    (b'{"id":"abc",', "abc"),
    (b"garbage", None),
])
def test_request_id_is_recovered_only_from_the_top_level(line, rid):
    assert _recover_id(line) == rid


def test_parse_line_keeps_valid_messages_and_skips_blank_lines():
    assert parse_line(b"  \n") is None
    msg = parse_line(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"}).encode())
    assert type(msg).__name__ == "SessionMessage"


@pytest.mark.parametrize("bad", ['{"a": 1}', "[1, 2]", "2.5", "true", "false", "null"])
def test_a_request_with_an_id_of_the_wrong_type_gets_invalid_request(bad):
    got = parse_line(b'{"jsonrpc": "2.0", "id": ' + bad.encode() + b', "method": "tools/list"}')
    assert isinstance(got, bytes), "read as a notification: no reply, the client waits forever"
    err = json.loads(got)
    assert err["id"] is None and err["error"]["code"] == -32600 and "string or an integer" in err["error"]["message"]
    note = parse_line(b'{"jsonrpc": "2.0", "method": "notifications/initialized", "params": {"id": 1.5}}')
    assert not isinstance(note, bytes)  # a real notification (an "id" only inside params) still passes
