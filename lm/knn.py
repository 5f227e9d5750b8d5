"""The kNN-LM math as pure functions (Khandelwal et al., 2020).

p_kNN(y | x) = sum_{i in kNN(x), v_i = y} softmax(-d_i / T)
log p(y | x) = logaddexp(log(1 - lambda) + log p_LM, log(lambda) + log p_kNN)

Everything stays in log space so lambda = 0 gives back the base log-probs bit for bit and an
empty kNN distribution (-inf) never produces NaN.
"""
from __future__ import annotations

import math

import torch


def neighbour_log_weights(D: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax(-d / T) over the k neighbours. D: (n, k) distances (squared L2 from FAISS)."""
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    D = D.float()  # (n, k)
    valid = torch.isfinite(D)  # (n, k) FAISS pads missing neighbours with inf / -1
    logits = torch.where(valid, -D / temperature, torch.full_like(D, -math.inf))  # (n, k)
    return torch.log_softmax(logits, dim=-1)  # (n, k)


def knn_log_probs(D: torch.Tensor, I_values: torch.Tensor, vocab_size: int, temperature: float) -> torch.Tensor:
    """Full-vocabulary log p_kNN: neighbour weights scattered (summed) onto their token ids.

    D: (n, k) distances, I_values: (n, k) int token ids of the neighbours (-1 = no neighbour).
    Returns (n, V) log-probs; tokens no neighbour points at get -inf. Each row sums to 1 in prob space.
    """
    logw = neighbour_log_weights(D, temperature)  # (n, k)
    vals = I_values.long().clamp_min(0)  # (n, k)
    logw = torch.where(I_values >= 0, logw, torch.full_like(logw, -math.inf))  # (n, k)
    # scatter-logsumexp: shift by the row max so exp never overflows, sum in prob space, log back.
    m = logw.max(dim=-1, keepdim=True).values.clamp_min(-1e30)  # (n, 1)
    probs = torch.zeros(D.shape[0], vocab_size, dtype=torch.float32, device=D.device)  # (n, V)
    probs.scatter_add_(1, vals, torch.exp(logw - m))  # (n, V)
    return torch.log(probs) + m  # (n, V)


def knn_target_log_probs(D: torch.Tensor, I_values: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """log p_kNN of the observed next token only: what perplexity needs, without an (n, V) tensor.

    D, I_values: (n, k); targets: (n,). Returns (n,) with -inf where no neighbour has the target.
    """
    logw = neighbour_log_weights(D, temperature)  # (n, k)
    hit = I_values.long() == targets.long()[:, None]  # (n, k)
    return torch.logsumexp(torch.where(hit, logw, torch.full_like(logw, -math.inf)), dim=-1)  # (n,)


def interpolate(base_logp: torch.Tensor, knn_logp: torch.Tensor, lambda_: float) -> torch.Tensor:
    """log((1 - lambda) p_LM + lambda p_kNN), computed in log space; any matching shapes."""
    if not 0.0 <= lambda_ <= 1.0:
        raise ValueError("lambda must be in [0, 1]")
    if lambda_ == 0.0:
        log_a, log_b = 0.0, -math.inf
    elif lambda_ == 1.0:
        log_a, log_b = -math.inf, 0.0
    else:
        log_a, log_b = math.log1p(-lambda_), math.log(lambda_)
    return torch.logaddexp(base_logp + log_a, knn_logp + log_b)  # same shape as base_logp


def sweep_nll(
    base_lp: torch.Tensor,
    D: torch.Tensor,
    hit: torch.Tensor,
    lambdas: list[float],
    temperatures: list[float],
    ks: list[int] | None = None,
) -> list[dict]:
    """Mean negative log-likelihood for every (k, T, lambda) from one retrieval pass.

    base_lp: (n,) base log p of the targets; D: (n, K) sorted distances; hit: (n, K) bool
    (neighbour value == target). Smaller k uses the first k neighbours, as a fresh search would.
    """
    out = []
    K = D.shape[1]
    for k in ks or [K]:
        k = min(k, K)
        Dk, hk = D[:, :k], hit[:, :k]  # (n, k)
        for T in temperatures:
            logw = neighbour_log_weights(Dk, T)  # (n, k)
            knn = torch.logsumexp(torch.where(hk, logw, torch.full_like(logw, -math.inf)), dim=-1)  # (n,)
            for lam in lambdas:
                mix = interpolate(base_lp, knn, lam)  # (n,)
                out.append({"k": k, "temperature": T, "lambda": lam, "nll": float(-mix.mean())})
    return out
