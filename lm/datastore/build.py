"""Build (or append to) a kNN-LM token datastore from text files.

Every stored token is predicted from a long prefix (strided windows), keys are captured at the
key layer with a hook that stops the forward there (no lm_head), shards are committed as they
fill, and an interrupted build resumes from the manifest's build state. The steps themselves
(target selection, forward, shard writer, build state) live in lm.datastore.build_steps.
"""
from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np

from lm.datastore.build_steps import (
    BuildState,
    CachedEncoder,
    DocTokens,
    ShardWriter,
    encode_windows,
    holdout_starts,
    plan_stats,
    plan_targets,
    segment_start,
    tokenize_doc,
    units,
    window_entries,
)
from lm.datastore.decontaminate import contaminated, eval_ngrams, ngram_hashes, ngram_positions
from lm.datastore.token_store import TokenStore
from lm.windows import default_window
from retrieval.errors import InvalidInputError, MismatchError

__all__ = ["BuildConfig", "BuildReport", "build_datastore", "contaminated", "ngram_hashes", "ngram_positions"]
log = logging.getLogger(__name__)
NEAR_DUP_CHARS = 200_000  # MinHash looks at a document's first 200k characters (bounded memory)


@dataclass(frozen=True)
class BuildConfig:
    window: int | None = None  # tokens per forward; default min(model max length, 1024)
    stride: int | None = None  # default 3/4 window: >= window/4 tokens of context, >= 0.9x forward speed
    batch_size: int = 2  # windows per forward (ray_build.plan_tasks cuts its tasks the same way)
    batch_tokens: int | None = None  # also cap the padded tokens per forward (then raise batch_size): opt-in,
    # since packing 250-token abstracts 8 at a time was not measurably faster on the shared 2-core CPU
    shard_tokens: int = 8192  # entries per committed shard (the resume granularity)
    max_tokens: int | None = None  # cap on entries added by this build
    near_dup_threshold: float = 0.9
    decontaminate: tuple[str, ...] = ()
    ngram: int = 13
    # "span": drop the entries whose target lies inside a shared n-gram or within `decontaminate_margin`
    # tokens after it (the rest of the window stays); "window": drop the whole window (strict, and on
    # WikiText it discards ~40% of the corpus for boilerplate like "= = = <unk> = = =").
    decontaminate_scope: str = "span"
    decontaminate_margin: int = 128
    index_factory: str = "auto"
    index_ondisk: bool | None = None  # IVF lists in one mmap'ed .ivfdata file (lm.datastore.ondisk); None = the datastore's own (new: RAM)
    index_part_entries: int = 1_000_000  # on disk: entries added per part (one part's index is in RAM while it is added)
    deadline: float | None = None  # time.time() after which the build commits and stops (resumable)
    # calibration slice: the tails of documents (hash order), never stored; <= holdout of the corpus
    holdout: float = 0.05
    holdout_max_tokens: int = 8192  # enough to separate a 1% gain from noise; scoring it costs ~1 forward pass
    holdout_min_tokens: int = 128  # below this nothing is held out and the datastore keeps the defaults
    calibrate: bool = True  # choose k, temperature and lambda on the slice after the build
    # carry the KV cache along documents longer than one window, so each token is forwarded once
    # (build_steps.CachedEncoder); one-window documents are batched either way. None: on locally,
    # off on Ray (whose workers take windows in any order); False: the strided windowed build.
    kv_cache: bool | None = None


