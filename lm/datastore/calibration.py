"""Choosing k, temperature and lambda on held-out text, and the manifest record of the choice.

Pure functions over cached neighbours (no model, no store): one retrieval with k_max neighbours
per held-out token re-scores every (k, T, lambda) (lm.knn.sweep_nll). Why cross-validation: the
grid has ~2000 settings and the slice a few thousand tokens, so the in-sample best always shows a
small "gain", even for an unrelated datastore. The slice is split into two folds of alternating
32-token blocks; the setting chosen on one fold is scored on the other, and only a gain that
holds there (and is > 2 standard errors of the per-token difference) keeps lambda > 0.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from lm.knn import FEATURES, LambdaFn, distance_gate, knn_target_log_probs, lambda_features, mix_nll, sweep_nll

CAL_KS = (4, 8, 16, 32, 64)
CAL_LAMBDAS = (0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
CAL_T_FACTORS = tuple(float(x) for x in np.geomspace(0.01, 10.0, 22))  # x median nearest distance: scale-free
BLOCK = 32  # tokens per cross-validation block (neighbouring tokens are correlated)
MIN_GAIN_NATS = 0.002  # ~0.2% perplexity: below this a gain is not worth a search per token
# The distance gate's ends, as quantiles of the held-out slice's nearest distances: lambda is kept in
# full up to where 90% of in-domain tokens find their nearest neighbour and reaches 0 past the
# farthest 0.5%. Not fitted to any corpus: "farther than in-domain text goes" is the definition of
# text the calibration knows nothing about (BENCHMARKS.md, kNN-LM on unlike text, has the effect).
GATE_QUANTILES = (0.90, 0.995)
# Tighter gates the slice may choose, tightest first: the one-standard-error rule (Breiman et al.,
# 1984) keeps the tightest whose in-domain gain is within one standard error of the best, since
# held-out text can vouch only for the distances it saw (bench_knnlm_unlike: with the q90-q99.5 gate
# alone a WikiText store still made unlike text 2.4% worse).
GATE_CANDIDATES = ((0.50, 0.90), (0.75, 0.95), GATE_QUANTILES)
SE_Z = 2.0  # lambda is chosen by the lower bound mean - 2 standard errors of its per-token gain
CAL_VERSION = 2


@dataclass(frozen=True)
class Calibration:
    """What `knnrag datastore build/calibrate` chose, and what it measured (the manifest's record)."""

    k: int
    temperature: float
    lambda_: float  # 0 when kNN did not help the slice
    heldout_tokens: int
    base_ppl: float  # base LM on the slice
    knn_ppl: float  # chosen fixed setting on the slice (in sample)
    cv_ppl: float  # fixed setting chosen on one fold, scored on the other (measured even when lambda is 0)
    source: str = "heldout"  # "heldout": the build's slice; "text": files passed to `datastore calibrate`
    lambda_fn: LambdaFn | None = None  # per-token lambda, kept only when it beat the fixed lambda
    lambda_fn_cv_ppl: float | None = None  # its cross-validated perplexity (reported even when dropped)
    fitted_fn: LambdaFn | None = None  # the per-token lambda as fitted, kept or not (for reports and benchmarks)
    version: int = CAL_VERSION
    distance_ref: tuple[float, float] | None = None  # (near, far) held-out nearest distances: the distance gate
    lambda_unshrunk: float | None = None  # the lambda with the best mean gain, before the standard-error bound

    @property
    def gain(self) -> float:
        """Cross-validated relative perplexity reduction (0.05 = 5% lower than the base LM)."""
        return 1.0 - self.cv_ppl / self.base_ppl

    def message(self) -> str | None:
        """The one line every command prints when kNN is off for this datastore."""
        if self.lambda_ > 0 or self.lambda_fn is not None:
            return None
        return (f"kNN does not help this corpus with this LM: on {self.heldout_tokens} held-out tokens the best setting "
                f"changed perplexity by {-100 * self.gain:+.2f}% cross-validated ({self.base_ppl:.2f} -> {self.cv_ppl:.2f}, "
                f"not a significant gain), so lambda = 0 (the base LM); pass --lambda to force kNN")

    def describe(self) -> str:
        fn = ""
        if self.lambda_fn_cv_ppl is not None:
            fn = f"; per-token lambda {'kept' if self.lambda_fn else 'dropped'} (ppl {self.lambda_fn_cv_ppl:.3f})"
        used = self.cv_ppl if self.lambda_ > 0 else self.base_ppl
        return (f"k={self.k} temperature={self.temperature:.4g} lambda={self.lambda_:g} on {self.heldout_tokens} "
                f"{self.source} tokens: ppl {self.base_ppl:.3f} -> {used:.3f} (best setting {-100 * self.gain:+.2f}% "
                f"cross-validated){fn}")

    def to_json(self) -> dict:
        return {"version": self.version, "k": self.k, "temperature": self.temperature, "lambda": self.lambda_,
                "heldout_tokens": self.heldout_tokens, "base_ppl": self.base_ppl, "knn_ppl": self.knn_ppl,
                "cv_ppl": self.cv_ppl, "gain": round(self.gain, 6), "source": self.source,
                "lambda_fn": self.lambda_fn.to_json() if self.lambda_fn else None,
                "lambda_fn_cv_ppl": self.lambda_fn_cv_ppl, "fitted_fn": self.fitted_fn.to_json() if self.fitted_fn else None,
                "distance_ref": list(self.distance_ref) if self.distance_ref else None,
                "lambda_unshrunk": self.lambda_unshrunk, "summary": self.describe()}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Calibration:
        fn, fitted = d.get("lambda_fn"), d.get("fitted_fn")
        ref = d.get("distance_ref")
        return cls(int(d["k"]), float(d["temperature"]), float(d["lambda"]), int(d["heldout_tokens"]), float(d["base_ppl"]),
                   float(d["knn_ppl"]), float(d["cv_ppl"]), str(d.get("source", "heldout")),
                   LambdaFn.from_json(fn) if fn else None, d.get("lambda_fn_cv_ppl"),
                   LambdaFn.from_json(fitted) if fitted else None, int(d.get("version", 1)),
                   (float(ref[0]), float(ref[1])) if ref else None, d.get("lambda_unshrunk"))

    def apply(self, cfg: Any) -> Any:
        """The KNNConfig with this calibration's k, temperature, lambda (and per-token lambda) and distance gate."""
        return replace(cfg, k=self.k, temperature=self.temperature, lambda_=self.lambda_, lambda_fn=self.lambda_fn,
                       distance_gate=self.distance_ref)


def temperature_grid(D: np.ndarray) -> list[float]:
    """Temperatures relative to the median nearest distance: squared L2 scales differ by model and layer."""
    d0 = np.asarray(D[:, 0], dtype=np.float64)
    d0 = d0[np.isfinite(d0)]
    scale = max(float(np.median(d0)) if d0.size else 1.0, 1e-3)
    return [scale * f for f in CAL_T_FACTORS]


def distance_ref(D: np.ndarray, quantiles: tuple[float, float] = GATE_QUANTILES) -> tuple[float, float] | None:
    """(near, far) nearest-neighbour distances of the held-out slice at these quantiles; None if unsearched."""
    d0 = np.asarray(D[:, 0], dtype=np.float64)
    d0 = d0[np.isfinite(d0)]
    if d0.size < 2 * BLOCK:
        return None
    near, far = (float(np.quantile(d0, q)) for q in quantiles)
    return (max(near, 1e-6), max(far, near * 1.0001, 2e-6))


def choose_gate(base_lp: np.ndarray, D: np.ndarray, hit: np.ndarray, k: int, T: float, lam: float) -> tuple[float, float] | None:
    """The tightest GATE_CANDIDATES gate whose held-out gain at lambda is within one standard error
    (over 32-token blocks) of the best candidate's; the loosest when lambda is 0."""
    refs = [distance_ref(D, q) for q in GATE_CANDIDATES]
    nb = base_lp.size // BLOCK
    if lam <= 0 or nb < 2 or refs[-1] is None:
        return refs[-1]
    stats = []
    for ref in refs:
        assert ref is not None
        diff = -base_lp - mix_nll(base_lp, D[:, :k], hit[:, :k], T, lam * distance_gate(D[:, 0], ref))  # (n,)
        blocks = diff[: nb * BLOCK].reshape(nb, BLOCK).mean(1)  # (nb,)
        stats.append((float(blocks.mean()), float(blocks.std(ddof=1)) / math.sqrt(nb)))
    best = max(range(len(stats)), key=lambda i: stats[i][0])
    floor = stats[best][0] - stats[best][1]
    return next(ref for ref, (mean, _se) in zip(refs, stats) if mean >= floor)


def shrunk_lambda(base_lp: np.ndarray, D: np.ndarray, hit: np.ndarray, k: int, T: float, lams: Sequence[float],
                  gate: np.ndarray | None = None) -> float:
    """The lambda whose per-token gain over the base LM has the highest lower bound, mean - SE_Z
    standard errors (over 32-token blocks: neighbouring tokens are correlated); 0 if none is above 0.

    Why: the best mean on a small slice over-trusts kNN (a 148-token slice chose 0.6 and then made
    other text 44% worse). The bound shrinks lambda toward 0 as far as the slice's noise demands,
    and not at all on a large slice where the gain is sure."""
    nb = base_lp.size // BLOCK
    if nb < 2:
        return 0.0
    best, best_lcb = 0.0, 0.0
    for lam in lams:
        if lam <= 0:
            continue
        lam_t = lam if gate is None else lam * gate
        diff = -base_lp - mix_nll(base_lp, D[:, :k], hit[:, :k], T, lam_t)  # (n,) gain per token
        blocks = diff[: nb * BLOCK].reshape(nb, BLOCK).mean(1)  # (nb,)
        lcb = float(blocks.mean()) - SE_Z * float(blocks.std(ddof=1)) / math.sqrt(nb)
        if lcb > best_lcb:
            best, best_lcb = float(lam), lcb
    return best


def folds_of(n: int) -> np.ndarray:
    return (np.arange(n) // BLOCK) % 2  # (n,)


class Choice:
    """Index of the best setting on each fold and on all tokens, from one grid of sums."""

    def __init__(self, sums: np.ndarray, counts: np.ndarray) -> None:
        self.means = sums / counts[:, None, None, None]  # (2, nk, nT, nL)
        self.all = sums.sum(0) / counts.sum()  # (nk, nT, nL)
        self.best = np.unravel_index(np.argmin(self.all), self.all.shape)
        self.fold_best = [np.unravel_index(np.argmin(self.means[f]), self.all.shape) for f in (0, 1)]


def _cv_token_nll(base_lp, D, hit, folds, ks, Ts, lams, ch: Choice) -> np.ndarray:
    """(n,) per-token NLL where each fold's tokens use the setting chosen on the other fold."""
    out = np.empty(base_lp.size)
    for f in (0, 1):
        ki, ti, li = ch.fold_best[1 - f]
        m = folds == f
        out[m] = mix_nll(base_lp[m], D[m, : ks[ki]], hit[m, : ks[ki]], Ts[ti], lams[li])
    return out


def choose(base_lp: np.ndarray, D: np.ndarray, hit: np.ndarray, values: np.ndarray, max_p: np.ndarray, *,
           source: str = "heldout", ks: Sequence[int] = CAL_KS, lambdas: Sequence[float] = CAL_LAMBDAS,
           temperatures: Sequence[float] | None = None, fit_per_token: bool = True) -> Calibration:
    """Calibrate from cached neighbours: base_lp, max_p (n,), D, hit, values (n, K) ascending distances."""
    n = int(base_lp.size)
    if n < 2 * BLOCK:
        raise ValueError(f"calibration needs at least {2 * BLOCK} tokens, got {n}")
    K = D.shape[1]
    ks = sorted({min(int(k), K) for k in ks})
    Ts = list(temperatures) if temperatures is not None else temperature_grid(D)
    lams = list(lambdas)
    if 0.0 not in lams:
        lams = [0.0, *lams]
    folds = folds_of(n)
    counts = np.bincount(folds, minlength=2).astype(np.float64)
    ch = Choice(sweep_nll(base_lp, D, hit, ks, Ts, lams, groups=folds, n_groups=2), counts)
    base_nll = float(-base_lp.mean())
    cv = _cv_token_nll(base_lp, D, hit, folds, ks, Ts, lams, ch)  # (n,)
    helps = _significant(-base_lp - cv)  # (n,) > 0 where kNN helped
    ki, ti, li = ch.best
    dref = distance_ref(D)
    gate = distance_gate(D[:, 0], dref) if dref is not None else None  # (n,)
    lam = shrunk_lambda(base_lp, D, hit, int(ks[ki]), float(Ts[ti]), lams, gate) if helps else 0.0
    dref = choose_gate(base_lp, D, hit, int(ks[ki]), float(Ts[ti]), lam) if dref is not None else None
    gate = distance_gate(D[:, 0], dref) if dref is not None else None  # (n,)
    knn_nll = float(mix_nll(base_lp, D[:, : ks[ki]], hit[:, : ks[ki]], Ts[ti], lam if gate is None else lam * gate).mean())
    cal = Calibration(k=int(ks[ki]), temperature=float(Ts[ti]), lambda_=lam, heldout_tokens=n,
                      base_ppl=round(math.exp(base_nll), 4), knn_ppl=round(math.exp(knn_nll), 4),
                      cv_ppl=round(math.exp(float(cv.mean())), 4), source=source, distance_ref=dref,
                      lambda_unshrunk=float(lams[li]) if helps else 0.0)
    if not fit_per_token:
        return cal
    ref = cv if helps else -base_lp  # (n,) what the fixed choice gives each token, cross-validated
    fn, fn_cv = _per_token(base_lp, D[:, : cal.k], hit[:, : cal.k], values[:, : cal.k], max_p, cal, folds, lams)
    keep = _significant(ref - fn_cv) and _significant(-base_lp - fn_cv)  # beats the fixed lambda and the base LM
    return replace(cal, lambda_fn=fn if keep else None, lambda_fn_cv_ppl=round(math.exp(float(fn_cv.mean())), 4), fitted_fn=fn)


def _significant(diff: np.ndarray) -> bool:
    """Mean per-token NLL improvement above MIN_GAIN_NATS and above 2 standard errors."""
    se = float(diff.std(ddof=1) / math.sqrt(diff.size)) if diff.size > 1 else math.inf
    return float(diff.mean()) > max(MIN_GAIN_NATS, 2.0 * se)


def fit_lambda_fn(base_lp: np.ndarray, knn_lp: np.ndarray, feats: np.ndarray, lambda0: float, *, steps: int = 60,
                  l2: float = 1e-3) -> LambdaFn:
    """Fit lambda_i = sigmoid(b + w . z_i) by maximum likelihood (L-BFGS), starting from the fixed lambda."""
    import torch

    mean = feats.mean(0)
    std = np.where(feats.std(0) > 1e-6, feats.std(0), 1.0)
    z = torch.from_numpy(((feats - mean) / std).astype(np.float32))  # (n, F)
    base = torch.from_numpy(np.asarray(base_lp, dtype=np.float32))  # (n,)
    knn = torch.from_numpy(np.asarray(knn_lp, dtype=np.float32))  # (n,)
    lam0 = min(max(lambda0, 0.02), 0.98)
    w = torch.zeros(z.shape[1], requires_grad=True)
    b = torch.tensor(math.log(lam0 / (1 - lam0)), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def loss_fn() -> torch.Tensor:
        opt.zero_grad()
        s = z @ w + b  # (n,)
        mix = torch.logaddexp(base + torch.nn.functional.logsigmoid(-s), knn + torch.nn.functional.logsigmoid(s))  # (n,)
        loss = -mix.mean() + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(loss_fn)
    return LambdaFn(tuple(float(x) for x in w.detach()), float(b.detach()), tuple(map(float, mean)),
                    tuple(map(float, std)), FEATURES)


def _per_token(base_lp, D, hit, values, max_p, cal: Calibration, folds, lams) -> tuple[LambdaFn, np.ndarray]:
    """Per-token lambda at the chosen (k, T): fitted on each fold, scored on the other; then on all."""
    import torch

    feats = lambda_features(D, values, max_p, cal.temperature)  # (n, F)
    knn = knn_target_log_probs(torch.from_numpy(D.astype(np.float32)), torch.from_numpy(hit), cal.temperature).numpy()  # (n,)
    searched = np.isfinite(D[:, 0])
    cv = np.empty(base_lp.size)
    for f in (0, 1):
        tr, te = (folds != f) & searched, folds == f
        lam0 = _best_fixed(base_lp[tr], D[tr], hit[tr], cal.temperature, lams)
        fn = fit_lambda_fn(base_lp[tr], knn[tr], feats[tr], lam0)
        cv[te] = mix_nll(base_lp[te], D[te], hit[te], cal.temperature, fn(feats[te]))
    lam_all = _best_fixed(base_lp[searched], D[searched], hit[searched], cal.temperature, lams)
    return fit_lambda_fn(base_lp[searched], knn[searched], feats[searched], lam_all), cv  # (n,) cross-validated NLL


def _best_fixed(base_lp, D, hit, T: float, lams) -> float:
    s = sweep_nll(base_lp, D, hit, [D.shape[1]], [T], lams)[0, 0, 0]  # (nL,)
    return float(lams[int(np.argmin(s))])
