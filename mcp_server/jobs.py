"""Background index jobs with real progress, polled by `index_status` (like claude-context's
get_indexing_status): clients whose tool calls time out after a minute can still index a big tree.

A job runs in its own thread. DocStore reports progress per stage with counters that restart
(scanning files, chunking changed files, embedding chunks); `StageProgress` lays the stages on one
0-100 scale with fixed weights, so `percent` only grows and `progress == total` only at the end.
Scanning has no total of its own: the server counts the files while it checks the tree for
escaping symlinks, and that count is the scanning total. A job also stops at its next progress
point once cancelled or past its time bound, which bounds how long it holds the write lock; the
store keeps its last committed state.
"""
from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from retrieval.errors import InvalidInputError, KnnragError

log = logging.getLogger("knnrag.mcp")

# share of the 0-100 scale per stage (the commit after embedding is the last 5)
STAGES = {"scanning": (0.0, 10.0), "chunking": (10.0, 30.0), "embedding": (30.0, 95.0)}
KEEP_FINISHED = 50


class JobStopped(KnnragError):
    """Raised from the progress callback to stop a write: nothing is committed."""


@dataclass
class StageProgress:
    """DocStore's (done, total, stage) callbacks -> one monotonic percentage and a readable message."""

    files_hint: int = 0  # files counted before the scan: the scanning stage's total
    percent: float = 0.0
    stage: str = "queued"
    done: int = 0
    total: int | None = None

    def update(self, done: int, total: int, what: str) -> None:
        lo, hi = STAGES.get(what, (self.percent, self.percent))
        if what == "scanning" and not total:
            total = max(self.files_hint, done)
        frac = min(1.0, done / total) if total else 0.0
        self.percent = max(self.percent, lo + (hi - lo) * frac)
        self.stage, self.done, self.total = what, done, total or None

    def message(self) -> str:
        unit = "chunks" if self.stage == "embedding" else "files"
        count = f"{self.done}/{self.total}" if self.total else f"{self.done}"
        return f"{self.stage} {count} {unit}" if self.stage in STAGES else self.stage


@dataclass
class Job:
    id: str
    what: str  # what the job does, e.g. "index_paths into 'default'"
    collection: str
    paths: list[str]
    progress: StageProgress
    max_seconds: float
    state: str = "queued"  # queued | running | done | failed | cancelled
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    result: Any = None
    error: str | None = None
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    ended: threading.Event = field(default_factory=threading.Event)
    _t0: float = 0.0  # time.monotonic() when it started running

    def report(self, done: int, total: int, what: str) -> None:
        """DocStore's progress callback (job thread): record, then stop if asked to."""
        self.progress.update(done, total, what)
        if self.cancel_requested.is_set():
            raise JobStopped(f"job {self.id} was cancelled", "nothing was committed; start it again when needed")
        if self.started is not None and time.monotonic() - self._t0 > self.max_seconds:
            raise JobStopped(f"job {self.id} ran past the {self.max_seconds:.0f} s limit on holding the write lock",
                             "index fewer files per call, or raise the limit with --max-write-seconds")


    def check_cancelled(self) -> None:
        """Raise JobStopped once cancelled (polled while the job waits for the write lock)."""
        if self.cancel_requested.is_set():
            raise JobStopped(f"job {self.id} was cancelled before it started",
                             "nothing was written; start it again when needed")


class JobRegistry:
    """The server's jobs, newest last; finished ones are kept (up to KEEP_FINISHED) for polling."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    def start(self, job_args: dict, run: Callable[[Job], Any]) -> Job:
        job = Job(id=f"job-{next(self._ids)}", progress=StageProgress(files_hint=job_args.pop("files_hint", 0)),
                  **job_args)
        with self._lock:
            self._jobs[job.id] = job
            finished = [j for j in self._jobs.values() if j.ended.is_set()]
            for old in finished[:-KEEP_FINISHED]:
                del self._jobs[old.id]
        threading.Thread(target=self._run, args=(job, run), name=f"knnrag-{job.id}", daemon=True).start()
        return job

    def _run(self, job: Job, run: Callable[[Job], Any]) -> None:
        try:
            job.result = run(job)
            job.state = "done"
            job.progress.percent, job.progress.stage = 100.0, "done"
        except JobStopped as e:
            if job.state != "cancelled":  # cancel() already said so for a queued job
                job.state, job.error = "cancelled", f"{e.message}. Hint: {e.hint}"
        except KnnragError as e:
            job.state, job.error = "failed", f"{e.message}. Hint: {e.hint}" if e.hint else e.message
        except Exception as e:  # a job thread must record every failure, never die silently
            log.exception("job %s failed", job.id)
            job.state, job.error = "failed", f"unexpected error: {type(e).__name__}: {str(e)[:300]}"
        finally:
            job.finished = job.finished or time.time()
            job.ended.set()

    def mark_running(self, job: Job) -> None:
        with self._lock:  # against cancel(): a job is either cancelled while queued or running, never both
            job.check_cancelled()
            job.state, job.started, job._t0 = "running", time.time(), time.monotonic()
            job.progress.stage = "scanning"

    def cancel(self, job: Job) -> None:
        """Ask the job to stop; a queued one is cancelled at once (its thread gives up its wait for
        the write lock within 0.1 s), a running one stops at its next progress point."""
        with self._lock:
            job.cancel_requested.set()
            if job.state == "queued":
                job.state = "cancelled"
                job.error = f"job {job.id} was cancelled before it started. Hint: nothing was written"
                job.finished = time.time()
                job.progress.stage = "cancelled"
                job.ended.set()

    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id)
            known = list(self._jobs)
        if job is None:
            raise InvalidInputError(f"no job {job_id!r}",
                                    ("known jobs: " + ", ".join(known[-10:])) if known else "no job has been started")
        return job

    def all(self) -> list[Job]:
        with self._lock:
            return list(self._jobs.values())
