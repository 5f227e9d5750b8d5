"""Streamable HTTP binding: loopback by default, Host/Origin checks, body-size limit, bearer token.

The SDK's TransportSecuritySettings does the DNS-rebinding protection (Host and Origin must be
in the allow-lists, else 421/403) and its RequestBodyLimitMiddleware answers 413 past
`max_request_bytes`. The optional bearer token (env KNNRAG_MCP_TOKEN, read by the CLI) is
checked here in constant time on every path except /healthz, which the container
healthcheck polls.
"""
from __future__ import annotations

import hmac
import ipaddress
import logging
import re
from dataclasses import dataclass, field
from typing import Any

from retrieval.errors import InvalidInputError

log = logging.getLogger("knnrag.mcp")

REPLIES = ("auto", "sse", "json")  # how a POSTed request is answered: see mcp_server/replies.py

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


@dataclass(frozen=True)
class HttpConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    path: str = "/mcp"
    token: str | None = None
    max_request_bytes: int = 1_048_576
    allowed_hosts: tuple[str, ...] = field(default_factory=tuple)  # extra Host values, e.g. "mcp.example:8000"
    allowed_origins: tuple[str, ...] = field(default_factory=tuple)  # extra Origins, e.g. "https://app.example"
    allow_unauthenticated: bool = False  # serve a non-loopback address without a token (the user said so)
    replies: str = "auto"  # "auto": SSE only for requests that asked for progress; "sse" / "json" for all
    # sessions: at most this many, this many per client address, closed after this long without a
    # request (the SDK's defaults, 10,000 and 30 minutes, let one client lock every other out)
    max_sessions: int = 1000
    sessions_per_client: int = 100
    session_idle_seconds: float = 900.0
    # a connection that starts no request for this long is closed (uvicorn alone only times out
    # idle keep-alive connections, never one that has not sent a whole request)
    connection_idle_seconds: float = 30.0

    def __post_init__(self) -> None:
        if self.replies not in REPLIES:
            raise InvalidInputError(f"--replies {self.replies!r} is not a reply framing", f"pass one of {', '.join(REPLIES)}")
        if not 1 <= self.port <= 65535:
            raise InvalidInputError(f"port {self.port} is out of range", "pass --port between 1 and 65535")
        if not 1 <= self.sessions_per_client <= self.max_sessions:
            raise InvalidInputError(f"--sessions-per-client {self.sessions_per_client} must be from 1 to "
                                    f"--max-sessions ({self.max_sessions})", "the defaults are 100 and 1000")
        for name in ("session_idle_seconds", "connection_idle_seconds"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0 < v < float("inf")):
                raise InvalidInputError(f"--{name.replace('_', '-')} must be a positive number of seconds, got {v!r}",
                                        "e.g. 900 for sessions, 30 for connections")
        if self.max_request_bytes < 1024:
            raise InvalidInputError("--max-request-bytes must be at least 1024", "the default is 1 MiB")
        if self.token is not None and len(self.token) < 16:
            raise InvalidInputError("KNNRAG_MCP_TOKEN is shorter than 16 characters",
                                    "use a long random token, e.g. `python -c 'import secrets;print(secrets.token_urlsafe(32))'`")
        if not is_loopback(self.host) and not self.token and not self.allow_unauthenticated:
            raise InvalidInputError(
                f"refusing to serve {self.host}:{self.port} without a bearer token: anyone who can reach "
                "this address could search, index and delete",
                "set KNNRAG_MCP_TOKEN to a long random token, bind --host 127.0.0.1, or pass "
                "--allow-unauthenticated if the network in front of it is trusted")
        for h in self.allowed_hosts:
            if not _HOST_RE.match(h):
                raise InvalidInputError(f"--allowed-host {h!r} is not a host name with an optional port",
                                        "pass e.g. mcp.example or mcp.example:8443 (no wildcards, no scheme)")
        for o in self.allowed_origins:
            if not _ORIGIN_RE.match(o):
                raise InvalidInputError(f"--allowed-origin {o!r} is not an origin",
                                        "pass scheme://host[:port], e.g. https://app.example (no path, no wildcards)")


# One host name (or bracketed IPv6 literal) and an optional numeric port: nothing else, so a value
# like "127.0.0.1:80@evil.com" can never be configured, and none is matched by prefix.
_HOST_RE = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252}))(?::[0-9]{1,5})?$")
_ORIGIN_RE = re.compile(r"^https?://(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252}))(?::[0-9]{1,5})?$")


