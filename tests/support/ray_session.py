"""One in-process Ray session per test module (CI: 2 cores, no cluster), skipped when Ray is absent."""
from __future__ import annotations

import pytest


def ray_local():
    """ray.init(num_cpus=2, include_dashboard=False) through knnrag's own connect(), reused when up."""
    ray = pytest.importorskip("ray")
    from retrieval.ray_support import connect

    if ray.is_initialized() and ray.get_runtime_context().gcs_address and _is_cluster(ray):
        ray.shutdown()  # a two-node cluster module ran before: go back to an in-process session
    connect("local", num_cpus=2)
    return ray


def _is_cluster(ray) -> bool:
    return len(ray.nodes()) > 1
