"""The fitting script reproduces lm/rag/params.json from the committed rows, and its model is sane."""
from __future__ import annotations

import json

import pytest

from lm.rag import fit, params


@pytest.fixture(scope="module")
def rows():
    from benchmarks.fit_answers import read_rows

    return read_rows()


@pytest.mark.slow
def test_the_fit_reproduces_the_committed_parameters(rows):
    from benchmarks.fit_answers import fit_all

    committed = json.loads(params.PATH.read_text())
    model, info = fit_all(rows, committed["fit"]["date"])
    assert json.dumps(model, sort_keys=True) == json.dumps(committed["model"], sort_keys=True)
    assert json.dumps(info, sort_keys=True) == json.dumps(committed["fit"], sort_keys=True)


def test_the_rows_hold_four_corpora_and_off_topic_questions(rows):
    ans = {r["corpus"] for r in rows if r["kind"] == "answerable"}
    assert ans == {"projdocs", "sitedocs", "squad", "scifact"}
    assert sum(r["kind"] == "answerable" for r in rows) >= 300
    assert {r["store"] for r in rows if r["kind"] == "offtopic"} == {"projdocs", "sitedocs", "rhine", "scifact"}


def test_more_evidence_scores_higher_under_the_fitted_unit_weights():
    p = params.default()
    w = dict(zip(fit.UNIT_FEATURES, p.unit_weights))
    assert w["cov_head"] + w["cov"] > 0 and w["cos"] > 0  # the question's words and meaning count for a unit
