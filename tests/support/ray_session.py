"""One in-process Ray session per test module (CI: 2 cores, no cluster), skipped when Ray is absent."""
from __future__ import annotations

import os

import pytest

# One auth mode for every Ray session of the test process: a process keeps the mode of its first ray.init
# (Ray >= 2.59 turns token auth on for local sessions), so a later two-node test cluster could not be joined.
os.environ["RAY_AUTH_MODE"] = "disabled"


def ray_local():
    """ray.init(num_cpus=2, include_dashboard=False) through knnrag's own connect(), reused when up."""
    ray = pytest.importorskip("ray")
    from retrieval.ray_support import connect

    if ray.is_initialized() and len(ray.nodes()) > 1:
        ray.shutdown()  # a two-node cluster is still connected: go back to an in-process session
    connect("local", num_cpus=2)
    return ray
