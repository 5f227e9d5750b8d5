"""On a real two-node Ray cluster (two `ray start` on this machine): shard actors land on both nodes
and search like one index; a datastore built by workers on both nodes equals the one-process one."""
from __future__ import annotations

import numpy as np
import pytest

from lm.datastore.build import BuildConfig, build_datastore
from lm.datastore.token_store import TokenStore
from tests.support.ray_cluster import TwoNodeCluster
from tests.support.ray_session import ray_local  # noqa: F401 - sets the test processes' Ray auth mode
from tests.support.tiny_lm import CORPUS, make_tiny_lm

ray = pytest.importorskip("ray")
pytestmark = [pytest.mark.ray, pytest.mark.slow]  # two `ray start` processes per module


@pytest.fixture(scope="module")
def cluster():
    from retrieval.ray_support import connect

    if ray.is_initialized():
        ray.shutdown()
    c = TwoNodeCluster(cpus_per_node=1).start()
    try:
        connect(c.address)
        yield c
    finally:
        ray.shutdown()
        c.stop()
    assert not c.pids()


def test_cluster_has_two_nodes(cluster):
    alive = [n for n in ray.nodes() if n["Alive"]]
    assert len(alive) == 2 and ray.cluster_resources()["CPU"] == 2


@pytest.mark.parametrize("factory", ["Flat", "IVF16,Flat"])
def test_shards_on_two_nodes_equal_one_index(cluster, tmp_path, factory):
    from lm.datastore.shards import ShardedStore

    rng = np.random.default_rng(0)
    n, dim = 1500, 16
    st = TokenStore.create(tmp_path / "ds", lm_id="tiny@abc", tokenizer_hash="t", key_layer="m", dim=dim, index_factory=factory)
    st.stage_docs([{"doc": 0, "source": "a.txt", "hash": "h", "text": "x"}])
    st.stage_shard(rng.normal(size=(n, dim)).astype(np.float16), rng.integers(0, 50, n).astype(np.int32),
                   np.zeros((n, 3), np.int64))
    st.commit()
    st.build_index()
    one = TokenStore.open(tmp_path / "ds")
    xq = rng.normal(size=(25, dim)).astype(np.float32)
    sh = ShardedStore.start(TokenStore.open(tmp_path / "ds"), 2, address=cluster.address)
    try:
        nodes = {i["node"] for i in ray.get([a.info.remote() for a in sh.actors])}
        assert len(nodes) == 2  # SPREAD: one shard per node
        got, ref = sh.search(xq, 6, nprobe=4), one.search(xq, 6, nprobe=4)
        np.testing.assert_array_equal(got.I, ref.I)
        np.testing.assert_array_equal(got.D, ref.D)
    finally:
        sh.close()


def test_build_on_two_nodes_equals_one_process(cluster, tmp_path):
    from lm.datastore.ray_build import RayBuildConfig, build_datastore_ray
    from lm.models import load_lm

    d = make_tiny_lm(tmp_path / "llama", "llama")
    (tmp_path / "a.txt").write_text(CORPUS)
    lm = load_lm(str(d))
    cfg = BuildConfig(window=48, stride=32, shard_tokens=60, calibrate=False, kv_cache=False)  # Ray runs the windowed build
    build_datastore(lm, [str(tmp_path / "a.txt")], tmp_path / "one", cfg, progress=False, lm_spec=str(d))
    build_datastore_ray(lm, [str(tmp_path / "a.txt")], tmp_path / "ray", cfg, RayBuildConfig(cluster.address, workers=2),
                        progress=False, lm_spec=str(d))
    a, b = TokenStore.open(tmp_path / "one"), TokenStore.open(tmp_path / "ray")
    ids = np.arange(a.count)
    assert a.count == b.count > 0
    np.testing.assert_array_equal(a.keys(ids), b.keys(ids))
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_array_equal(a.provenance(ids), b.provenance(ids))
