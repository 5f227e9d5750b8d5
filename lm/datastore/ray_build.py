"""The datastore build on Ray: the same plan as the one-process windowed build, forwards in a pool of LM actors.

The driver does what needs the whole corpus (dedup, decontamination n-grams, the held-out slice,
the window plan: lm.datastore.build / build_steps) and cuts the plan into tasks at exactly the
one-process build's batch and shard boundaries, so every forward sees the same batch and every
key comes out bit for bit as in `--no-kv-cache` (the one-process default carries the KV cache
along long documents, whose windows must then run in order in one process: their keys differ
slightly). The tasks become a Ray Dataset; `map_batches` runs them on a
callable LM-actor class (`concurrency` actors, each loading the LM once). An actor writes its
task's key/value/provenance files under names fixed by the task, so a retried task (Ray restarts
a killed actor and re-runs its task) overwrites its half-written files. The driver commits the
finished tasks in plan order, one manifest replace per task, so entry ids are those of the
one-process build and an interrupted build resumes from the last committed task, with or without
Ray. Then the index and the calibration run as in the one-process build (finish).
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from lm.datastore.build import BuildConfig, BuildReport, finish, ondisk_options, prepare
from lm.datastore.build_steps import BuildState, DocTokens, PlannedWindow, batches, plan_stats
from lm.windows import Window
from retrieval.errors import InvalidInputError, MismatchError, StoreWriteError

log = logging.getLogger(__name__)
PREFIX = "ray"  # task files: ray-<kind>-<tag>-<task>.npy (TokenStore's own gc leaves them to us)


@dataclass(frozen=True)
class RayBuildConfig:
    address: str  # "local" or HOST:PORT of a running cluster
    workers: int = 1  # LM actors (map_batches concurrency)
    cpus_per_worker: int = 1  # num_cpus per actor = its torch threads
    crash_marker: str | None = None  # fault injection for tests: the actor holding a task exits once if this file exists

    def __post_init__(self) -> None:
        if not self.address:
            raise InvalidInputError("--ray needs an address", "pass --ray local or --ray HOST:6379")
        if self.workers < 1 or self.cpus_per_worker < 1:
            raise InvalidInputError(f"--workers and --cpus-per-worker must be >= 1 (got {self.workers}, {self.cpus_per_worker})",
                                    "pass --workers 2")


def plan_tasks(plan: Sequence[PlannedWindow], start: int, batch_size: int, shard_tokens: int, batch_tokens: int | None) -> list[list[list[int]]]:
    """The windows still to run, as tasks of batches of plan indices: the very batches of _run_plan
    (build_steps.batches), cut where it flushes a shard."""
    tasks: list[list[list[int]]] = []
    cur: list[list[int]] = []
    pending = 0
    for batch in batches(plan, start, batch_size, batch_tokens):
        cur.append(batch)
        pending += sum(int(plan[i].targets.size) for i in batch)
        if pending >= shard_tokens:
            tasks.append(cur)
            cur, pending = [], 0
    if cur:
        tasks.append(cur)
    return tasks


def encode_task(task: int, batches: list[list[int]], plan: Sequence[PlannedWindow], toks: Sequence[DocTokens]) -> dict:
    """One Dataset row: the task's window tokens, char offsets and targets as flat int64 bytes."""
    win, tok, off, tgt = [], [], [], []
    for b, batch in enumerate(batches):
        for i in batch:
            p = plan[i]
            d, w = toks[p.doc], p.window
            win.append([b, d.doc, w.begin, w.end - w.begin, p.targets.size])
            tok.append(d.ids[w.begin:w.end])
            off.append(d.offsets[w.begin:w.end])
            tgt.append(p.targets - w.begin)
    cat = lambda xs: np.concatenate(xs).astype(np.int64).tobytes()  # noqa: E731
    return {"task": task, "win": np.asarray(win, dtype=np.int64).tobytes(), "tok": cat(tok), "off": cat(off), "tgt": cat(tgt)}


def decode_task(row: dict) -> list[tuple[list[DocTokens], list[PlannedWindow], np.ndarray]]:
    """Row -> per batch (window-local DocTokens, PlannedWindows, begin of each window in its document)."""
    win = np.frombuffer(row["win"], dtype=np.int64).reshape(-1, 5)  # (w, 5) batch, doc, begin, ntok, ntgt
    tok, off, tgt = (np.frombuffer(row[k], dtype=np.int64) for k in ("tok", "off", "tgt"))
    out: list[tuple[list[DocTokens], list[PlannedWindow], np.ndarray]] = []
    a = t = 0
    for b in np.unique(win[:, 0]):
        docs, pws, begins = [], [], []
        for _b, doc, begin, ntok, ntgt in win[win[:, 0] == b]:
            ids = tok[a:a + ntok]
            docs.append(DocTokens(int(doc), ids, off[a:a + ntok], np.zeros(0, np.int64), np.zeros(ntok, bool), int(ntok)))
            pws.append(PlannedWindow(len(docs) - 1, Window(0, int(ntok), 0), tgt[t:t + ntgt], 0))
            begins.append(int(begin))
            a, t = a + int(ntok), t + int(ntgt)
        out.append((docs, pws, np.asarray(begins)))
    return out


