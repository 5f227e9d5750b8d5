"""Chunk preprocessing: whitespace normalisation, a quality filter, exact and near-duplicate removal.

Everything here is a pure function over strings except `NearDupFilter`, which remembers what it
has seen. MinHash is done in numpy (no datasketch): 64-bit word-shingle hashes, `num_perm` hash functions
made by xoring a per-permutation seed into the shingle hash and running the splitmix64 finaliser
(linear (a*x+b) mod p hashes with small multipliers are too correlated across permutations), LSH
banding tuned to the threshold, and a final check of the estimated Jaccard similarity so banding
only proposes candidates.
"""
from __future__ import annotations

import hashlib
import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np

from retrieval.errors import InvalidInputError

_WORD = re.compile(r"\w+")
_LETTERS2 = re.compile(r"[^\W\d_]{2,}")  # a run of 2+ letters: a real word, in any script
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")
_BLOB = re.compile(r"[A-Za-z0-9+/=_\-]{40,}")  # base64, hex digests, minified identifiers
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)  # splitmix64 finaliser constants
_MIX2 = np.uint64(0x94D049BB133111EB)
_SHINGLE_MUL = np.uint64(0x100000001B3)  # FNV-64 prime: folds consecutive word hashes into a shingle hash


def normalize_whitespace(text: str) -> str:
    """Collapse every run of Unicode whitespace (str.isspace) to one space and strip the ends.

    Tokenizers split on whitespace anyway, so this changes what is stored and hashed (exact
    duplicates differing only in indentation or line wrapping collapse) but not what is embedded.
    """
    return " ".join(text.split())


_OTHER_WS = re.compile(r"[^\S ]")  # whitespace other than a plain space


def blank_whitespace(text: str) -> str:
    """`text` with every whitespace character replaced by a plain space: same length, same offsets.

    The chunker tokenises this view so its token counts equal those of the normalised text.
    """
    return _OTHER_WS.sub(" ", text)


def content_hash(index_text: str) -> str:
    """sha256 hex of the text that gets embedded: equal hashes mean an exact duplicate chunk."""
    return hashlib.sha256(index_text.encode("utf-8", "surrogatepass")).hexdigest()


def index_body(index_text: str) -> str:
    """The chunk's own text inside an index_text, without the title/heading context line.

    The chunker builds index_text as "context\\nbody" (or just "body"), and both parts are
    whitespace-normalised, so the last newline separates them. Quality is judged on the body only,
    so a heading prefix cannot rescue a chunk of junk.
    """
    return index_text.rsplit("\n", 1)[-1]


def _looks_random(token: str) -> bool:
    """A long token mixing digits with letters (base64, hashes) rather than a long word."""
    has_digit = any(c.isdigit() for c in token)
    has_upper = any(c.isupper() for c in token)
    has_lower = any(c.islower() for c in token)
    return has_digit and (has_upper or has_lower) or (has_upper and has_lower and len(token) >= 60)


def is_quality_text(text: str) -> bool:
    """True when `text` carries real language (or code), not separators, numbers or binary blobs.

    Rules, each cheap and explainable:
    - at least 2 words of 2+ letters (any script; CJK counts per ideograph, since it has no spaces);
    - letters and digits make up at least 30% of the non-space characters (drops ASCII art,
      table rules, punctuation runs; code stays well above this);
    - base64/hex-like tokens make up less than half of the non-space characters.
    """
    stripped = "".join(text.split())
    if not stripped:
        return False
    words = len(_LETTERS2.findall(text)) + len(_CJK.findall(text))
    if words < 2:
        return False
    alnum = sum(1 for c in stripped if c.isalnum())
    if alnum < 0.3 * len(stripped):
        return False
    blob = sum(len(t) for t in _BLOB.findall(text) if _looks_random(t))
    return blob < 0.5 * len(stripped)


def _lsh_error(threshold: float, bands: int, rows: int) -> float:
    """Weighted areas of false positives below the threshold and false negatives above it.

    False negatives weigh 9x more: a missed candidate is a kept duplicate, while a spurious
    candidate only costs one signature comparison (the final decision uses the full signature).
    """
    s = np.linspace(0.0, 1.0, 1001)  # (G,)
    p = 1.0 - (1.0 - s**rows) ** bands  # (G,) probability two sets of similarity s share a band
    below = s <= threshold
    fp = np.trapezoid(p[below], s[below]) if below.sum() > 1 else 0.0
    fn = np.trapezoid(1.0 - p[~below], s[~below]) if (~below).sum() > 1 else 0.0
    return float(0.1 * fp + 0.9 * fn)


