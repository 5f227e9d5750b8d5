"""Perplexity evaluation: base vs kNN-LM, sweeps over lambda / temperature / k, and the plot.

A sweep costs one pass: the neighbours (k_max of them) of every scored token are kept, and every
(k, T, lambda) is re-scored offline from them, exactly as a fresh run with those settings would.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

LAMBDAS = [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.8]
TEMPERATURES = [1.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0, 300.0]
KS = [8, 16, 32, 64]


def sweep_grid(base_lp: np.ndarray, retrieval, *, ks: Sequence[int], temperatures: Sequence[float],
               lambdas: Sequence[float]) -> list[dict]:
    """Perplexity for every (k, T, lambda) from one retrieval (lm.knnlm.Retrieval), vectorised (lm.knn.sweep_nll)."""
    from lm.knn import sweep_nll

    ks = [int(k) for k in ks if k <= retrieval.D.shape[1]]
    if not ks:
        return []
    sums = sweep_nll(base_lp, retrieval.D, retrieval.hit, ks, temperatures, lambdas)[0] / max(1, base_lp.size)  # (nk, nT, nL)
    return [{"k": k, "temperature": float(T), "lambda": float(lam), "ppl": round(float(np.exp(sums[a, b, c])), 4)}
            for a, k in enumerate(ks) for b, T in enumerate(temperatures) for c, lam in enumerate(lambdas)]


def best_of(grid: list[dict]) -> dict:
    return min(grid, key=lambda g: g["ppl"])


def plot_sweep(grid: list[dict], base_ppl: float, path: str | Path, title: str = "kNN-LM perplexity vs lambda",
               calibrated: dict | None = None) -> str:
    """PNG of perplexity against lambda, one line per temperature, at the best k; `calibrated`
    ({lambda, ppl, k, temperature}) marks the datastore's calibrated setting on this text."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best = best_of(grid)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for T in sorted({g["temperature"] for g in grid}):
        pts = sorted((g["lambda"], g["ppl"]) for g in grid if g["k"] == best["k"] and g["temperature"] == T)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=f"T={T:g}")
    ax.axhline(base_ppl, color="gray", ls="--", lw=1, label=f"base LM {base_ppl:.2f}")
    ax.scatter([best["lambda"]], [best["ppl"]], color="red", zorder=5, label=f"best {best['ppl']:.2f}")
    if calibrated is not None:
        ax.scatter([calibrated["lambda"]], [calibrated["ppl"]], marker="*", s=160, color="black", zorder=6,
                   label=f"calibrated {calibrated['ppl']:.2f} (k={calibrated['k']}, T={calibrated['temperature']:.3g})")
    lo = min(g["ppl"] for g in grid)
    ax.set_ylim(lo * 0.98, base_ppl * 1.15)
    ax.set_xlabel("lambda (kNN weight)")
    ax.set_ylabel("perplexity")
    ax.set_title(f"{title} (k={best['k']})")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path = str(path)
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    import os

    os.replace(tmp, path)
    return path


def _score_all(knnlm, texts: Sequence[str], run_cfgs: list, stride: int | None):
    """One pass per text; the scores and the (single) retrieval of all texts concatenated."""
    from lm.knnlm import Retrieval, TokenScores

    parts = [knnlm.score_tokens(text, run_cfgs, stride=stride) for text in texts]
    rets = []
    if run_cfgs and parts[0].retrievals:
        rs = [p.retrievals[0] for p in parts]
        rets = [Retrieval(np.concatenate([r.D for r in rs]), np.concatenate([r.hit for r in rs]),
                          np.concatenate([r.values for r in rs]), sum(r.seconds for r in rs), sum(r.searched for r in rs))]
    return TokenScores(np.concatenate([p.base_lp for p in parts]), np.concatenate([p.max_p for p in parts]),
                       sum(p.base_seconds for p in parts), rets)


