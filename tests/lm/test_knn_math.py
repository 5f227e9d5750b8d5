"""The kNN-LM math: p_kNN is a distribution, interpolation is exact at the ends, no NaN ever, and
every production path (mix_nll, sweep_nll, full-vocabulary mixing, per-token lambda) equals the
reference formula computed naively in float64 over the whole vocabulary."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lm.knn import (
    LambdaFn,
    interpolate,
    knn_log_probs,
    knn_target_log_probs,
    lambda_features,
    mix_nll,
    neighbour_log_weights,
    sweep_nll,
)
from lm.windows import plan_windows


def reference_nll(base_logp, D, vals, targets, k, T, lam):
    """-log((1 - lambda) p_LM(y) + lambda sum_{i<k, v_i = y} softmax(-d/T)_i), float64, full vocabulary."""
    base_logp, D, vals = np.asarray(base_logp, np.float64), np.asarray(D, np.float64)[:, :k], np.asarray(vals)[:, :k]
    n, V = base_logp.shape
    lam = np.broadcast_to(np.asarray(lam, np.float64), (n,))
    out = np.empty(n)
    for i in range(n):
        p_lm = np.exp(base_logp[i] - np.logaddexp.reduce(base_logp[i]))  # (V,)
        p_knn = np.zeros(V)
        if np.isfinite(D[i, 0]):
            ok = np.isfinite(D[i]) & (vals[i] >= 0)
            w = np.exp(-D[i][ok] / T - np.logaddexp.reduce(-D[i][ok] / T))
            np.add.at(p_knn, vals[i][ok], w)
            with np.errstate(divide="ignore"):  # lambda 1 and no neighbour with the target: inf, as it should be
                out[i] = -np.log((1 - lam[i]) * p_lm[targets[i]] + lam[i] * p_knn[targets[i]])
        else:  # not searched: the base LM
            out[i] = -np.log(p_lm[targets[i]])
    return out


def _problem(n=40, K=16, V=23, seed=0):
    rng = np.random.default_rng(seed)
    base = torch.log_softmax(torch.from_numpy(rng.normal(size=(n, V)) * 2), -1).numpy()  # (n, V)
    D = np.sort(rng.uniform(0, 30, size=(n, K)), axis=1).astype(np.float32)  # (n, K)
    vals = rng.integers(0, V, size=(n, K)).astype(np.int32)  # (n, K)
    vals[:, :4] = vals[:, :1]  # neighbours that agree
    targets = np.where(rng.uniform(size=n) < 0.5, vals[:, 0], rng.integers(0, V, size=n))  # (n,)
    D[3] = np.inf  # a position adaptive retrieval skipped
    vals[3] = -1
    D[5, -3:], vals[5, -3:] = np.inf, -1  # fewer neighbours than k
    base_lp = base[np.arange(n), targets].astype(np.float32)  # (n,)
    return base, base_lp, D, vals, targets


@pytest.mark.parametrize("k", [1, 4, 16])
@pytest.mark.parametrize("T", [0.5, 3.0, 40.0])
@pytest.mark.parametrize("lam", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_mix_nll_matches_reference(k, T, lam):
    base, base_lp, D, vals, targets = _problem()
    hit = vals == targets[:, None]
    got = mix_nll(base_lp, D[:, :k], hit[:, :k], T, lam)
    want = reference_nll(base, D, vals, targets, k, T, lam)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)
    if lam == 0.0:
        np.testing.assert_array_equal(got, -base_lp)  # bit for bit


def test_sweep_matches_reference_at_every_setting():
    base, base_lp, D, vals, targets = _problem(n=300, seed=4)
    hit = vals == targets[:, None]
    ks, Ts, lams = [2, 8, 16], [0.7, 5.0, 60.0], [0.0, 0.05, 0.3, 0.75]
    groups = np.arange(300) % 3
    sums = sweep_nll(base_lp, D, hit, ks, Ts, lams, groups=groups, n_groups=3, chunk=64)  # (G, nk, nT, nL)
    for a, k in enumerate(ks):
        for b, T in enumerate(Ts):
            for c, lam in enumerate(lams):
                ref = reference_nll(base, D, vals, targets, k, T, lam)
                for g in range(3):
                    assert sums[g, a, b, c] == pytest.approx(ref[groups == g].sum(), rel=1e-5)


def test_full_vocabulary_mix_matches_reference():
    base, _lp, D, vals, targets = _problem(seed=2)
    rows = np.r_[0:3, 4:5, 6:40]  # searched rows
    for k, T, lam in [(16, 3.0, 0.25), (4, 0.5, 0.8), (1, 10.0, 0.5)]:
        knn = knn_log_probs(torch.from_numpy(D[rows, :k]), torch.from_numpy(vals[rows, :k]), base.shape[1], T)  # (m, V)
        mix = interpolate(torch.from_numpy(base[rows]).float(), knn, lam)  # (m, V)
        got = -mix[torch.arange(len(rows)), torch.from_numpy(targets[rows])].numpy()
        np.testing.assert_allclose(got, reference_nll(base[rows], D[rows], vals[rows], targets[rows], k, T, lam), rtol=2e-5, atol=2e-5)


def test_per_token_lambda_matches_reference():
    base, base_lp, D, vals, targets = _problem(seed=3)
    fn = LambdaFn((0.8, -1.2, 0.4), -0.3, (2.0, 0.5, 0.3), (1.0, 0.2, 0.1))
    feats = lambda_features(D[:, :8], vals[:, :8], np.exp(base.max(1)), 3.0)  # (n, 3)
    lam = fn(feats)  # (n,)
    assert lam.shape == (40,) and ((lam > 0) & (lam < 1)).all() and lam.std() > 0.01
    got = mix_nll(base_lp, D[:, :8], (vals == targets[:, None])[:, :8], 3.0, lam)
    np.testing.assert_allclose(got, reference_nll(base, D, vals, targets, 8, 3.0, lam), rtol=2e-5, atol=2e-5)
    assert LambdaFn.from_json(fn.to_json()) == fn
    # the agreement feature is p_kNN of the nearest neighbour's token
    knn = knn_log_probs(torch.from_numpy(D[:1, :8]), torch.from_numpy(vals[:1, :8]), base.shape[1], 3.0)
    assert feats[0, 1] == pytest.approx(float(knn[0, vals[0, 0]].exp()), rel=1e-5)


def _random(n=5, k=7, V=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    D = torch.rand(n, k, generator=g).sort(dim=1).values * 50  # (n, k)
    vals = torch.randint(0, V, (n, k), generator=g)  # (n, k)
    return D, vals


def test_p_knn_sums_to_one_with_repeated_values():
    D, vals = _random()
    vals[:, :3] = 4  # several neighbours share a token: their weights add up
    lp = knn_log_probs(D, vals, 11, temperature=10.0)  # (n, V)
    assert torch.allclose(lp.exp().sum(-1), torch.ones(5), atol=1e-6)
    w = neighbour_log_weights(D, 10.0).exp()
    assert torch.allclose(lp[:, 4].exp(), w[:, :3].sum(-1) + (w[:, 3:] * (vals[:, 3:] == 4)).sum(-1), atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(1, 9), st.floats(0.01, 1000.0), st.integers(0, 10_000))
def test_p_knn_is_a_distribution(n, k, T, seed):
    D, vals = _random(n, k, 13, seed)
    lp = knn_log_probs(D, vals, 13, T)
    assert torch.isfinite(torch.logsumexp(lp, -1)).all()
    assert torch.allclose(torch.logsumexp(lp, -1), torch.zeros(n), atol=1e-5)


def test_missing_neighbours_are_ignored():
    D = torch.tensor([[1.0, 2.0, math.inf]])
    vals = torch.tensor([[3, 5, -1]])
    lp = knn_log_probs(D, vals, 8, 1.0)
    assert torch.allclose(lp.exp().sum(), torch.tensor(1.0))
    assert lp[0, 3] > lp[0, 5] and torch.isinf(lp[0, 0])


def test_target_log_probs_match_full_distribution():
    D, vals = _random(6, 5, 9, 3)
    targets = torch.tensor([0, 1, 2, 3, 4, 5])
    full = knn_log_probs(D, vals, 9, 7.0)  # (n, V)
    tgt = knn_target_log_probs(D, vals == targets[:, None], 7.0)  # (n,)
    assert torch.allclose(full.gather(1, targets[:, None])[:, 0], tgt, atol=1e-6)
    several = knn_target_log_probs(D, vals == targets[:, None], torch.tensor([7.0, 2.0])[:, None, None])  # (2, n)
    assert torch.allclose(several[0], tgt) and not torch.allclose(several[1], tgt)


def test_temperature_limits():
    D = torch.tensor([[1.0, 2.0, 3.0]])
    vals = torch.tensor([[0, 1, 2]])
    hot = knn_log_probs(D, vals, 3, 1e6).exp()
    assert torch.allclose(hot, torch.full((1, 3), 1 / 3), atol=1e-4)
    cold = knn_log_probs(D, vals, 3, 1e-3).exp()
    assert cold[0, 0] > 0.999


def test_lambda_zero_is_bit_exact_and_one_is_knn():
    base = torch.log_softmax(torch.randn(4, 10), -1)
    knn = torch.log_softmax(torch.randn(4, 10), -1)
    knn[0, 3] = -math.inf
    knn = torch.log_softmax(knn, -1)  # a token no neighbour points at
    assert torch.equal(interpolate(base, knn, 0.0), base)
    assert torch.equal(interpolate(base, knn, 1.0), knn)
    mix = interpolate(base, knn, 0.3)
    assert torch.allclose(mix.exp(), 0.7 * base.exp() + 0.3 * knn.exp(), atol=1e-6)
    assert torch.allclose(mix.exp().sum(-1), torch.ones(4), atol=1e-5)
    assert not torch.isnan(interpolate(base, torch.full_like(base, -math.inf), 0.5)).any()


@pytest.mark.parametrize("lam", [-0.1, 1.5, float("nan")])
def test_lambda_outside_unit_interval(lam):
    with pytest.raises(ValueError):
        interpolate(torch.zeros(2), torch.zeros(2), lam)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 400), st.integers(2, 64), st.data())
def test_windows_score_every_target_once(n, window, data):
    stride = data.draw(st.integers(1, window))
    ws = list(plan_windows(n, window, stride))
    targets = [t for w in ws for t in range(w.first_target, w.end)]
    assert targets == list(range(1, n))
    assert all(w.end - w.begin <= window and w.begin < w.first_target for w in ws)
    # every target after the first window has at least window - stride tokens of context
    for w in ws[1:]:
        assert w.first_target - w.begin >= min(window - stride, w.first_target)
