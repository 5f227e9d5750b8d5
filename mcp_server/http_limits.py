"""Bounded resources for the HTTP binding: bodies read whole before the SDK sees them, sessions
capped per client and overall with the least recently used idle one evicted, and connections that
never finish a request closed.

- `BodyGuard` reads a POST body itself (at most `max_bytes`): a client that disconnects mid-body
  costs one log line instead of the SDK's traceback, a JSON-RPC batch array or a message that is
  not JSON-RPC gets a one-sentence JSON-RPC error instead of a pydantic dump, and the SDK gets the
  body replayed.
- `BoundedSessions` (a session-manager mixin): 9,999 `initialize` POSTs once filled the SDK's
  10,000 sessions, and every new client got 503 for the 30 minutes of the idle timeout (issue 30
  case 9). Here a client holds at most `per_client` sessions and the server `max_sessions`; a new
  one evicts the least recently used session that has no request in flight (its client gets 404
  and initializes again, as the spec says), and only when all are busy is it refused.
- `guarded_protocol`: uvicorn times out idle keep-alive connections, but not one that never sends
  a whole request (it only arms that timer after a response), so 260 silent sockets exhausted
  `ulimit -n 256`. The guard closes a connection that starts no new request within `timeout_s`.
"""
from __future__ import annotations

import json
import logging
import time
from contextvars import ContextVar
from typing import Any

log = logging.getLogger("knnrag.mcp")

INVALID_REQUEST = -32600
_client: ContextVar[str] = ContextVar("knnrag_http_client", default="?")


def client_key(scope: dict) -> str:
    """Who a request comes from: its peer address (one local user's clients all share 127.0.0.1)."""
    peer = scope.get("client")
    return str(peer[0]) if peer else "?"


async def _json_error(send: Any, status: int, message: str, code: int = INVALID_REQUEST) -> None:
    body = json.dumps({"jsonrpc": "2.0", "id": None, "error": {"code": code, "message": message}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _problem(body: bytes) -> str | None:
    """Why a body that parses as JSON is not one JSON-RPC message, in one sentence (None: it is one)."""
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        return None  # the SDK answers a parse error itself, in one line
    if isinstance(obj, list):
        return ("Invalid Request: JSON-RPC batches (arrays) are not supported by MCP's streamable HTTP transport; "
                "POST one message per request")
    if not isinstance(obj, dict):
        return "Invalid Request: the body must be one JSON-RPC message (a JSON object)"
    if "id" in obj and (isinstance(obj["id"], bool) or not isinstance(obj["id"], (str, int))):
        return "Invalid Request: a request id must be a string or an integer"
    from mcp_types import jsonrpc_message_adapter

    try:
        jsonrpc_message_adapter.validate_python(obj, by_name=False)
    except Exception:
        return ("Invalid Request: not a JSON-RPC 2.0 request, notification or response (it needs \"jsonrpc\": "
                "\"2.0\" and a \"method\", or a \"result\" or \"error\" with an \"id\")")
    return None


class BodyGuard:
    """Reads each POST body whole before the app: see the module docstring."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                log.info("client %s disconnected after %d bytes of its request body; nothing was done",
                         client_key(scope), size)
                return
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await _json_error(send, 413, f"Payload Too Large: the request body is over {self.max_bytes} bytes; "
                                             "send less per call (split add_texts, or index files with index_paths)")
                return
            chunks.append(chunk)
            if not msg.get("more_body", False):
                break
        body = b"".join(chunks)
        problem = _problem(body)
        if problem:
            await _json_error(send, 400, problem)
            return
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class BoundedSessions:
    """Session-manager mixin (before StreamableHTTPSessionManager in the bases): see the module docstring.

    Leans on the SDK manager's `_server_instances`, `_admit_session`, `_discard_session` and the
    transport's `_requests_in_flight`, pinned by tests/mcp_server/test_http_limits.py."""

    per_client: int = 16

    def _init_bounds(self, per_client: int) -> None:
        self.per_client = per_client
        self._owner: dict[str, str] = {}  # session id -> client key
        self._last_used: dict[str, float] = {}  # session id -> time.monotonic() of its last request

    async def _handle_stateful_request(self, scope: Any, receive: Any, send: Any) -> None:
        from mcp.server.streamable_http import MCP_SESSION_ID_HEADER

        key = MCP_SESSION_ID_HEADER.lower().encode()
        sid = next((v.decode("latin-1") for k, v in scope.get("headers") or [] if k == key), None)
        client = client_key(scope)
        if sid is None:
            await self._make_room(client)
        elif sid in self._last_used:
            self._last_used[sid] = time.monotonic()
        token = _client.set(client)
        try:
            await super()._handle_stateful_request(scope, receive, send)  # type: ignore[misc]
        finally:
            _client.reset(token)

    def _admit_session(self, requestor: Any) -> Any:
        transport = super()._admit_session(requestor)  # type: ignore[misc]
        if transport is not None:
            self._owner[transport.mcp_session_id] = _client.get()
            self._last_used[transport.mcp_session_id] = time.monotonic()
        return transport

    async def _discard_session(self, session_id: str, transport: Any) -> None:
        self._owner.pop(session_id, None)
        self._last_used.pop(session_id, None)
        await super()._discard_session(session_id, transport)  # type: ignore[misc]

    def _idle_lru(self, client: str | None) -> str | None:
        sessions = self._server_instances  # type: ignore[attr-defined]
        idle = [(self._last_used.get(s, 0.0), s) for s, t in sessions.items()
                if (client is None or self._owner.get(s) == client) and not getattr(t, "_requests_in_flight", 0)]
        return min(idle)[1] if idle else None

    async def _make_room(self, client: str) -> None:
        """Evict least recently used idle sessions until a new one fits this client's and the server's cap."""
        sessions = self._server_instances  # type: ignore[attr-defined]
        cap = self.max_sessions  # type: ignore[attr-defined]
        while True:
            mine = sum(1 for s in sessions if self._owner.get(s) == client)
            if mine >= self.per_client:
                victim = self._idle_lru(client)
            elif cap is not None and len(sessions) >= cap:
                victim = self._idle_lru(None)
            else:
                return
            if victim is None:
                return  # every session is busy: the SDK answers 503 at its cap
            log.info("closing idle MCP session %s of %s (least recently used) to admit a new one",
                     victim[:8], self._owner.get(victim, "?"))
            await self._discard_session(victim, sessions[victim])


def guarded_protocol(base: type, timeout_s: float) -> type:
    """`base` (a uvicorn HTTP protocol class) closing a connection that starts no new request
    within `timeout_s` of opening, or of its previous request (checked every `timeout_s`)."""

    class Guarded(base):  # type: ignore[misc, valid-type]
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._seen_cycle: Any = None
            self._guard = self.loop.call_later(timeout_s, self._check_idle)

        def _check_idle(self) -> None:
            cycle = self.cycle
            if self.transport.is_closing():
                return
            busy = cycle is not None and not cycle.response_complete
            if not busy and cycle is self._seen_cycle:
                log.info("closing a connection from %s: no complete request in %.0f s", self.client, timeout_s)
                self.transport.close()
                return
            self._seen_cycle = cycle
            self._guard = self.loop.call_later(timeout_s, self._check_idle)

        def connection_lost(self, exc: Exception | None) -> None:
            guard = getattr(self, "_guard", None)
            if guard is not None:
                guard.cancel()
            super().connection_lost(exc)

    Guarded.__name__ = f"Guarded{base.__name__}"
    return Guarded
