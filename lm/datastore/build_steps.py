"""The datastore build in separable steps, so one process or many workers can run them.

1. `tokenize_doc`: a document -> DocTokens (ids, char offsets, decontamination mask, held-out start).
2. `holdout_starts`: which tail of which document is kept out for calibration (pure, deterministic).
3. `plan_targets`: every window of every document and the target positions it stores (pure).
4. `units`: the plan's windows grouped into forwards (batches of short documents, one window at a
   time through a carried KV cache along long ones).
5. `encode_windows` / `CachedEncoder` + `window_entries`: a forward to the key layer -> (key, value, prov).
6. `ShardWriter`: buffers entries and stages them as append-only shards of the TokenStore.
7. `BuildState`: the resumable record in the manifest (how many planned windows are committed).

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

    Whole documents first, in `order_keys` (content hash) order, while they fit the budget: they
    look like the unseen documents a user evaluates on. What is left of the budget comes from
    document tails (a single long document: its tail); a tail is never context for a stored entry,
    so no stored key has seen the slice. Hash order makes the choice independent of the file order.
    The budget is `fraction` of the targets that will be stored (`cap` = --max-tokens), at most
    `max_tokens`; below `min_tokens` nothing is held out (too few tokens to measure a gain).
    """
    starts = [int(n) for n in lengths]
    total = sum(max(0, n - 1) for n in lengths)
    budget = min(int(math.floor(fraction * min(total, cap or total))), max_tokens)
    if budget < min_tokens:
        return starts
    left = budget
    order = sorted(range(len(starts)), key=lambda i: order_keys[i])
    for d in order:  # whole documents that fit
        if 0 < starts[d] - 1 <= left:
            left -= starts[d] - 1
            starts[d] = 1  # token 0 is never a target
    for d in order:  # then tails
        if left == 0:
            break
        if starts[d] > 1:
            take = min(starts[d] - 1, left)
            starts[d] -= take
            left -= take
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


def _chained(plan: Sequence[PlannedWindow], a: int, b: int) -> bool:
    """Window b continues window a of the same document (and both store something)."""
    if a < 0 or b >= len(plan) or not plan[a].targets.size or not plan[b].targets.size:
        return False
    return plan[a].doc == plan[b].doc and plan[b].window.first_target == plan[a].window.end


def units(plan: Sequence[PlannedWindow], start: int, max_windows: int, max_tokens: int | None = None,
          carry: bool = False) -> list[tuple[bool, list[int]]]:
    """Plan indices from `start` with targets, in plan order, as (cached, indices) forwards.

    With `carry`, a window that continues or is continued by its neighbour in the plan (a document
    longer than one window) is its own unit, run through the carried KV cache (cached=True); the
    others are grouped into batched forwards of at most `max_windows` windows (and, when given,
    `max_tokens` padded tokens, so short documents can share a forward).
    """
    out: list[tuple[bool, list[int]]] = []
    cur: list[int] = []
    longest = 0
    for i in range(start, len(plan)):
        n = plan[i].window.end - plan[i].window.begin
        if not plan[i].targets.size:
            continue
        if carry and (_chained(plan, i - 1, i) or _chained(plan, i, i + 1)):
            if cur:
                out.append((False, cur))
                cur, longest = [], 0
            out.append((True, [i]))
            continue
        if cur and (len(cur) >= max_windows or (max_tokens is not None and (len(cur) + 1) * max(longest, n) > max_tokens)):
            out.append((False, cur))
            cur, longest = [], 0
        cur.append(i)
        longest = max(longest, n)
    if cur:
        out.append((False, cur))
    return out


def _past_limit(w: Window, seg_begin: int, max_length: int) -> bool:
    """Window w would take the segment that began at seg_begin past the model's position limit:
    CachedEncoder starts a fresh segment there (and segment_start finds it the same way)."""
    return w.end - seg_begin > max_length


def segment_start(plan: Sequence[PlannedWindow], i: int, max_length: int) -> int:
    """The plan index where CachedEncoder's segment holding window i begins: a build resumed at i
    replays the windows from there (storing nothing) so its cache, and so its keys, are those of
    the build that was interrupted. Bounded: a segment spans at most max_length tokens."""
    j = i
    while _chained(plan, j - 1, j):
        j -= 1
    start, seg = j, plan[j].window.begin
    for k in range(j + 1, i + 1):
        if _past_limit(plan[k].window, seg, max_length):
            start, seg = k, plan[k].window.begin
    return start


