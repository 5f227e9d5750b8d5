"""The datastore build in separable steps, so one process or many workers can run them.

1. `tokenize_doc`: a document -> DocTokens (ids, char offsets, decontamination mask, held-out start).
2. `holdout_starts`: which tail of which document is kept out for calibration (pure, deterministic).
3. `plan_targets`: every window of every document and the target positions it stores (pure).
4. `encode_windows` + `window_entries`: one forward to the key layer per batch -> (key, value, prov).
5. `ShardWriter`: buffers entries and stages them as append-only shards of the TokenStore.
6. `BuildState`: the resumable record in the manifest (how many planned windows are committed).

Steps 1-3 are pure functions of the documents and the settings, so a resumed or distributed
build sees the same plan; only `windows_done` (an index into the plan) has to be persisted.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import numpy as np

from lm.datastore.decontaminate import contaminated
from lm.windows import Window, plan_windows


class DocTokens(NamedTuple):
    """One document, tokenized, with what may be stored from it."""

    doc: int  # global document index in the datastore
    ids: np.ndarray  # (L,) int64 token ids
    offsets: np.ndarray  # (L,) int64 char offset of each token
    shared_starts: np.ndarray  # (h,) starts of n-grams shared with the decontamination text
    drop: np.ndarray  # (L,) bool: targets dropped by decontamination (scope "span")
    holdout_start: int  # targets >= this are the held-out calibration slice (L = none held out)


class PlannedWindow(NamedTuple):
    """One window of the plan and the document positions whose (key, value) it stores."""

    doc: int  # index into the DocTokens list
    window: Window
    targets: np.ndarray  # (n,) int64 target positions, ascending (empty: the window is not run)
    dropped: int  # targets removed by decontamination


class Entries(NamedTuple):
    keys: np.ndarray  # (n, D) float16
    values: np.ndarray  # (n,) int32 next-token ids
    prov: np.ndarray  # (n, 3) int64: doc, token position, char offset


def tokenize_doc(tok, doc: int, text: str, ev: np.ndarray, ngram: int, margin: int, holdout_start: int | None = None) -> DocTokens:
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = np.asarray(enc["input_ids"], dtype=np.int64)  # (L,)
    offs = np.asarray([o[0] for o in enc["offset_mapping"]], dtype=np.int64)  # (L,)
    starts, drop = contaminated(ids, ev, ngram, margin)
    return DocTokens(doc, ids, offs, starts, drop, int(ids.size if holdout_start is None else holdout_start))


def holdout_starts(lengths: Sequence[int], order_keys: Sequence[str], *, fraction: float, max_tokens: int,
                   min_tokens: int, cap: int | None = None) -> list[int]:
    """First held-out target of each document (its length when none is held out).

    The slice is the tail of documents taken in `order_keys` (content hash) order, whole documents
    while they fit: a tail is never context for a stored entry, so no stored key has seen the
    slice, and hash order makes the choice independent of the file order. The budget is
    `fraction` of the targets that will be stored (`cap` = --max-tokens), at most `max_tokens`;
    below `min_tokens` nothing is held out (too few tokens to measure a gain).
    """
    starts = [int(n) for n in lengths]
    total = sum(max(0, n - 1) for n in lengths)
    budget = min(int(math.floor(fraction * min(total, cap or total))), max_tokens)
    if budget < min_tokens:
        return starts
    left = budget
    for d in sorted(range(len(starts)), key=lambda i: order_keys[i]):
        n = starts[d] - 1  # targets of the document
        if n <= 0:
            continue
        take = min(n, left)
        starts[d] -= take  # whole document: start 1 (token 0 is never a target)
        left -= take
        if left == 0:
            break
    return starts


def select_targets(d: DocTokens, w: Window, scope: str, ngram: int) -> tuple[np.ndarray, int]:
    """(target positions of window `w` to store, number dropped by decontamination)."""
    tgt = np.arange(w.first_target, w.end, dtype=np.int64)  # (n,)
    if scope == "window":
        gone = bool(((d.shared_starts >= w.begin) & (d.shared_starts <= w.end - ngram)).any())
        return (tgt[:0], int(tgt.size)) if gone else (tgt, 0)
    keep = ~d.drop[tgt]  # (n,)
    return tgt[keep], int(tgt.size - keep.sum())


def plan_targets(docs: Sequence[DocTokens], window: int, stride: int, *, scope: str = "span", ngram: int = 13,
                 max_tokens: int | None = None) -> list[PlannedWindow]:
    """Every window of every document (over its stored part) in a fixed order, with its targets.

    After `max_tokens` targets the remaining windows carry none (and count no drops), exactly as
    a build that stops there.
    """
    plan: list[PlannedWindow] = []
    taken = 0
    for i, d in enumerate(docs):
        for w in plan_windows(d.holdout_start, window, stride):
            if max_tokens is not None and taken >= max_tokens:
                plan.append(PlannedWindow(i, w, np.zeros(0, dtype=np.int64), 0))
                continue
            tgt, dropped = select_targets(d, w, scope, ngram)
            if max_tokens is not None:
                tgt = tgt[: max_tokens - taken]
            taken += int(tgt.size)
            plan.append(PlannedWindow(i, w, tgt, dropped))
    return plan


class PlanStats(NamedTuple):
    windows: int
    windows_dropped: int  # every target dropped by decontamination (never run)
    windows_trimmed: int  # some targets dropped
    entries_dropped: int
    entries: int  # targets the plan stores


def plan_stats(plan: Sequence[PlannedWindow], upto: int | None = None) -> PlanStats:
    """Counts over the first `upto` windows of the plan (all by default)."""
    part = plan[: len(plan) if upto is None else upto]
    return PlanStats(len(plan),
                     sum(1 for p in part if p.dropped and not p.targets.size),
                     sum(1 for p in part if p.dropped and p.targets.size),
                     sum(p.dropped for p in part), sum(int(p.targets.size) for p in part))


def encode_windows(lm, module, docs: Sequence[DocTokens], batch: Sequence[PlannedWindow]):
    """One forward up to the key layer (StopForward skips the rest): (B, T, D) float32 keys."""
    import torch

    from lm.hooks import StopForward, capture
    from lm.models import autocast

    pad = lm.tokenizer.pad_token_id or 0
    T = max(p.window.end - p.window.begin for p in batch)
    x = torch.full((len(batch), T), pad, dtype=torch.long)  # (B, T) right-padded
    mask = torch.zeros((len(batch), T), dtype=torch.long)  # (B, T)
    for b, p in enumerate(batch):
        n = p.window.end - p.window.begin
        x[b, :n] = torch.from_numpy(docs[p.doc].ids[p.window.begin:p.window.end])
        mask[b, :n] = 1
    with torch.inference_mode(), autocast(lm), capture(module, output=lm.key_is_output, stop=True) as cap:
        try:
            lm.model(input_ids=x, attention_mask=mask, use_cache=False)
        except StopForward:
            pass
    return cap.take().float(), int(mask.sum())  # (B, T, D), forward tokens


def window_entries(H: Any, d: DocTokens, p: PlannedWindow) -> Entries:
    """Entries of one planned window from its (T, D) key-layer states (the key at t-1 predicts t)."""
    tgt = p.targets  # (n,)
    keys = H[tgt - 1 - p.window.begin].numpy().astype(np.float16)  # (n, D)
    prov = np.stack([np.full(tgt.size, d.doc), tgt, d.offsets[tgt]], axis=1)  # (n, 3)
    return Entries(keys, d.ids[tgt].astype(np.int32), prov)


class ShardWriter:
    """Buffers entries and stages them as one shard per `shard_tokens` (the resume granularity)."""

    def __init__(self, store, shard_tokens: int) -> None:
        self.store = store
        self.shard_tokens = int(shard_tokens)
        self._buf: list[Entries] = []

    @property
    def pending(self) -> int:
        return sum(int(e.values.size) for e in self._buf)

    @property
    def full(self) -> bool:
        return self.pending >= self.shard_tokens

    def add(self, e: Entries) -> None:
        if e.values.size:
            self._buf.append(e)

    def flush(self) -> int:
        """Stage what is buffered as one shard (visible at the store's next commit); entries staged."""
        n = self.pending
        if n:
            self.store.stage_shard(np.concatenate([e.keys for e in self._buf]), np.concatenate([e.values for e in self._buf]),
                                   np.concatenate([e.prov for e in self._buf]))
            self._buf.clear()
        return n


@dataclass(frozen=True)
class BuildState:
    """The manifest's record of a build: enough to resume it, and to refuse resuming another."""

    fingerprint: str
    docs_base: int  # documents the datastore held before this build
    windows_done: int = 0  # planned windows committed
    entries: int = 0  # entries committed by this build
    complete: bool = False
    window: int = 0
    stride: int = 0
    decontaminated_against: list[str] = field(default_factory=list)

    @classmethod
    def from_manifest(cls, m: dict) -> BuildState | None:
        raw = m.get("build")
        if not raw:
            return None
        names = cls.__dataclass_fields__.keys()
        raw = {"complete": True, **raw}  # a record without the flag is a finished build
        return cls(**{k: v for k, v in raw.items() if k in names})  # older manifests carry extra counters

    @property
    def resuming(self) -> bool:
        return not self.complete

    def to_json(self) -> dict:
        return asdict(self)
