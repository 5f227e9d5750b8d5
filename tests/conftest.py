"""Shared test setup: offline Hugging Face, a private cache dir, and small fixtures."""
from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def minilm():
    """The real bundled embedder, loaded once per test session."""
    from retrieval.embed.embedder import load_embedder

    return load_embedder()


@pytest.fixture(scope="module")
def anyio_backend():
    """asyncio only (the SDK and the server run on it); module scope so module-scoped async fixtures work."""
    return "asyncio"


# The module fixtures that start Ray (tests/support/ray_session.py's ray_local, ray_cluster.py's
# TwoNodeCluster) are named `ray` and `cluster`. The fast lane deselects `ray`, so a test that uses
# one without the marker would start a cluster there: collection fails instead.
RAY_FIXTURES = frozenset({"ray", "cluster"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    unmarked = [item.nodeid for item in items
                if RAY_FIXTURES & set(getattr(item, "fixturenames", ())) and item.get_closest_marker("ray") is None]
    if unmarked:
        raise pytest.UsageError("these tests start Ray but are not marked @pytest.mark.ray: " + ", ".join(unmarked))
