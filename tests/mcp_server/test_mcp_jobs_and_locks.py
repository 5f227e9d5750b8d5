"""Long MCP writes: background index jobs with real, monotonic progress that can be polled, bounded
write-lock waits that name the holder, a time bound that stops a run uncommitted, FIFOs never
opened, and the gate that keeps readers off a collection while it is dropped.

A real DocStore with the "hash-64" embedder, the SDK's in-memory client (tests/support/mcp.py).
"""
from __future__ import annotations

import os
import threading
import time

import anyio
import pytest
from mcp import Client

from mcp_server import schemas as S
from mcp_server.jobs import StageProgress
from tests.support.mcp import call, server_for, text_of

pytestmark = pytest.mark.anyio


# --------------------------------------------------------------------------- background jobs, progress, lock bound


def test_stage_progress_is_monotonic_and_ends_below_100():
    p = StageProgress(files_hint=4)
    seen = []
    for done, total, what in [(1, 0, "scanning"), (2, 0, "scanning"), (4, 0, "scanning"), (0, 2, "chunking"),
                              (1, 2, "chunking"), (2, 2, "chunking"), (0, 100, "embedding"), (50, 100, "embedding"),
                              (100, 100, "embedding")]:
        p.update(done, total, what)
        seen.append(p.percent)
    assert seen == sorted(seen) and seen[0] > 0 and seen[-1] < 100
    assert p.message() == "embedding 100/100 chunks"
    p2 = StageProgress(files_hint=10)
    p2.update(3, 0, "scanning")
    assert p2.message() == "scanning 3/10 files"


async def test_index_progress_is_real_and_jobs_can_be_polled(env):
    bulk = env["root"] / "bulk15"
    bulk.mkdir(exist_ok=True)
    for i in range(40):
        (bulk / f"f{i}.md").write_text(f"# File {i}\n\nnote {i} about rivers and bridges.\n")
    events = []

    async def on_progress(progress, total, message):
        events.append((progress, total, message))

    async with Client(server_for(env)) as c:
        res = await c.call_tool("index_paths", {"paths": ["bulk15"], "collection": "jobs"},
                                progress_callback=on_progress)
        assert not res.is_error and res.structured_content["added"] == 40, text_of(res)
        values = [e[0] for e in events]
        assert values == sorted(set(values)) and events[-1][:2] == (100.0, 100.0)
        assert all(e[1] == 100.0 for e in events) and not any("1/0" in e[2] for e in events)
        started = await c.call_tool("start_indexing", {"paths": ["bulk15"], "collection": "jobs2"})
        job = S.JobOut.model_validate(started.structured_content)
        assert job.state in ("queued", "running", "done") and job.job_id
        for _ in range(200):
            st = (await c.call_tool("index_status", {"job_id": job.job_id})).structured_content["jobs"][0]
            if st["state"] not in ("queued", "running"):
                break
            await anyio.sleep(0.05)
        assert st["state"] == "done" and st["percent"] == 100 and st["result"]["added"] == 40, st
        everything = (await c.call_tool("index_status", {})).structured_content["jobs"]
        assert job.job_id in {j["job_id"] for j in everything}
        assert "no job" in text_of(await c.call_tool("index_status", {"job_id": "job-999"}))


async def test_a_write_waits_a_bounded_time_and_says_who_holds_the_lock(env, monkeypatch):
    import mcp_server.tool_support as T

    monkeypatch.setattr(T, "LOCK_WAIT_S", 0.3)
    state = env["state"]
    release = threading.Event()

    def hold():
        with state.write.held("job-x: index_paths into 'default'", wait_s=1):
            release.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    try:
        time.sleep(0.05)
        t0 = time.monotonic()
        res = await call(env, "add_texts", {"texts": ["x y z"], "collection": "busy"})
        assert res.is_error and "busy" in text_of(res) and "job-x" in text_of(res)
        assert time.monotonic() - t0 < 5
    finally:
        release.set()
        t.join()


async def test_a_long_index_run_stops_at_its_time_bound_uncommitted(env):
    slow = env["root"] / "slow15"
    slow.mkdir(exist_ok=True)
    for i in range(30):
        (slow / f"s{i}.md").write_text(f"# Slow {i}\n\nslow note {i}\n")
    res = await call(env, "index_paths", {"paths": ["slow15"], "collection": "bounded"}, max_write_seconds=1e-6)
    assert res.is_error and "limit on holding the write lock" in text_of(res), text_of(res)
    cols = {c["name"]: c for c in (await call(env, "list_collections")).structured_content["collections"]}
    assert cols.get("bounded", {}).get("chunks", 0) == 0


async def test_fifos_are_refused_or_skipped_never_opened(env):
    fifo_dir = env["root"] / "fifo15"
    fifo_dir.mkdir(exist_ok=True)
    (fifo_dir / "ok.md").write_text("# Ok\n\nregular file next to a pipe\n")
    if not (fifo_dir / "pipe.md").exists():
        os.mkfifo(fifo_dir / "pipe.md")
    with anyio.fail_after(60):
        res = await call(env, "index_paths", {"paths": ["fifo15/pipe.md"], "collection": "fifo"})
        assert res.is_error and "not a regular file" in text_of(res)
        res = await call(env, "index_paths", {"paths": ["fifo15"], "collection": "fifo"})
    assert not res.is_error and res.structured_content["added"] == 1, text_of(res)
    assert any(s["source"].endswith("pipe.md") and "FIFO" in s["reason"] for s in res.structured_content["skipped"])


def test_gate_keeps_readers_off_while_a_collection_is_dropped():
    from mcp_server.locks import Gate
    from retrieval.errors import StoreWriteError

    gate = Gate()
    order: list[str] = []
    reader_in = threading.Event()

    def reader():
        with gate.shared():
            reader_in.set()
            time.sleep(0.2)
            order.append("reader done")

    t = threading.Thread(target=reader)
    t.start()
    reader_in.wait(5)
    with gate.exclusive(5):  # waits for the running reader
        order.append("exclusive")
    t.join()
    assert order == ["reader done", "exclusive"]
    with gate.shared():
        with pytest.raises(StoreWriteError, match="busy"):
            with gate.exclusive(0.05):
                pass
    with gate.shared():  # a timed-out exclusive leaves the gate usable
        pass


async def test_searches_stay_correct_while_collections_are_dropped(env, indexed):
    results, errors = [], []
    async with Client(server_for(env)) as c:
        async def dropper():
            for i in range(3):
                r = await c.call_tool("add_texts", {"texts": [f"scratch text {i}"], "collection": f"tmp{i}"})
                assert not r.is_error, text_of(r)
                r = await c.call_tool("drop_collection", {"name": f"tmp{i}"})
                assert not r.is_error, text_of(r)

        async def reader():
            for _ in range(12):
                r = await c.call_tool("search", {"query": "path parameters curly braces", "k": 1})
                (errors if r.is_error else results).append(r)

        async with anyio.create_task_group() as tg:
            tg.start_soon(dropper)
            tg.start_soon(reader)
    assert not errors, [text_of(e) for e in errors]
    assert all(r.structured_content["hits"][0]["source"].endswith("routing.md") for r in results)
