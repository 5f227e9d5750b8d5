"""BM25 over chunks, saved in bm25s's own format (folder of .npy + JSON), loaded memory-mapped.

Why not call bm25s at run time: `import bm25s` costs ~0.5 s (a cold CLI search has 2 s in all)
and its indexer is pure Python (100k chunks take ~16 s), which would make every incremental
commit O(corpus). So this module keeps, per generation, the postings (term ids and term
frequencies per chunk) next to the bm25s score matrix and rebuilds the matrix with numpy in
O(nnz) when chunks come and go; only new chunks are tokenised. The score files are exactly
bm25s's (`bm25s.BM25.load(dir)` opens them; tests check the scores agree with bm25s).
Tokenisation is bm25s's (lowercase, runs of 2+ word characters, a stopword list, PyStemmer English
stemmer) with two defaults changed for new collections: the stopword list (retrieval/index/
stopwords.py) and "words" tokens, which also split at underscores (`read_file` -> read, file), as
bm25s's `\\b\\w\\w+\\b` does not. The collection manifest records the tokeniser's identity
(`tokenizer_id`), the index folder the pattern and list themselves (tokenizer.json).
"""
from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from retrieval.errors import CorruptStoreError
from retrieval.index import stopwords as stoplists
from retrieval.index.stopwords import STOPWORDS_EN_PLUS

TOKEN_PATTERN = r"(?u)\b\w\w+\b"  # bm25s's, and every collection's before "pattern" was recorded
# "words": runs of 2+ letters or digits. The same tokens as bm25s's except at underscores, so prose
# is unchanged (SciFact/CACM nDCG@10 within 0.0004) and snake_case names match their words: on the
# stdlib docstring check of benchmarks/bench_bm25_variants.py 0.678 against 0.628.
PATTERNS = {"words": r"(?u)[^\W_]{2,}", "bm25s": TOKEN_PATTERN, "identifiers": r"(?u)[^\W_]{2,}"}
# "identifiers": the "words" tokens plus, for code names, the parts of camelCase / PascalCase words
# (getHelpExtra -> get, help, extra; HTTPServer -> http, server) and the whole of snake_case and
# kebab-case names (read_file, max-age), so a query naming the identifier matches it whole and a
# query in words matches its parts. Only code chunks and queries get them (Tokenizer.__call__).
_CAMEL_WORD = re.compile(r"[^\W_]*(?:[a-z][A-Z]|[A-Z]{2}[a-z])[^\W_]*")
_CAMEL_PART = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")
_JOINED = re.compile(r"[^\W_]+(?:(?:_+|-)[^\W_]+)+")

DATA, INDICES, INDPTR = "data.csc.index.npy", "indices.csc.index.npy", "indptr.csc.index.npy"
VOCAB, PARAMS = "vocab.index.json", "params.index.json"
IDS, DOC_PTR, DOC_TERMS, DOC_TFS, TOKENIZER = "ids.npy", "doc_ptr.npy", "doc_terms.npy", "doc_tfs.npy", "tokenizer.json"


@dataclass(frozen=True)
class BM25Config:
    """Lucene BM25, chosen across SciFact train and CACM (benchmarks/bench_transfer.py, minimax
    regret, leave-one-dataset-out): k1=1.2, b=0.75 is within 0.0009 nDCG@10 of SciFact's best
    k1/b and CACM's best; a record's title counted 3 times raised BM25 on both (SciFact train
    0.696 -> 0.703, CACM 0.499 -> 0.520) and hybrid on CACM (0.569 -> 0.586; SciFact -0.0002 vs
    2x). Stopwords: bm25s's 179-word "en_plus" list (see retrieval/index/stopwords.py; "en" is
    bm25s's default 33, "" none); tokens: PATTERNS. Every other difference from bm25s measured in
    benchmarks/bench_bm25_variants.py (1-char tokens, letter/digit splits, accent folding, Porter,
    IDF variants, query terms once, one BM25 document per chunk) helped neither dataset or only one.
    Each collection keeps the values it was built with in its manifest."""

    k1: float = 1.2
    b: float = 0.75
    method: str = "lucene"
    stemmer: str = "english"
    stopwords: str = "en_plus"
    pattern: str = "identifiers"  # a PATTERNS name; a manifest without one is a "bm25s" collection (legacy_section)
    title_weight: int = 3  # a document title's tokens count this many times (index time only)

    def __post_init__(self) -> None:
        if not (self.k1 > 0 and 0.0 <= self.b <= 1.0):
            raise ValueError(f"BM25 needs k1 > 0 and b in [0, 1], got k1={self.k1} b={self.b}")
        if isinstance(self.title_weight, bool) or not isinstance(self.title_weight, int) or self.title_weight < 1:
            raise ValueError(f"title_weight must be an integer >= 1, got {self.title_weight!r}")
        if self.stopwords not in stoplists.LISTS:
            raise ValueError(f"unknown BM25 stopword list {self.stopwords!r} (known: {sorted(stoplists.LISTS)})")
        if self.pattern not in PATTERNS:
            raise ValueError(f"unknown BM25 token pattern {self.pattern!r} (known: {sorted(PATTERNS)})")

    def to_dict(self) -> dict:
        return dict(self.__dict__, tokenizer=tokenizer_id(self))


