"""The page's HTTP side: `/`, its two static files, and the JSON endpoints under /ui/api.

Every request passes the MCP endpoint's own Host/Origin checks (the SDK's TransportSecurityMiddleware
with the server's settings: 421 / 403, and a JSON Content-Type on POST); the bearer token guards all
of /ui/api (http.py leaves only the page and its static files open: they hold no data). Bodies are
read up to --max-request-bytes (413 past it) and validated with the MCP tools' bounds (models.py);
the work runs in a worker thread. Replies carry a strict Content-Security-Policy: scripts and styles
only from this server, nothing from outside.
"""
from __future__ import annotations

import json
import logging
import queue
import re
import threading
from collections.abc import Callable
from functools import cache
from typing import Any

import anyio
from pydantic import BaseModel, ValidationError

from mcp_server.web import api, explore, models
from retrieval.errors import InvalidInputError, KnnragError, NotFoundError, StoreWriteError

log = logging.getLogger("knnrag.web")

STATIC = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}
OPEN_PATHS = ("/", *(f"/ui/static/{n}" for n in STATIC))
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "Cache-Control": "no-store"}
JOB_RE = re.compile(r"^job-[0-9]{1,12}$")


class _TooLarge(Exception):
    pass


@cache
def static_bytes(name: str) -> bytes:
    from importlib.resources import files

    return files("mcp_server.web").joinpath("static", name).read_bytes()


def _error(message: str, hint: str | None, status: int):
    from starlette.responses import JSONResponse

    return JSONResponse({"error": message, "hint": hint or None}, status_code=status, headers=HEADERS)


def _status(e: KnnragError) -> int:
    if isinstance(e, NotFoundError):
        return 404
    if isinstance(e, StoreWriteError) and "busy" in e.message:
        return 409
    return 400 if isinstance(e, InvalidInputError) else 500 if not isinstance(e, StoreWriteError) else 503