@dataclass
class BuildReport:
    path: str
    entries_added: int = 0
    entries_total: int = 0
    documents: int = 0
    skipped: list = field(default_factory=list)
    exact_duplicates_dropped: int = 0
    near_duplicates_dropped: int = 0
    windows: int = 0
    windows_dropped_decontamination: int = 0  # windows with every entry dropped (never run)
    windows_trimmed_decontamination: int = 0  # windows that lost some entries (scope "span")
    entries_dropped_decontamination: int = 0
    forward_tokens: int = 0
    cached_windows: int = 0  # windows of long documents run through the carried KV cache (the rest whole)
    forward_seconds: float = 0.0
    seconds: float = 0.0
    tokens_per_s: float = 0.0  # stored entries per wall second of the whole build
    forward_tokens_per_s: float = 0.0
    resumed_from_window: int = 0
    index: dict | None = None
    stopped_at_deadline: bool = False
    loop_seconds: float = 0.0  # forward + shard writes, without corpus loading and index training
    store_tokens_per_s: float = 0.0  # entries stored per loop second: compare with plain forward tokens/s
    heldout_tokens: int = 0  # calibration slice of this build's documents (never stored)
    calibration: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def load_documents(paths: Sequence[str], store: TokenStore, base_docs: int, threshold: float, report: BuildReport) -> list[dict]:
    """Corpus -> new, de-duplicated documents (exact by content hash, near by MinHash)."""
    from retrieval.ingest.preprocess import NearDupFilter, content_hash
    from retrieval.ingest.sources import iter_sources
    from retrieval.types import Skip

    near = NearDupFilter(threshold=threshold)
    seen: set[str] = set()
    dead = set(np.unique(store.provenance(store.dead)[:, 0]).tolist()) if len(store.dead) else set()
    for d in store.docs()[:base_docs]:  # dedup against what the datastore already holds (and still serves)
        if d["doc"] in dead:
            continue
        seen.add(d["hash"])
        near.add(d.get("text", "")[:NEAR_DUP_CHARS])
    docs: list[dict] = []
    for item in iter_sources(list(paths)):
        if isinstance(item, Skip):
            report.skipped.append({"source": item.source, "reason": item.reason})
            continue
        if not item.text.strip():
            report.skipped.append({"source": item.source, "reason": "empty"})
            continue
        h = content_hash(item.text)
        if h in seen:
            report.exact_duplicates_dropped += 1
            continue
        seen.add(h)
        if near.is_near_duplicate(item.text[:NEAR_DUP_CHARS]):
            report.near_duplicates_dropped += 1
            continue
        docs.append({"doc": base_docs + len(docs), "source": item.source, "hash": h, "text": item.text})
    return docs


def _fingerprint(lm_id: str, docs: list[dict], cfg: BuildConfig, window: int, stride: int, eval_hash: str) -> str:
    payload = [lm_id, [d["hash"] for d in docs], window, stride, cfg.ngram, cfg.max_tokens, eval_hash,
               cfg.decontaminate_scope, cfg.decontaminate_margin, cfg.holdout, cfg.holdout_max_tokens, cfg.holdout_min_tokens,
               cfg.kv_cache]
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:16]


