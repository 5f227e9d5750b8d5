"""On-disk index in the datastore build: the CLI's --ondisk (stdout stays one JSON document), the
Ray build (parts added on the actors, not the driver) == the one-process build, and sharded search
over the mapped lists == one index."""
from __future__ import annotations

import json

import numpy as np
import pytest

from lm.datastore.build import BuildConfig, build_datastore
from lm.datastore.token_store import TokenStore
from retrieval.errors import InvalidInputError
from tests.support.ray_session import ray_local
from tests.support.tiny_lm import CORPUS, make_tiny_lm

OTHER = ("Volcanic islands form where magma rises through the crust. Basalt cools into columns, and "
         "new land appears in the sea within months; seabirds arrive first, then mosses and ferns. ") * 6
CFG = BuildConfig(window=48, stride=32, batch_size=2, shard_tokens=60, calibrate=False, index_factory="IVF4,PQ4x4",
                  index_ondisk=True, index_part_entries=100, kv_cache=False)


@pytest.fixture(scope="module")
def ray():
    return ray_local()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from lm.models import load_lm

    d = make_tiny_lm(tmp_path_factory.mktemp("llama"), "llama")
    corpus = tmp_path_factory.mktemp("corpus")
    (corpus / "a.txt").write_text(CORPUS)
    (corpus / "b.txt").write_text(OTHER)
    return d, load_lm(str(d)), [str(corpus / "a.txt"), str(corpus / "b.txt")]


def _queries(st, n=12):
    return st.keys(np.arange(0, st.count, max(1, st.count // n))[:n]).astype(np.float32) + 0.05


@pytest.mark.slow  # on-disk IVF builds through the CLI: 4.4 s CPU
def test_cli_ondisk_build_keeps_stdout_json_and_refuses_fast_scan(tiny, tmp_path, capfd):
    from retrieval.cli.root import main

    d, _lm, files = tiny
    base = ["datastore", "build", *files, "--model", str(d), "--window", "48", "--no-calibrate", "--json", "--ondisk"]
    assert main([*base, "--out", str(tmp_path / "ds"), "--index", "IVF4,PQ4x4"]) == 0
    out, _err = capfd.readouterr()
    rep = json.loads(out)  # FAISS's printf ("resizing ...") went to stderr, not into the JSON
    assert rep["index"]["storage"] == "ondisk" and rep["index"]["ntotal"] == rep["entries_total"] > 0
    assert TokenStore.open(tmp_path / "ds").info()["index_storage"] == "ondisk"
    assert main([*base, "--out", str(tmp_path / "fs"), "--index", "IVF4,PQ8x4fs"]) == 2
    err = json.loads(capfd.readouterr().out)
    assert err["type"] == "InvalidInputError" and "fs" in err["hint"]
    assert not (tmp_path / "fs" / "manifest.json").exists()  # refused before anything was written


@pytest.mark.ray
def test_ray_ondisk_build_equals_one_process_build(ray, tiny, tmp_path, monkeypatch):
    from lm.datastore import ondisk
    from lm.datastore.ray_build import RayBuildConfig, build_datastore_ray

    d, lm, files = tiny
    build_datastore(lm, files, tmp_path / "one", CFG, progress=False, lm_spec=str(d))

    def not_here(*_a, **_k):
        raise AssertionError("the Ray build added an index part in the driver")

    monkeypatch.setattr(ondisk, "add_part", not_here)  # the driver's copy only: the actors import their own
    monkeypatch.setattr(ondisk, "add_parts_here", not_here)
    build_datastore_ray(lm, files, tmp_path / "ray", CFG, RayBuildConfig("local", workers=2), progress=False, lm_spec=str(d))
    one, rb = TokenStore.open(tmp_path / "one"), TokenStore.open(tmp_path / "ray")
    assert one.count == rb.count > 200
    mo, mr = one.manifest["index"], rb.manifest["index"]
    assert mo["storage"] == mr["storage"] == "ondisk" and mo["train"] == mr["train"] and mr["parts"] > 1
    assert mr["ntotal"] == rb.count and not [f for f in rb.path.iterdir() if "-part-" in f.name]
    xq = _queries(one)
    for kw in ({"nprobe": 2}, {"nprobe": 4, "rerank": 2}):
        a, b = one.search(xq, 6, **kw), rb.search(xq, 6, **kw)
        np.testing.assert_array_equal(a.I, b.I)
        np.testing.assert_array_equal(a.D, b.D)
    with pytest.raises(InvalidInputError, match="on disk"):  # the storage is fixed at creation
        build_datastore(lm, files, tmp_path / "ray", BuildConfig(**{**CFG.__dict__, "index_ondisk": False}), progress=False)


@pytest.mark.ray
def test_sharded_search_over_ondisk_lists_equals_one_index(ray, tiny, tmp_path):
    from lm.datastore.shards import ShardedStore

    d, lm, files = tiny
    build_datastore(lm, files, tmp_path / "ds", CFG, progress=False, lm_spec=str(d))
    one = TokenStore.open(tmp_path / "ds")
    xq = _queries(one)
    sh = ShardedStore.start(TokenStore.open(tmp_path / "ds"), 3, address="local")
    try:
        assert ray.get(sh.actors[1].info.remote())["ivf"]  # the shards search the mapped lists, not Flat copies
        for kw in ({"nprobe": 2}, {"nprobe": 3, "rerank": 2}):
            ref, got = one.search(xq, 6, **kw), sh.search(xq, 6, **kw)
            np.testing.assert_array_equal(got.I, ref.I)
            np.testing.assert_array_equal(got.D, ref.D)
    finally:
        sh.close()
