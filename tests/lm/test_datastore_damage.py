"""Token datastore damage: checksums recorded at commit and checked by `knnrag datastore verify`,
tampered manifests and value ids as error + hint (exit 2), every manifest field fuzzed."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from lm import cli as lm_cli
from lm.datastore.token_store import TokenStore
from lm.datastore.verify import NO_CHECKSUMS, verify_datastore
from retrieval.cli import root as cli_root
from retrieval.errors import CorruptStoreError, KnnragError

DIM = 16


def build(path, factory="Flat", n=300):
    rng = np.random.default_rng(0)
    st = TokenStore.create(path, lm_id="tiny@abc", tokenizer_hash="t1", key_layer="model.layers.1.mlp", dim=DIM, index_factory=factory)
    st.stage_docs([{"doc": 0, "source": "a.txt", "hash": "h", "text": "x" * 1000}])
    for _ in range(0, n, 100):
        keys = rng.normal(size=(100, DIM)).astype(np.float16)  # (n, d)
        vals = rng.integers(0, 50, size=100).astype(np.int32)
        prov = np.stack([np.zeros(100), np.arange(100), np.arange(100) * 3], axis=1).astype(np.int64)
        st.stage_shard(keys, vals, prov)
        st.commit()
    if factory != "Flat":
        st.build_index(factory)
    return st


@pytest.fixture()
def ds(tmp_path):
    build(tmp_path / "ds")
    return tmp_path / "ds"


def manifest(path):
    return json.loads((path / "manifest.json").read_text())


def cli(monkeypatch, capsys, *argv):
    monkeypatch.setattr(cli_root, "_registrars", lambda: [lm_cli.register])
    code = cli_root.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def garble(path, offset_from_end=7):
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0x55
    path.write_bytes(bytes(data))


def test_checksums_recorded_and_verify_clean(ds, monkeypatch, capsys):
    m = manifest(ds)
    assert set(m["checksums"]) == {sh[k] for sh in m["shards"] for k in ("keys", "values", "prov")} | {d["file"] for d in m["docs"]}
    code, out, _ = cli(monkeypatch, capsys, "datastore", "verify", str(ds), "--json")
    assert code == 0 and json.loads(out)["ok"] and json.loads(out)["checksums"] == "ok (10 files)"


def test_garbled_key_bodies_are_found(ds, monkeypatch, capsys):
    garble(ds / manifest(ds)["shards"][1]["keys"])
    TokenStore.open(ds).search(np.zeros((1, DIM), np.float32), 3)  # sizes match: opening cannot see it
    code, out, err = cli(monkeypatch, capsys, "datastore", "verify", str(ds), "--json")
    rep = json.loads(out)
    assert code == 2 and not rep["ok"] and rep["checksums"] == "mismatch" and "keys-" in rep["problems"][0]
    code, out, err = cli(monkeypatch, capsys, "datastore", "verify", str(ds))
    assert code == 2 and "DAMAGED" in out and "error:" in err and "hint:" in err


def test_garbled_trained_index_is_found(tmp_path):
    build(tmp_path / "ivf", factory="IVF4,Flat", n=400)
    m = manifest(tmp_path / "ivf")
    assert m["index"]["file"] in m["checksums"]
    garble(tmp_path / "ivf" / m["index"]["file"], offset_from_end=100)
    rep = verify_datastore(tmp_path / "ivf")
    assert not rep["ok"] and "index-" in rep["problems"][0]


def write_values(ds, shard, values):
    np.save(ds / manifest(ds)["shards"][shard]["values"], values.astype(np.int32), allow_pickle=False)


@pytest.mark.parametrize("bad", [-1, -(2**31)])
def test_negative_value_ids_are_refused(ds, monkeypatch, capsys, bad):
    vals = np.asarray(np.load(ds / manifest(ds)["shards"][0]["values"]))
    vals[5] = bad
    write_values(ds, 0, vals)  # same size: passes the size check
    with pytest.raises(CorruptStoreError, match="next-token ids"):
        TokenStore.open(ds)
    code, out, err = cli(monkeypatch, capsys, "datastore", "info", str(ds))
    assert code == 2 and err.startswith("error: ") and "outside the vocabulary" in err and "hint: " in err
    code, out, err = cli(monkeypatch, capsys, "datastore", "verify", str(ds), "--json")
    assert code == 2 and "next-token ids" in json.loads(out)["problems"][0]


def test_value_ids_beyond_the_vocabulary_are_refused(ds):
    vals = np.asarray(np.load(ds / manifest(ds)["shards"][2]["values"]))
    vals[0] = 10**6
    write_values(ds, 2, vals)
    TokenStore.open(ds)  # without the LM the vocabulary size is unknown
    with pytest.raises(CorruptStoreError, match=r"outside the vocabulary \(0\.\.49\)"):
        TokenStore.open(ds, vocab_size=50)


def edit(ds, fn):
    m = manifest(ds)
    fn(m)
    (ds / "manifest.json").write_text(json.dumps(m))


def test_shards_string_is_an_error_not_a_traceback(ds, monkeypatch, capsys):
    edit(ds, lambda m: m.update(shards="x"))
    code, out, err = cli(monkeypatch, capsys, "datastore", "info", str(ds))
    assert code == 2 and '"shards" must be a list' in err and "hint:" in err


def test_file_names_cannot_leave_the_folder(ds, tmp_path):
    (tmp_path / "outside.npy").write_bytes((ds / manifest(ds)["shards"][0]["keys"]).read_bytes())
    edit(ds, lambda m: m["shards"][0].update(keys="../outside.npy"))
    with pytest.raises(CorruptStoreError, match="invalid value"):
        TokenStore.open(ds)


def test_old_datastore_without_checksums_verifies(ds):
    edit(ds, lambda m: m.pop("checksums"))
    rep = verify_datastore(ds)
    assert rep["ok"] and rep["checksums"] == NO_CHECKSUMS


# ----------------------------------------------------------------------------- fuzz
MUTATIONS = [("deleted", None), ("string", "x"), ("negative", -1), ("zero", 0), ("huge", 10**30), ("float", 2.5),
             ("bool", True), ("null", None), ("list", ["x"]), ("object", {"a": 1}), ("outside name", "../manifest.json")]


def field_paths(m):
    for key, value in m.items():
        yield (key,)
        if isinstance(value, dict) and key != "checksums":
            yield from ((key, k) for k in value)
        if isinstance(value, list) and value and isinstance(value[0], dict):
            yield from ((key, 0, k) for k in value[0])
    yield ("checksums", next(iter(m["checksums"])))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("dsfuzz")
    build(root / "ds", factory="IVF4,Flat", n=400)
    return root / "ds"


def fuzz_cases():
    import tempfile
    from pathlib import Path

    tmp = Path(tempfile.mkdtemp())
    build(tmp / "probe", factory="IVF4,Flat", n=400)
    paths = list(field_paths(manifest(tmp / "probe")))
    shutil.rmtree(tmp)
    for n, path in enumerate(paths):
        for i, (how, value) in enumerate(MUTATIONS):
            # the fast lane mutates each field once, each mutation in turn; the full lane all 11 ways
            marks = () if i == n % len(MUTATIONS) else (pytest.mark.slow,)
            yield pytest.param(path, how, value, id=f"{'.'.join(map(str, path))}:{how}", marks=marks)


@pytest.mark.parametrize("path, how, value", list(fuzz_cases()))
def test_every_datastore_manifest_field_mutated(base, tmp_path, path, how, value):
    ds = tmp_path / "ds"
    shutil.copytree(base, ds)
    m = manifest(ds)
    target = m
    for key in path[:-1]:
        target = target[key]
    if how == "deleted":
        del target[path[-1]]
    else:
        target[path[-1]] = value
    (ds / "manifest.json").write_text(json.dumps(m))
    try:
        st = TokenStore.open(ds)
        st.info()
        st.search(np.zeros((2, st.dim), np.float32), 3, rerank=2)
        st.search(np.zeros((2, st.dim), np.float32), 3, exact=True)
        st.snippet(0)
        verify_datastore(ds)
    except KnnragError as e:
        assert e.message and e.hint
