"""The sandboxed parser process: `python -m retrieval.ingest.documents.worker MEMORY_MB`.

Protocol on stdin/stdout, one request at a time: a JSON header line {"parser": "module:function",
"options": {...}, "size": n} followed by n bytes of file; the reply is one JSON line, the
converter's dict or {"error": reason}. Nothing is pickled. The address space is capped with
RLIMIT_AS before any file is read; C libraries that print to stdout are pointed at stderr so
they cannot corrupt the reply channel.
"""
from __future__ import annotations

import importlib
import json
import os
import resource
import sys
from typing import Any, BinaryIO

from retrieval.ingest.documents.layout import Unreadable


def _limit_memory(mb: int) -> None:
    limit = mb * 1024 * 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard if hard != resource.RLIM_INFINITY else limit))


def _read_exact(inp: BinaryIO, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        part = inp.read(n - got)
        if not part:
            raise EOFError
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def _run(header: dict, data: bytes) -> dict[str, Any]:
    module, _, name = str(header["parser"]).partition(":")
    if not module.startswith(("retrieval.ingest.documents.", "tests.")):
        return {"error": f"unknown parser {header['parser']!r}"}
    fn = getattr(importlib.import_module(module), name)
    try:
        return fn(data, header.get("options") or {})
    except Unreadable as exc:
        return {"error": str(exc)}
    except MemoryError:
        return {"error": "MEMORY", "fatal": True}
    except RecursionError:
        return {"error": "object graph too deeply nested (recursion limit)", "fatal": True}
    except Exception as exc:  # a damaged file: any parser exception is a reason to skip it
        return {"error": f"cannot parse: {type(exc).__name__}: {exc}"[:500]}


def main(argv: list[str]) -> int:
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # printf from C libraries must not reach the reply channel
    sys.stdout = sys.stderr
    _limit_memory(int(argv[0]))
    inp = sys.stdin.buffer
    for line in iter(inp.readline, b""):
        header = json.loads(line)
        data = _read_exact(inp, int(header["size"]))
        reply = _run(header, data)
        out.write(json.dumps(reply, ensure_ascii=True).encode("ascii") + b"\n")
        if reply.get("fatal"):
            return 3  # a process that ran out of memory may be in a bad state: let the parent start a new one
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