def is_loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _names(cfg: HttpConfig) -> list[str]:
    """Names this server answers to: the loopback names and the bound address (not a wildcard bind)."""
    names = list(LOOPBACK_NAMES)
    bound = f"[{cfg.host}]" if ":" in cfg.host and not cfg.host.startswith("[") else cfg.host
    if cfg.host not in ("0.0.0.0", "::", "") and bound not in names:
        names.append(bound)
    return names


def allowed_hosts(cfg: HttpConfig) -> list[str]:
    """Exact Host values (no `:*` patterns: the SDK matches those by prefix, so
    `127.0.0.1:80@evil.com` would pass `127.0.0.1:*`)."""
    names = _names(cfg)
    hosts = [f"{n}:{cfg.port}" for n in names] + (names if cfg.port == 80 else [])
    return hosts + list(cfg.allowed_hosts)


def allowed_origins(cfg: HttpConfig) -> list[str]:
    """Only the server's own origin(s) by default: a web page served from another local port
    (another dev server, a malicious page opened by a local app) may not call a token-less server."""
    return [f"http://{n}:{cfg.port}" for n in _names(cfg)] + list(cfg.allowed_origins)


def security_settings(cfg: HttpConfig):
    """Host/Origin allow-lists for the SDK's DNS-rebinding protection (421 / 403 otherwise)."""
    from mcp.server.transport_security import TransportSecuritySettings

    return TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=allowed_hosts(cfg),
                                     allowed_origins=allowed_origins(cfg))


class BearerTokenMiddleware:
    """401 unless `Authorization: Bearer <token>` matches; /healthz stays open."""

    def __init__(self, app: Any, token: str, open_paths: tuple[str, ...] = ("/healthz",)) -> None:
        self.app = app
        self.token = token.encode()
        self.open_paths = open_paths

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope.get("path") in self.open_paths:
            await self.app(scope, receive, send)
            return
        auth = b""
        for k, v in scope.get("headers") or []:
            if k == b"authorization":
                auth = v
                break
        scheme, _, given = auth.partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self.token):
            from starlette.responses import JSONResponse

            resp = JSONResponse({"error": "missing or wrong bearer token",
                                 "hint": "send `Authorization: Bearer $KNNRAG_MCP_TOKEN`"},
                                status_code=401, headers={"WWW-Authenticate": 'Bearer realm="knnrag"'})
            await resp(scope, receive, send)
            return
        await self.app(scope, receive, send)


def build_app(server: Any, cfg: HttpConfig):
    """The ASGI app: the SDK's streamable-HTTP endpoint (replies framed per `cfg.replies`), /healthz and
    the web page (`/`, its static files and its /ui/api endpoints, mcp_server/web), behind the token check."""
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from mcp_server.replies import streamable_app
    from mcp_server.web.routes import OPEN_PATHS, web_routes

    async def healthz(_request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "server": server.name})

    app = streamable_app(server, path=cfg.path, replies=cfg.replies, security=security_settings(cfg),
                         max_request_bytes=cfg.max_request_bytes, routes=[
                             Route("/healthz", healthz, methods=["GET"]),
                             *web_routes(server.knnrag_state, security_settings(cfg), cfg.max_request_bytes)],
                         sessions=(cfg.max_sessions, cfg.sessions_per_client, cfg.session_idle_seconds))
    if cfg.token:  # the page and its static files hold no data: open, so a browser can load them; /ui/api is not
        return BearerTokenMiddleware(app, cfg.token, open_paths=("/healthz", *OPEN_PATHS))
    return app


def run_http(server: Any, cfg: HttpConfig) -> None:
    import uvicorn

    if not is_loopback(cfg.host):
        log.warning("serving MCP on %s:%d, reachable beyond this machine%s", cfg.host, cfg.port,
                    "" if cfg.token else " WITHOUT a bearer token (--allow-unauthenticated)")
    app = build_app(server, cfg)
    config = uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="warning", lifespan="on",
                            timeout_graceful_shutdown=5, http=http_protocol(cfg.connection_idle_seconds))
    uvicorn.Server(config).run()


def http_protocol(idle_s: float) -> type:
    """uvicorn's HTTP protocol (httptools when installed, else h11) closing connections that start
    no request within `idle_s` (mcp_server/http_limits.guarded_protocol)."""
    from mcp_server.http_limits import guarded_protocol

    base: type
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        base = HttpToolsProtocol
    except ImportError:  # httptools is optional in uvicorn
        from uvicorn.protocols.http.h11_impl import H11Protocol

        base = H11Protocol
    return guarded_protocol(base, idle_s)
