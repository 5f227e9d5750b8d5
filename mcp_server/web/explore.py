"""The kNN-LM explorer's numbers: per-token log-probability change, per-token lambda, and on demand one
token's base / kNN-LM top-5 and its neighbours with their sources.

The whole text is scored by KNNLM.score_ids, the pass `knnrag eval` makes (one forward per window,
one batched search per window), so the explorer costs what an eval of the same text costs; the
details of a token (a forward over its context and one search) are computed when it is clicked.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from retrieval.errors import InvalidInputError

MAX_EXPLORE_TOKENS = 2048  # ~100 bytes of JSON a token: a reply stays near 200 KB
TOP = 5
Resolve = Callable[[list[str]], dict[str, Any]]  # chunk ids -> their Hits (the collection's)


def config_for(knnlm: Any, lambda_: float | None):
    from lm.knnconfig import KNNOverrides

    return KNNOverrides(lambda_=lambda_).apply(knnlm.config)


def tokens_of(tok: Any, text: str) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """(ids (L,), [start, end) of each token in `text`); the same ids KNNLM scores."""
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=bool(getattr(tok, "is_fast", False)))
    ids = np.asarray(enc["input_ids"], dtype=np.int64)  # (L,)
    if ids.size > MAX_EXPLORE_TOKENS:
        raise InvalidInputError(f"the text has {ids.size} tokens, over the explorer's limit of {MAX_EXPLORE_TOKENS}",
                                "paste a shorter text (or score it whole with `knnrag eval`)")
    if ids.size < 2:
        raise InvalidInputError(f"the text has {ids.size} token(s); the explorer needs at least 2", "paste a longer text")
    offs = enc.get("offset_mapping")
    if offs is None:  # slow tokenizer: offsets from incremental decoding
        offs, end = [], 0
        for i in range(ids.size):
            piece = tok.decode(ids[:i + 1].tolist())
            offs.append((min(end, len(text)), min(len(piece), len(text))))
            end = len(piece)
    return ids, [(int(a), int(b)) for a, b in offs]


def _calibration(knnlm: Any) -> str | None:
    cal = knnlm.calibration
    return cal.describe() if cal is not None else None


def explore(knnlm: Any, text: str, lambda_: float | None = None) -> dict:
    """Every token after the first: base and kNN-LM log p of it, the change, and lambda."""
    import torch

    from lm.knn import knn_target_log_probs
    from lm.knnconfig import config_nll

    cfg = config_for(knnlm, lambda_)
    ids, offs = tokens_of(knnlm.lm.tokenizer, text)
    t0 = time.perf_counter()
    search = bool(knnlm.has_datastore and cfg.mixes)
    sc = knnlm.score_ids(ids, [cfg] if search else [])
    base = sc.base_lp  # (n,) n = L - 1
    if search:
        r = sc.retrievals[0]
        mixed = -config_nll(sc, r, cfg)  # (n,)
        lam = np.broadcast_to(np.asarray(cfg.token_lambdas(r.D, r.values, sc.max_p), dtype=np.float64), base.shape)
        knn = knn_target_log_probs(torch.from_numpy(r.D[:, :cfg.k]), torch.from_numpy(r.hit[:, :cfg.k]),
                                   cfg.temperature).numpy()  # (n,)
    else:
        mixed, lam, knn = base, np.zeros_like(base), np.full_like(base, -np.inf)
    seconds = time.perf_counter() - t0
    delta = mixed - base  # (n,)
    rows = [{"i": j + 1, "start": offs[j + 1][0], "end": offs[j + 1][1], "delta": round(float(delta[j]), 4),
             "base": round(float(base[j]), 4), "knn": round(float(mixed[j]), 4),
             "p_knn": round(float(np.exp(knn[j])), 4), "lambda": round(float(lam[j]), 4)} for j in range(base.size)]
    n = base.size
    summary = {"tokens": n, "seconds": round(seconds, 4), "tokens_per_s": round(n / seconds, 1) if seconds else None,
               "base_ppl": round(float(np.exp(-base.mean())), 4), "knn_ppl": round(float(np.exp(-mixed.mean())), 4),
               "k": cfg.k, "temperature": cfg.temperature, "lambda": cfg.lambda_,
               "per_token_lambda": cfg.lambda_fn is not None, "datastore": knnlm.has_datastore,
               "entries": int(knnlm.store.count) if knnlm.store is not None else 0,
               "calibration": _calibration(knnlm), "overridden": lambda_ is not None,
               "note": _note(knnlm, cfg)}
    return {"text": text, "first": {"start": offs[0][0], "end": offs[0][1]}, "tokens": rows, "summary": summary}


def _note(knnlm: Any, cfg: Any) -> str | None:
    if not knnlm.has_datastore:
        return ("no kNN datastore: build the collection's own with `knnrag index PATH --store S --knn`, or start "
                "the page with --datastore DIR; the colours stay neutral (base LM alone)")
    if not cfg.mixes:
        msg = knnlm.calibration.message() if knnlm.calibration else None
        return (msg or "lambda is 0: kNN-LM is the base LM") + "; set lambda above to see what kNN would change"
    return None


def _top(lp: Any, dec: Callable[[list[int]], str]) -> list[dict]:
    import torch

    p, i = torch.topk(lp.exp(), min(TOP, lp.numel()))
    return [{"token": dec([int(t)]), "prob": _sig(q)} for q, t in zip(p, i) if float(q) > 0]


def _sig(x: Any) -> float:
    """4 significant digits: a probability of 3e-7 stays readable, not 0.0."""
    return float(f"{float(x):.4g}")


def token_detail(knnlm: Any, text: str, position: int, lambda_: float | None, resolve: Resolve) -> dict:
    """Token `position` of the text: the distributions predicting it and the neighbours behind kNN's."""
    import torch

    from lm.hooks import capture, resolve_module
    from lm.knn import interpolate
    from lm.models import autocast

    cfg = config_for(knnlm, lambda_)
    ids, offs = tokens_of(knnlm.lm.tokenizer, text)
    if not 1 <= position < ids.size:
        raise InvalidInputError(f"token {position} is not in the text ({ids.size} tokens)", "click a token of the text")
    ctx = ids[:position][-knnlm.window_size():]  # (T,) the context the scoring window gives it, at most
    module = resolve_module(knnlm.lm.model, knnlm.lm.key_module_path)
    with torch.inference_mode(), autocast(knnlm.lm), capture(module, output=knnlm.lm.key_is_output) as cap:
        logits = knnlm.lm.model(input_ids=torch.from_numpy(ctx)[None], use_cache=False).logits  # (1, T, V)
        base = torch.log_softmax(logits[0, -1].float(), -1)  # (V,)
        key = cap.take()[0, -1:].float().numpy()  # (1, D)
    dec = knnlm.lm.tokenizer.decode
    target = int(ids[position])
    out: dict[str, Any] = {"position": position, "token": text[offs[position][0]:offs[position][1]],
                           "base_top": _top(base, dec), "knn_top": _top(base, dec), "neighbours": [],
                           "p_base": _sig(base[target].exp()), "p_knn": _sig(base[target].exp()),
                           "lambda": 0.0}
    if knnlm.has_datastore and cfg.mixes:
        knn, nb = knnlm.knn_distribution(key, cfg)  # (1, V)
        V = base.shape[-1]
        knn = knn[:, :V] if knn.shape[-1] >= V else torch.nn.functional.pad(knn, (0, V - knn.shape[-1]), value=-float("inf"))
        lam = float(np.asarray(knnlm.full_vocab_lambda(cfg, nb.D, nb.I, knn, base[None])).reshape(-1)[0])
        mix = interpolate(base, knn[0], lam)  # (V,)
        out.update(knn_top=_top(mix, dec), knn_only_top=_top(knn[0], dec), p_knn=_sig(mix[target].exp()),
                   lambda_=round(lam, 4), neighbours=neighbours(knnlm.store, nb.D[0], nb.I[0], target, dec, resolve))
        out["lambda"] = out.pop("lambda_")
    return out


