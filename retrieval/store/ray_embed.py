"""Document indexing with the embedding on Ray: `knnrag index PATHS --store S --ray ADDRESS --workers N`.

Only `embed` moves: `RayEmbedder` is an Embedder whose identity (model_id, dim, max_tokens) and
token_spans come from the same model loaded here, so scanning, chunking, dedup, the commit and
the BM25 build run unchanged in this process and the collection records the same embedder.
embed() cuts the texts into contiguous parts (a multiple of the batch size, so each part batches
as one call would) and maps them over a pool of actors that each load the embedder once;
results come back in order.
"""
from __future__ import annotations

import logging
import math
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.ray_support import connect, kill_actors, positive_workers

log = logging.getLogger(__name__)
PARTS_PER_WORKER = 4  # enough parts to even out a slow worker, few enough that each stays large


class EmbedWorker:
    """A Ray actor body: one embedder, loaded once."""

    def __init__(self, spec: str, threads: int = 1) -> None:
        from threadpoolctl import threadpool_limits

        from retrieval.embed.embedder import load_embedder

        self._limit = threadpool_limits(max(1, threads))  # BLAS threads = the actor's CPUs
        try:
            import torch

            torch.set_num_threads(max(1, threads))
        except ImportError:
            pass
        self.embedder = load_embedder(spec)

    def model_id(self) -> str:
        return self.embedder.model_id

    def embed(self, texts: list[str], batch_size: int) -> np.ndarray:
        return np.asarray(self.embedder.embed(texts, batch_size=batch_size), dtype=np.float32)  # (n, D)


class RayEmbedder:
    """The local embedder's identity and tokenizer, with embed() fanned out to `workers` actors."""

    def __init__(self, local: Any, actors: list, ray: Any) -> None:
        self.local = local
        self.model_id, self.dim, self.max_tokens = local.model_id, local.dim, local.max_tokens
        self.actors = actors
        self._ray = ray
        self._finalizer = weakref.finalize(self, kill_actors, ray, list(actors))  # freed with the embedder

    @classmethod
    def start(cls, spec: str | None, *, address: str, workers: int = 1, cpus_per_worker: int = 1) -> RayEmbedder:
        from retrieval.embed.embedder import load_embedder
        from retrieval.errors import MismatchError

        workers = positive_workers(workers)
        local = load_embedder(spec)
        ray = connect(address, num_cpus=workers * cpus_per_worker if address == "local" else None)
        actor_cls = ray.remote(num_cpus=cpus_per_worker, max_restarts=3, max_task_retries=3)(EmbedWorker)
        actors = [actor_cls.remote(local.model_id if spec is None else spec, cpus_per_worker) for _ in range(workers)]
        ids = ray.get([a.model_id.remote() for a in actors])
        if any(i != local.model_id for i in ids):
            for a in actors:
                ray.kill(a)
            raise MismatchError(f"Ray workers loaded embedder {sorted(set(ids))}, this process {local.model_id}",
                                "install the same embedder files on every node (or pass a shared --embedder path)")
        return cls(local, actors, ray)

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        return self.local.token_spans(text)

    def embed_query(self, text: str) -> np.ndarray:
        return self.local.embed_query(text)

    def embed(self, texts: Sequence[str], *, batch_size: int = 64, progress=None) -> np.ndarray:
        """(N, D) float32, row i = texts[i], computed by the actor pool."""
        from ray.util import ActorPool

        if not texts:
            return np.zeros((0, self.dim), np.float32)
        per = math.ceil(len(texts) / (len(self.actors) * PARTS_PER_WORKER))
        size = max(batch_size, math.ceil(per / batch_size) * batch_size)  # (part,) whole batches only
        parts = [list(texts[a:a + size]) for a in range(0, len(texts), size)]
        out, done = [], 0
        for xb in ActorPool(self.actors).map(lambda a, p: a.embed.remote(p, batch_size), parts):
            out.append(xb)
            done += len(xb)
            if progress:
                progress(done, len(texts))
        return np.concatenate(out)  # (N, D)

    def close(self) -> None:
        self._finalizer()
        self.actors = []


def ray_embedder(store: str | Path, collection: str, spec: str | None, *, address: str, workers: int) -> RayEmbedder:
    """The embedder `knnrag index` would use (--embedder, else the collection's recorded one, else the
    default), on Ray."""
    if spec is None and (Path(store) / "store.json").exists():
        from retrieval.store.docstore import DocStore

        with DocStore.open(Path(store), create=False, read_only=True) as st:
            rec = {c["name"]: c["embedder"] for c in st.list_collections()}
        spec = rec.get(collection)
    return RayEmbedder.start(spec, address=address, workers=workers)
