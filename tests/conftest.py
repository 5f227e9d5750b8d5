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