def tokenizer_id(cfg: BM25Config) -> str:
    """What a query must be tokenised with to match the index: pattern, case, stopwords, stemmer."""
    kind = "+identifiers" if cfg.pattern == "identifiers" else ""  # "words" and "bm25s" ids as before it existed
    stop = f"{cfg.stopwords or 'none'}:{len(stoplists.LISTS[cfg.stopwords])}"
    return f"{PATTERNS[cfg.pattern]}{kind}|lower|stopwords:{stop}|stemmer:{cfg.stemmer or 'none'}"


class Tokenizer:
    """bm25s-compatible tokeniser; the stemmer is created once per tokenizer."""

    def __init__(self, stemmer: str | None = "english", stopwords: Sequence[str] = STOPWORDS_EN_PLUS,
                 pattern: str = PATTERNS["words"], identifiers: bool = False) -> None:
        self._split = re.compile(pattern).findall
        self._identifiers = identifiers
        self._stop = frozenset(stopwords)
        self._stem = None
        if stemmer:
            import Stemmer  # PyStemmer, C, ~10 ms import

            self._stem = Stemmer.Stemmer(stemmer).stemWords

    def __call__(self, text: str, code: bool | None = None) -> list[str]:
        """Tokens of `text`. With the "identifiers" pattern: a code chunk (code=True) gets camelCase
        parts and snake/kebab wholes, a prose document (code=False) the "words" tokens alone, so a
        prose collection indexes exactly what it did before; a query (None) gets the snake/kebab
        wholes only, which no prose document holds. Measured on BM25 nDCG@10 (SciFact test / train
        / CACM): words 0.6909 / 0.7035 / 0.5270; extras on prose documents too 0.6902 on SciFact
        test; camelCase parts on queries too 0.6859 / 0.7034 / 0.5270."""
        toks = self._split(text.lower())
        if self._identifiers and code is not False:
            if code:
                toks += [p.lower() for w in _CAMEL_WORD.findall(text) for p in _CAMEL_PART.findall(w) if len(p) > 1]
            toks += [w.lower() for w in _JOINED.findall(text)]
        toks = [t for t in toks if t not in self._stop]
        return self._stem(toks) if self._stem else toks