def unlike_datastore(D: np.ndarray, gate: tuple[float, float] | None) -> dict | None:
    """Say so when the text's nearest neighbours are farther than the datastore's own held-out text
    puts them (median beyond the gate's `near` end): kNN-LM then mostly falls back to the base LM."""
    d0 = np.asarray(D[:, 0], dtype=np.float64)
    d0 = d0[np.isfinite(d0)]
    if gate is None or not d0.size:
        return None
    med = float(np.median(d0))
    if med <= gate[0]:
        return None
    beyond = float((d0 >= gate[1]).mean())
    return {"median_nearest_distance": round(med, 4), "heldout_near": round(gate[0], 4), "heldout_far": round(gate[1], 4),
            "beyond_far": round(beyond, 4),
            "message": (f"this text is unlike the datastore: its median nearest-neighbour distance {med:.3g} is past 90% of "
                        f"the datastore's own held-out tokens ({gate[0]:.3g}), and {100 * beyond:.0f}% of its tokens are past "
                        f"all but 0.5% ({gate[1]:.3g}); kNN is damped there, so expect little change from the base LM")}


def evaluate(knnlm, texts: Sequence[str], *, sweep: bool = False, plot: str | None = None,
             ks: Sequence[int] = KS, temperatures: Sequence[float] = TEMPERATURES,
             lambdas: Sequence[float] = LAMBDAS, stride: int | None = None) -> dict:
    """Perplexity of the concatenated texts (each scored on its own) for the model's config (the
    datastore's calibration by default); with sweep=True also the whole grid, the best setting and
    (plot=PNG) the plot with the calibrated point marked."""
    from dataclasses import replace

    from lm.knnlm import config_nll

    cfg = knnlm.config
    k_run = max([cfg.k, *ks]) if sweep else cfg.k
    if knnlm.has_datastore:
        k_run = min(k_run, knnlm.store.count)
    search = knnlm.has_datastore and (sweep or cfg.mixes)  # lambda 0 needs no neighbours
    sc = _score_all(knnlm, texts, [replace(cfg, k=k_run)] if search else [], stride)
    base_ppl = round(float(np.exp(-sc.base_lp.mean())), 4)
    cal = knnlm.calibration
    out = {"base_ppl": base_ppl, "knn_ppl": None, "tokens": sc.tokens,
           "base_seconds": round(sc.base_seconds, 3), "knn_seconds": None, "k": cfg.k, "lambda": cfg.lambda_,
           "temperature": cfg.temperature, "per_token_lambda": cfg.lambda_fn is not None, "searched": 0,
           "datastore": knnlm.has_datastore, "calibration": cal.to_json() if cal else None,
           "note": cal.message() if cal and not cfg.mixes else None}
    out["base_tokens_per_s"] = round(sc.tokens / sc.base_seconds, 1) if sc.base_seconds else None
    if not knnlm.has_datastore:
        return out
    if not sc.retrievals:  # lambda 0: kNN-LM is the base LM
        out.update(knn_ppl=base_ppl, knn_seconds=out["base_seconds"], knn_tokens_per_s=out["base_tokens_per_s"])
        return out
    r = sc.retrievals[0]
    out["knn_ppl"] = round(float(np.exp(config_nll(sc, r, cfg).mean())), 4)
    out["unlike_datastore"] = unlike_datastore(r.D, cfg.distance_gate)
    if out["unlike_datastore"]:
        out["note"] = out["unlike_datastore"]["message"]
    out["searched"] = r.searched
    out["knn_seconds"] = round(sc.base_seconds + r.seconds, 3)  # with a sweep: timed while searching search_k neighbours
    out["search_k"] = k_run
    out["knn_tokens_per_s"] = round(sc.tokens / out["knn_seconds"], 1)
    if sweep:
        temps = sorted({*map(float, temperatures), float(cfg.temperature)})
        grid = sweep_grid(sc.base_lp, r, ks=sorted({k for k in (*ks, cfg.k) if k <= k_run}) or [k_run],
                          temperatures=temps, lambdas=sorted({*map(float, lambdas), float(cfg.lambda_)}))
        out["sweep"] = grid
        out["best"] = best_of(grid)
        if plot:
            mark = {"lambda": cfg.lambda_, "ppl": out["knn_ppl"], "k": cfg.k, "temperature": cfg.temperature}
            out["plot"] = plot_sweep(grid, out["base_ppl"], plot, calibrated=mark)
    return out