async def _body(request: Any, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise _TooLarge
    parts, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        parts.append(chunk)
    return b"".join(parts)


async def _run(fn: Callable[[], Any]):
    """The work in a worker thread; library errors as {"error", "hint"} with a fitting status."""
    from starlette.responses import JSONResponse

    try:
        return JSONResponse(await anyio.to_thread.run_sync(fn), headers=HEADERS)
    except KnnragError as e:
        return _error(e.message, e.hint, _status(e))
    except (MemoryError, RecursionError) as e:
        return _error(f"the request is too large to process ({type(e).__name__})", "send less", 413)
    except Exception as e:  # a page must get an answer, never a dropped connection
        log.exception("web request failed")
        return _error(f"unexpected error: {type(e).__name__}", "see the server's log", 500)


def knnlm_for(state: Any, collection: str):
    """The server's kNN-LM with --datastore, else the collection's own datastore (`index --knn`), else the LM."""
    from mcp_server import tool_support as T

    with state.gate.shared():
        T.require_collection(state.store(), collection)
    return state.knnlm() if state.config.datastore is not None else state.ask_knnlm(collection)


def _explore(state: Any, req: models.ExploreIn) -> dict:
    knnlm = knnlm_for(state, req.collection)
    with state.lm_lock:
        return explore.explore(knnlm, req.text, req.lambda_)


def _sweep(state: Any, req: models.ExploreIn) -> dict:
    knnlm = knnlm_for(state, req.collection)
    with state.lm_lock:
        return explore.sweep(knnlm, req.text)


def _token(state: Any, req: models.TokenIn) -> dict:
    knnlm = knnlm_for(state, req.collection)

    def resolve(ids: list[str]) -> dict:
        with state.gate.shared():
            return {str(h.id): h for h in state.store().get(ids, collection=req.collection)}

    with state.lm_lock:
        return explore.token_detail(knnlm, req.text, req.position, req.lambda_, resolve)


# path -> (request model, work(state, request) -> dict)
POSTS: dict[str, tuple[type[BaseModel], Callable[[Any, Any], dict]]] = {
    "search": (models.SearchIn, api.search),
    "context": (models.ContextIn, api.context),
    "ask": (models.AskIn, api.ask),
    "verify": (models.CollectionIn, lambda s, r: api.verify(s, r.collection)),
    "explore": (models.ExploreIn, _explore),
    "token": (models.TokenIn, _token),
    "sweep": (models.ExploreIn, _sweep),
    "index": (models.IndexIn, api.start_index),
}


class _Endpoints:
    """The page's endpoints over one ServerState, with the MCP endpoint's guard and body limit."""

    def __init__(self, state: Any, security: Any, max_request_bytes: int) -> None:
        from mcp.server.transport_security import TransportSecurityMiddleware

        self.state, self.limit = state, max_request_bytes
        self.guard = TransportSecurityMiddleware(security)

    async def parse(self, request: Any, model: type[BaseModel], name: str):
        from mcp_server.validation import describe

        bad = await self.guard.validate_request(request, is_post=True)
        if bad is not None:
            return None, bad
        try:
            return model.model_validate_json(await _body(request, self.limit)), None
        except _TooLarge:
            return None, _error(f"the request is over the limit of {self.limit} bytes",
                                "send less text (the server's --max-request-bytes)", 413)
        except ValidationError as e:
            return None, _error(describe(name, e.errors(include_url=False)), None, 400)

    def post(self, name: str, model: type[BaseModel], work: Callable[[Any, Any], dict]):
        async def endpoint(request: Any):
            req, bad = await self.parse(request, model, name)
            return bad if bad is not None else await _run(lambda: work(self.state, req))
        return endpoint

    def get(self, work: Callable[[Any], Any]):
        async def endpoint(request: Any):
            bad = await self.guard.validate_request(request, is_post=False)
            return bad if bad is not None else await _run(lambda: work(request))
        return endpoint

    def job(self, request: Any) -> dict:
        job_id = request.path_params["job_id"]
        if not JOB_RE.match(job_id):
            raise InvalidInputError(f"{job_id[:40]!r} is not a job id", "use the job_id the index request returned")
        return api.job(self.state, job_id)

    async def page(self, request: Any):
        from starlette.responses import Response

        bad = await self.guard.validate_request(request, is_post=False)
        if bad is not None:
            return bad
        name = request.path_params.get("name", "index.html")
        if name not in (*STATIC, "index.html"):
            return _error(f"no file {name[:60]!r}", None, 404)
        return Response(static_bytes(name), media_type=STATIC.get(name, "text/html; charset=utf-8"), headers=HEADERS)

    async def generate(self, request: Any):
        from starlette.responses import StreamingResponse

        req, bad = await self.parse(request, models.GenerateIn, "generate")
        if bad is not None:
            return bad
        try:
            knnlm = await anyio.to_thread.run_sync(lambda: knnlm_for(self.state, req.collection))
        except KnnragError as e:
            return _error(e.message, e.hint, _status(e))
        return StreamingResponse(_stream(self.state, knnlm, req), media_type="application/x-ndjson", headers=HEADERS)


def web_routes(state: Any, security: Any, max_request_bytes: int) -> list:
    """The page's routes over `state` (the MCP server's ServerState)."""
    from starlette.routing import Route

    e = _Endpoints(state, security, max_request_bytes)
    routes = [Route("/", e.page, methods=["GET"]), Route("/ui/static/{name}", e.page, methods=["GET"]),
              Route("/ui/api/info", e.get(lambda _r: api.info(state)), methods=["GET"]),
              Route("/ui/api/collections", e.get(lambda _r: api.collections(state)), methods=["GET"]),
              Route("/ui/api/jobs/{job_id}", e.get(e.job), methods=["GET"]),
              Route("/ui/api/generate", e.generate, methods=["POST"])]
    routes += [Route(f"/ui/api/{name}", e.post(name, m, w), methods=["POST"]) for name, (m, w) in POSTS.items()]
    return routes


async def _stream(state: Any, knnlm: Any, req: models.GenerateIn):
    """NDJSON events from a generation thread; closing the page sets `stop`, which ends the loop."""
    from mcp_server.web.generation import steps

    stop, events = threading.Event(), queue.Queue()  # type: ignore[var-annotated]

    def work() -> None:
        try:
            with state.lm_lock:
                for ev in steps(knnlm, req.prompt, max_new_tokens=req.max_new_tokens, lambda_=req.lambda_,
                                chat=req.chat, stop=stop):
                    events.put(ev)
        except KnnragError as e:
            events.put({"type": "error", "error": e.message, "hint": e.hint})
        except Exception as e:  # the page must see the failure, the log the traceback
            log.exception("generation failed")
            events.put({"type": "error", "error": f"unexpected error: {type(e).__name__}", "hint": "see the server's log"})
        finally:
            events.put(None)

    threading.Thread(target=work, name="knnrag-web-generate", daemon=True).start()
    try:
        while (ev := await anyio.to_thread.run_sync(events.get)) is not None:
            yield (json.dumps(ev) + "\n").encode()
    finally:
        stop.set()
