"""Calibration: the held-out slice, the choice of (k, T, lambda), the per-token lambda, the manifest record."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from lm.datastore.build import BuildConfig, build_datastore
from lm.datastore.build_steps import holdout_starts
from lm.datastore.calibration import Calibration, choose
from lm.knn import knn_log_probs
from lm.knnlm import KNNLM, KNNConfig, KNNOverrides
from lm.models import load_lm
from tests.support.tiny_lm import make_tiny_lm


def _mixture(n, lam_of, T=4.0, V=50, K=16, seed=0):
    """Targets drawn from (1 - lambda_i) p_LM + lambda_i p_kNN(T): the true setting is known."""
    rng = np.random.default_rng(seed)
    base = torch.log_softmax(torch.from_numpy(rng.normal(size=(n, V)) * 1.5), -1).numpy()  # (n, V)
    D = np.sort(rng.uniform(2, 30, size=(n, K)), axis=1).astype(np.float32)  # (n, K)
    vals = rng.integers(0, V, size=(n, K)).astype(np.int32)  # (n, K)
    p_knn = knn_log_probs(torch.from_numpy(D), torch.from_numpy(vals), V, T).exp().double()  # (n, V)
    lam = lam_of(D)[:, None]  # (n, 1)
    p = (1 - lam) * np.exp(base) + lam * p_knn.numpy()  # (n, V)
    y = np.array([rng.choice(V, p=row / row.sum()) for row in p])  # (n,)
    max_p = np.exp(base).max(-1)
    return base[np.arange(n), y].astype(np.float32), D, vals == y[:, None], vals, max_p


@pytest.mark.slow  # calibration sweeps over a planted setting: 3.8 s CPU
def test_calibration_recovers_a_known_setting():
    base_lp, D, hit, vals, max_p = _mixture(6000, lambda D: np.full(D.shape[0], 0.4))
    cal = choose(base_lp, D, hit, vals, max_p)
    assert cal.k == 16 and abs(cal.lambda_ - 0.4) <= 0.1 and 2.0 <= cal.temperature <= 8.0
    assert cal.cv_ppl < cal.base_ppl and cal.gain > 0.02 and cal.message() is None
    assert cal.lambda_fn is None  # lambda is constant here: the per-token fit cannot beat it
    assert Calibration.from_json(json.loads(json.dumps(cal.to_json()))) == cal


@pytest.mark.slow  # two calibration sweeps: 3.4 s CPU
def test_per_token_lambda_is_kept_when_it_beats_the_fixed_lambda():
    base_lp, D, hit, vals, max_p = _mixture(6000, lambda D: np.where(D[:, 0] < 3.5, 0.9, 0.02), seed=1)
    cal = choose(base_lp, D, hit, vals, max_p)
    assert cal.lambda_fn is not None and cal.lambda_fn_cv_ppl < cal.cv_ppl
    assert cal.lambda_fn.weights[0] < 0  # closer neighbours, more kNN


def test_calibration_picks_lambda_zero_when_knn_never_helps():
    rng = np.random.default_rng(3)
    n, K = 4000, 16
    base_lp = np.log(rng.uniform(0.01, 0.5, size=n)).astype(np.float32)
    D = np.sort(rng.uniform(2, 30, size=(n, K)), axis=1).astype(np.float32)
    hit = rng.uniform(size=(n, K)) < 0.01  # neighbours almost never hold the target (chance level)
    cal = choose(base_lp, D, hit, np.zeros((n, K), dtype=np.int32), np.exp(base_lp))
    assert cal.lambda_ == 0.0 and cal.lambda_fn is None and cal.cv_ppl >= cal.base_ppl and cal.knn_ppl == cal.base_ppl
    assert "kNN does not help" in cal.message()


def test_holdout_is_small_deterministic_and_order_free():
    lengths = [500, 40, 3000, 120, 800]
    keys = ["e", "a", "c", "b", "d"]
    s = holdout_starts(lengths, keys, fraction=0.05, max_tokens=8192, min_tokens=32)
    held = sum(n - st for n, st in zip(lengths, s))
    assert held == int(0.05 * sum(n - 1 for n in lengths))
    assert s[1] == 1 and s[3] == 1  # hash order: whole "a" and "b" first ...
    assert s[2] == 3000 - (held - 39 - 119) and s[0] == 500 and s[4] == 800  # ... then the rest from the tail of "c"
    perm = [2, 0, 4, 1, 3]
    s2 = holdout_starts([lengths[i] for i in perm], [keys[i] for i in perm], fraction=0.05, max_tokens=8192, min_tokens=32)
    assert [s2[perm.index(i)] for i in range(5)] == s
    assert holdout_starts(lengths, keys, fraction=0.05, max_tokens=8192, min_tokens=10_000) == lengths
    assert sum(n - st for n, st in zip(lengths, holdout_starts(lengths, keys, fraction=0.05, max_tokens=50, min_tokens=8))) == 50


SENTENCES = ["The harbour master logs every ship that enters the bay before noon.",
             "Our lighthouse keeper trims the lamp wick each evening at dusk.",
             "Fishermen mend their nets on the stone pier when the tide is low.",
             "A ferry crosses to the island twice a day in the summer months."]


def _repetitive_corpus(d, n_docs=24, seed=0):
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    for i in range(n_docs):
        (d / f"doc{i:02d}.txt").write_text(" ".join(SENTENCES[j] for j in rng.integers(0, 4, size=5)))
    return d


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return load_lm(str(make_tiny_lm(tmp_path_factory.mktemp("llama"), "llama")))


CFG = BuildConfig(window=64, holdout=0.1, holdout_min_tokens=64)


@pytest.fixture(scope="module")
def calibrated(llama, tmp_path_factory):
    root = tmp_path_factory.mktemp("cal")
    out = root / "ds"
    rep = build_datastore(llama, [str(_repetitive_corpus(root / "corpus"))], out, CFG, progress=False)
    return out, rep


@pytest.mark.slow  # a datastore build with a held-out slice: 7.5 s CPU
def test_heldout_slice_never_enters_the_datastore(llama, calibrated):
    from lm.datastore.token_store import TokenStore

    out, rep = calibrated
    store = TokenStore.open(out)
    held = store.manifest["heldout"]
    assert held and rep.heldout_tokens >= 64
    total = sum(len(llama.tokenizer(d["text"], add_special_tokens=False)["input_ids"]) - 1 for d in store.docs())
    assert rep.heldout_tokens <= 0.1 * total + 1 and store.count == total - rep.heldout_tokens
    prov = store.provenance(np.arange(store.count))  # (n, 3) doc, position, char
    for doc, start in held:
        assert not ((prov[:, 0] == doc) & (prov[:, 1] >= start)).any()


@pytest.mark.slow  # a build with a calibration sweep: 7 s CPU
def test_build_calibrates_and_load_uses_it(llama, calibrated, caplog):
    out, rep = calibrated
    cal = Calibration.from_json(rep.calibration)
    assert cal.heldout_tokens == rep.heldout_tokens and cal.source == "heldout"
    assert cal.lambda_ > 0 and cal.cv_ppl < cal.base_ppl  # the documents repeat sentences: kNN helps
    knn = KNNLM.load(llama, out)
    assert (knn.config.k, knn.config.temperature, knn.config.lambda_) == (cal.k, cal.temperature, cal.lambda_)
    forced = KNNLM.load(llama, out, overrides=KNNOverrides(lambda_=0.0))
    assert forced.config.lambda_ == 0.0 and forced.config.k == cal.k and forced.config.lambda_fn is None
    text = " ".join(SENTENCES)
    assert knn.perplexity(text).knn_ppl < forced.perplexity(text).knn_ppl
    exact = KNNLM.load(llama, out, KNNConfig(k=3))
    assert exact.config == KNNConfig(k=3)  # an explicit config is used as given


@pytest.mark.slow  # builds, appends to and recalibrates a datastore: 14.9 s CPU
def test_calibration_survives_append_and_reopen(llama, calibrated, tmp_path):
    import shutil

    from lm.datastore.token_store import TokenStore

    out = tmp_path / "ds"
    shutil.copytree(calibrated[0], out)
    before = TokenStore.open(out).manifest
    more = _repetitive_corpus(tmp_path / "more", n_docs=12, seed=5)
    rep = build_datastore(llama, [str(more)], out, CFG, progress=False)
    after = TokenStore.open(out).manifest
    assert len(after["heldout"]) > len(before["heldout"]) and after["heldout"][: len(before["heldout"])] == before["heldout"]
    cal = Calibration.from_json(after["calibration"])
    assert cal.heldout_tokens > before["calibration"]["heldout_tokens"]  # re-calibrated on both builds' slices
    assert rep.calibration == after["calibration"]
    assert KNNLM.load(llama, out).calibration == cal


@pytest.mark.slow  # calibrates on a random datastore: 3.8 s CPU
def test_unrelated_random_datastore_gives_lambda_zero(llama, tmp_path, caplog):
    rng = np.random.default_rng(0)
    (tmp_path / "noise.txt").write_text("".join(str(x) for x in rng.integers(0, 10, size=1500)))  # digits only
    out = tmp_path / "ds"
    build_datastore(llama, [str(tmp_path / "noise.txt")], out, BuildConfig(window=64, calibrate=False), progress=False)
    from lm.datastore.calibrate import calibrate_store
    from lm.datastore.token_store import TokenStore

    prose = " ".join(SENTENCES * 3)  # no digits: no neighbour's token is ever the target
    cal = calibrate_store(llama, TokenStore.open(out), [prose])
    assert cal.lambda_ == 0.0 and cal.lambda_fn is None and cal.source == "text"
    with caplog.at_level(logging.WARNING):
        knn = KNNLM.load(llama, out)
    lines = [r.getMessage() for r in caplog.records if "kNN does not help" in r.getMessage()]
    assert len(lines) == 1 and f"{cal.heldout_tokens} held-out tokens" in lines[0]
    r = knn.perplexity(prose)
    assert r.knn_ppl == r.base_ppl and r.searched == 0


def test_old_manifest_opens_with_old_defaults_and_a_note(llama, calibrated, tmp_path, caplog):
    import shutil

    out = tmp_path / "old"
    shutil.copytree(calibrated[0], out)
    m = json.loads((out / "manifest.json").read_text())
    for key in ("calibration", "heldout"):
        m.pop(key)
    (out / "manifest.json").write_text(json.dumps(m))
    with caplog.at_level(logging.WARNING):
        knn = KNNLM.load(llama, out)
    assert knn.calibration is None and knn.config == KNNConfig()
    assert any("not calibrated" in r.getMessage() and "datastore calibrate" in r.getMessage() for r in caplog.records)


@pytest.mark.slow  # calibration sweep and a matplotlib plot
def test_cli_calibrate_info_and_plot(llama, calibrated, tmp_path, capsys):
    import shutil

    from retrieval.cli.root import main

    ds = tmp_path / "ds"
    shutil.copytree(calibrated[0], ds)
    spec = str(llama.model.name_or_path)
    (tmp_path / "t.txt").write_text(" ".join(SENTENCES * 4))
    assert main(["datastore", "calibrate", str(ds), str(tmp_path / "t.txt"), "--model", spec, "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["source"] == "text" and rec["lambda"] > 0
    assert main(["datastore", "info", str(ds), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["calibration"] == rec
    assert main(["datastore", "info", str(ds)]) == 0
    assert "calibration: k=" in capsys.readouterr().out
    assert main(["datastore", "calibrate", str(ds), "--model", spec]) == 0  # back to the stored slice
    assert "heldout tokens" in capsys.readouterr().out
    plot = tmp_path / "p.png"
    assert main(["eval", str(tmp_path / "t.txt"), "--datastore", str(ds), "--model", spec, "--plot", str(plot), "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["calibration"]["source"] == "heldout" and ev["k"] == ev["calibration"]["k"] and plot.stat().st_size > 1000
