"""The kNN-LM math as pure functions (Khandelwal et al., 2020).

p_kNN(y | x) = sum_{i in kNN(x), v_i = y} softmax(-d_i / T)
log p(y | x) = logaddexp(log(1 - lambda) + log p_LM, log(lambda) + log p_kNN)

Everything stays in log space so lambda = 0 gives back the base log-probs bit for bit and an
empty kNN distribution (-inf) never produces NaN. This is the one copy of the math: perplexity,
the sweeps, calibration, explain and generation all call it. Positions that were not searched
(adaptive retrieval) carry D = inf and keep the base LM.

Per-token lambda: lambda_i = sigmoid(b + w . z_i), z_i = standardised retrieval features
(`lambda_features`), fitted on the datastore's held-out slice (lm.datastore.calibration).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

FEATURES = ("log_nearest_distance", "knn_top_prob", "base_max_prob")


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


def knn_target_log_probs(D: torch.Tensor, hit: torch.Tensor, temperature: float | torch.Tensor) -> torch.Tensor:
    """log p_kNN of the observed next token only: what perplexity needs, without an (n, V) tensor.

    D: (n, k) distances, hit: (n, k) bool (neighbour value == target). temperature: a float, or
    (nT, 1, 1) for several at once -> (nT, n). Returns (n,) with -inf where no neighbour has the target.
    """
    D = D.float()  # (n, k)
    ok = torch.isfinite(D)  # (n, k)
    T = temperature if isinstance(temperature, torch.Tensor) else torch.tensor(float(temperature))
    if bool((T <= 0).any()):
        raise ValueError("temperature must be > 0")
    logits = torch.where(ok, -torch.where(ok, D, torch.zeros_like(D)) / T, torch.full_like(D, -math.inf))  # ([nT,] n, k)
    logits = torch.where(ok.any(-1, keepdim=True), logits, torch.zeros_like(logits))  # rows never searched: no NaN
    logw = torch.log_softmax(logits, dim=-1)  # ([nT,] n, k)
    return torch.logsumexp(torch.where(hit & ok, logw, torch.full_like(logw, -math.inf)), dim=-1)  # ([nT,] n)


def _lambda_logs(lambda_: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log(1 - lambda), log(lambda)) with the ends exact (0 and -inf, never NaN)."""
    lam = torch.as_tensor(lambda_, dtype=torch.float32)
    if bool(((lam < 0) | (lam > 1) | torch.isnan(lam)).any()):
        raise ValueError("lambda must be in [0, 1]")
    log_a = torch.where(lam < 1, torch.log1p(-torch.where(lam < 1, lam, torch.zeros_like(lam))), torch.full_like(lam, -math.inf))
    log_b = torch.where(lam > 0, torch.log(torch.where(lam > 0, lam, torch.ones_like(lam))), torch.full_like(lam, -math.inf))
    return log_a, log_b


def interpolate(base_logp: torch.Tensor, knn_logp: torch.Tensor, lambda_: float | torch.Tensor) -> torch.Tensor:
    """log((1 - lambda) p_LM + lambda p_kNN) in log space; lambda a float or broadcastable per row."""
    log_a, log_b = _lambda_logs(lambda_)
    return torch.logaddexp(base_logp + log_a, knn_logp + log_b)  # shape of base_logp


def mix_nll(base_lp: np.ndarray, D: np.ndarray, hit: np.ndarray, temperature: float,
            lambda_: float | np.ndarray) -> np.ndarray:
    """(n,) negative log-likelihood of the targets under kNN-LM; unsearched positions keep the base LM.

    base_lp: (n,) base log p of each target; D, hit: (n, k) of the k neighbours to use;
    lambda_: one weight, or (n,) weights (per-token lambda).
    """
    base = torch.from_numpy(np.asarray(base_lp, dtype=np.float32))  # (n,)
    Dt = torch.from_numpy(np.asarray(D, dtype=np.float32))  # (n, k)
    knn = knn_target_log_probs(Dt, torch.from_numpy(np.asarray(hit, dtype=bool)), temperature)  # (n,)
    lam = torch.as_tensor(np.asarray(lambda_, dtype=np.float32))
    mix = interpolate(base, knn, lam)  # (n,)
    return (-torch.where(torch.isfinite(Dt[:, 0]), mix, base)).numpy()  # (n,)


