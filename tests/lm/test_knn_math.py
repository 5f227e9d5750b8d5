"""The kNN-LM math: p_kNN is a distribution, interpolation is exact at the ends, no NaN ever."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lm.knn import interpolate, knn_log_probs, knn_target_log_probs, neighbour_log_weights, sweep_nll
from lm.windows import plan_windows


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
    tgt = knn_target_log_probs(D, vals, targets, 7.0)  # (n,)
    assert torch.allclose(full.gather(1, targets[:, None])[:, 0], tgt, atol=1e-6)


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


def test_sweep_matches_direct_computation():
    D, vals = _random(8, 6, 5, 1)
    targets = torch.randint(0, 5, (8,))
    base = torch.log(torch.rand(8))
    hit = vals == targets[:, None]
    grid = sweep_nll(base, D, hit, [0.0, 0.25], [5.0], ks=[3, 6])
    for g in grid:
        k = g["k"]
        knn = knn_target_log_probs(D[:, :k], vals[:, :k], targets, 5.0)
        assert g["nll"] == pytest.approx(float(-interpolate(base, knn, g["lambda"]).mean()), rel=1e-6)
    assert grid[0]["nll"] == pytest.approx(float(-base.mean()))


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
