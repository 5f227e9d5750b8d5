"""Datastore build on Ray == the one-process build: entries, values, provenance, neighbours; with
decontamination and dedup; resume after an interruption; a worker killed mid-task is retried."""
from __future__ import annotations

import json

import numpy as np
import pytest

from lm.datastore.build import BuildConfig, build_datastore
from lm.datastore.token_store import TokenStore
from tests.support.ray_session import ray_local
from tests.support.tiny_lm import CORPUS, make_tiny_lm

OTHER = ("Volcanic islands form where magma rises through the crust. Basalt cools into columns, and "
         "new land appears in the sea within months; seabirds arrive first, then mosses and ferns. ") * 4
# several tasks of a few batches; the windowed build, which Ray reproduces bit for bit
CFG = BuildConfig(window=48, stride=32, batch_size=2, shard_tokens=60, calibrate=False, kv_cache=False)


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
    (corpus / "dup.txt").write_text(CORPUS)  # exact duplicate: dropped by both builds
    (corpus / "eval.txt").write_text(OTHER[:200])
    return d, load_lm(str(d)), corpus


def _same(a, b):
    sa, sb = TokenStore.open(a), TokenStore.open(b)
    assert sa.count == sb.count > 0
    ids = np.arange(sa.count)
    np.testing.assert_array_equal(sa.keys(ids), sb.keys(ids))
    np.testing.assert_array_equal(sa.values, sb.values)
    np.testing.assert_array_equal(sa.provenance(ids), sb.provenance(ids))
    assert [d["hash"] for d in sa.docs()] == [d["hash"] for d in sb.docs()]
    xq = np.random.default_rng(0).normal(size=(9, sa.dim)).astype(np.float32)
    np.testing.assert_array_equal(sa.search(xq, 5).I, sb.search(xq, 5).I)
    assert sa.manifest.get("heldout") == sb.manifest.get("heldout")
    assert not [f for f in sb.path.iterdir() if f.name.startswith("ray-") and f.name not in
                {s[k] for s in sb.manifest["shards"] for k in ("keys", "values", "prov")}]


def _files(tiny):
    _d, _lm, corpus = tiny
    return [str(corpus / n) for n in ("a.txt", "b.txt", "dup.txt")]


@pytest.mark.ray
def test_ray_build_equals_one_process_build(ray, tiny, tmp_path):
    from lm.datastore.ray_build import RayBuildConfig, build_datastore_ray

    d, lm, corpus = tiny
    cfg = BuildConfig(**{**CFG.__dict__, "decontaminate": (str(corpus / "eval.txt"),)})
    one = build_datastore(lm, _files(tiny), tmp_path / "one", cfg, progress=False, lm_spec=str(d))
    rep = build_datastore_ray(lm, _files(tiny), tmp_path / "ray", cfg, RayBuildConfig("local", workers=2), progress=False, lm_spec=str(d))
    assert rep.entries_added == one.entries_added and rep.exact_duplicates_dropped == one.exact_duplicates_dropped == 1
    assert rep.entries_dropped_decontamination == one.entries_dropped_decontamination > 0
    assert len(TokenStore.open(tmp_path / "ray").manifest["shards"]) > 2  # several tasks ran
    _same(tmp_path / "one", tmp_path / "ray")


@pytest.mark.ray
def test_killed_worker_is_retried_and_result_identical(ray, tiny, tmp_path):
    from lm.datastore.ray_build import RayBuildConfig, build_datastore_ray

    d, lm, _corpus = tiny
    marker = tmp_path / "crash-once"
    marker.write_text("x")
    build_datastore(lm, _files(tiny), tmp_path / "one", CFG, progress=False, lm_spec=str(d))
    build_datastore_ray(lm, _files(tiny), tmp_path / "ray", CFG, RayBuildConfig("local", workers=2, crash_marker=str(marker)),
                        progress=False, lm_spec=str(d))
    assert not marker.exists()  # a worker did die mid-task
    _same(tmp_path / "one", tmp_path / "ray")


@pytest.mark.ray
def test_interrupted_ray_build_resumes(ray, tiny, tmp_path):
    """Stop after the first committed task (deadline), resume on Ray: same datastore as one shot."""
    from lm.datastore.ray_build import RayBuildConfig, build_datastore_ray

    d, lm, _corpus = tiny
    build_datastore(lm, _files(tiny), tmp_path / "one", CFG, progress=False, lm_spec=str(d))
    rc = RayBuildConfig("local", workers=1)
    part = build_datastore_ray(lm, _files(tiny), tmp_path / "ray", BuildConfig(**{**CFG.__dict__, "deadline": 1.0}), rc,
                               progress=False, lm_spec=str(d))
    assert part.stopped_at_deadline
    m = json.loads((tmp_path / "ray" / "manifest.json").read_text())
    assert not m["build"]["complete"] and 0 < m["count"]
    rest = build_datastore_ray(lm, _files(tiny), tmp_path / "ray", CFG, rc, progress=False, lm_spec=str(d))
    assert rest.resumed_from_window > 0 and not rest.stopped_at_deadline
    _same(tmp_path / "one", tmp_path / "ray")


@pytest.mark.ray
def test_cli_build_with_ray(ray, tiny, tmp_path, capsys):
    from retrieval.cli.root import main

    d, _lm, corpus = tiny
    base = ["datastore", "build", str(corpus / "a.txt"), "--model", str(d), "--window", "48", "--no-calibrate", "--json"]
    assert main([*base, "--out", str(tmp_path / "one"), "--no-kv-cache"]) == 0
    one = json.loads(capsys.readouterr().out)
    assert main([*base, "--out", str(tmp_path / "ray"), "--ray", "local", "--workers", "2"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["entries_total"] == one["entries_total"] > 0
    _same(tmp_path / "one", tmp_path / "ray")
    assert main([*base, "--out", str(tmp_path / "bad"), "--ray", "local", "--workers", "0"]) == 2
    assert json.loads(capsys.readouterr().out)["type"] == "InvalidInputError"
    assert main([*base, "--out", str(tmp_path / "kv"), "--ray", "local", "--kv-cache"]) == 2
    err = json.loads(capsys.readouterr().out)
    assert err["type"] == "InvalidInputError" and "kv-cache" in err["error"]