def batches(plan: Sequence[PlannedWindow], start: int, max_windows: int, max_tokens: int | None = None) -> list[list[int]]:
    """The windowed build's forwards: `units` without the carried cache."""
    return [idx for _cached, idx in units(plan, start, max_windows, max_tokens)]


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


class CachedEncoder:
    """Key-layer states along a document with the KV cache carried from window to window.

    The windowed build runs every window whole, so each stored token costs window/stride forward
    tokens (4/3 at 1024/768). Here each window runs only its new tokens and attends to the
    previous `context` tokens through the cache: every position is computed once. A window that
    does not continue the previous one (a new document) or would pass the model's position limit
    starts a fresh segment, run exactly as the windowed build runs it (the same keys); a resumed
    build first replays its segment from `segment_start`, so its keys are the one-shot build's.
    Later windows see at least as much context as in the windowed build, through states computed
    with their own, earlier context: their keys differ slightly. Measured with
    SmolLM2 on one 8k-token WikiText document (benchmarks/bench_build_speed.py, quiet machine):
    1.22x the plain forward per stored token against 0.90x windowed, key cosine median 0.998;
    on 3k tokens kNN-LM ppl 14.32 vs 14.33 windowed. Batch 1 costs little here: on this 2-core
    CPU a (1, 768) forward over a 260-token cache ran at 375-385 tokens/s, (2, 768) at 362-371.
    """

    def __init__(self, lm, module, context: int, sinks: int = 4) -> None:
        # sinks: the segment's first tokens stay in the cache (StreamingLLM, Xiao et al. 2023): the
        # model puts much of its attention on them, and every window of the windowed build has them
        self.lm, self.module, self.context, self.sinks = lm, module, int(context), int(sinks)
        self._doc: int | None = None
        self._end = 0  # one past the last position run
        self._seg = 0  # document position of position id 0 of the current segment
        self._cache: Any = None
        self._last: Any = None  # (D,) key-layer state at position _end - 1
        self.forward_tokens = 0

    def _run(self, ids: np.ndarray, first_pos: int, cache: Any):
        import torch

        from lm.hooks import StopForward, capture
        from lm.models import autocast

        x = torch.from_numpy(ids)[None]  # (1, T)
        pos = torch.arange(first_pos, first_pos + ids.size)[None]  # (1, T)
        with torch.inference_mode(), autocast(self.lm), capture(self.module, output=self.lm.key_is_output, stop=True) as cap:
            try:
                self.lm.model(input_ids=x, position_ids=pos, cache=cache, use_cache=True)
            except StopForward:
                pass
        self.forward_tokens += int(ids.size)
        return cap.take()[0].float()  # (T, D)

    def _crop(self) -> None:
        import torch

        for layer in self._cache.layers:  # keep the sinks and the last `context` positions of every layer
            if layer.keys.shape[2] > self.sinks + self.context:
                keep = lambda t: torch.cat([t[:, :, : self.sinks], t[:, :, -self.context:]], dim=2)  # noqa: E731
                layer.keys, layer.values = keep(layer.keys), keep(layer.values)

    def states(self, d: DocTokens, w: Window):
        """(rows, first): key-layer states of positions first..w.end-1, first <= w.first_target - 1."""
        import torch
        from transformers import DynamicCache

        fresh = self._doc != d.doc or self._end != w.first_target or _past_limit(w, self._seg, self.lm.max_length)
        if fresh:
            self._cache = DynamicCache()
            H = self._run(d.ids[w.begin:w.end], 0, self._cache)  # (T, D) as the windowed build
            self._doc, self._seg, first = d.doc, w.begin, w.begin
        else:
            H = torch.cat([self._last[None], self._run(d.ids[self._end:w.end], self._end - self._seg, self._cache)])
            first = self._end - 1
        self._end, self._last = w.end, H[-1]
        self._crop()
        return H, first  # (T', D)


def window_entries(H: Any, d: DocTokens, p: PlannedWindow, first: int | None = None) -> Entries:
    """Entries of one planned window from the key-layer states H of positions first.. (default:
    the window's begin); the key at position t-1 predicts token t."""
    tgt = p.targets  # (n,)
    keys = H[tgt - 1 - (p.window.begin if first is None else first)].numpy().astype(np.float16)  # (n, D)
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