@dataclass
class BM25Index:
    """One generation's BM25: bm25s CSC score matrix (term-major) plus per-chunk postings."""

    ids: np.ndarray  # (D,) int64 chunk id of each row, ascending
    data: np.ndarray  # (nnz,) float32 precomputed BM25 term-doc scores
    indices: np.ndarray  # (nnz,) int32 row (doc position) of each score
    indptr: np.ndarray  # (V+1,) int64 term column pointers
    vocab: dict[str, int]
    doc_ptr: np.ndarray  # (D+1,) int64 postings pointers per doc
    doc_terms: np.ndarray  # (nnz,) int32 term id per posting
    doc_tfs: np.ndarray  # (nnz,) int32 term frequency per posting
    config: BM25Config

    @property
    def num_docs(self) -> int:
        return int(self.ids.shape[0])

    def scores(self, query_tokens: Sequence[str]) -> np.ndarray:
        """BM25 score of every row for the query (bm25s semantics: repeated terms count again)."""
        s = np.zeros(self.num_docs, dtype=np.float32)  # (D,)
        for tok in query_tokens:
            t = self.vocab.get(tok)
            if t is None or t + 1 >= len(self.indptr):
                continue
            a, b = int(self.indptr[t]), int(self.indptr[t + 1])
            s[self.indices[a:b]] += self.data[a:b]
        return s

    def positions(self, chunk_ids: np.ndarray) -> np.ndarray:
        """Row positions of the given chunk ids (ids absent from this index are dropped)."""
        pos = np.searchsorted(self.ids, chunk_ids)
        pos = np.clip(pos, 0, max(self.num_docs - 1, 0))
        ok = (self.num_docs > 0) & (self.ids[pos] == chunk_ids) if self.num_docs else np.zeros(len(chunk_ids), bool)
        return pos[ok]

    def top_k(self, query_tokens: Sequence[str], k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Best k (score, chunk id) among rows with a positive score, restricted to `allowed` ids
        before ranking, so k come back whenever k matching chunks exist."""
        s = self.scores(query_tokens)  # (D,)
        if allowed is not None:
            mask = np.zeros(self.num_docs, dtype=bool)
            mask[self.positions(np.asarray(allowed, dtype=np.int64))] = True
            s = np.where(mask, s, 0.0)
        cand = np.flatnonzero(s > 0)
        if len(cand) > k:
            cand = cand[np.argpartition(-s[cand], k - 1)[:k]]
        order = cand[np.argsort(-s[cand], kind="stable")]
        return s[order].astype(np.float32), self.ids[order]


def _csc(doc_ptr: np.ndarray, terms: np.ndarray, tfs: np.ndarray, n_vocab: int, cfg: BM25Config):
    """bm25s 'lucene' scores for every posting, laid out term-major (CSC) like bm25s."""
    n_docs = len(doc_ptr) - 1
    doc = np.repeat(np.arange(n_docs, dtype=np.int32), np.diff(doc_ptr))  # (nnz,)
    dl = np.bincount(doc, weights=tfs, minlength=n_docs).astype(np.float64)  # (D,)
    # Rows without tokens (the later chunks of a record, whose first chunk holds its whole text)
    # are not documents: they count neither in the average length nor in N.
    n_real = int((dl > 0).sum())
    avgdl = float(dl[dl > 0].mean()) if n_real else 1.0
    df = np.bincount(terms, minlength=n_vocab).astype(np.float64)  # (V,)
    idf = np.log(1.0 + (n_real - df + 0.5) / (df + 0.5))  # (V,)
    tf = tfs.astype(np.float64)
    score = idf[terms] * tf / (tf + cfg.k1 * (1.0 - cfg.b + cfg.b * dl[doc] / avgdl))  # (nnz,)
    order = np.lexsort((doc, terms))
    indptr = np.zeros(n_vocab + 1, dtype=np.int64)
    np.cumsum(np.bincount(terms, minlength=n_vocab), out=indptr[1:])
    return score[order].astype(np.float32), doc[order].astype(np.int32), indptr


def _postings(token_lists: Sequence[Sequence[str]], vocab: dict[str, int]):
    """Per-doc (term id, tf) postings; new terms are appended to `vocab` (mutated)."""
    lens: list[int] = []
    terms: list[int] = []
    tfs: list[int] = []
    for toks in token_lists:
        counts: dict[int, int] = {}
        for t in toks:
            tid = vocab.get(t)
            if tid is None:
                tid = vocab[t] = len(vocab)
            counts[tid] = counts.get(tid, 0) + 1
        lens.append(len(counts))
        terms.extend(counts.keys())
        tfs.extend(counts.values())
    return np.asarray(lens, np.int64), np.asarray(terms, np.int32), np.asarray(tfs, np.int32)


def empty(cfg: BM25Config) -> BM25Index:
    z = np.zeros(0, np.int32)
    return BM25Index(np.zeros(0, np.int64), np.zeros(0, np.float32), z, np.zeros(1, np.int64), {}, np.zeros(1, np.int64), z, z, cfg)


def update(old: BM25Index | None, remove_ids: np.ndarray, add_ids: np.ndarray, add_tokens: Sequence[Sequence[str]], cfg: BM25Config) -> BM25Index:
    """A new BM25Index: `old` minus removed chunks plus the new ones (ids ascending), O(nnz) numpy."""
    old = old if old is not None else empty(cfg)
    vocab = dict(old.vocab)
    keep = ~np.isin(old.ids, remove_ids) if len(remove_ids) else np.ones(old.num_docs, bool)  # (D,)
    lens_old = np.diff(old.doc_ptr)[keep]
    entry_keep = np.repeat(keep, np.diff(old.doc_ptr))  # (nnz,)
    lens_new, terms_new, tfs_new = _postings(add_tokens, vocab)
    ids = np.concatenate([old.ids[keep], np.asarray(add_ids, np.int64)])
    lens = np.concatenate([lens_old, lens_new])
    terms = np.concatenate([np.asarray(old.doc_terms)[entry_keep], terms_new])
    tfs = np.concatenate([np.asarray(old.doc_tfs)[entry_keep], tfs_new])
    doc_ptr = np.zeros(len(ids) + 1, np.int64)
    np.cumsum(lens, out=doc_ptr[1:])
    if len(ids) > 1 and np.any(np.diff(ids) <= 0):  # keep rows sorted by chunk id
        order = np.argsort(ids, kind="stable")
        starts, ls = doc_ptr[:-1][order], lens[order]
        sel = np.concatenate([np.arange(s, s + n) for s, n in zip(starts, ls)]) if len(ls) else np.zeros(0, np.int64)
        ids, lens, terms, tfs = ids[order], ls, terms[sel], tfs[sel]
        np.cumsum(lens, out=doc_ptr[1:])
    data, indices, indptr = _csc(doc_ptr, terms, tfs, len(vocab), cfg)
    return BM25Index(ids, data, indices, indptr, vocab, doc_ptr, terms, tfs, cfg)


def rescore(index: BM25Index, cfg: BM25Config) -> BM25Index:
    """The same postings scored with other k1/b (O(nnz), no re-tokenising): how k1 and b are tuned."""
    if (cfg.stemmer, cfg.stopwords, cfg.pattern) != (index.config.stemmer, index.config.stopwords, index.config.pattern):
        raise ValueError("rescore changes k1, b and method only; the tokens depend on stemmer, stopwords and pattern")
    data, indices, indptr = _csc(np.asarray(index.doc_ptr), np.asarray(index.doc_terms), np.asarray(index.doc_tfs),
                                 len(index.vocab), cfg)
    return BM25Index(index.ids, data, indices, indptr, index.vocab, index.doc_ptr, index.doc_terms, index.doc_tfs, cfg)


def save(index: BM25Index, folder: Path) -> None:
    """bm25s's layout plus our postings; numpy files without pickle, JSON params."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in ((DATA, index.data), (INDICES, index.indices), (INDPTR, index.indptr), (IDS, index.ids),
                      (DOC_PTR, index.doc_ptr), (DOC_TERMS, index.doc_terms), (DOC_TFS, index.doc_tfs)):
        np.save(folder / name, np.asarray(arr), allow_pickle=False)
    (folder / VOCAB).write_text(json.dumps(index.vocab, ensure_ascii=False), encoding="utf-8")
    c = index.config
    params = {"k1": c.k1, "b": c.b, "delta": 0.5, "method": c.method, "idf_method": c.method, "dtype": "float32",
              "int_dtype": "int32", "num_docs": index.num_docs, "version": "knnrag", "backend": "numpy"}
    (folder / PARAMS).write_text(json.dumps(params, indent=2), encoding="utf-8")
    tok = {"token_pattern": PATTERNS[c.pattern], "pattern_name": c.pattern, "lower": True, "stopwords": list(stoplists.LISTS[c.stopwords]),
           "stopwords_name": c.stopwords, "stemmer": c.stemmer, "id": tokenizer_id(c)}
    (folder / TOKENIZER).write_text(json.dumps(tok, indent=2), encoding="utf-8")


