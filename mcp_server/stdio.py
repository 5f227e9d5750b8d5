"""Stdio transport for `knnrag serve`: newline-delimited JSON-RPC on stdin/stdout.

Why not the SDK's `stdio_server()`:
- it drops a line it cannot parse (bad JSON, a lone surrogate, nesting past pydantic's
  200 levels) without a reply, so the client waits for its answer forever. Here such a line
  gets a JSON-RPC error: -32700 (parse error) or -32600 (valid JSON, not a JSON-RPC
  message), with the request's id when it can be recovered, else `"id": null`;
- a client that closes its end makes its writer raise BrokenPipeError inside a task group,
  which ends the process with a traceback on stderr. Here the session just ends;
- it hops to a worker thread for every line read and twice (write, flush) for every reply.
  Here pipes are read and written by the event loop (asyncio pipe transports); a regular
  file or anything else that asyncio cannot poll falls back to a reader thread. This did not
  show in latency: benchmarks/bench_mcp.py measured both transports within noise of each other
  (0.97x vs 0.92x of the direct call, same run, loaded 2-core machine).

While serving, fd 0 reads /dev/null and fd 1 points at stderr (as the SDK does), so a stray
`print` or a child process cannot corrupt the protocol stream; both are restored on exit.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import mcp_types as types
from anyio.streams.memory import MemoryObjectSendStream
from mcp.shared.message import SessionMessage

log = logging.getLogger("knnrag.mcp")

# A request's byte budget over stdio: the largest a tool takes is add_texts' 2,000,000 characters,
# at most 12 MB as JSON (a \uXXXX escape is 6 bytes a character); the line buffer never grows past it.
MAX_LINE_BYTES = 16 * 1024 * 1024
PARSE_ERROR, INVALID_REQUEST = -32700, -32600
OVERLONG = b"\x00"  # stands for a line past MAX_LINE_BYTES (a NUL byte is never valid JSON)
# the top-level "id" of a message, looked for only before its first nested value
_ID = re.compile(rb'"id"\s*:\s*(-?[0-9]{1,18}|"(?:[^"\\]|\\.){0,200}")')


def _recover_id(line: bytes) -> int | str | None:
    """The request id of a line that could not be parsed, when it can be read without parsing."""
    try:
        obj = json.loads(line)  # accepts lone surrogates and nesting past pydantic's limit
    except (ValueError, RecursionError):
        obj = None
    if isinstance(obj, dict):
        rid = obj.get("id")
        return rid if isinstance(rid, (str, int)) and not isinstance(rid, bool) else None
    body = line.lstrip()[1:] if line.lstrip().startswith(b"{") else b""
    cut = min([i for i in (body.find(b"{"), body.find(b"[")) if i >= 0], default=len(body))
    m = _ID.search(body[:cut])
    if not m:
        return None
    try:
        rid = json.loads(m.group(1))
    except ValueError:
        return None
    return rid if isinstance(rid, (str, int)) else None


def error_reply(line: bytes, exc: Exception) -> bytes:
    """The JSON-RPC error line answering a line that is not a valid message."""
    first = exc.errors()[0] if hasattr(exc, "errors") and exc.errors() else {}  # pydantic ValidationError
    parse = first.get("type") == "json_invalid" or not first
    if line is OVERLONG:
        code, message = PARSE_ERROR, (f"Parse error: message longer than {MAX_LINE_BYTES} bytes; send less per "
                                      "call (add_texts takes at most 2,000,000 characters; index files with index_paths)")
    elif parse:
        why = str(first.get("msg") or exc).removeprefix("Invalid JSON: ")
        code, message = PARSE_ERROR, f"Parse error: {why}"
    else:
        code, message = INVALID_REQUEST, "Invalid Request: not a JSON-RPC 2.0 request, notification or response"
    reply = {"jsonrpc": "2.0", "id": _recover_id(line), "error": {"code": code, "message": message[:500]}}
    return json.dumps(reply).encode() + b"\n"


def bad_id_reply(line: bytes, message: Any) -> bytes | None:
    """The -32600 reply for a "request" whose id is not a string or an integer.

    The SDK's model ignores such an id and reads the line as a notification, which gets no reply,
    so the client would wait forever. Only lines read as notifications that mention "id" are
    parsed again, so ordinary requests pay nothing.
    """
    if not isinstance(message, types.JSONRPCNotification) or b'"id"' not in line:
        return None
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict) or "id" not in obj:
        return None
    rid = obj["id"]
    if isinstance(rid, (str, int)) and not isinstance(rid, bool):
        return None
    kind = "null" if rid is None else type(rid).__name__.replace("dict", "object").replace("list", "array")
    reply = {"jsonrpc": "2.0", "id": None, "error": {
        "code": INVALID_REQUEST, "message": f"Invalid Request: the id is {kind}; a request id must be a string or an "
                                            "integer (a notification has no id member at all)"}}
    return json.dumps(reply).encode() + b"\n"


def parse_line(line: bytes) -> SessionMessage | bytes | None:
    """A message, an error line to send back, or None for a blank line."""
    if not line.strip():
        return None
    try:
        message = types.jsonrpc_message_adapter.validate_json(line, by_name=False)
    except Exception as e:  # every malformed line gets an answer, never an exception
        return error_reply(line, e)
    return bad_id_reply(line, message) or SessionMessage(message)


@contextlib.contextmanager
def _claim_std_fds() -> Any:
    """Private duplicates of fds 0 and 1 for the wire; fd 0 -> /dev/null, fd 1 -> stderr meanwhile."""
    wire_in, wire_out = os.dup(0), os.dup(1)
    saved_in, saved_out = os.dup(0), os.dup(1)
    # asyncio's pipe transports make the (shared) file descriptions non-blocking: put them back,
    # or a terminal handed back to the shell would answer EAGAIN
    blocking = {fd: os.get_blocking(fd) for fd in (wire_in, wire_out)}
    devnull = os.open(os.devnull, os.O_RDONLY)
    try:
        os.dup2(devnull, 0)
        os.dup2(2, 1)
        yield wire_in, wire_out
    finally:
        for fd, was in blocking.items():
            with contextlib.suppress(OSError):
                os.set_blocking(fd, was)
        os.close(devnull)
        for saved, fd in ((saved_in, 0), (saved_out, 1)):
            with contextlib.suppress(OSError):
                os.dup2(saved, fd)
            os.close(saved)
        for fd in (wire_in, wire_out):
            with contextlib.suppress(OSError):
                os.close(fd)


async def _lines_from_pipe(fd: int) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=MAX_LINE_BYTES)
    pipe = os.fdopen(fd, "rb", buffering=0, closefd=False)
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
    inside = False  # within the rest of an overlong line, whose start was answered already
    try:
        while True:
            try:
                line = await reader.readline()
            except ValueError as e:  # a line past MAX_LINE_BYTES: answered once, then the stream goes on
                if not inside:
                    yield OVERLONG
                inside = "not found" in str(e)  # asyncio dropped the buffer before the line's end
                continue
            if not line:
                return
            if inside:  # the overlong line's tail
                inside = False
                continue
            yield line
    finally:
        transport.close()


async def _lines_from_thread(fd: int) -> AsyncIterator[bytes]:
    f = os.fdopen(fd, "rb", closefd=False)
    inside = False  # within an overlong line, answered already
    while True:
        line = await anyio.to_thread.run_sync(f.readline, MAX_LINE_BYTES)
        if not line:
            return
        ended = line.endswith(b"\n")
        if inside or (len(line) >= MAX_LINE_BYTES and not ended):
            if not inside:
                yield OVERLONG
            inside = not ended
            continue
        yield line


async def _writer_for(fd: int) -> tuple[Callable[[bytes], Any], Callable[[], None]]:
    """An async `write(data)` for fd (event-loop pipe transport, or a thread for anything else)."""
    loop = asyncio.get_running_loop()
    try:
        transport, protocol = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin, os.fdopen(fd, "wb", buffering=0, closefd=False))
    except (ValueError, OSError):  # a regular file: not pollable
        f = os.fdopen(fd, "wb", buffering=0, closefd=False)
        return (lambda data: anyio.to_thread.run_sync(f.write, data)), f.close
    writer = asyncio.StreamWriter(transport, protocol, None, loop)

    async def write(data: bytes) -> None:
        if transport.is_closing():
            raise BrokenPipeError("stdout closed")
        writer.write(data)
        await writer.drain()

    return write, transport.close


def _pollable(fd: int) -> bool:
    import stat

    mode = os.fstat(fd).st_mode
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)


class _EncodingStream:
    """The SDK's write stream: each SessionMessage becomes one JSON line on the shared byte stream."""

    def __init__(self, inner: MemoryObjectSendStream[bytes]) -> None:
        self._inner = inner

    async def send(self, item: SessionMessage, /) -> None:
        await self._inner.send(item.message.model_dump_json(by_alias=True, exclude_unset=True).encode() + b"\n")

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def __aenter__(self) -> _EncodingStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def _pump_in(fd: int, to_server: MemoryObjectSendStream[Any], replies: MemoryObjectSendStream[bytes]) -> None:
    lines = _lines_from_pipe(fd) if _pollable(fd) else _lines_from_thread(fd)
    async with to_server, replies:
        async for line in lines:
            item = parse_line(line)
            if isinstance(item, SessionMessage):
                await to_server.send(item)
            elif item is not None:
                log.info("answered an unparsable stdin line (%d bytes) with a JSON-RPC error", len(line))
                await replies.send(item)


async def serve_stdio(server: Any, *, fds: tuple[int, int] | None = None) -> None:
    """Serve one MCP session over stdin/stdout (or the given (read_fd, write_fd)) until EOF or hang-up."""
    with contextlib.ExitStack() as stack:
        in_fd, out_fd = fds if fds is not None else stack.enter_context(_claim_std_fds())
        write, close_out = await _writer_for(out_fd)
        to_server, from_client = anyio.create_memory_object_stream[Any](0)
        out_send, out_recv = anyio.create_memory_object_stream[bytes](16)
        to_client = _EncodingStream(out_send.clone())

        async def pump_out() -> None:
            try:
                async with out_recv:
                    async for data in out_recv:
                        await write(data)
            except OSError as e:  # BrokenPipeError, ConnectionResetError: the client went away
                log.info("the client closed its end of stdout (%s); ending the session", type(e).__name__)
                tg.cancel_scope.cancel()

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(pump_out)
                tg.start_soon(_pump_in, in_fd, to_server, out_send)
                low = server._lowlevel_server
                await low.run(from_client, to_client, low.create_initialization_options())
                await to_client.aclose()  # pump_out ends once the replies sent so far are written
        finally:
            close_out()
