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
    """Perplexity for every (k, T, lambda) from one retrieval (see lm.knnlm.Retrieval)."""
    from lm.knnlm import mix_nll

    grid = []
    for k in ks:
        if k > retrieval.D.shape[1]:
            continue
        for T in temperatures:
            for lam in lambdas:
                ppl = float(np.exp(mix_nll(base_lp, retrieval, k, T, lam).mean()))
                grid.append({"k": int(k), "temperature": float(T), "lambda": float(lam), "ppl": round(ppl, 4)})
    return grid


def best_of(grid: list[dict]) -> dict:
    return min(grid, key=lambda g: g["ppl"])


def plot_sweep(grid: list[dict], base_ppl: float, path: str | Path, title: str = "kNN-LM perplexity vs lambda") -> str:
    """PNG of perplexity against lambda, one line per temperature, at the best k."""
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


def evaluate(knnlm, texts: Sequence[str], *, sweep: bool = False, plot: str | None = None,
             ks: Sequence[int] = KS, temperatures: Sequence[float] = TEMPERATURES,
             lambdas: Sequence[float] = LAMBDAS, stride: int | None = None) -> dict:
    """Perplexity of the concatenated texts (each scored on its own) for the default config; with
    sweep=True also the whole grid, the best setting and (plot=PNG) the plot."""
    from dataclasses import replace

    from lm.knnlm import mix_nll

    cfg = knnlm.config
    k_run = max([cfg.k, *ks]) if sweep else cfg.k
    if knnlm.has_datastore:
        k_run = min(k_run, knnlm.store.count)
    run_cfg = replace(cfg, k=k_run) if knnlm.has_datastore else cfg
    base, rets, base_s, knn_s, searched = [], [], 0.0, 0.0, 0
    for text in texts:
        sc = knnlm.score_tokens(text, [run_cfg], stride=stride)
        base.append(sc.base_lp)
        base_s += sc.base_seconds
        if sc.retrievals:
            rets.append(sc.retrievals[0])
            knn_s += sc.retrievals[0].seconds
            searched += sc.retrievals[0].searched
    base_lp = np.concatenate(base)  # (n,)
    out = {"base_ppl": round(float(np.exp(-base_lp.mean())), 4), "knn_ppl": None, "tokens": int(base_lp.size),
           "base_seconds": round(base_s, 3), "knn_seconds": None, "k": cfg.k, "lambda": cfg.lambda_,
           "temperature": cfg.temperature, "searched": searched, "datastore": knnlm.has_datastore}
    out["base_tokens_per_s"] = round(out["tokens"] / base_s, 1) if base_s else None
    if not rets:
        return out
    from lm.knnlm import Retrieval

    r = Retrieval(np.concatenate([x.D for x in rets]), np.concatenate([x.hit for x in rets]), knn_s, searched)
    out["knn_ppl"] = round(float(np.exp(mix_nll(base_lp, r, cfg.k, cfg.temperature, cfg.lambda_).mean())), 4)
    out["knn_seconds"] = round(base_s + knn_s, 3)  # with a sweep: timed while searching search_k neighbours
    out["search_k"] = k_run
    out["knn_tokens_per_s"] = round(out["tokens"] / out["knn_seconds"], 1)
    if sweep:
        grid = sweep_grid(base_lp, r, ks=[k for k in ks if k <= k_run] or [k_run], temperatures=temperatures, lambdas=lambdas)
        out["sweep"] = grid
        out["best"] = best_of(grid)
        if plot:
            out["plot"] = plot_sweep(grid, out["base_ppl"], plot)
    return out
