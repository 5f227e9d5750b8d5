"""Parse untrusted files in a worker process with a time and a memory limit.

One worker is kept alive and reused (starting Python and PDFium costs ~0.3 s); a call that runs
past its time limit, or a worker that dies (out of memory under RLIMIT_AS, a crash in C code),
is killed and the file reported with the reason; the next call starts a fresh worker. Calls are
serialised by a lock, so one pool serves every thread of the MCP server.
"""
from __future__ import annotations

import atexit
import json
import os
import select
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

_MAX_REPLY = 1 << 30  # a reply line longer than this is not a document we want


class ParseFailed(Exception):
    """The file could not be parsed within the limits; str() is the reason shown to the user."""


class _Worker:
    def __init__(self, memory_mb: int) -> None:
        root = str(Path(__file__).resolve().parents[3])  # the folder holding the `retrieval` package
        env = dict(os.environ, OMP_NUM_THREADS="1", OMP_THREAD_LIMIT="1",
                   PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p))
        self.memory_mb = memory_mb
        self.proc = subprocess.Popen([sys.executable, "-m", "retrieval.ingest.documents.worker", str(memory_mb)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
                                     close_fds=True, start_new_session=True)
        self.buf = b""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close() if f is not None else None
            except OSError:
                pass

    def call(self, parser: str, data: bytes, options: dict, seconds: float) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        header = json.dumps({"parser": parser, "options": options, "size": len(data)}).encode() + b"\n"
        deadline = time.monotonic() + seconds
        try:
            self.proc.stdin.write(header)
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise ParseFailed(self._death()) from None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ParseFailed(f"parse took longer than the {seconds:g} s limit (raise it with --parse-timeout)")
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            part = os.read(fd, 1 << 20)
            if not part:
                raise ParseFailed(self._death())
            self.buf += part
            if len(self.buf) > _MAX_REPLY:
                raise ParseFailed("parser output too large")
        line, _, self.buf = self.buf.partition(b"\n")
        return json.loads(line)

    def _death(self) -> str:
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return "the parser stopped answering"
        if code in (-9, -6, -11, 3, 1) or code < 0:
            return (f"the parser process died (exit {code}): the file may need more than the {self.memory_mb} MB "
                    "memory limit (raise it with --parse-memory-mb) or is malformed")
        return f"the parser process exited ({code})"


class Sandbox:
    """A reusable worker behind a lock; `parse` returns the converter's dict or raises ParseFailed."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.worker: _Worker | None = None

    def parse(self, parser: str, data: bytes, options: dict, *, seconds: float, memory_mb: int) -> dict[str, Any]:
        with self.lock:
            if self.worker is None or not self.worker.alive() or self.worker.memory_mb != memory_mb:
                self.close_locked()
                self.worker = _Worker(memory_mb)
            try:
                reply = self.worker.call(parser, data, options, seconds)
            except ParseFailed:
                self.close_locked()
                raise
            except (ValueError, OSError) as exc:  # a garbled reply line
                self.close_locked()
                raise ParseFailed(f"the parser process failed: {type(exc).__name__}") from None
            if reply.get("fatal"):
                self.close_locked()
            if "error" in reply:
                err = str(reply["error"])
                if err == "MEMORY":
                    err = f"parse needed more than the {memory_mb} MB memory limit (raise it with --parse-memory-mb)"
                raise ParseFailed(err)
            return reply

    def close_locked(self) -> None:
        if self.worker is not None:
            self.worker.kill()
            self.worker = None

    def close(self) -> None:
        with self.lock:
            self.close_locked()


_SANDBOX: Sandbox | None = None
_SANDBOX_LOCK = threading.Lock()


def sandbox() -> Sandbox:
    """The process's one sandbox, started on first use and stopped at exit."""
    global _SANDBOX
    with _SANDBOX_LOCK:
        if _SANDBOX is None:
            _SANDBOX = Sandbox()
            atexit.register(_SANDBOX.close)
        return _SANDBOX
