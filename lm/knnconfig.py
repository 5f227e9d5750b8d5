"""The kNN-LM records: the config (and the user's overrides of it) and per-token pass results.

Kept apart from lm.knnlm (the stateful model + datastore) so the calibration, eval and the MCP
layer can import the records without the model code.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np

from lm.knn import LambdaFn, lambda_features
from retrieval.errors import InvalidInputError


@dataclass(frozen=True)
class KNNConfig:
    """Defaults tuned on 4k tokens of wiki.valid.tokens with SmolLM2-135M and a 1M-entry
    WikiText-2 datastore (grid k 8-64, T 1-300, lambda 0.05-0.8, then refined; BENCHMARKS.md).
    They apply only to datastores built before calibration: KNNLM.load takes k, temperature and
    lambda from the datastore's calibration record (lm.datastore.calibration)."""

    k: int = 64
    lambda_: float = 0.25
    temperature: float = 2.55  # on squared L2 distances of the raw 576-d keys (typical nearest: 10-30)
    rerank_exact: bool = True  # re-rank IVF-PQ candidates by exact fp16-key distance (99% vs 95% of the gain kept)
    rerank_factor: int = 2
    adaptive_threshold: float | None = None  # skip retrieval where base max prob >= this
    nprobe: int = 32
    exact: bool = False  # force Flat search
    window: int | None = None
    stride: int | None = None
    lambda_fn: LambdaFn | None = None  # per-token lambda (calibrated); None = the fixed lambda_
    distance_gate: tuple[float, float] | None = None  # (near, far) held-out distances: lambda -> 0 beyond (lm.knn.distance_gate)

    def __post_init__(self) -> None:
        if not isinstance(self.k, int) or self.k < 1:
            raise InvalidInputError(f"k must be an integer >= 1, got {self.k!r}", "pass -k 1 or more (default 64)")
        if not 0.0 <= float(self.lambda_) <= 1.0:
            raise InvalidInputError(f"lambda must be in [0, 1], got {self.lambda_}", "pass --lambda between 0 and 1")
        if not float(self.temperature) > 0 or not math.isfinite(float(self.temperature)):
            raise InvalidInputError(f"temperature must be > 0, got {self.temperature}", "pass --temperature > 0, e.g. 3")
        if self.adaptive_threshold is not None and not 0.0 < self.adaptive_threshold <= 1.0:
            raise InvalidInputError("adaptive threshold must be in (0, 1]", "e.g. 0.9, or leave it unset")
        if self.nprobe < 1 or self.rerank_factor < 1:
            raise InvalidInputError("nprobe and rerank factor must be >= 1", "use e.g. nprobe 32")

    @property
    def mixes(self) -> bool:
        """False when kNN cannot change a probability (lambda 0, no per-token lambda): no search needed."""
        return self.lambda_ > 0 or self.lambda_fn is not None

    def token_lambdas(self, D: np.ndarray, values: np.ndarray, max_p: np.ndarray) -> float | np.ndarray:
        """The fixed lambda, or (n,) per-token lambdas from the retrieval features; damped towards 0
        where the nearest neighbour is farther than the datastore's held-out text ever put it."""
        if self.lambda_fn is None:
            lam: float | np.ndarray = self.lambda_
        else:
            lam = self.lambda_fn(lambda_features(D[:, : self.k], values[:, : self.k], max_p, self.temperature))
        return self.gated(lam, D[:, 0])

    def gated(self, lam: float | np.ndarray, d0: np.ndarray) -> float | np.ndarray:
        """lam times the distance gate of the nearest distances d0 (n,); lam as is without a gate."""
        if self.distance_gate is None:
            return lam
        from lm.knn import distance_gate

        return (np.asarray(lam, dtype=np.float32) * distance_gate(d0, self.distance_gate)).astype(np.float32)


@dataclass(frozen=True)
class KNNOverrides:
    """Settings the user passed (flags, MCP arguments): they override the calibrated config.

    Changing k, temperature or lambda drops the per-token lambda, which was fitted for the
    calibrated (k, temperature)."""

    k: int | None = None
    lambda_: float | None = None
    temperature: float | None = None
    nprobe: int | None = None
    adaptive_threshold: float | None = None
    exact: bool | None = None
    rerank_exact: bool | None = None

    def apply(self, cfg: KNNConfig) -> KNNConfig:
        from dataclasses import fields, replace

        over = {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}
        if not over:
            return cfg
        if {"k", "lambda_", "temperature"} & over.keys():
            over["lambda_fn"] = None
        return replace(cfg, **over)


@dataclass
class PerplexityResult:
    base_ppl: float
    knn_ppl: float | None
    tokens: int
    base_seconds: float
    knn_seconds: float | None
    k: int
    lambda_: float
    temperature: float
    searched: int = 0  # positions retrieved for (< tokens with adaptive retrieval)
    window: int = 0
    stride: int = 0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["lambda"] = d.pop("lambda_")
        d["base_tokens_per_s"] = round(self.tokens / self.base_seconds, 1) if self.base_seconds else None
        d["knn_tokens_per_s"] = round(self.tokens / self.knn_seconds, 1) if self.knn_seconds else None
        return d


class Retrieval(NamedTuple):
    """One retrieval configuration's neighbours for every scored token of a pass."""

    D: np.ndarray  # (n, k) squared L2 distances, ascending; inf where not searched
    hit: np.ndarray  # (n, k) neighbour value == target token
    values: np.ndarray  # (n, k) int32 neighbour token ids, -1 where none (per-token lambda features)
    seconds: float  # search + gather time (on top of the forward)
    searched: int  # positions searched (adaptive retrieval skips the rest)


class TokenScores(NamedTuple):
    """Per-token results of one pass, enough to re-score any (k, T, lambda) offline."""

    base_lp: np.ndarray  # (n,) base log p of each target
    max_p: np.ndarray  # (n,) base max probability (adaptive retrieval)
    base_seconds: float  # forward + log-softmax
    retrievals: list[Retrieval]  # one per config, same order

    @property
    def tokens(self) -> int:
        return int(self.base_lp.size)


def mix_nll(base_lp: np.ndarray, r: Retrieval, k: int, temperature: float, lambda_: float | np.ndarray) -> np.ndarray:
    """(n,) kNN-LM negative log-likelihood from the first k neighbours of a retrieval (lm.knn.mix_nll)."""
    from lm.knn import mix_nll as _mix

    return _mix(base_lp, r.D[:, :k], r.hit[:, :k], temperature, lambda_)


def config_nll(sc: TokenScores, r: Retrieval, cfg: KNNConfig) -> np.ndarray:
    """(n,) NLL of one pass under `cfg`, with its per-token lambda when it has one."""
    return mix_nll(sc.base_lp, r, cfg.k, cfg.temperature, cfg.token_lambdas(r.D, r.values, sc.max_p))
