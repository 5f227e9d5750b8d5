"""The fitted answer model: every weight and threshold of passage choice, phrase and abstention.

They live in lm/rag/params.json, written only by benchmarks/fit_answers.py, which records the
question sets it was fitted on, the date and the leave-one-corpus-out held-out scores. The file
carries a sha256 of its content, so a hand edit (or a damaged copy) is refused instead of silently
changing answers; a missing file is refused too. The feature names are stored with their weights
and must match the code's, so a feature added without a refit cannot be multiplied by a stale weight.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from retrieval.errors import CorruptStoreError

PATH = Path(__file__).with_name("params.json")
FIX = "restore lm/rag/params.json from the repository, or refit it: python -m benchmarks.fit_answers --from-rows"


@dataclass(frozen=True)
class Params:
    max_embed: int  # units embedded per question (the best lexical evidence first)
    max_units: int  # units per passage
    max_words: int  # words per passage
    unit_weights: tuple[float, ...]  # lm.rag.passages.UNIT_FEATURES order
    tau: float  # the passage grows until its units' probability mass reaches tau
    abstain_weights: tuple[float, ...]  # intercept, then lm.rag.abstain.ABSTAIN_FEATURES order
    abstain_threshold: float  # answer when p(answerable) >= this
    phrase_weights: tuple[float, ...]  # lm.rag.reader.PHRASE_FEATURES order
    phrase_threshold: float  # give a phrase when p(phrase | unit) * p(unit) >= this
    fit: dict[str, Any]  # what it was fitted on, when, and how it scored held out


def checksum(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def dump(model: dict[str, Any], fit: dict[str, Any], path: Path = PATH) -> None:
    body = {"format": 1, "model": model, "fit": fit}
    path.write_text(json.dumps({**body, "sha256": checksum(body)}, indent=1) + "\n", encoding="utf-8")


def _names(model: dict[str, Any], key: str, want: tuple[str, ...], path: Path) -> None:
    if tuple(model.get(key, ())) != want:
        raise CorruptStoreError(f"{path}: its {key} {model.get(key)} are not the code's {list(want)}",
                                "refit it: python -m benchmarks.fit_answers --from-rows")


def parse(raw: str, path: Path = PATH) -> Params:
    try:
        d = json.loads(raw)
        body = {k: d[k] for k in ("format", "model", "fit")}
        stored = d["sha256"]
    except (ValueError, KeyError, TypeError) as e:
        raise CorruptStoreError(f"{path} is not a fitted answer-parameter file ({e})", FIX) from e
    if checksum(body) != stored:
        raise CorruptStoreError(f"{path} was changed after it was fitted (its sha256 does not match)", FIX)
    return from_model(body["model"], body["fit"], path)


def from_model(m: dict[str, Any], fit: dict[str, Any] | None = None, path: Path = PATH) -> Params:
    """Params from a model dict as lm.rag.fit.fit returns it (the file's "model")."""
    from lm.rag.abstain import ABSTAIN_FEATURES
    from lm.rag.passages import UNIT_FEATURES
    from lm.rag.reader import PHRASE_FEATURES

    _names(m, "unit_features", UNIT_FEATURES, path)
    _names(m, "abstain_features", ABSTAIN_FEATURES, path)
    _names(m, "phrase_features", PHRASE_FEATURES, path)
    try:
        return Params(int(m["max_embed"]), int(m["max_units"]), int(m["max_words"]),
                      tuple(float(x) for x in m["unit_weights"]), float(m["tau"]),
                      tuple(float(x) for x in m["abstain_weights"]), float(m["abstain_threshold"]),
                      tuple(float(x) for x in m["phrase_weights"]), float(m["phrase_threshold"]), fit or {})
    except (KeyError, TypeError, ValueError) as e:
        raise CorruptStoreError(f"{path} lacks a fitted value ({e})", FIX) from e


def load(path: Path = PATH) -> Params:
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise CorruptStoreError(f"the fitted answer parameters {path} are missing", FIX) from e
    return parse(raw, path)


@lru_cache(maxsize=1)
def default() -> Params:
    return load(PATH)
