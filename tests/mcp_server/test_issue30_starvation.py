"""Issue 30, starvation (case 8) and the queued-job cancel (case 14): writes queued on the write
lock hold no worker thread, so a search still answers at once; cancelling a queued job returns
"cancelled" at once. Through the SDK's in-memory client, on the shared "hash-64" docs server."""
from __future__ import annotations

import threading
import time

import anyio
import pytest
from mcp import Client

from mcp_server.server import build_server
from tests.support.mcp import text_of

pytestmark = pytest.mark.anyio


def hold_write_lock(state):
    """A long write in its own thread (as an index job holds the lock); set the event to end it."""
    go, done = threading.Event(), threading.Event()

    def hold():
        with state.write.held("a long test write", wait_s=5):
            go.set()
            done.wait(60)

    threading.Thread(target=hold, daemon=True).start()
    assert go.wait(5)
    return done


@pytest.mark.slow  # waits on real time (watchers, queued writes, generation): 2-4 s alone
async def test_queued_writes_leave_threads_for_searches(env):
    state = env["state"]
    async with Client(build_server(env["cfg"], state=state)) as c:
        assert not (await c.call_tool("add_texts", {"texts": ["warm up the store"], "collection": "starve"})).is_error
        release = hold_write_lock(state)
        results: list = []

        async def write(i: int) -> None:
            results.append(await c.call_tool("add_texts", {"texts": [f"queued text {i}"], "collection": "starve"}))

        try:
            async with anyio.create_task_group() as tg:
                for i in range(60):  # more than anyio's 40 worker threads
                    tg.start_soon(write, i)
                await anyio.sleep(0.5)  # every write is now waiting for the lock
                t0 = time.monotonic()
                with anyio.fail_after(10):
                    res = await c.call_tool("search", {"query": "queued text", "collection": "starve"})
                took = time.monotonic() - t0
                release.set()
        finally:
            release.set()
        assert not res.is_error, text_of(res)
        assert took < 3.0, f"a search behind 60 queued writes took {took:.1f} s"
        assert len(results) == 60 and not any(r.is_error for r in results), [text_of(r) for r in results if r.is_error][:2]


async def test_a_queued_write_that_waits_too_long_names_the_holder(env):
    state = env["state"]
    release = hold_write_lock(state)
    try:
        from mcp_server import tool_support as T

        with pytest.raises(Exception, match="the store is busy: a long test write"):
            await T.run_write(state, "test write", lambda: None, wait_s=0.2)
    finally:
        release.set()


async def test_cancelling_a_queued_job_returns_at_once(env):
    state = env["state"]
    release = hold_write_lock(state)
    try:
        async with Client(build_server(env["cfg"], state=state)) as c:
            started = await c.call_tool("start_indexing", {"paths": [str(env["root"])], "collection": "queued"})
            assert not started.is_error, text_of(started)
            job_id = started.structured_content["job_id"]
            assert started.structured_content["state"] == "queued"
            t0 = time.monotonic()
            res = await c.call_tool("cancel_indexing", {"job_id": job_id})
            took = time.monotonic() - t0
            assert not res.is_error and res.structured_content["state"] == "cancelled", text_of(res)
            assert took < 2.0, f"cancelling a queued job took {took:.1f} s"
            release.set()
            await anyio.sleep(0.5)  # the job's thread gives up; it never runs after the lock frees
            again = (await c.call_tool("index_status", {"job_id": job_id})).structured_content["jobs"][0]
            assert again["state"] == "cancelled" and again["result"] is None
            listed = await c.call_tool("list_collections")
            assert '"queued"' not in text_of(listed)
    finally:
        release.set()