def sweep_nll(base_lp: np.ndarray, D: np.ndarray, hit: np.ndarray, ks: Sequence[int], temperatures: Sequence[float],
              lambdas: Sequence[float], groups: np.ndarray | None = None, n_groups: int = 1,
              chunk: int = 4096) -> np.ndarray:
    """Summed NLL for every (group, k, T, lambda) from one retrieval: (G, nk, nT, nL).

    Vectorised over temperatures and lambdas (one log-softmax per k and chunk of tokens); the
    smaller k use the first k neighbours, exactly as a fresh search with that k would. `groups`
    (n,) int in [0, n_groups) splits the tokens (e.g. cross-validation folds); divide by the
    group sizes for means.
    """
    n = int(np.asarray(base_lp).size)
    g = np.zeros(n, dtype=np.int64) if groups is None else np.asarray(groups, dtype=np.int64)
    T = torch.tensor([float(t) for t in temperatures])[:, None, None]  # (nT, 1, 1)
    log_a, log_b = _lambda_logs(torch.tensor([float(x) for x in lambdas]))  # (nL,)
    out = torch.zeros(n_groups, len(ks), len(temperatures), len(lambdas), dtype=torch.float64)
    for a in range(0, n, chunk):
        base = torch.from_numpy(np.asarray(base_lp[a:a + chunk], dtype=np.float32))  # (c,)
        gi = torch.from_numpy(g[a:a + chunk])  # (c,)
        for ki, k in enumerate(ks):
            Dk = torch.from_numpy(np.asarray(D[a:a + chunk, :k], dtype=np.float32))  # (c, k)
            knn = knn_target_log_probs(Dk, torch.from_numpy(np.asarray(hit[a:a + chunk, :k], dtype=bool)), T)  # (nT, c)
            mix = torch.logaddexp(base[None, :, None] + log_a, knn[:, :, None] + log_b)  # (nT, c, nL)
            mix = torch.where(torch.isfinite(Dk[:, 0])[None, :, None], mix, base[None, :, None])  # (nT, c, nL)
            out[:, ki].index_add_(0, gi, (-mix).permute(1, 0, 2).double())  # (G, nT, nL)
    return out.numpy()


@dataclass(frozen=True)
class LambdaFn:
    """Per-token lambda = sigmoid(bias + weights . (features - mean) / std); JSON in the manifest."""

    weights: tuple[float, ...]
    bias: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    features: tuple[str, ...] = FEATURES

    def __post_init__(self) -> None:
        if not len(self.weights) == len(self.mean) == len(self.std) == len(self.features):
            raise ValueError("per-token lambda parameters have mismatched lengths")

    def __call__(self, feats: np.ndarray) -> np.ndarray:
        """feats: (n, F) from lambda_features -> (n,) lambda in (0, 1)."""
        z = (np.asarray(feats, dtype=np.float64) - np.asarray(self.mean)) / np.asarray(self.std)  # (n, F)
        return (1.0 / (1.0 + np.exp(-(z @ np.asarray(self.weights) + self.bias)))).astype(np.float32)  # (n,)

    def to_json(self) -> dict:
        return {"weights": list(self.weights), "bias": self.bias, "mean": list(self.mean), "std": list(self.std),
                "features": list(self.features)}

    @classmethod
    def from_json(cls, d: dict) -> LambdaFn:
        return cls(tuple(map(float, d["weights"])), float(d["bias"]), tuple(map(float, d["mean"])),
                   tuple(map(float, d["std"])), tuple(d.get("features", FEATURES)))


def distance_gate(d0: np.ndarray, ref: tuple[float, float]) -> np.ndarray:
    """(n,) factor in [0, 1] on lambda, non-increasing in the nearest neighbour's distance d0 (n,).

    ref = (near, far): distances of the datastore's own held-out slice (lm.datastore.calibration.
    distance_ref). 1 up to `near`, 0 from `far` on, linear in log-distance between: where the
    neighbours are farther than any in-domain text put them, the calibration says nothing, and
    kNN-LM falls back to the base LM instead of mixing in far-off tokens. Unsearched rows (inf): 0.
    """
    near, far = (max(float(x), 1e-12) for x in ref)
    d = np.asarray(d0, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (np.log(np.maximum(d, 1e-12)) - math.log(near)) / max(math.log(far) - math.log(near), 1e-9)
    g = np.clip(1.0 - t, 0.0, 1.0)
    return np.where(np.isfinite(d), g, 0.0).astype(np.float32)  # (n,)


def lambda_features(D: np.ndarray, values: np.ndarray, max_p: np.ndarray, temperature: float) -> np.ndarray:
    """(n, 3) retrieval features: log(1 + nearest distance), p_kNN of the nearest neighbour's token
    (how much the neighbours agree), and the base LM's top probability (He et al., 2021).

    D, values: (n, k) neighbours (values -1 = none); max_p: (n,). Unsearched rows get zeros.
    """
    Dt = torch.from_numpy(np.asarray(D, dtype=np.float32))  # (n, k)
    v = np.asarray(values)
    same = torch.from_numpy((v == v[:, :1]) & (v >= 0))  # (n, k) neighbour shares the nearest's token
    top = knn_target_log_probs(Dt, same, temperature).exp().numpy()  # (n,)
    d0 = np.asarray(D[:, 0], dtype=np.float64)  # (n,)
    ok = np.isfinite(d0)
    f = np.stack([np.log1p(np.where(ok, np.maximum(d0, 0), 0)), np.where(ok, top, 0), np.asarray(max_p, dtype=np.float64)], 1)
    return f  # (n, 3)
