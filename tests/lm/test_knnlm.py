"""kNN-LM end to end on tiny random Llama / GPT-2 models loaded through load_lm."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from lm.datastore.build import BuildConfig, build_datastore, contaminated, ngram_hashes  # noqa: E402
from lm.hooks import capture, has_hooks, resolve_module  # noqa: E402
from lm.knnlm import KNNLM, KNNConfig, mix_nll  # noqa: E402
from lm.models import load_lm  # noqa: E402
from retrieval.errors import InvalidInputError, KnnragError, MismatchError  # noqa: E402
from tests.support.tiny_lm import CORPUS, make_tiny_lm

OTHER = ("Volcanic islands form where magma rises through the crust. Basalt cools into columns, and "
         "new land appears in the sea within months; seabirds arrive first, then mosses and ferns. ") * 2


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return make_tiny_lm(tmp_path_factory.mktemp("llama"), "llama")


@pytest.fixture(scope="module")
def llama(llama_dir):
    return load_lm(str(llama_dir))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    (d / "a.txt").write_text(CORPUS)
    (d / "b.txt").write_text(OTHER)
    return d


@pytest.fixture(scope="module")
def datastore(llama, llama_dir, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("ds") / "ds"
    rep = build_datastore(llama, [str(corpus / "a.txt")], out, BuildConfig(window=64), progress=False, lm_spec=str(llama_dir))
    assert rep.entries_added > 100
    return out


def test_load_lm_identity_and_key_layer(llama, llama_dir, tmp_path):
    assert llama.key_layer == "model.layers.1.mlp"
    assert llama.model_id.startswith(f"{llama_dir.name}@") and len(llama.model_id.split("@")[1]) == 16
    again = load_lm(str(llama_dir))
    assert (again.model_id, again.tokenizer_hash) == (llama.model_id, llama.tokenizer_hash)
    other = load_lm(str(make_tiny_lm(tmp_path / "llama", "llama", seed=1)))
    assert other.model_id.split("@")[1] != llama.model_id.split("@")[1]
    assert other.tokenizer_hash == llama.tokenizer_hash


def test_gpt2_key_is_ln2_output(tmp_path):
    lm = load_lm(str(make_tiny_lm(tmp_path / "gpt2", "gpt2")))
    assert lm.key_layer == "transformer.h.1.mlp"
    block = lm.model.transformer.h[1]
    x = torch.tensor([[5, 6, 7, 8, 9]])
    with capture(block.ln_2, output=True) as ln2, capture(resolve_module(lm.model, lm.key_layer)) as key:
        lm.model(x)
    torch.testing.assert_close(key.take(), ln2.take())


def test_llama_key_is_post_attention_norm_output(llama):
    layer = llama.model.model.layers[-1]
    with capture(layer.post_attention_layernorm, output=True) as norm, capture(resolve_module(llama.model, llama.key_layer)) as key:
        llama.model(torch.tensor([[3, 4, 5, 6]]))
    torch.testing.assert_close(key.take(), norm.take())


def test_hook_is_removed_even_on_error(llama):
    mod = resolve_module(llama.model, llama.key_layer)
    with capture(mod) as cap:
        assert has_hooks(mod)
        llama.model(torch.tensor([[1, 2, 3]]))
    assert cap.calls == 1 and not has_hooks(mod)
    with pytest.raises(RuntimeError):
        with capture(mod):
            raise RuntimeError("boom")
    assert not has_hooks(mod)


def test_lambda_zero_reproduces_base_log_probs(llama, datastore):
    knn = KNNLM.load(llama, datastore, KNNConfig(k=8, lambda_=0.0, temperature=1.0))
    text = OTHER
    sc = knn.score_tokens(text, window=64, stride=32)
    ids = torch.tensor(llama.tokenizer(text, add_special_tokens=False)["input_ids"])
    with torch.inference_mode():  # plain forward, no hook, first window only
        lp = torch.log_softmax(llama.model(ids[None, :64]).logits[0].float(), -1)
    ref = lp[:-1].gather(1, ids[1:64, None])[:, 0].numpy()
    np.testing.assert_array_equal(sc.base_lp[:63], ref)
    nll = mix_nll(sc.base_lp, sc.retrievals[0], 8, 1.0, 0.0)
    np.testing.assert_array_equal(nll, -sc.base_lp)
    # full-vocabulary path (explain / generate) too
    nt = knn.next_tokens("The quick brown", top=5)
    assert nt["mix"] == nt["base"]


@pytest.mark.parametrize("k,T,lam", [(1, 1.0, 0.5), (4, 0.3, 0.25), (8, 5.0, 0.8), (16, 2.0, 0.05)])
def test_perplexity_and_sweep_match_reference_formula(llama, datastore, k, T, lam):
    """The production path (hook keys, FAISS search, mix) against a naive float64 kNN-LM over the
    full vocabulary, with brute-force neighbours, on a text that fits one window."""
    from lm.datastore.token_store import TokenStore
    from lm.eval import evaluate
    from tests.lm.test_knn_math import reference_nll

    text = OTHER[:110]
    knn = KNNLM.load(llama, datastore, KNNConfig(k=k, lambda_=lam, temperature=T, exact=True))
    ids = torch.tensor(llama.tokenizer(text, add_special_tokens=False)["input_ids"])
    assert 50 < ids.numel() <= knn.window_size()
    with torch.inference_mode(), capture(resolve_module(llama.model, llama.key_layer)) as cap:
        logits = llama.model(ids[None]).logits[0].double()  # (T, V)
    xq = cap.take()[0, :-1].double().numpy()  # (n, D)
    store = TokenStore.open(datastore)
    xb = store.keys(np.arange(store.count)).astype(np.float64)  # (N, D)
    d2 = ((xq[:, None, :] - xb[None]) ** 2).sum(-1)  # (n, N)
    order = np.argsort(d2, axis=1, kind="stable")[:, :k]  # (n, k)
    D = np.take_along_axis(d2, order, 1)
    ref = reference_nll(torch.log_softmax(logits[:-1], -1).numpy(), D, store.values[order], ids[1:].numpy(), k, T, lam)
    res = knn.perplexity(text, config=knn.config)
    assert res.knn_ppl == pytest.approx(float(np.exp(ref.mean())), rel=2e-3)
    ev = evaluate(knn, [text], sweep=True, ks=[k], temperatures=[T], lambdas=[0.0, lam])
    assert ev["knn_ppl"] == pytest.approx(float(np.exp(ref.mean())), rel=2e-3)
    pt = next(g for g in ev["sweep"] if g["k"] == k and g["temperature"] == T and g["lambda"] == lam)
    assert pt["ppl"] == pytest.approx(float(np.exp(ref.mean())), rel=2e-3)


def test_memorised_text_perplexity_collapses(llama, datastore):
    knn = KNNLM.load(llama, datastore, KNNConfig(k=8, lambda_=0.9, temperature=1.0))
    res = knn.perplexity(CORPUS)
    assert res.knn_ppl < 0.1 * res.base_ppl
    unseen = knn.perplexity(OTHER)
    assert unseen.knn_ppl > res.knn_ppl * 5
    d = res.to_dict()
    assert {"base_ppl", "knn_ppl", "tokens", "base_seconds", "knn_seconds", "k", "lambda", "temperature"} <= d.keys()


def test_adaptive_retrieval_skips_searches(llama, datastore):
    knn = KNNLM.load(llama, datastore, KNNConfig(k=4, lambda_=0.5, adaptive_threshold=0.001))
    r = knn.perplexity(CORPUS)
    assert r.searched < r.tokens  # a random tiny model is rarely confident, 0.001 still skips some
    full = knn.perplexity(CORPUS, config=KNNConfig(k=4, lambda_=0.5))
    assert full.searched == full.tokens


def test_generation_lambda_zero_equals_plain_generate(llama, datastore):
    knn = KNNLM.load(llama, datastore, KNNConfig(k=8, lambda_=0.0))
    prompt = "Retrieval makes rare"
    ids = llama.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    plain = llama.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False)
    want = llama.tokenizer.decode(plain[0, ids.shape[1]:], skip_special_tokens=True)
    pieces = []
    got = knn.generate(prompt, max_new_tokens=12, on_token=pieces.append)
    assert got == want and "".join(pieces) == got
    assert not has_hooks(resolve_module(llama.model, llama.key_layer))


def test_generation_with_knn_follows_the_datastore(llama, datastore):
    # a sharp temperature: the exact-match neighbour decides (tokens here are mostly characters)
    knn = KNNLM.load(llama, datastore, KNNConfig(k=8, lambda_=0.95, temperature=0.05))
    out = knn.generate("The quick brown", max_new_tokens=6)
    assert out.startswith(" fox")
    s = knn.generate("The quick brown", max_new_tokens=6, do_sample=True, top_p=0.5, seed=0)
    assert s.startswith(" fox")


def test_explain_lists_neighbours_with_sources(llama, datastore):
    knn = KNNLM.load(llama, datastore, KNNConfig(k=4, lambda_=0.5, temperature=1.0))
    res = knn.next_tokens("Retrieval makes rare names and numbers easier to", top=3)
    assert res["datastore"] and len(res["base"]) == len(res["mix"]) == 3 and 1 <= len(res["knn"]) <= 3
    n0 = res["neighbours"][0]
    assert n0["distance"] == min(n["distance"] for n in res["neighbours"])
    assert n0["source"].endswith("a.txt") and "easier to" in n0["snippet"]
    assert n0["token"] == res["knn"][0]["token"] and len(res["neighbours"]) == 4
    assert abs(sum(t["prob"] for t in knn.next_tokens("The", top=1000)["knn"]) - 1) < 1e-3


@pytest.mark.slow  # three datastore builds, one interrupted
def test_resume_after_interruption_equals_one_shot(llama, corpus, tmp_path, monkeypatch):
    from lm.datastore.token_store import TokenStore

    cfg = BuildConfig(window=32, stride=16, batch_size=1, shard_tokens=20)
    one = build_datastore(llama, [str(corpus)], tmp_path / "one", cfg, progress=False)
    calls = {"n": 0}
    real = TokenStore.commit

    def flaky(self, **kw):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # killed between two shards
        return real(self, **kw)

    monkeypatch.setattr(TokenStore, "commit", flaky)
    with pytest.raises(KeyboardInterrupt):
        build_datastore(llama, [str(corpus)], tmp_path / "two", cfg, progress=False)
    monkeypatch.setattr(TokenStore, "commit", real)
    part = TokenStore.open(tmp_path / "two")
    assert 0 < part.count < one.entries_total and not part.manifest["build"]["complete"]
    rep = build_datastore(llama, [str(corpus)], tmp_path / "two", cfg, progress=False)
    assert rep.resumed_from_window > 0
    a, b = TokenStore.open(tmp_path / "one"), TokenStore.open(tmp_path / "two")
    assert a.count == b.count == one.entries_total
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_array_equal(a.keys(np.arange(a.count)), b.keys(np.arange(b.count)))
    assert b.manifest["build"]["complete"]


def test_append_corpus_and_dedup(llama, corpus, tmp_path):
    out = tmp_path / "ds"
    r1 = build_datastore(llama, [str(corpus / "a.txt")], out, BuildConfig(window=64), progress=False)
    (tmp_path / "copy.txt").write_text(CORPUS)  # exact duplicate of a.txt
    (tmp_path / "near.txt").write_text(CORPUS.replace("lazy dog", "lazy cat", 1))
    r2 = build_datastore(llama, [str(corpus / "b.txt"), str(tmp_path / "copy.txt"), str(tmp_path / "near.txt")], out,
                         BuildConfig(window=64), progress=False)
    assert r2.exact_duplicates_dropped == 1 and r2.near_duplicates_dropped == 1 and r2.documents == 1
    assert r2.entries_total == r1.entries_total + r2.entries_added


@pytest.mark.slow  # two datastore builds: 5 s CPU
def test_decontamination_drops_windows(llama, corpus, tmp_path):
    ev = tmp_path / "eval.txt"
    ev.write_text(OTHER[:200])
    rep = build_datastore(llama, [str(corpus)], tmp_path / "ds", BuildConfig(window=32, stride=24, decontaminate=(str(ev),)),
                          progress=False)
    assert rep.windows_dropped_decontamination + rep.windows_trimmed_decontamination > 0
    clean = build_datastore(llama, [str(corpus)], tmp_path / "ds2", BuildConfig(window=32, stride=24), progress=False)
    assert rep.entries_total == clean.entries_total - rep.entries_dropped_decontamination
    strict = build_datastore(llama, [str(corpus)], tmp_path / "ds3",
                             BuildConfig(window=32, stride=24, decontaminate=(str(ev),), decontaminate_scope="window"), progress=False)
    assert strict.windows_dropped_decontamination > 0
    assert strict.entries_total == clean.entries_total - strict.entries_dropped_decontamination
    assert strict.entries_dropped_decontamination >= rep.entries_dropped_decontamination
    # no stored entry (span scope) has a target inside or within the margin after a shared 13-gram
    tok_ids = np.asarray(llama.tokenizer((corpus / "b.txt").read_text(), add_special_tokens=False)["input_ids"])
    evh = ngram_hashes(np.asarray(llama.tokenizer(OTHER[:200], add_special_tokens=False)["input_ids"]), 13)
    starts, drop = contaminated(tok_ids, evh, 13, 128)
    assert starts.size > 0 and drop.sum() > 0
    for s0 in starts:
        assert drop[s0 + 1: min(s0 + 13 + 128, drop.size)].all()
    ids = np.arange(100)
    assert np.isin(ngram_hashes(ids[10:40], 13), ngram_hashes(ids, 13)).all()
    assert not np.isin(ngram_hashes(ids + 1000, 13), ngram_hashes(ids, 13)).any()


def test_bad_input_errors(llama, datastore, corpus, tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(InvalidInputError, match="no new text"):
        build_datastore(llama, [str(tmp_path / "empty.txt")], tmp_path / "e", progress=False)
    with pytest.raises(InvalidInputError, match="not found"):
        build_datastore(llama, [str(tmp_path / "missing.txt")], tmp_path / "e", progress=False)
    knn = KNNLM.load(llama, datastore)
    with pytest.raises(InvalidInputError, match="at least 2"):
        knn.perplexity("a")
    with pytest.raises(InvalidInputError, match="larger than the datastore"):
        knn.perplexity(CORPUS, config=KNNConfig(k=10**6))
    for lam in (-0.1, 1.1):
        with pytest.raises(InvalidInputError, match="lambda"):
            KNNConfig(lambda_=lam)
    with pytest.raises(InvalidInputError):
        KNNConfig(k=0)
    with pytest.raises(InvalidInputError):
        KNNConfig(temperature=0)
    other = load_lm(str(make_tiny_lm(tmp_path / "other", "llama", seed=7)))
    with pytest.raises(MismatchError, match="built with LM"):
        KNNLM.load(other, datastore)
    with pytest.raises(MismatchError):
        build_datastore(other, [str(corpus / "b.txt")], datastore, progress=False)
    with pytest.raises(KnnragError):
        load_lm(str(tmp_path / "no-such-model"))


@pytest.mark.slow  # five CLI commands over a fresh build: 5 s CPU
def test_cli_build_info_eval_generate_explain(llama_dir, corpus, tmp_path, capsys):
    from retrieval.cli.root import main

    ds = str(tmp_path / "ds")
    assert main(["datastore", "build", str(corpus / "a.txt"), "--out", ds, "--model", str(llama_dir), "--window", "64", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["entries_added"] > 100 and rep["windows_dropped_decontamination"] == 0 and "store_tokens_per_s" in rep
    assert main(["datastore", "info", ds, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["count"] == rep["entries_total"] and info["key_layer"] == "model.layers.1.mlp"
    plot = tmp_path / "sweep.png"
    assert main(["eval", str(corpus / "a.txt"), "--datastore", ds, "-k", "8", "--temperature", "1", "--sweep", "--plot", str(plot), "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    for key in ("base_ppl", "knn_ppl", "tokens", "base_seconds", "knn_seconds", "k", "lambda", "temperature"):
        assert key in ev
    assert ev["knn_ppl"] < ev["base_ppl"] and plot.stat().st_size > 1000 and ev["best"]["ppl"] <= ev["knn_ppl"]
    assert main(["generate", "The quick brown", "--datastore", ds, "--max-new-tokens", "4", "--lambda", "0.9", "--temperature", "0.05"]) == 0
    assert capsys.readouterr().out.startswith(" fox")
    assert main(["explain", "The quick brown", "--datastore", ds, "--top", "3", "--json"]) == 0
    ex = json.loads(capsys.readouterr().out)
    assert ex["neighbours"] and set(ex) >= {"base", "knn", "mix", "neighbours"}
    assert main(["eval", str(corpus / "a.txt"), "--datastore", ds, "--lambda", "2", "--json"]) == 2
    err = json.loads(capsys.readouterr().out)
    assert err["type"] == "InvalidInputError" and "lambda" in err["error"]
    assert main(["eval", str(corpus / "a.txt"), "--datastore", str(tmp_path / "nope"), "--json"]) == 2
    assert json.loads(capsys.readouterr().out)["type"] == "NotFoundError"


def _lm_parsers():
    from retrieval.cli.root import build_parser

    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    todo = [sub.choices[n] for n in ("datastore", "eval", "generate", "explain")]
    while todo:
        p = todo.pop()
        yield p
        for a in p._actions:
            if a.__class__.__name__ == "_SubParsersAction":
                todo.extend(a.choices.values())


def test_every_lm_option_has_help_and_decontaminate_keeps_the_corpus():
    from retrieval.cli.root import build_parser

    missing = [(p.prog, a.dest) for p in _lm_parsers() for a in p._actions if a.dest != "help" and not a.help
               and a.__class__.__name__ != "_SubParsersAction"]
    assert not missing, missing
    args = build_parser().parse_args(["datastore", "build", "--decontaminate", "ev.txt", "corpus/", "--out", "ds",
                                      "--decontaminate", "ev2.txt"])
    assert args.corpus == ["corpus/"] and args.decontaminate == ["ev.txt", "ev2.txt"]


def test_model_load_draws_no_progress_bar(llama_dir, capfd):
    load_lm(str(llama_dir))
    assert "Loading weights" not in capfd.readouterr().err


def test_cached_encoder_equals_one_long_forward(llama):
    """With a cache long enough to hold the whole document, carrying it window to window gives the
    states of one forward over the document: the position ids and the cache are right."""
    from lm.datastore.build_steps import CachedEncoder, plan_targets, tokenize_doc

    d = tokenize_doc(llama.tokenizer, 0, CORPUS[:170], np.zeros(0, dtype=np.uint64), 13, 0)
    assert 100 < d.ids.size <= llama.max_length
    mod = resolve_module(llama.model, llama.key_layer)
    with torch.inference_mode(), capture(mod) as cap:
        llama.model(torch.from_numpy(d.ids)[None])
    full = cap.take()[0].float()  # (L, D)
    enc = CachedEncoder(llama, mod, context=10**6)
    plan = plan_targets([d], 32, 16)
    for p in plan:
        H, first = enc.states(d, p.window)
        torch.testing.assert_close(H, full[first:p.window.end], atol=2e-5, rtol=1e-4)
    assert enc.forward_tokens == d.ids.size  # every token forwarded once


@pytest.mark.slow  # two datastore builds
def test_kv_cache_build_stores_the_same_entries(llama, corpus, tmp_path):
    from lm.datastore.token_store import TokenStore

    cfg = BuildConfig(window=32, stride=24, shard_tokens=40, holdout=0.0)
    win = build_datastore(llama, [str(corpus)], tmp_path / "win", replace(cfg, kv_cache=False), progress=False)
    kv = build_datastore(llama, [str(corpus)], tmp_path / "kv", cfg, progress=False)  # the default carries the cache
    a, b = TokenStore.open(tmp_path / "win"), TokenStore.open(tmp_path / "kv")
    assert a.count == b.count == win.entries_total
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_array_equal(a.provenance(np.arange(a.count)), b.provenance(np.arange(b.count)))
    ka, kb = a.keys(np.arange(a.count)).astype(np.float32), b.keys(np.arange(b.count)).astype(np.float32)
    first = a.provenance(np.arange(a.count))[:, 1] < 32  # each document's first window: the same context
    np.testing.assert_allclose(ka[first], kb[first], atol=2e-2, rtol=1e-2)
    cos = (ka * kb).sum(1) / np.linalg.norm(ka, axis=1) / np.linalg.norm(kb, axis=1)
    assert cos.min() > 0.8 and kv.forward_tokens < win.forward_tokens  # more context, fewer forward tokens


def test_units_carry_only_documents_longer_than_one_window():
    """Short documents share batched forwards; a long document's windows run one at a time, in
    plan order, so the cache follows it; windows with nothing to store are not run."""
    from lm.datastore.build_steps import PlannedWindow, batches, units
    from lm.windows import plan_windows

    def doc(i, n, empty=()):
        return [PlannedWindow(i, w, np.zeros(0 if j in empty else 1, dtype=np.int64), 0) for j, w in enumerate(plan_windows(n, 32, 24))]

    plan = doc(0, 20) + doc(1, 30) + doc(2, 100) + doc(3, 10) + doc(4, 80, empty=(1,))
    long2 = [i for i, p in enumerate(plan) if p.doc == 2]
    assert len(long2) > 1
    got = units(plan, 0, max_windows=4, carry=True)
    d4 = [i for i, p in enumerate(plan) if p.doc == 4]  # its 2nd window stores nothing: 1st and 3rd no longer chain
    assert got[:1 + len(long2)] == [(False, [0, 1]), *((True, [i]) for i in long2)]
    assert got[1 + len(long2)] == (False, [long2[-1] + 1, d4[0], *d4[2:3]]) and all(c for c, _ in got[2 + len(long2):])
    assert [i for _c, idx in got for i in idx] == [i for i, p in enumerate(plan) if p.targets.size]  # plan order, each once
    assert all(not c for c, _ in units(plan, 0, 4)) and batches(plan, 0, 4) == [idx for _c, idx in units(plan, 0, 4)]
    assert units(plan, long2[1], 4, carry=True)[0] == (True, [long2[1]])  # a resumed build starts mid-document