def task_file(tag: str, kind: str, task: int) -> str:
    return f"{PREFIX}-{kind}-{tag}-{task:06d}.npy"


def write_task_shard(out: Path, tag: str, task: int, keys: np.ndarray, values: np.ndarray, prov: np.ndarray,
                     crash_marker: str | None = None) -> dict:
    """Durable key/value/prov files of one task; the manifest's shard record for them."""
    from retrieval.store.durable import write_npy

    if not np.isfinite(keys).all():
        raise StoreWriteError("keys overflow float16", "use another --key-layer (a normalised activation)")
    sh: dict = {"count": int(values.size)}
    for kind, arr in (("keys", keys.astype(np.float16)), ("values", values.astype(np.int32)), ("prov", prov.astype(np.int64))):
        name = task_file(tag, kind, task)
        write_npy(out / name, arr)
        sh[kind], sh[f"{kind}_bytes"] = name, (out / name).stat().st_size
        if crash_marker and Path(crash_marker).exists():  # a worker dying with a half-written task
            Path(crash_marker).unlink()
            os._exit(1)
    return sh


class LMWorker:
    """The map_batches callable: loads the LM once per actor, runs tasks, writes their files."""

    def __init__(self, lm_spec: str | None, key_layer: str | None, model_id: str, out: str, tag: str, threads: int,
                 crash_marker: str | None = None) -> None:
        import torch

        from lm.hooks import resolve_module
        from lm.models import load_lm

        torch.set_num_threads(max(1, threads))
        self.lm = load_lm(lm_spec, key_layer=key_layer)
        if self.lm.model_id != model_id:
            raise MismatchError(f"a Ray worker loaded {self.lm.model_id}, the driver {model_id}",
                                "install the same model files on every node (or pass a shared --model path)")
        self.module = resolve_module(self.lm.model, self.lm.key_module_path)
        self.out, self.tag, self.crash_marker = Path(out), tag, crash_marker

    def run(self, row: dict) -> tuple[dict, int, float]:
        from lm.datastore.build_steps import encode_windows, window_entries

        keys, vals, prov = [], [], []
        fwd, secs = 0, 0.0
        for docs, pws, begins in decode_task(row):
            t0 = time.perf_counter()
            H, n = encode_windows(self.lm, self.module, docs, pws)  # (B, T, D)
            secs += time.perf_counter() - t0
            fwd += n
            for b, p in enumerate(pws):
                e = window_entries(H[b], docs[p.doc], p)
                keys.append(e.keys)
                vals.append(e.values)
                prov.append(e.prov + np.asarray([0, begins[b], 0], dtype=np.int64))  # window-local -> document position
        sh = write_task_shard(self.out, self.tag, int(row["task"]), np.concatenate(keys), np.concatenate(vals),
                              np.concatenate(prov), self.crash_marker)
        return sh, fwd, secs

    def __call__(self, batch: dict) -> dict:
        rows = [{k: batch[k][i] for k in batch} for i in range(len(batch["task"]))]
        res = [self.run(r) for r in rows]
        return {"task": np.asarray([int(r["task"]) for r in rows], dtype=np.int64),
                "shard": np.asarray([json.dumps(s) for s, _f, _t in res]),
                "fwd_tokens": np.asarray([f for _s, f, _t in res], dtype=np.int64),
                "fwd_seconds": np.asarray([t for _s, _f, t in res], dtype=np.float64)}


def remove_orphans(store) -> None:
    """Task files no committed manifest names (a killed driver's, or a retried task's leftovers)."""
    live = {s[k] for s in store.manifest["shards"] for k in ("keys", "values", "prov")}
    for f in store.path.iterdir():
        if f.name.startswith(PREFIX + "-") and f.name not in live:
            f.unlink(missing_ok=True)


def _dataset(ray, rows: list[dict], rc: RayBuildConfig, kwargs: dict, progress: bool):
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = progress
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    ds = ray.data.from_items(rows, override_num_blocks=max(1, len(rows)))
    # a fixed pool of `workers` LM actors (the `concurrency=N` of older Ray); Ray Data restarts a dead actor
    # and retries its task
    return ds.map_batches(LMWorker, fn_constructor_kwargs=kwargs, compute=ray.data.ActorPoolStrategy(size=rc.workers),
                          num_cpus=rc.cpus_per_worker, batch_size=1, batch_format="numpy")


