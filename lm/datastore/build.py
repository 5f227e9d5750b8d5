"""Build (or append to) a kNN-LM token datastore from text files.

Every stored token is predicted from a long prefix (strided windows), keys are captured at the
key layer with a hook that stops the forward there (no lm_head), shards are committed as they
fill, and an interrupted build resumes from the manifest's build state.
"""
from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from lm.datastore.token_store import TokenStore
from retrieval.errors import InvalidInputError, MismatchError

log = logging.getLogger(__name__)
_P = np.uint64(1099511628211)
NEAR_DUP_CHARS = 200_000  # MinHash looks at a document's first 200k characters (bounded memory)  # FNV prime: n-gram rolling-hash base


@dataclass(frozen=True)
class BuildConfig:
    window: int | None = None  # tokens per forward; default min(model max length, 1024)
    stride: int | None = None  # default 3/4 window: >= window/4 tokens of context, >= 0.9x forward speed
    batch_size: int = 2  # windows per forward
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
    deadline: float | None = None  # time.time() after which the build commits and stops (resumable)


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
    forward_seconds: float = 0.0
    seconds: float = 0.0
    tokens_per_s: float = 0.0  # stored entries per wall second of the whole build
    forward_tokens_per_s: float = 0.0
    resumed_from_window: int = 0
    index: dict | None = None
    stopped_at_deadline: bool = False
    loop_seconds: float = 0.0  # forward + shard writes, without corpus loading and index training
    store_tokens_per_s: float = 0.0  # entries stored per loop second: compare with plain forward tokens/s

    def to_dict(self) -> dict:
        return asdict(self)


def ngram_hashes(ids: np.ndarray, n: int) -> np.ndarray:
    """Unique uint64 rolling hashes of every n-gram of token ids: (m,)."""
    return np.unique(ngram_positions(ids, n))  # (m,)


def ngram_positions(ids: np.ndarray, n: int) -> np.ndarray:
    """Rolling hash of the n-gram starting at every position: (L - n + 1,), same hash as ngram_hashes."""
    ids = np.asarray(ids, dtype=np.uint64)
    if ids.size < n:
        return np.zeros(0, dtype=np.uint64)
    pw = _P ** np.arange(n - 1, -1, -1, dtype=np.uint64)  # (n,)
    with np.errstate(over="ignore"):
        return (np.lib.stride_tricks.sliding_window_view(ids, n) * pw).sum(axis=1, dtype=np.uint64)  # (L-n+1,)


def contaminated(ids: np.ndarray, ev: np.ndarray, n: int, margin: int) -> tuple[np.ndarray, np.ndarray]:
    """(starts of n-grams shared with the eval text, per-position mask of targets to drop): a target is
    dropped when it lies inside a shared n-gram or within `margin` tokens after one, since its key
    would then hold the leaked text as its most recent context."""
    L = int(np.asarray(ids).size)
    if not ev.size or L < n:
        return np.zeros(0, dtype=np.int64), np.zeros(L, dtype=bool)
    starts = np.nonzero(np.isin(ngram_positions(ids, n), ev))[0]  # (h,)
    edge = np.zeros(L + 1, dtype=np.int64)  # (L+1,) +1 where a dropped run opens, -1 where it closes
    np.add.at(edge, np.minimum(starts + 1, L), 1)
    np.add.at(edge, np.minimum(starts + n + margin, L), -1)
    return starts, np.cumsum(edge)[:L] > 0  # (h,), (L,)


def _eval_ngrams(tok, files: Sequence[str], n: int) -> np.ndarray:
    parts = []
    for f in files:
        p = Path(f)
        if not p.is_file():
            raise InvalidInputError(f"decontamination file not found: {f}", "pass the evaluation text file(s)")
        ids = tok(p.read_text(encoding="utf-8", errors="replace"), add_special_tokens=False)["input_ids"]
        parts.append(ngram_hashes(np.asarray(ids), n))
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.uint64)


def load_documents(paths: Sequence[str], store: TokenStore, base_docs: int, threshold: float, report: BuildReport) -> list[dict]:
    """Corpus -> new, de-duplicated documents (exact by content hash, near by MinHash)."""
    from retrieval.ingest.preprocess import NearDupFilter, content_hash
    from retrieval.ingest.sources import iter_sources
    from retrieval.types import Skip

    near = NearDupFilter(threshold=threshold)
    seen: set[str] = set()
    for d in store.docs()[:base_docs]:  # dedup against what the datastore already holds
        seen.add(d["hash"])
        near.add(d.get("text", "")[:NEAR_DUP_CHARS])
    docs = []
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
               cfg.decontaminate_scope, cfg.decontaminate_margin]
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:16]


