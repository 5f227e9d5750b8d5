"""Streamable HTTP replies framed per request: an SSE stream only where there is something to stream.

The spec lets a server answer each POSTed request with either one JSON body or an SSE stream, and
every client must take both. The SDK fixes one framing for the whole server. An SSE reply cost the
Python SDK client and uvicorn ~2.4 ms more per `search` than a JSON body (benchmarks/results/mcp.jsonl: 1.52x
vs 1.39x the direct call), and buys nothing when the request only waits for its result.

Our tools send a request-scoped message only as a progress notification (no `ctx.log`, no sampling
or elicitation: tests/mcp_server/test_http_replies.py checks), and the SDK sends one only to a
request that carries `_meta.progressToken` (`report_progress` is a no-op without it). So
`replies="auto"` streams exactly those requests and answers every other one with one JSON body.
`"sse"` and `"json"` pin one framing for all, as the SDK does.

This leans on three SDK internals, pinned by tests/mcp_server/test_http_replies.py: the transport
reads `is_json_response_enabled` inside `_handle_post_request`, in the POST's own task; the session
manager builds each session's transport in `_admit_session`; `MCPServer._lowlevel_server` is what
the manager serves. Should an SDK release rename the first two, the overrides go unused and every
reply is an SSE stream again: slower, still correct, and the tests fail.
"""
from __future__ import annotations

import json
from contextvars import ContextVar
from typing import Any
from uuid import uuid4

from mcp.server.streamable_http import StreamableHTTPServerTransport
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

# Whether the POST being handled gets an SSE stream. Set in that request's task for the length of
# `_handle_post_request`; every other reader (the transport's message router, a GET stream) sees
# the default, True: request-scoped messages are routed to the request's stream as in SSE mode.
_stream_reply: ContextVar[bool] = ContextVar("knnrag_stream_reply", default=True)


def wants_stream(body: bytes) -> bool:
    """SSE for a request that carries a progress token, JSON otherwise.

    Not softened by the Accept header: a JSON body holds one message, and the transport's router
    (which cannot see this choice) hands such a request its progress notifications as well. A
    client that asks for progress but takes no SSE gets the SDK's 406, as from an SSE-only server;
    every client the spec allows takes both.
    """
    if b"progressToken" not in body:
        return False
    try:
        msg = json.loads(body)
    except ValueError:
        return False  # the SDK answers the parse error, as JSON either way
    params = msg.get("params") if isinstance(msg, dict) else None
    meta = params.get("_meta") if isinstance(params, dict) else None
    return isinstance(meta, dict) and meta.get("progressToken") is not None


class AutoReplyTransport(StreamableHTTPServerTransport):
    """The SDK transport, with its JSON-or-SSE switch read per request instead of per server."""

    @property  # type: ignore[override]
    def is_json_response_enabled(self) -> bool:
        return not _stream_reply.get()

    @is_json_response_enabled.setter
    def is_json_response_enabled(self, value: bool) -> None:
        if value:
            raise ValueError("AutoReplyTransport chooses per request; use the SDK transport for JSON-only replies")

    async def _handle_post_request(self, scope: Any, request: Any, receive: Any, send: Any) -> None:
        try:
            stream = wants_stream(await request.body())
        except Exception:  # the client went away mid-body: the SDK's own read reports it
            stream = True
        token = _stream_reply.set(stream)
        try:
            await super()._handle_post_request(scope, request, receive, send)
        finally:
            _stream_reply.reset(token)


class AutoReplySessionManager(StreamableHTTPSessionManager):
    """The SDK session manager, building an AutoReplyTransport for each new session."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.json_response or self.stateless:
            raise ValueError("AutoReplySessionManager is for stateful servers that choose the framing per request")

    def _admit_session(self, requestor: Any) -> StreamableHTTPServerTransport | None:
        if self.max_sessions is not None and len(self._server_instances) >= self.max_sessions:
            return None
        transport = AutoReplyTransport(mcp_session_id=uuid4().hex, is_json_response_enabled=False,
                                       event_store=self.event_store, security_settings=self.security_settings,
                                       retry_interval=self.retry_interval, idle_timeout=self.session_idle_timeout)
        session_id = transport.mcp_session_id
        assert session_id is not None
        if requestor is not None:
            self._session_owners[session_id] = requestor
        self._server_instances[session_id] = transport
        return transport


def streamable_app(server: Any, *, path: str, replies: str, security: Any, max_request_bytes: int,
                   routes: list[Any], sessions: tuple[int, int, float] = (1000, 100, 900.0)) -> Any:
    """The Starlette app `MCPServer.streamable_http_app` builds (no SDK auth: the token check wraps
    it), with the session manager that frames replies as `replies` says (one of http.REPLIES,
    checked by HttpConfig), sessions bounded as `sessions` = (max, per client, idle seconds) says,
    and POST bodies read whole first (mcp_server/http_limits.py)."""
    from mcp.server.streamable_http_manager import StreamableHTTPASGIApp
    from starlette.applications import Starlette
    from starlette.routing import Route

    from mcp_server.http_limits import BodyGuard, BoundedSessions

    base = AutoReplySessionManager if replies == "auto" else StreamableHTTPSessionManager
    cls = type(f"Bounded{base.__name__}", (BoundedSessions, base), {})
    max_sessions, per_client, idle_s = sessions
    manager = cls(app=server._lowlevel_server, json_response=replies == "json", security_settings=security,
                  max_request_body_size=max_request_bytes, max_sessions=max_sessions, session_idle_timeout=idle_s)
    manager._init_bounds(per_client)
    endpoint = BodyGuard(StreamableHTTPASGIApp(manager), max_request_bytes)
    return Starlette(routes=[Route(path, endpoint=endpoint), *routes], lifespan=lambda _app: manager.run())
