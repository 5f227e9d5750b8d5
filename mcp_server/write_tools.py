"""The write tools: index_paths (synchronous), start_indexing / index_status / cancel_indexing
(background jobs), add_texts and delete.

Every write holds the state's WriteLock; a call that cannot get it within LOCK_WAIT_S is told
who holds it. Indexing always runs as a job (jobs.py): `index_paths` starts one and waits for it
while forwarding its progress as MCP notifications, at most `index_wait_seconds`, then answers
with the job id to poll instead of holding the call open.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated, Any

import anyio
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult
from pydantic import Field

from mcp_server import schemas as S
from mcp_server import tool_support as T
from mcp_server.jobs import Job
from mcp_server.paths import exclude_pattern, resolve_allowed, scan_tree
from mcp_server.tool_support import DESTRUCTIVE, READ, WRITE, Collection, log
from retrieval.errors import KnnragError

Paths = Annotated[list[Annotated[str, Field(max_length=4096)]],
                  Field(description="files or folders under an --allow-root folder (relative paths start at the first "
                                    "root)", min_length=1, max_length=100)]
JobId = Annotated[str, Field(description="the job_id that start_indexing or index_paths returned", min_length=1,
                             max_length=64)]
Knn = Annotated[bool, Field(description="also keep the collection's kNN-LM token datastore in step with its chunks "
                                       "(each entry's provenance is its chunk; removed chunks are masked)", strict=True)]
MAX_TEXTS = 1000
MAX_ADD_TEXT_CHARS = 100_000
# One add_texts call's budget: it is one commit, embedded and tokenised in memory at once. 200 texts
# of 100k characters (20M) over stdio peaked at 3.2 GB of RSS (issue 30 case 11).
MAX_ADD_TOTAL_CHARS = 2_000_000


def _index_out(collection: str, paths: list[str], exclude: list[tuple[str, str]], rep: Any) -> S.IndexOut:
    d = rep.to_dict()
    skipped = [S.SkippedOut(source=str(s["source"]), reason=str(s["reason"])) for s in d.get("skipped", [])]
    skipped += [S.SkippedOut(source=src, reason=why) for src, why in exclude]
    return S.IndexOut(
        collection=collection, paths=paths, skipped=skipped[:50], skipped_total=len(skipped),
        dropped={k: int(v) for k, v in (d.get("dropped") or {}).items()},
        **{f: d[f] for f in ("files_seen", "added", "updated", "removed", "unchanged", "chunks_added",
                             "chunks_removed", "seconds") if f in d})


def _sync_knn(state: Any, store: Any, collection: str) -> dict:
    """The collection's kNN-LM token datastore kept in step with its chunks (lm.knn_index.sync),
    with the server's LM: new chunks appended, gone ones masked inside the kNN search."""
    from lm.knn_index import datastore_dir, sync

    with state.lm_lock:
        return sync(store, collection, state.lm(), datastore_dir(store.path, collection), lm_spec=state.config.model)


def _has_knn(store: Any, collection: str) -> bool:
    from lm.knn_index import datastore_dir

    return (datastore_dir(store.path, collection) / "manifest.json").is_file()


def start_index_job(state: Any, paths: list[str], collection: str, knn: bool = False) -> Job:
    """Check the paths (worker thread), then start the job; the job waits its turn for the write lock."""
    roots = state.config.allow_roots
    resolved = [resolve_allowed(p, roots) for p in paths]
    scans = [(p, scan_tree(p, roots)) for p in resolved]
    exclude = [(f"{p}/{rel}", "symlink pointing outside the allowed roots") for p, sc in scans for rel in sc.links]
    exclude += [(f"{p}/{rel}", "not a regular file (FIFO, socket or device)") for p, sc in scans for rel in sc.special]
    if exclude:
        log.warning("excluding %d symlinks out of the roots or non-regular files", len(exclude))
    patterns = tuple(exclude_pattern(rel) for _p, sc in scans for rel in (*sc.links, *sc.special))
    files = sum(sc.files for _p, sc in scans) + sum(p.is_file() for p in resolved)
    what = f"index_paths into {collection!r} ({len(resolved)} paths)"

    def run(job: Job) -> S.IndexOut:
        with state.write.held(f"{job.id}: {what}", wait_s=state.config.max_write_seconds, check=job.check_cancelled):
            state.jobs.mark_running(job)
            store = state.store()
            rep = store.index_paths([str(p) for p in resolved], collection=collection, exclude=patterns,
                                    progress=job.report, confine_to=state.config.allow_roots)
            knn_rep = _sync_knn(state, store, collection) if knn else None
        out = _index_out(collection, [str(p) for p in resolved], exclude, rep)
        return out.model_copy(update={"knn": knn_rep}) if knn_rep is not None else out

    args = {"what": what, "collection": collection, "paths": [str(p) for p in resolved], "files_hint": files,
            "max_seconds": state.config.max_write_seconds}
    return state.jobs.start(args, run)