def build_datastore(lm, corpus: Sequence[str], out: str | Path, config: BuildConfig = BuildConfig(), *,
                    progress: bool = True, lm_spec: str | None = None) -> BuildReport:
    """Add the corpus to the datastore at `out` (created if missing); resumes an interrupted build."""
    import torch
    from tqdm import tqdm

    from lm.hooks import StopForward, capture, resolve_module
    from lm.models import autocast
    from lm.windows import default_window, plan_windows

    t_start = time.perf_counter()
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
    if not corpus:
        raise InvalidInputError("no corpus files given", "pass one or more text files or folders")
    out = Path(out)
    if (out / "manifest.json").exists():
        store = TokenStore.open(out, lm_id=lm.model_id, tokenizer_hash=lm.tokenizer_hash)
        if store.manifest["key_layer"] != lm.key_layer:
            raise MismatchError(f"datastore {out} uses key layer {store.manifest['key_layer']}, not {lm.key_layer}",
                                f"pass --key-layer {store.manifest['key_layer']}")
    else:
        store = TokenStore.create(out, lm_id=lm.model_id, tokenizer_hash=lm.tokenizer_hash, key_layer=lm.key_layer,
                                  dim=lm.key_dim, index_factory=config.index_factory, lm_spec=lm_spec)
    report = BuildReport(path=str(out))
    state = store.manifest.get("build") or {}
    resuming = bool(state) and not state.get("complete", True)
    base_docs = int(state["docs_base"]) if resuming else int(store.manifest.get("doc_count", 0))
    docs = load_documents(corpus, store, base_docs, config.near_dup_threshold, report)
    if resuming and not docs:  # the interrupted build's documents are committed already: reuse them
        docs = store.docs()[base_docs:]
    if not docs:
        raise InvalidInputError("the corpus has no new text to store (empty, skipped or all duplicates)",
                                "pass text files with content; see the skipped list with --json")
    ev = _eval_ngrams(lm.tokenizer, config.decontaminate, config.ngram)
    fp = _fingerprint(lm.model_id, docs, config, window, stride, hashlib.sha256(ev.tobytes()).hexdigest())
    if resuming and state.get("fingerprint") != fp:
        raise InvalidInputError(f"{out} holds an interrupted build of another corpus or settings",
                                "rerun that exact build command to resume it, or build into a new --out")
    start_window = int(state.get("windows_done", 0)) if resuming else 0
    added = int(state.get("entries", 0)) if resuming else 0
    report.resumed_from_window = start_window
    dropped_before = int(state.get("windows_dropped", 0)) if resuming else 0
    dropped_entries_before = int(state.get("entries_dropped", 0)) if resuming else 0
    trimmed_before = int(state.get("windows_trimmed", 0)) if resuming else 0
    if not resuming:
        store.stage_docs(docs)
        state = {"fingerprint": fp, "docs_base": base_docs, "windows_done": 0, "entries": 0, "complete": False,
                 "window": window, "stride": stride, "decontaminated_against": list(config.decontaminate)}
        store.commit(build=state)
    report.documents = len(docs)

    # plan: (doc index, token ids, char offsets, window) for every window, in a fixed order
    plan = []
    toks = {}
    for d in docs:
        enc = lm.tokenizer(d["text"], add_special_tokens=False, return_offsets_mapping=True)
        ids = np.asarray(enc["input_ids"], dtype=np.int64)  # (L,)
        offs = np.asarray([o[0] for o in enc["offset_mapping"]], dtype=np.int64)  # (L,)
        starts, drop = contaminated(ids, ev, config.ngram, config.decontaminate_margin)
        toks[d["doc"]] = (ids, offs, starts, drop)
        plan.extend((d["doc"], w) for w in plan_windows(len(ids), window, stride))
    if not plan:
        raise InvalidInputError("the corpus is shorter than two tokens", "pass more text")
    report.windows = len(plan)
    total = sum(w.end - w.first_target for _d, w in plan)
    if config.max_tokens:
        total = min(total, config.max_tokens)
    module = resolve_module(lm.model, lm.key_module_path)
    pad = lm.tokenizer.pad_token_id or 0
    buf_k, buf_v, buf_p = [], [], []
    bar = tqdm(total=total, initial=min(added, total), unit="tok", unit_scale=True, file=sys.stderr,
               disable=not progress, desc="datastore", dynamic_ncols=True)

    def flush(windows_done: int, complete: bool = False) -> None:
        if buf_v:
            store.stage_shard(np.concatenate(buf_k), np.concatenate(buf_v), np.concatenate(buf_p))
            buf_k.clear(), buf_v.clear(), buf_p.clear()
        state["windows_dropped"] = report.windows_dropped_decontamination + dropped_before
        state["entries_dropped"] = report.entries_dropped_decontamination + dropped_entries_before
        state["windows_trimmed"] = report.windows_trimmed_decontamination + trimmed_before
        store.commit(build={**state, "windows_done": windows_done, "entries": added, "complete": complete})

    i = start_window
    pending = 0
    added_before = added
    t_loop = time.perf_counter()
    while i < len(plan) and not (config.max_tokens and added >= config.max_tokens):
        if config.deadline and time.time() > config.deadline:
            log.warning("build deadline reached after %d entries; rerun the same command to resume", added)
            report.stopped_at_deadline = True
            break
        batch = []
        while i < len(plan) and len(batch) < config.batch_size:
            doc, w = plan[i]
            _ids, _offs, starts, drop = toks[doc]
            i += 1
            if config.decontaminate_scope == "window":
                gone = bool(((starts >= w.begin) & (starts <= w.end - config.ngram)).any())
                n_drop = (w.end - w.first_target) if gone else 0
            else:
                n_drop = int(drop[w.first_target:w.end].sum())
                gone = n_drop == w.end - w.first_target
            if gone:
                report.windows_dropped_decontamination += 1
                report.entries_dropped_decontamination += n_drop
                continue
            if n_drop:
                report.windows_trimmed_decontamination += 1
                report.entries_dropped_decontamination += n_drop
            batch.append((doc, w))
        if not batch:
            continue
        T = max(w.end - w.begin for _d, w in batch)
        x = torch.full((len(batch), T), pad, dtype=torch.long)  # (B, T) right-padded
        mask = torch.zeros((len(batch), T), dtype=torch.long)  # (B, T)
        for b, (doc, w) in enumerate(batch):
            x[b, : w.end - w.begin] = torch.from_numpy(toks[doc][0][w.begin:w.end])
            mask[b, : w.end - w.begin] = 1
        t0 = time.perf_counter()
        with torch.inference_mode(), autocast(lm), capture(module, output=lm.key_is_output, stop=True) as cap:
            try:
                lm.model(input_ids=x, attention_mask=mask, use_cache=False)
            except StopForward:
                pass
        H = cap.take().float()  # (B, T, D)
        report.forward_seconds += time.perf_counter() - t0
        report.forward_tokens += int(mask.sum())
        for b, (doc, w) in enumerate(batch):
            ids, offs, _starts, drop = toks[doc]
            tgt = np.arange(w.first_target, w.end)  # (n,) target positions in the doc
            if config.decontaminate_scope == "span":
                tgt = tgt[~drop[tgt]]  # (n',) leaked targets removed
            if config.max_tokens:
                tgt = tgt[: max(0, config.max_tokens - added)]
            if tgt.size == 0:
                continue
            keys = H[b, tgt - 1 - w.begin].numpy()  # (n, D) key at p predicts token p+1
            buf_k.append(keys.astype(np.float16))
            buf_v.append(ids[tgt].astype(np.int32))  # (n,)
            buf_p.append(np.stack([np.full(tgt.size, doc), tgt, offs[tgt]], axis=1))  # (n, 3)
            added += tgt.size
            pending += tgt.size
            bar.update(tgt.size)
        if pending >= config.shard_tokens:
            flush(i)
            pending = 0
    flush(i)
    bar.close()
    report.loop_seconds = round(time.perf_counter() - t_loop, 2)
    report.store_tokens_per_s = round((added - added_before) / max(report.loop_seconds, 1e-9), 1)
    report.entries_added = added - added_before  # by this run (a resumed build counts only its own)
    if store.count == 0:
        raise InvalidInputError("every window was dropped; nothing was stored",
                                "the corpus overlaps the --decontaminate text entirely; use other text")
    report.index = store.build_index()
    flush(i, complete=not report.stopped_at_deadline)
    report.entries_total = store.count
    report.windows_dropped_decontamination += dropped_before
    report.entries_dropped_decontamination += dropped_entries_before
    report.windows_trimmed_decontamination += trimmed_before
    report.seconds = round(time.perf_counter() - t_start, 2)
    report.forward_seconds = round(report.forward_seconds, 2)
    report.tokens_per_s = round(report.entries_added / max(report.seconds, 1e-9), 1)
    report.forward_tokens_per_s = round(report.forward_tokens / max(report.forward_seconds, 1e-9), 1)
    return report
