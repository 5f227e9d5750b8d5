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
from dataclasses import dataclass, field
from typing import Any

from retrieval.errors import InvalidInputError

log = logging.getLogger("knnrag.mcp")

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

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise InvalidInputError(f"port {self.port} is out of range", "pass --port between 1 and 65535")
        if self.max_request_bytes < 1024:
            raise InvalidInputError("--max-request-bytes must be at least 1024", "the default is 1 MiB")
        if self.token is not None and len(self.token) < 16:
            raise InvalidInputError("KNNRAG_MCP_TOKEN is shorter than 16 characters",
                                    "use a long random token, e.g. `python -c 'import secrets;print(secrets.token_urlsafe(32))'`")


def is_loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def security_settings(cfg: HttpConfig):
    """Host/Origin allow-lists: loopback names always, the bound name, plus what the user adds."""
    from mcp.server.transport_security import TransportSecuritySettings

    names = list(LOOPBACK_NAMES)
    if cfg.host not in ("0.0.0.0", "::", "") and cfg.host not in names:
        names.append(f"[{cfg.host}]" if ":" in cfg.host else cfg.host)
    hosts = [f"{n}:*" for n in names] + names + list(cfg.allowed_hosts)
    origins = [f"http://{n}:*" for n in LOOPBACK_NAMES] + [f"http://{n}" for n in LOOPBACK_NAMES] + list(cfg.allowed_origins)
    return TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins)


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
    """The ASGI app: the SDK's streamable-HTTP app plus /healthz, behind the token check."""
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    @server.custom_route("/healthz", methods=["GET"])
    async def healthz(_request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "server": server.name})

    app = server.streamable_http_app(streamable_http_path=cfg.path, host=cfg.host,
                                     max_request_body_size=cfg.max_request_bytes,
                                     transport_security=security_settings(cfg))
    if cfg.token:
        return BearerTokenMiddleware(app, cfg.token)
    return app


def run_http(server: Any, cfg: HttpConfig) -> None:
    import uvicorn

    if not is_loopback(cfg.host):
        log.warning("serving MCP on %s:%d, reachable beyond this machine%s", cfg.host, cfg.port,
                    "" if cfg.token else " WITHOUT a bearer token (set KNNRAG_MCP_TOKEN)")
    app = build_app(server, cfg)
    config = uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="warning", lifespan="on",
                            timeout_graceful_shutdown=5)
    uvicorn.Server(config).run()