def job_out(job: Job) -> S.JobOut:
    end = job.finished or time.time()
    p = job.progress
    return S.JobOut(job_id=job.id, state=job.state, what=job.what, collection=job.collection,
                    percent=round(p.percent, 1), stage=p.stage, done=p.done, total=p.total, message=p.message(),
                    elapsed_seconds=round(end - (job.started or job.created), 2),
                    error=T.mcp_hint(job.error) if job.error else None,
                    result=job.result if job.state == "done" else None)


async def wait_for(job: Job, ctx: Context, seconds: float) -> S.IndexOut:
    """Wait for the job, sending a progress notification whenever its percentage grows."""
    deadline = time.monotonic() + seconds
    sent = -1.0
    while True:
        ended = await event_set(job.ended, 0.25)
        pct = 100.0 if ended and job.state == "done" else job.progress.percent
        if pct > sent:
            sent = pct
            try:
                await ctx.report_progress(pct, 100.0, job.progress.message()[:200])
            except Exception:  # a client gone away must not fail the write
                log.debug("progress notification failed", exc_info=True)
        if ended:
            break
        if time.monotonic() > deadline:
            raise ToolError(f"indexing is still running after {seconds:.0f} s; it goes on in the background as job "
                            f"{job.id}. Hint: poll index_status(job_id={job.id!r}) for its progress and report")
    if job.state != "done":
        raise ToolError(T.mcp_hint(job.error or f"job {job.id} {job.state}"))
    return job.result


async def event_set(event: Any, seconds: float) -> bool:
    """Wait up to `seconds` for a threading.Event on the event loop, holding no worker thread."""
    deadline = time.monotonic() + seconds
    while not event.is_set() and time.monotonic() < deadline:
        await anyio.sleep(min(0.02, max(0.0, deadline - time.monotonic())))
    return event.is_set()


def _register_index_paths(server: Any) -> None:
    @server.tool(annotations=WRITE, title="Index files under the allowed roots")
    async def index_paths(paths: Paths, ctx: Context, collection: Collection = "default", knn: Knn = False) -> Annotated[
            CallToolResult, S.IndexOut]:
        """Add or refresh files in a collection (unchanged files are skipped by content hash); sends progress.
        For big trees or clients with short timeouts use start_indexing and poll index_status."""
        state = T.state(ctx)
        job = await T.run(lambda: start_index_job(state, paths, collection, knn))
        return T.result(await wait_for(job, ctx, state.config.index_wait_seconds))


def _register_start_indexing(server: Any) -> None:
    @server.tool(annotations=WRITE, title="Index files in the background")
    async def start_indexing(paths: Paths, ctx: Context, collection: Collection = "default", knn: Knn = False) -> Annotated[
            CallToolResult, S.JobOut]:
        """Start indexing files under the allowed roots and return at once with a job_id; poll index_status."""
        state = T.state(ctx)
        job = await T.run(lambda: start_index_job(state, paths, collection, knn))
        return T.result(job_out(job))


def _register_index_status(server: Any) -> None:
    @server.tool(annotations=READ, title="Progress of index jobs")
    async def index_status(ctx: Context, job_id: JobId | None = None) -> Annotated[CallToolResult, S.JobsOut]:
        """State, stage, percentage and (once done) the report of one index job, or of every recent one."""
        jobs = T.state(ctx).jobs
        try:
            picked = [jobs.get(job_id)] if job_id is not None else jobs.all()
        except KnnragError as e:
            raise T.tool_error(e) from e
        return T.result(S.JobsOut(jobs=[job_out(j) for j in picked]))


def _register_cancel_indexing(server: Any) -> None:
    @server.tool(annotations=WRITE, title="Cancel an index job")
    async def cancel_indexing(job_id: JobId, ctx: Context) -> Annotated[CallToolResult, S.JobOut]:
        """Stop a running index job at its next progress point; nothing of it is committed."""
        try:
            job = T.state(ctx).jobs.get(job_id)
        except KnnragError as e:
            raise T.tool_error(e) from e
        T.state(ctx).jobs.cancel(job)  # a queued job ends here and now; a running one at its next progress point
        await event_set(job.ended, 10.0)
        return T.result(job_out(job))


