"""`knnrag serve --watch PATH`: the server keeps a collection in step with folders while it serves.

A background thread runs retrieval's Follower (watchfiles events -> one incremental index call per
burst) from the lifespan's start to its end. The watched paths were checked against --allow-root
when the config was built, and every read is confined to the allowed roots like `index_paths`. Each
batch takes the server's write lock (it queues behind index jobs, and they behind it), and a
collection with a kNN datastore (`index_paths knn: true`) has it synced after a batch that changed
chunks, so deleted text never comes back from kNN search either. Logs go to stderr (logger
knnrag.watch; KNNRAG_LOG=INFO shows every batch).
"""
from __future__ import annotations

import logging
import threading
from typing import Any

from mcp_server.tool_support import LOCK_WAIT_S

log = logging.getLogger("knnrag.watch")
STOP_WAIT_S = 10.0  # a stopping watcher abandons its batch at the next file; this bounds the wait for it


class ServerWatch:
    """The watcher thread of one server lifespan."""

    def __init__(self, state: Any) -> None:
        self.state = state
        self.stop_event = threading.Event()
        self.ready = threading.Event()  # set once the OS watch is in place and the catch-up is done
        self.batches = 0
        self.thread = threading.Thread(target=self._run, name="knnrag-watch", daemon=True)

    def start(self) -> ServerWatch:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(STOP_WAIT_S)
        if self.thread.is_alive():
            log.warning("watch: still finishing a batch after %.0f s; leaving it (nothing half-written is committed)",
                        STOP_WAIT_S)

    def _batch(self, b: Any) -> None:
        self.batches += 1
        (log.warning if b.error else log.info)("%s", b.line())
        rep = b.report or {}
        if rep.get("chunks_added") or rep.get("chunks_removed"):
            try:
                self._sync_knn()
            except Exception as e:  # the next batch tries again; the chunks themselves are committed
                log.warning("watch: kNN datastore sync of %r failed: %s", self.state.config.watch_collection, e)

    def _sync_knn(self) -> None:
        from mcp_server.write_tools import _has_knn, _sync_knn

        state, coll = self.state, self.state.config.watch_collection
        store = state.store()
        if _has_knn(store, coll):
            with state.write.held(f"watch: kNN datastore sync of {coll!r}", wait_s=LOCK_WAIT_S):
                _sync_knn(state, store, coll)

    def _run(self) -> None:
        from retrieval.store.watch import Follower, WatchConfig

        cfg = self.state.config
        try:
            follower = Follower(self.state.store(), [str(p) for p in cfg.watch],
                                WatchConfig(collection=cfg.watch_collection, confine_to=tuple(str(r) for r in cfg.allow_roots)),
                                guard=lambda what: self.state.write.held(what, wait_s=LOCK_WAIT_S))
            log.info("watch: following %s into collection %r", ", ".join(map(str, cfg.watch)), cfg.watch_collection)
            follower.run(self.stop_event, on_batch=self._batch, ready=self.ready)
        except Exception:  # the server goes on serving without the watch, and says why
            log.exception("watch: stopped following %s", ", ".join(map(str, cfg.watch)))
        finally:
            self.ready.set()