@lru_cache(maxsize=32)
def optimal_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) with bands*rows <= num_perm minimising false positives + false negatives."""
    best = (1, num_perm)
    best_err = float("inf")
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            err = _lsh_error(threshold, bands, rows)
            if err < best_err:
                best, best_err = (bands, rows), err
    return best


class NearDupFilter:
    """Remembers MinHash signatures and flags texts whose estimated Jaccard similarity of word
    5-shingles to something already seen reaches `threshold`.

    Deterministic: hash seeds come from a fixed seed and words are hashed with crc32, so
    the same texts in the same order give the same decisions in every process.
    """

    def __init__(self, threshold: float = 0.9, num_perm: int = 64, shingle: int = 5, seed: int = 1) -> None:
        if not 0.0 < threshold <= 1.0:
            raise InvalidInputError(f"near-duplicate threshold {threshold} is outside (0, 1]", "use e.g. 0.9")
        if num_perm < 2 or shingle < 1:
            raise InvalidInputError(f"num_perm={num_perm}, shingle={shingle} are too small", "use num_perm>=2, shingle>=1")
        self.threshold = float(threshold)
        self.num_perm = int(num_perm)
        self.shingle = int(shingle)
        rng = np.random.default_rng(seed)
        self._seeds = rng.integers(0, np.iinfo(np.int64).max, size=self.num_perm, dtype=np.uint64)  # (P,)
        self.bands, self.rows = optimal_bands(self.threshold, self.num_perm)
        self._tables: list[dict[bytes, list[int]]] = [{} for _ in range(self.bands)]
        self._sigs: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self._sigs)

    def signature(self, text: str) -> np.ndarray | None:
        """MinHash signature (num_perm,) uint64 of the text's lower-cased word shingles; None if no words."""
        words = _WORD.findall(text.lower())
        if not words:
            return None
        wh = np.fromiter((zlib.crc32(w.encode("utf-8", "surrogatepass")) for w in words), dtype=np.uint64, count=len(words))  # (W,)
        n = max(1, len(words) - self.shingle + 1)
        sh = np.zeros(n, dtype=np.uint64)  # (S,)
        for j in range(min(self.shingle, len(words))):
            sh = sh * _SHINGLE_MUL + wh[j : j + n]  # (S,) wraps mod 2^64 on purpose
        sh = np.unique(sh)  # (S',)
        z = sh[None, :] ^ self._seeds[:, None]  # (P, S')
        z = (z ^ (z >> np.uint64(30))) * _MIX1  # (P, S')
        z = (z ^ (z >> np.uint64(27))) * _MIX2  # (P, S')
        z = z ^ (z >> np.uint64(31))  # (P, S')
        return z.min(axis=1)  # (P,)

    def _keys(self, sig: np.ndarray) -> Iterator[tuple[int, bytes]]:
        for band in range(self.bands):
            yield band, sig[band * self.rows : (band + 1) * self.rows].tobytes()

    def similarity(self, a: str, b: str) -> float:
        """Estimated Jaccard similarity of two texts' shingle sets (for tests and tuning)."""
        sa, sb = self.signature(a), self.signature(b)
        if sa is None or sb is None:
            return 0.0
        return float(np.mean(sa == sb))

    def is_near_duplicate(self, text: str) -> bool:
        """True if `text` nearly duplicates one seen before; otherwise remember it and return False."""
        sig = self.signature(text)
        if sig is None:
            return False
        candidates: set[int] = set()
        for band, key in self._keys(sig):
            candidates.update(self._tables[band].get(key, ()))
        for idx in candidates:
            if float(np.mean(self._sigs[idx] == sig)) >= self.threshold:
                return True
        self._remember(sig)
        return False

    def add(self, text: str) -> None:
        """Remember `text` without testing it (seed the filter with an existing collection)."""
        sig = self.signature(text)
        if sig is not None:
            self._remember(sig)

    def _remember(self, sig: np.ndarray) -> None:
        idx = len(self._sigs)
        self._sigs.append(sig)
        for band, key in self._keys(sig):
            self._tables[band].setdefault(key, []).append(idx)


@dataclass
class PreprocessReport:
    """What each preprocessing step dropped; `to_dict` uses the IndexReport `dropped` key names."""

    empty_dropped: int = 0
    low_quality_dropped: int = 0
    exact_duplicates_dropped: int = 0
    near_duplicates_dropped: int = 0

    @property
    def total(self) -> int:
        return sum(asdict(self).values())

    def to_dict(self) -> dict[str, int]:
        return {
            "empty": self.empty_dropped,
            "low_quality": self.low_quality_dropped,
            "exact_duplicate": self.exact_duplicates_dropped,
            "near_duplicate": self.near_duplicates_dropped,
        }


def preprocess_chunks(
    chunks: Iterable,
    report: PreprocessReport,
    *,
    seen_hashes: set[str] | None = None,
    near_dup: NearDupFilter | None = None,
    quality: bool = True,
) -> list:
    """Keep the chunks that survive every step, counting drops in `report`.

    Order matters and is fixed: empty -> low quality -> exact duplicate (content hash of
    index_text, against `seen_hashes`, which is updated) -> near duplicate (against `near_dup`).
    Pass the same set/filter across files to deduplicate a whole collection.
    """
    seen = seen_hashes if seen_hashes is not None else set()
    kept = []
    for chunk in chunks:
        body = index_body(chunk.index_text)
        if not body.strip():
            report.empty_dropped += 1
            continue
        if quality and not is_quality_text(body):
            report.low_quality_dropped += 1
            continue
        digest = content_hash(chunk.index_text)
        if digest in seen:
            report.exact_duplicates_dropped += 1
            continue
        if near_dup is not None and near_dup.is_near_duplicate(body):
            report.near_duplicates_dropped += 1
            continue
        seen.add(digest)
        kept.append(chunk)
    return kept
