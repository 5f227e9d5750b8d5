"""Calibrate a datastore: score its held-out slice (or the user's text) once, choose, record.

One forward pass over the slice with k_max neighbours per token; the choice itself is pure
(lm.datastore.calibration.choose). The record goes into the manifest, where KNNLM.load finds it.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from lm.datastore.calibration import BLOCK, CAL_KS, Calibration, choose
from lm.datastore.token_store import TokenStore
from lm.knnlm import KNNLM, KNNConfig, TokenScores
from retrieval.errors import InvalidInputError

log = logging.getLogger(__name__)


def heldout_pieces(lm, store: TokenStore) -> list[tuple[np.ndarray, int]]:
    """(token ids, first held-out target) per document with a held-out tail, from the manifest."""
    docs = store.docs()
    pieces = []
    for doc, start in store.manifest.get("heldout") or []:
        ids = np.asarray(lm.tokenizer(docs[int(doc)]["text"], add_special_tokens=False)["input_ids"], dtype=np.int64)
        if int(start) < ids.size:
            pieces.append((ids, max(1, int(start))))
    return pieces


def score_pieces(knn: KNNLM, pieces: Sequence[tuple[np.ndarray, int]], cfg: KNNConfig) -> TokenScores:
    """Base log-probs and k_max neighbours of every target; each tail keeps up to half a window of its document as context."""
    from lm.knnlm import Retrieval

    half = knn.window_size() // 2
    parts = []
    for ids, start in pieces:
        lo = max(0, start - half)
        parts.append(knn.score_ids(ids[lo:], [cfg], first_target=start - lo))
    rs = [p.retrievals[0] for p in parts]
    r = Retrieval(np.concatenate([x.D for x in rs]), np.concatenate([x.hit for x in rs]), np.concatenate([x.values for x in rs]),
                  sum(x.seconds for x in rs), sum(x.searched for x in rs))
    return TokenScores(np.concatenate([p.base_lp for p in parts]), np.concatenate([p.max_p for p in parts]),
                       sum(p.base_seconds for p in parts), [r])


def calibrate_store(lm, store: TokenStore, texts: Sequence[str] | None = None, *, fit_per_token: bool = True,
                    search: KNNConfig | None = None) -> Calibration | None:
    """Choose k, temperature and lambda for `store` on its held-out slice, or on `texts`; record it.

    Returns None (and records why) when there is nothing to calibrate on: the defaults then apply.
    `search`: the search settings (nprobe, exact, re-rank) to calibrate with (default: the defaults,
    which KNNLM.load also uses).
    """
    if store.count < 1:
        raise InvalidInputError(f"datastore {store.path} is empty", "build it first")
    if texts:
        pieces = [(np.asarray(lm.tokenizer(t, add_special_tokens=False)["input_ids"], dtype=np.int64), 1) for t in texts]
        source = "text"
    else:
        pieces = heldout_pieces(lm, store)
        source = "heldout"
    n = sum(int(ids.size - s) for ids, s in pieces)
    if n < 2 * BLOCK:
        why = (f"the calibration text has {n} tokens, fewer than {2 * BLOCK}" if source == "text" else
               "the corpus was too small to hold out a calibration slice" if not pieces else
               f"the held-out slice has {n} tokens, fewer than {2 * BLOCK}")
        if source == "text":
            raise InvalidInputError(why, "pass more text to `knnrag datastore calibrate`")
        store.commit(fields={"calibration": {"skipped": why}})
        log.warning("not calibrated: %s; the defaults apply", why)
        return None
    cfg = replace(search or KNNConfig(), k=min(max(CAL_KS), store.count), lambda_=0.0, lambda_fn=None)
    knn = KNNLM(lm, store, cfg)
    sc = score_pieces(knn, [p for p in pieces if p[0].size - p[1] > 0], cfg)
    r = sc.retrievals[0]
    cal = choose(sc.base_lp, r.D, r.hit, r.values, sc.max_p, source=source, fit_per_token=fit_per_token)
    store.commit(fields={"calibration": cal.to_json()})
    log.info("calibrated %s: %s", store.path, cal.describe())
    return cal
