"""The on-disk index of a Ray datastore build: the parts are added on Ray actors, the driver merges.

The driver trains once (lm.datastore.ondisk.train) and puts the serialised empty index (a numpy
uint8 array from faiss.serialize_index, no pickle of ours) into the object store once; each actor
of a map_batches pool fetches it once and adds part after part (runs of the build's task shards,
read from the datastore folder every node sees) with global entry ids, writing each part to a file
named by the driver, so a retried part overwrites its half-written file. The driver then merges
the parts' lists into one .ivfdata and commits, as the one-process build does.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from lm.datastore.ondisk import AddParts, PartJob, add_part
from retrieval.errors import StoreWriteError

log = logging.getLogger(__name__)


class PartWorker:
    """The map_batches callable: one copy of the trained index per actor, one part file per row."""

    def __init__(self, trained: list, folder: str, threads: int) -> None:
        import faiss
        import ray

        faiss.omp_set_num_threads(max(1, threads))
        self.trained = np.asarray(ray.get(trained[0]))  # (bytes,) uint8: fetched from the object store once per actor
        self.folder = Path(folder)

    def __call__(self, batch: dict) -> dict:
        rows = [{k: batch[k][i] for k in batch} for i in range(len(batch["name"]))]
        added = [add_part(self.trained, self.folder, PartJob.from_row(r)) for r in rows]
        return {"name": np.asarray([str(r["name"]) for r in rows]), "added": np.asarray(added, dtype=np.int64)}


def ray_add_parts(folder: Path, workers: int, cpus_per_worker: int, progress: bool = False) -> AddParts:
    """ondisk.build's add_parts on a pool of `workers` actors (Ray already connected)."""

    def run(trained: np.ndarray, jobs: list[PartJob]) -> None:
        import ray
        import ray.data

        if not jobs:
            return
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = progress
        ref = ray.put(trained)  # once; actors get it by reference
        rows = ray.data.from_items([j.to_row() for j in jobs], override_num_blocks=len(jobs))
        ds = rows.map_batches(PartWorker, fn_constructor_kwargs={"trained": [ref], "folder": str(folder.resolve()), "threads": cpus_per_worker},
                            compute=ray.data.ActorPoolStrategy(size=max(1, min(workers, len(jobs)))),
                            num_cpus=cpus_per_worker, batch_size=1, batch_format="numpy")
        done = {str(r["name"]): int(r["added"]) for r in ds.iter_rows()}
        for j in jobs:
            if done.get(j.name) != j.hi - j.lo:
                raise StoreWriteError(f"the Ray worker adding {j.name} added {done.get(j.name)} of {j.hi - j.lo} entries",
                                      "rerun the build: the keys are committed and the index is built again from them")
        log.info("added %d index parts on %d Ray actors", len(jobs), min(workers, len(jobs)))

    return run
