"""kNN-LM never trusts its datastore further than the evidence goes (issue 30, case 15): lambda is
bounded by the standard error of its gain on the held-out slice, and goes to 0 as the nearest
neighbour moves beyond the distances the slice saw; `eval` says when a text is unlike the datastore."""
from __future__ import annotations

import numpy as np

from lm.datastore.calibration import Calibration, choose, distance_ref, shrunk_lambda
from lm.eval import unlike_datastore
from lm.knn import distance_gate, mix_nll
from lm.knnconfig import KNNConfig


def test_distance_gate_is_monotone_and_bounded():
    d = np.array([0.1, 1.0, 2.0, 4.0, 8.0, 16.0, 100.0, np.inf])
    g = distance_gate(d, (2.0, 16.0))
    assert g[0] == g[1] == g[2] == 1.0 and g[5] == g[6] == g[7] == 0.0
    assert np.all(np.diff(g) <= 0) and 0 < g[3] < 1 and abs(g[3] - 2 / 3) < 1e-6  # linear in log-distance


def _slice(rng, n, gain_tokens, k=8):
    """Held-out tokens: on `gain_tokens` of them the neighbours all hold the target (kNN helps a lot)."""
    base_lp = np.full(n, -3.0)
    D = np.sort(rng.uniform(1.0, 2.0, size=(n, k)), axis=1)
    hit = np.zeros((n, k), dtype=bool)
    hit[rng.choice(n, gain_tokens, replace=False)] = True
    return base_lp, D, hit


def _best_mean(base_lp, D, hit, lams):
    return lams[int(np.argmin([mix_nll(base_lp, D, hit, 1.0, lam).mean() for lam in lams]))]


def test_small_slice_shrinks_lambda_large_slice_keeps_it():
    rng = np.random.default_rng(0)
    lams = (0.0, 0.1, 0.3, 0.6, 0.9)
    small = _slice(rng, 96, 0)
    small[2][:24] = True  # three blocks; kNN helps only inside the first: a gain the slice cannot vouch for
    large = _slice(rng, 6400, 2700)
    assert shrunk_lambda(*small, 8, 1.0, lams) < _best_mean(*small, lams)
    assert shrunk_lambda(*large, 8, 1.0, lams) == _best_mean(*large, lams)
    noise = _slice(rng, 3200, 0)  # kNN never holds the target: any lambda only hurts
    assert shrunk_lambda(*noise, 8, 1.0, lams) == 0.0


def test_calibration_records_the_gate_and_applies_it():
    rng = np.random.default_rng(1)
    base_lp, D, hit = _slice(rng, 2048, 900)
    cal = choose(base_lp, D, hit, np.where(hit, 5, 7).astype(np.int32), np.full(2048, 0.2), fit_per_token=False)
    assert cal.lambda_ > 0 and cal.distance_ref == distance_ref(D)
    again = Calibration.from_json(cal.to_json())
    cfg = again.apply(KNNConfig())
    assert cfg.distance_gate == cal.distance_ref
    far = np.array([[cal.distance_ref[0] * 0.9] * 8, [cal.distance_ref[1] * 2] * 8])  # one token near, one far beyond the slice
    lam = cfg.token_lambdas(far, np.zeros((2, 8), np.int32), np.array([0.2, 0.2]))
    assert lam[0] == np.float32(cfg.lambda_) and lam[1] == 0.0


def test_eval_says_when_text_is_unlike_the_datastore():
    near = np.full((1000, 4), 1.0)
    assert unlike_datastore(near, (2.0, 8.0)) is None
    far = np.full((1000, 4), 20.0)
    note = unlike_datastore(far, (2.0, 8.0))
    assert note and note["beyond_far"] == 1.0 and "unlike the datastore" in note["message"]
    assert unlike_datastore(far, None) is None