def _register_add_texts(server: Any) -> None:
    @server.tool(annotations=WRITE, title="Add texts")
    async def add_texts(
        texts: Annotated[list[Annotated[str, Field(min_length=1, max_length=MAX_ADD_TEXT_CHARS)]],
                         Field(description="texts to add, one chunk each", min_length=1, max_length=MAX_TEXTS)],
        ctx: Context,
        ids: Annotated[list[Annotated[str, Field(min_length=1, max_length=200)]] | None,
                       Field(description="one id per text; an existing id is replaced (default: assigned)",
                             max_length=MAX_TEXTS)] = None,
        metadatas: Annotated[list[dict[str, Any]] | None,
                             Field(description="one object per text; keys source, kind, heading, doc_id and tags "
                                               "fill the hit fields", max_length=MAX_TEXTS)] = None,
        collection: Collection = "default",
    ) -> Annotated[CallToolResult, S.AddTextsOut]:
        """Embed and add texts to a collection (created when missing), like qdrant-store or chroma add_documents.
        At most 1000 texts and 2,000,000 characters per call; each text's metadata at most 16 KiB as JSON."""
        for i, t in enumerate(texts):
            T.text(t, f"texts[{i}]", MAX_ADD_TEXT_CHARS)
        total = sum(map(len, texts))
        if total > MAX_ADD_TOTAL_CHARS:
            raise ToolError(f"texts hold {total} characters in all, over the limit of {MAX_ADD_TOTAL_CHARS} per call. "
                            "Hint: split them over several add_texts calls, or put the files under an allowed root "
                            "and call index_paths")
        for name, given in (("ids", ids), ("metadatas", metadatas)):
            if given is not None and len(given) != len(texts):
                raise ToolError(f"{len(given)} {name} for {len(texts)} texts. Hint: pass one per text, or omit {name}")
        state = T.state(ctx)

        def work() -> list[str]:
            try:
                store = state.store()
                new = store.add_texts(texts, metadatas=metadatas, ids=ids, collection=collection)
                if _has_knn(store, collection):
                    _sync_knn(state, store, collection)  # replaced text never comes back from kNN search
                return new
            finally:
                T.give_back_memory()

        new = await T.run_write(state, f"add_texts into {collection!r}", work)
        return T.result(S.AddTextsOut(collection=collection, ids=[str(i) for i in new], added=len(new)))


def _delete_sources(sources: list[str], roots: tuple[Path, ...]) -> list[str]:
    """Sources as stored: a relative path (as index_paths takes it) starts at the first allowed root."""
    out = []
    for s in sources:
        if os.path.isabs(s) or not roots:
            out.append(os.path.realpath(s) if os.path.exists(s) else s)
        elif any(ch in s for ch in "*?["):
            out.append(f"{roots[0]}/{s}")
        else:
            out.append(os.path.realpath(roots[0] / s))
    return out


def _register_delete(server: Any) -> None:
    @server.tool(annotations=DESTRUCTIVE, title="Delete sources or chunks")
    async def delete(
        ctx: Context,
        sources: Annotated[list[Annotated[str, Field(min_length=1, max_length=4096)]] | None,
                           Field(description="source paths (as in hits, or relative to the first allowed root), "
                                             "folders or globs to remove", max_length=1000)] = None,
        ids: Annotated[list[Annotated[str, Field(min_length=1, max_length=200)]] | None,
                       Field(description="chunk ids to remove", max_length=10_000)] = None,
        collection: Collection = "default",
    ) -> Annotated[CallToolResult, S.DeleteOut]:
        """Remove whole sources or single chunks from a collection. Destructive. Says so when nothing matched."""
        if not sources and not ids:
            raise ToolError("nothing to delete. Hint: pass `sources` (paths) or `ids` (chunk ids)")
        state = T.state(ctx)
        wanted = _delete_sources(sources or [], state.config.allow_roots)

        def work() -> dict:
            store = state.store()
            T.require_collection(store, collection)
            d = store.delete(sources=wanted or None, ids=ids or None, collection=collection)
            if d.get("removed_chunks") and _has_knn(store, collection):
                from lm.knn_index import prune

                prune(store, collection)  # deleted text never comes back from kNN search (no LM needed)
            return d

        d = await T.run_write(state, f"delete in {collection!r}", work)
        if not d.get("removed_chunks") and not d.get("removed_sources"):
            asked = ", ".join(repr(s) for s in [*wanted, *(ids or [])][:5])
            raise ToolError(f"nothing matched in collection {collection!r}: {asked}. Hint: sources are stored as "
                            "absolute paths, as shown in search hits (a relative path starts at the first allowed "
                            "root); ids come from search hits")
        return T.result(S.DeleteOut(collection=collection, removed_chunks=int(d.get("removed_chunks", 0)),
                                    removed_sources=int(d.get("removed_sources", 0)), sources=wanted))


REGISTRARS = (_register_index_paths, _register_start_indexing, _register_index_status, _register_cancel_indexing,
              _register_add_texts, _register_delete)


def register(server: Any) -> None:
    for reg in REGISTRARS:
        reg(server)