def _commit_in_order(store, results, tasks, plan, state: BuildState, config: BuildConfig, report: BuildReport, bar) -> BuildState:
    """Commit finished tasks in plan order as they arrive (entry ids = the one-process build's)."""
    done: dict[int, dict] = {}
    nxt = 0
    for row in results.iter_rows():
        done[int(row["task"])] = json.loads(str(row["shard"]))
        report.forward_tokens += int(row["fwd_tokens"])
        report.forward_seconds += float(row["fwd_seconds"])
        while nxt in done:
            sh = done.pop(nxt)
            n = sum(int(plan[i].targets.size) for b in tasks[nxt] for i in b)
            nxt += 1
            after = tasks[nxt][0][0] if nxt < len(tasks) else len(plan)
            state = replace(state, windows_done=after, entries=state.entries + n)
            store.commit(build=state.to_json(), fields={"shards": store.manifest["shards"] + [sh], "count": store.count + sh["count"]})
            bar.update(n)
        if config.deadline and time.time() > config.deadline and nxt < len(tasks):
            log.warning("build deadline reached after %d entries; rerun the same command to resume", state.entries)
            report.stopped_at_deadline = True
            break
    return state if nxt < len(tasks) else replace(state, windows_done=len(plan))


def _ondisk_index(store, rc: RayBuildConfig, config: BuildConfig, progress: bool):
    """The on-disk index with its parts (runs of the task shards) added on Ray actors, not in the driver."""
    from lm.datastore.ondisk_ray import ray_add_parts
    from retrieval.ray_support import connect

    def build() -> dict:
        connect(rc.address, num_cpus=rc.workers * rc.cpus_per_worker if rc.address == "local" else None)
        return store.build_index(add_parts=ray_add_parts(store.path, rc.workers, rc.cpus_per_worker, progress), by_shards=True,
                                 **ondisk_options(store, config))

    return build


def build_datastore_ray(lm, corpus: Sequence[str], out: str | Path, config: BuildConfig, rc: RayBuildConfig, *,
                        progress: bool = True, lm_spec: str | None = None) -> BuildReport:
    """build_datastore with the forwards on Ray actors: the same datastore, entry for entry."""
    from tqdm import tqdm

    from retrieval.ray_support import connect

    t_start = time.perf_counter()
    if config.kv_cache:
        raise InvalidInputError("--kv-cache and --ray do not combine: the cache follows each document window by window in one process",
                                "drop --kv-cache to build on Ray, or drop --ray")
    p = prepare(lm, corpus, out, config, lm_spec)
    store, plan, state, report, fp, out = p.store, p.plan, p.state, p.report, p.fingerprint, Path(out)
    remove_orphans(store)
    tasks = plan_tasks(plan, state.windows_done, config.batch_size, config.shard_tokens, config.batch_tokens)
    total = plan_stats(plan).entries
    bar = tqdm(total=total, initial=min(state.entries, total), unit="tok", unit_scale=True, file=sys.stderr,
               disable=not progress, desc="datastore (ray)", dynamic_ncols=True)
    added_before = state.entries
    t_loop = time.perf_counter()
    workers = rc.workers
    if tasks:
        ray = connect(rc.address, num_cpus=rc.workers * rc.cpus_per_worker if rc.address == "local" else None)
        tag = f"{fp}-{state.windows_done:07d}"
        kwargs = {"lm_spec": lm_spec, "key_layer": lm.key_layer, "model_id": lm.model_id, "out": str(out.resolve()),
                  "tag": tag, "threads": rc.cpus_per_worker, "crash_marker": rc.crash_marker}
        if len(tasks) < rc.workers:  # one task per shard of config.shard_tokens entries: no more actors than tasks
            log.warning("%d task(s) of <= %d entries for %d workers: starting %d", len(tasks), config.shard_tokens, rc.workers, len(tasks))
            rc = replace(rc, workers=len(tasks))
        rows = [encode_task(t, b, plan, p.toks) for t, b in enumerate(tasks)]
        state = _commit_in_order(store, _dataset(ray, rows, rc, kwargs, progress), tasks, plan, state, config, report, bar)
    else:
        state = replace(state, windows_done=len(plan))
    bar.close()
    finish(lm, store, plan, state, config, report, t_loop, added_before, t_start,
           _ondisk_index(store, replace(rc, workers=workers), config, progress) if store.ondisk else None)
    remove_orphans(store)
    return report