def neighbours(ds: Any, D: np.ndarray, I: np.ndarray, target: int, dec: Callable, resolve: Resolve) -> list[dict]:
    """Each neighbour's stored token, distance and source: file and line (through its chunk when the
    datastore is a collection's own, `chunk:<id>` sources), and the characters to mark in the chunk."""
    from lm.knn_index import PREFIX

    keep = [(float(d), int(i)) for d, i in zip(D, I) if i >= 0]
    prov = ds.provenance(np.asarray([i for _d, i in keep], dtype=np.int64)) if keep else np.zeros((0, 3), np.int64)
    docs = ds.docs()
    chunk_ids = [docs[int(p[0])]["source"][len(PREFIX):] for p in prov if docs[int(p[0])]["source"].startswith(PREFIX)]
    hits = resolve(chunk_ids) if chunk_ids else {}
    rows = []
    for (d, i), (doc, _pos, char) in zip(keep, prov.tolist()):
        rec = docs[doc]
        value = int(ds.values[i])
        text = rec.get("text") or ""
        token = dec([value])
        size = _stored_length(text, char, token)
        row = {"token": token, "distance": round(d, 4), "entry": i, "match": value == target,
               "snippet": text[max(0, char - 160):char + size + 40], "mark": [min(char, 160), min(char, 160) + size],
               "source": rec["source"], "line": text[:char].count("\n") + 1, "chunk_id": None, "char": char,
               "char_end": char + size}
        if rec["source"].startswith(PREFIX):
            h = hits.get(rec["source"][len(PREFIX):])
            row["chunk_id"] = rec["source"][len(PREFIX):]
            if h is not None:
                row.update(source=str(h.source), line=int(h.start_line or 1) + text[:char].count("\n"))
            else:
                row["source"] = "(a chunk no longer in the collection)"
        rows.append(row)
    return rows


def _stored_length(text: str, char: int, token: str) -> int:
    """Characters of the stored token at `char`: offsets skip a byte-level token's leading space."""
    for piece in (token, token.lstrip()):
        if piece and text.startswith(piece, char):
            return len(piece)
    return max(1, len(token.strip()))


def sweep(knnlm: Any, text: str) -> dict:
    """`knnrag eval --sweep` on the text: perplexity over (k, T, lambda), the best and the calibrated point."""
    from lm.eval import evaluate

    if not knnlm.has_datastore:
        raise InvalidInputError("no kNN datastore: there is nothing to sweep",
                                "build the collection's own with `knnrag index PATH --store S --knn`, or pass --datastore")
    tokens_of(knnlm.lm.tokenizer, text)  # the same limit as the explorer
    out = evaluate(knnlm, [text], sweep=True)
    grid = out.get("sweep") or []
    return {"grid": grid[:2000], "best": out.get("best"), "base_ppl": out["base_ppl"], "knn_ppl": out["knn_ppl"],
            "k": out["k"], "temperature": out["temperature"], "lambda": out["lambda"], "tokens": out["tokens"]}
