"""`knnrag index --ray`: the embedding runs in an actor pool, the collection equals the plain index
(same chunks, same vectors, same hits), with the fake hash-64 embedder and once with MiniLM."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.support.docs import DOCS, write_docs
from tests.support.ray_session import ray_local

QUERIES = ["curly braces route parameters", "reverse proxy TLS", "ETag max-age cache", "worker processes"]


@pytest.fixture(scope="module")
def ray():
    return ray_local()


@pytest.fixture(scope="module")
def docs(tmp_path_factory) -> Path:
    root = write_docs(tmp_path_factory.mktemp("docs"))
    for i in range(40):  # enough chunks for several parts per worker
        (root / f"extra/n{i}.md").parent.mkdir(exist_ok=True)
        (root / f"extra/n{i}.md").write_text(f"# Note {i}\n\n" + " ".join(list(DOCS.values())[i % 3].split()[::-1]) + f" number {i}\n")
    return root


def _hits(store: Path, embedder: str | None) -> tuple[list, np.ndarray]:
    from retrieval.store.docstore import DocStore

    with DocStore.open(store, embedder=embedder, create=False, read_only=True) as st:
        hits = [[(h.id, round(h.score, 5)) for h in st.search(q, k=5)] for q in QUERIES]
        dense = [[h.id for h in st.search(q, k=5, mode="dense")] for q in QUERIES]
        return hits + dense, np.asarray([st.stats()["chunks"]])


def _index(main, capsys, docs, store, *extra) -> dict:
    assert main(["index", str(docs), "--store", str(store), "--json", "--no-progress", *extra]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.ray
def test_ray_index_equals_plain_index_hash(ray, docs, tmp_path, capsys):
    from retrieval.cli.root import main

    plain = _index(main, capsys, docs, tmp_path / "plain", "--embedder", "hash-64")
    got = _index(main, capsys, docs, tmp_path / "ray", "--embedder", "hash-64", "--ray", "local", "--workers", "2")
    assert got["chunks_added"] == plain["chunks_added"] > 40
    assert _hits(tmp_path / "ray", "hash-64") == _hits(tmp_path / "plain", "hash-64")
    (docs / "routing.md").write_text(DOCS["routing.md"] + "\nQuery strings are parsed too.\n")  # incremental, on Ray
    again = _index(main, capsys, docs, tmp_path / "ray", "--ray", "local")  # the collection's embedder, recorded
    assert again["updated"] == 1 and again["unchanged"] == plain["files_seen"] - 1
    assert main(["index", str(docs), "--store", str(tmp_path / "x"), "--json", "--ray", "local", "--workers", "0"]) == 2
    assert json.loads(capsys.readouterr().out)["type"] == "InvalidInputError"


@pytest.mark.integration
@pytest.mark.ray
def test_ray_index_equals_plain_index_minilm(ray, docs, tmp_path, capsys):
    from retrieval.cli.root import main

    plain = _index(main, capsys, docs, tmp_path / "plain")
    got = _index(main, capsys, docs, tmp_path / "ray", "--ray", "local", "--workers", "2")
    assert got["chunks_added"] == plain["chunks_added"]
    a, b = _hits(tmp_path / "ray", None), _hits(tmp_path / "plain", None)
    n = len(QUERIES)
    assert a[1] == b[1] and a[0][n:] == b[0][n:]  # same chunks, same dense hits
    assert [[i for i, _s in q] for q in a[0][:n]] == [[i for i, _s in q] for q in b[0][:n]]
    for qa, qb in zip(a[0][:n], b[0][:n]):
        np.testing.assert_allclose([s for _i, s in qa], [s for _i, s in qb], atol=1e-4)