def load(folder: Path, *, mmap: bool = True) -> BM25Index:
    mode: Literal["r"] | None = "r" if mmap else None
    try:
        arr = {n: np.load(folder / n, mmap_mode=mode, allow_pickle=False)
               for n in (DATA, INDICES, INDPTR, IDS, DOC_PTR, DOC_TERMS, DOC_TFS)}
        vocab = json.loads((folder / VOCAB).read_text(encoding="utf-8"))
        params = json.loads((folder / PARAMS).read_text(encoding="utf-8"))
        tok = json.loads((folder / TOKENIZER).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CorruptStoreError(f"cannot read the BM25 index in {folder}: {e}", "delete the collection and re-index") from e
    stop = stoplists.name_of(tok.get("stopwords") or [])  # indexes before "stopwords_name" saved only the list
    named = tok.get("pattern_name")  # saved since "identifiers" shares the regex of "words"
    pattern = named if named in PATTERNS and PATTERNS[named] == tok.get("token_pattern") else \
        next((n for n, p in PATTERNS.items() if p == tok.get("token_pattern", TOKEN_PATTERN)), None)
    if stop is None or pattern is None:
        raise CorruptStoreError(f"the BM25 index in {folder} was built with a tokeniser this version does not know "
                                f"(pattern {tok.get('token_pattern')!r}, {len(tok.get('stopwords') or [])} stopwords)",
                                "re-index the collection with this version (delete it and run `knnrag index` again)")
    cfg = BM25Config(k1=params["k1"], b=params["b"], method=params["method"], stemmer=tok.get("stemmer") or "", stopwords=stop,
                     pattern=pattern)
    if int(params.get("num_docs", -1)) != len(arr[IDS]):
        raise CorruptStoreError(f"BM25 index {folder} is inconsistent (num_docs != ids)", "delete the collection and re-index")
    return BM25Index(arr[IDS], arr[DATA], arr[INDICES], arr[INDPTR], vocab, arr[DOC_PTR], arr[DOC_TERMS], arr[DOC_TFS], cfg)


def tokenizer_for(cfg: BM25Config) -> Tokenizer:
    return Tokenizer(cfg.stemmer or None, stoplists.LISTS[cfg.stopwords], PATTERNS[cfg.pattern], cfg.pattern == "identifiers")


def legacy_section(d: object) -> object:
    """A collection manifest's "bm25" section, with the token pattern that collections written
    before it was recorded were built with."""
    return {**d, "pattern": "bm25s"} if isinstance(d, dict) and d and "pattern" not in d else d