def check_config(lm, config: BuildConfig, corpus: Sequence[str]) -> tuple[int, int]:
    """Refuse bad settings before anything is written; (window, stride) to use."""
    window = default_window(lm.max_length, config.window)
    stride = int(config.stride or max(1, (window * 3) // 4))
    if window > lm.max_length or not 1 <= stride <= window:
        raise InvalidInputError(f"window {window} / stride {stride} invalid for a model of max length {lm.max_length}",
                                "use 2 <= window <= max length and 1 <= stride <= window")
    if config.max_tokens is not None and config.max_tokens < 1:
        raise InvalidInputError("--max-tokens must be >= 1", "omit it to store the whole corpus")
    if config.decontaminate_scope not in ("span", "window") or config.decontaminate_margin < 0:
        raise InvalidInputError(f"bad decontamination scope {config.decontaminate_scope!r} / margin {config.decontaminate_margin}",
                                "use scope 'span' (default) or 'window', and a margin >= 0")
    if not 0.0 <= config.holdout <= 0.2:
        raise InvalidInputError(f"held-out fraction must be in [0, 0.2], got {config.holdout}", "use 0.05 (the default), or 0 for none")
    if not corpus:
        raise InvalidInputError("no corpus files given", "pass one or more text files or folders")
    if config.index_part_entries < 1:
        raise InvalidInputError("index part entries must be >= 1", "use the default (1000000)")
    if config.index_ondisk and config.index_factory not in ("auto", "", "Flat"):
        from lm.datastore.ondisk import new_index

        new_index(config.index_factory, lm.key_dim)  # refuse a factory that cannot live on disk before any forward
    return window, stride


def open_or_create(lm, out: Path, config: BuildConfig, lm_spec: str | None) -> TokenStore:
    if (out / "manifest.json").exists():
        store = TokenStore.open(out, lm_id=lm.model_id, tokenizer_hash=lm.tokenizer_hash, vocab_size=lm.vocab_size)
        if store.manifest["key_layer"] != lm.key_layer:
            raise MismatchError(f"datastore {out} uses key layer {store.manifest['key_layer']}, not {lm.key_layer}",
                                f"pass --key-layer {store.manifest['key_layer']}")
        if config.index_ondisk is not None and config.index_ondisk != store.ondisk:
            where = "on disk" if store.ondisk else "in RAM"
            raise InvalidInputError(f"datastore {out} keeps its index {where}; the storage is chosen when it is created",
                                    "drop --ondisk to append to it, or build into a new --out")
        return store
    return TokenStore.create(out, lm_id=lm.model_id, tokenizer_hash=lm.tokenizer_hash, key_layer=lm.key_layer,
                             dim=lm.key_dim, index_factory=config.index_factory, lm_spec=lm_spec,
                             index_storage="ondisk" if config.index_ondisk else "ram")


def tokenize_corpus(tok, docs: list[dict], ev: np.ndarray, config: BuildConfig) -> list[DocTokens]:
    """Every new document tokenized, with its held-out tail (the calibration slice) marked."""
    toks = [tokenize_doc(tok, d["doc"], d["text"], ev, config.ngram, config.decontaminate_margin) for d in docs]
    starts = holdout_starts([t.ids.size for t in toks], [d["hash"] for d in docs], fraction=config.holdout,
                            max_tokens=config.holdout_max_tokens, min_tokens=config.holdout_min_tokens, cap=config.max_tokens)
    return [t._replace(holdout_start=s) for t, s in zip(toks, starts)]


def _run_plan(lm, store: TokenStore, toks: list[DocTokens], plan: list, state: BuildState, config: BuildConfig,
              report: BuildReport, bar) -> BuildState:
    """Forward the planned windows from state.windows_done, committing a shard at a time."""
    from lm.hooks import resolve_module

    module = resolve_module(lm.model, lm.key_module_path)
    writer = ShardWriter(store, config.shard_tokens)
    enc = CachedEncoder(lm, module, context=state.window - state.stride)
    todo = units(plan, state.windows_done, config.batch_size, config.batch_tokens, carry=config.kv_cache is not False)
    if todo and todo[0][0]:  # resumed inside a long document: rebuild the cache the stored keys came from
        for i in range(segment_start(plan, todo[0][1][0], lm.max_length), todo[0][1][0]):
            enc.states(toks[plan[i].doc], plan[i].window)
        report.forward_tokens += enc.forward_tokens
    entries = state.entries
    for a, (cached, idx) in enumerate(todo):
        if config.deadline and time.time() > config.deadline:
            log.warning("build deadline reached after %d entries; rerun the same command to resume", entries)
            report.stopped_at_deadline = True
            return state
        batch = [plan[i] for i in idx]
        t0, before = time.perf_counter(), enc.forward_tokens
        if cached:
            H, first = enc.states(toks[batch[0].doc], batch[0].window)  # (T', D)
            got = [window_entries(H, toks[batch[0].doc], batch[0], first)]
            n_fwd = enc.forward_tokens - before
            report.cached_windows += 1
        else:
            H, n_fwd = encode_windows(lm, module, toks, batch)  # (B, T, D)
            got = [window_entries(H[b], toks[p.doc], p) for b, p in enumerate(batch)]
        report.forward_seconds += time.perf_counter() - t0
        report.forward_tokens += n_fwd
        for e in got:
            writer.add(e)
            bar.update(int(e.values.size))
        entries += sum(int(p.targets.size) for p in batch)
        if writer.full or a + 1 == len(todo):
            writer.flush()
            done = todo[a + 1][1][0] if a + 1 < len(todo) else len(plan)
            state = replace(state, windows_done=done, entries=entries)
            store.commit(build=state.to_json())
    return replace(state, windows_done=len(plan), entries=entries) if not todo else state


def _start(store: TokenStore, prev: BuildState | None, fp: str, docs: list[dict], toks: list[DocTokens], base_docs: int,
           window: int, stride: int, config: BuildConfig) -> BuildState:
    """Resume the interrupted build with this fingerprint, or stage the documents and start one."""
    if prev is not None and prev.resuming:
        if prev.fingerprint != fp:
            raise InvalidInputError(f"{store.path} holds an interrupted build of another corpus or settings",
                                    "rerun that exact build command to resume it, or build into a new --out")
        return prev
    store.stage_docs(docs)
    held = [[t.doc, t.holdout_start] for t in toks if t.holdout_start < t.ids.size]
    state = BuildState(fp, base_docs, window=window, stride=stride, decontaminated_against=list(config.decontaminate))
    store.commit(build=state.to_json(), fields={"heldout": list(store.manifest.get("heldout") or []) + held})
    return state


class Prepared(NamedTuple):
    """A build ready to run its forwards: what the one-process and the Ray build share."""

    store: TokenStore
    report: BuildReport
    toks: list[DocTokens]
    plan: list
    state: BuildState
    fingerprint: str


def prepare(lm, corpus: Sequence[str], out: str | Path, config: BuildConfig, lm_spec: str | None) -> Prepared:
    """Open (or create) the datastore, load and deduplicate the documents, tokenise and decontaminate
    them, keep the held-out slice out, and plan every window's targets; resumes an interrupted build."""
    window, stride = check_config(lm, config, corpus)
    out = Path(out)
    store = open_or_create(lm, out, config, lm_spec)
    report = BuildReport(path=str(out))
    prev = BuildState.from_manifest(store.manifest)
    resuming = prev is not None and prev.resuming
    base_docs = prev.docs_base if prev is not None and resuming else int(store.manifest.get("doc_count", 0))
    docs = load_documents(corpus, store, base_docs, config.near_dup_threshold, report)
    if resuming and not docs:  # the interrupted build's documents are committed already: reuse them
        docs = store.docs()[base_docs:]
    if not docs:
        raise InvalidInputError("the corpus has no new text to store (empty, skipped or all duplicates)",
                                "pass text files with content; see the skipped list with --json")
    ev = eval_ngrams(lm.tokenizer, config.decontaminate, config.ngram)
    fp = _fingerprint(lm.model_id, docs, config, window, stride, hashlib.sha256(ev.tobytes()).hexdigest())
    toks = tokenize_corpus(lm.tokenizer, docs, ev, config)
    state = _start(store, prev, fp, docs, toks, base_docs, window, stride, config)
    report.documents, report.resumed_from_window = len(docs), state.windows_done
    report.heldout_tokens = sum(int(t.ids.size - max(t.holdout_start, 1)) for t in toks if t.holdout_start < t.ids.size)
    plan = plan_targets(toks, window, stride, scope=config.decontaminate_scope, ngram=config.ngram, max_tokens=config.max_tokens)
    if not plan:
        raise InvalidInputError("the corpus is shorter than two tokens", "pass more text")
    return Prepared(store, report, toks, plan, state, fp)


def build_datastore(lm, corpus: Sequence[str], out: str | Path, config: BuildConfig = BuildConfig(), *,
                    progress: bool = True, lm_spec: str | None = None) -> BuildReport:
    """Add the corpus to the datastore at `out` (created if missing); resumes an interrupted build.

    The held-out tail (config.holdout) is never stored; after the build the datastore calibrates
    k, temperature and lambda on it (lm.datastore.calibrate) and records the choice in the manifest.
    """
    from tqdm import tqdm

    t_start = time.perf_counter()
    p = prepare(lm, corpus, out, config, lm_spec)
    store, plan, state, report = p.store, p.plan, p.state, p.report
    total = plan_stats(plan).entries
    bar = tqdm(total=total, initial=min(state.entries, total), unit="tok", unit_scale=True, file=sys.stderr,
               disable=not progress, desc="datastore", dynamic_ncols=True)
    added_before = state.entries
    t_loop = time.perf_counter()
    state = _run_plan(lm, store, p.toks, plan, state, config, report, bar)
    bar.close()
    finish(lm, store, plan, state, config, report, t_loop, added_before, t_start)
    return report


def ondisk_options(store: TokenStore, config: BuildConfig) -> dict:
    return {"part_entries": config.index_part_entries} if store.ondisk else {}


def finish(lm, store: TokenStore, plan: list, state: BuildState, config: BuildConfig, report: BuildReport,
            t_loop: float, added_before: int, t_start: float, build_index: Callable[[], dict] | None = None) -> None:
    """Index, statistics, build state and calibration after the forwards; build_index: the Ray
    build's (the on-disk parts added on its workers), else store.build_index."""
    report.loop_seconds = round(time.perf_counter() - t_loop, 2)
    report.entries_added = state.entries - added_before  # by this run (a resumed build counts only its own)
    report.store_tokens_per_s = round(report.entries_added / max(report.loop_seconds, 1e-9), 1)
    if store.count == 0:
        raise InvalidInputError("every window was dropped; nothing was stored",
                                "the corpus overlaps the --decontaminate text entirely; use other text")
    report.index = build_index() if build_index else store.build_index(**ondisk_options(store, config))
    done = state.windows_done if report.stopped_at_deadline else len(plan)
    stats = plan_stats(plan, done)
    report.windows = stats.windows
    report.windows_dropped_decontamination = stats.windows_dropped
    report.windows_trimmed_decontamination = stats.windows_trimmed
    report.entries_dropped_decontamination = stats.entries_dropped
    store.commit(build=replace(state, complete=not report.stopped_at_deadline).to_json())
    if config.calibrate and not report.stopped_at_deadline:
        from lm.datastore.calibrate import calibrate_store

        cal = calibrate_store(lm, store)  # appending re-calibrates on every build's slice
        report.calibration = cal.to_json() if cal is not None else store.manifest.get("calibration")
    report.entries_total = store.count
    report.seconds = round(time.perf_counter() - t_start, 2)
    report.forward_seconds = round(report.forward_seconds, 2)
    report.tokens_per_s = round(report.entries_added / max(report.seconds, 1e-9), 1)
    report.forward_tokens_per_s = round(report.forward_tokens / max(report.forward_seconds, 1e-9), 1)
