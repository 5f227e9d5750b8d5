"""KNNLM: a causal LM plus a token datastore, for perplexity, explanations and generation.

One forward per strided window, the keys of all its scored positions captured by a hook, and one
batched FAISS search per window (never one call per token). Adaptive retrieval (He et al., 2021)
skips the search where the base LM is already confident.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from retrieval.errors import InvalidInputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KNNConfig:
    """Defaults tuned on 4k tokens of wiki.valid.tokens with SmolLM2-135M and a 1M-entry
    WikiText-2 datastore (grid k 8-64, T 1-300, lambda 0.05-0.8, then refined; BENCHMARKS.md)."""

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


def mix_nll(base_lp: np.ndarray, r: Retrieval, k: int, temperature: float, lambda_: float) -> np.ndarray:
    """(n,) negative log-likelihood under kNN-LM; positions not searched keep the base LM."""
    import torch

    from lm.knn import interpolate, neighbour_log_weights

    base = torch.from_numpy(base_lp)  # (n,)
    D = torch.from_numpy(r.D[:, :k])  # (n, k)
    logw = neighbour_log_weights(D, temperature)  # (n, k)
    logw = torch.where(torch.from_numpy(r.hit[:, :k]), logw, torch.full_like(logw, -math.inf))  # (n, k)
    mix = interpolate(base, torch.logsumexp(logw, dim=-1), lambda_)  # (n,)
    mix = torch.where(torch.isfinite(D[:, 0]), mix, base)  # (n,)
    return (-mix).numpy()


class KNNLM:
    def __init__(self, lm, store=None, config: KNNConfig | None = None) -> None:
        self.lm = lm
        self.store = store
        self.config = config or KNNConfig()
        import faiss
        import torch

        faiss.omp_set_num_threads(max(1, torch.get_num_threads()))

    @classmethod
    def load(cls, model=None, datastore: str | Path | None = None, config: KNNConfig | None = None) -> KNNLM:
        """model: None (the datastore's model, else bundled SmolLM2), an HF id/path, or a LoadedLM."""
        from lm.datastore.token_store import TokenStore
        from lm.models import LoadedLM, load_lm

        spec = None
        if datastore is not None and model is None:
            spec = TokenStore.open(datastore).manifest.get("lm_spec")
        lm = model if isinstance(model, LoadedLM) else load_lm(model if model is not None else spec)
        store = None
        if datastore is not None:
            store = TokenStore.open(datastore, lm_id=lm.model_id, tokenizer_hash=lm.tokenizer_hash)
            if store.manifest["key_layer"] != lm.key_layer:
                from retrieval.errors import MismatchError

                raise MismatchError(f"datastore key layer {store.manifest['key_layer']} differs from {lm.key_layer}",
                                    "load the model with the datastore's key layer, or rebuild")
        if config is None and store is not None and 0 < store.count < KNNConfig.k:
            # the default k only; a k the user asked for is checked (and refused) where it is used
            from dataclasses import replace

            logging.getLogger(__name__).warning("datastore has %d entries: using k=%d instead of the default %d",
                                                store.count, store.count, KNNConfig.k)
            config = replace(KNNConfig(), k=store.count)
        return cls(lm, store, config)

    @property
    def has_datastore(self) -> bool:
        return self.store is not None and self.store.count > 0

    def _cfg(self, **over) -> KNNConfig:
        from dataclasses import replace

        over = {k: v for k, v in over.items() if v is not None}
        return replace(self.config, **over) if over else self.config

    def _encode(self, text: str) -> np.ndarray:
        ids = np.asarray(self.lm.tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int64)  # (L,)
        if ids.size < 2:
            raise InvalidInputError(f"the text has {ids.size} token(s); perplexity needs at least 2",
                                    "pass a longer text")
        return ids

    def _search(self, xq: np.ndarray, cfg: KNNConfig):
        return self.store.search(xq, cfg.k, nprobe=cfg.nprobe, exact=cfg.exact,
                                 rerank=cfg.rerank_factor if cfg.rerank_exact else 0)

    def score_tokens(self, text: str, configs: list[KNNConfig] | None = None, *, window: int | None = None,
                     stride: int | None = None) -> TokenScores:
        """One strided pass over `text`: base log-probs, and per config one batched search per window.

        Several configs (e.g. exact and fast) share the forward pass, so their extra cost is timed
        alone and compared on identical keys.
        """
        import torch

        from lm.hooks import capture, resolve_module
        from lm.models import autocast
        from lm.windows import default_window, plan_windows

        configs = list(configs if configs is not None else [self.config]) if self.has_datastore else []
        for cfg in configs:
            if cfg.k > self.store.count:
                raise InvalidInputError(f"k={cfg.k} is larger than the datastore ({self.store.count} entries)",
                                        f"pass -k {self.store.count} or less, or add text to the datastore")
        ids = self._encode(text)
        W = min(default_window(self.lm.max_length, window or self.config.window), self.lm.max_length)
        S = int(stride or self.config.stride or W // 2)
        module = resolve_module(self.lm.model, self.lm.key_module_path)
        base_lp, max_p = [], []
        Ds = [[] for _ in configs]
        hits = [[] for _ in configs]
        secs = [0.0] * len(configs)
        nsearch = [0] * len(configs)
        t_base = 0.0
        for w in plan_windows(ids.size, W, S):
            t0 = time.perf_counter()
            x = torch.from_numpy(ids[w.begin:w.end])[None]  # (1, T)
            with torch.inference_mode(), autocast(self.lm), capture(module, output=self.lm.key_is_output) as cap:
                logits = self.lm.model(input_ids=x, use_cache=False).logits  # (1, T, V)
                pos = torch.arange(w.first_target - w.begin - 1, w.end - w.begin - 1)  # (n,) predicting positions
                tgt = x[0, pos + 1]  # (n,)
                lp = torch.log_softmax(logits[0, pos].float(), dim=-1)  # (n, V)
                blp = lp.gather(1, tgt[:, None])[:, 0]  # (n,)
                mp = lp.max(dim=-1).values.exp()  # (n,)
            t_base += time.perf_counter() - t0
            base_lp.append(blp.numpy())
            max_p.append(mp.numpy())
            keys = cap.take()[0, pos]  # (n, D)
            for c, cfg in enumerate(configs):
                t1 = time.perf_counter()
                sel = np.ones(len(pos), dtype=bool) if cfg.adaptive_threshold is None else mp.numpy() < cfg.adaptive_threshold
                D = np.full((len(pos), cfg.k), np.inf, dtype=np.float32)  # (n, k)
                hit = np.zeros((len(pos), cfg.k), dtype=bool)  # (n, k)
                if sel.any():
                    xq = keys[torch.from_numpy(sel)].float().numpy()  # (m, D)
                    nb = self._search(xq, cfg)  # one batched search per window
                    vals = np.where(nb.I >= 0, self.store.values[np.maximum(nb.I, 0)], -1)  # (m, k)
                    D[sel] = nb.D
                    hit[sel] = vals == tgt.numpy()[sel][:, None]
                    nsearch[c] += int(sel.sum())
                Ds[c].append(D)
                hits[c].append(hit)
                secs[c] += time.perf_counter() - t1
        rets = [Retrieval(np.concatenate(Ds[c]), np.concatenate(hits[c]), secs[c], nsearch[c]) for c in range(len(configs))]
        return TokenScores(np.concatenate(base_lp), np.concatenate(max_p), t_base, rets)

    def perplexity(self, text: str, *, stride: int | None = None, config: KNNConfig | None = None) -> PerplexityResult:
        """Strided sliding-window perplexity of the base LM and (with a datastore) of kNN-LM."""
        from lm.windows import default_window

        cfg = config or self.config
        sc = self.score_tokens(text, [cfg], window=cfg.window, stride=stride or cfg.stride)
        knn_ppl = knn_s = None
        searched = 0
        if sc.retrievals:
            r = sc.retrievals[0]
            t0 = time.perf_counter()
            knn_ppl = float(np.exp(mix_nll(sc.base_lp, r, cfg.k, cfg.temperature, cfg.lambda_).mean()))
            knn_s = round(sc.base_seconds + r.seconds + time.perf_counter() - t0, 4)
            searched = r.searched
        W = min(default_window(self.lm.max_length, cfg.window), self.lm.max_length)
        return PerplexityResult(
            base_ppl=float(np.exp(-sc.base_lp.mean())), knn_ppl=knn_ppl, tokens=sc.tokens,
            base_seconds=round(sc.base_seconds, 4), knn_seconds=knn_s, k=cfg.k, lambda_=cfg.lambda_,
            temperature=cfg.temperature, searched=searched, window=W, stride=int(stride or cfg.stride or W // 2),
        )

    def knn_distribution(self, key: np.ndarray, cfg: KNNConfig | None = None):
        """Full-vocabulary log p_kNN for a batch of keys (m, D) -> ((m, V) tensor, Neighbours)."""
        import torch

        from lm.knn import knn_log_probs

        cfg = cfg or self.config
        if cfg.k > self.store.count:
            raise InvalidInputError(f"k={cfg.k} is larger than the datastore ({self.store.count} entries)",
                                    f"pass -k {self.store.count} or less")
        nb = self._search(np.asarray(key, dtype=np.float32), cfg)
        vals = torch.from_numpy(np.where(nb.I >= 0, self.store.values[np.maximum(nb.I, 0)], -1))  # (m, k)
        return knn_log_probs(torch.from_numpy(nb.D), vals, self.lm.vocab_size, cfg.temperature), nb  # (m, V)

    def next_tokens(self, context: str, top: int = 10, *, config: KNNConfig | None = None) -> dict:
        """Top next tokens under the base LM, kNN and the mix, and the neighbours with their sources."""
        import torch

        from lm.hooks import capture, resolve_module
        from lm.knn import interpolate
        from lm.models import autocast

        if top < 1:
            raise InvalidInputError("top must be >= 1", "pass --top 10")
        cfg = config or self.config
        ids = np.asarray(self.lm.tokenizer(context, add_special_tokens=False)["input_ids"], dtype=np.int64)
        if ids.size < 1:
            raise InvalidInputError("the context is empty", "pass some text to continue")
        ids = ids[-min(self.lm.max_length, 1024):]
        module = resolve_module(self.lm.model, self.lm.key_module_path)
        with torch.inference_mode(), autocast(self.lm), capture(module, output=self.lm.key_is_output) as cap:
            logits = self.lm.model(input_ids=torch.from_numpy(ids)[None], use_cache=False).logits  # (1, T, V)
            base = torch.log_softmax(logits[0, -1].float(), -1)  # (V,)
        dec = self.lm.tokenizer.decode

        def top_list(lp: torch.Tensor) -> list[dict]:
            p, i = torch.topk(lp.exp(), min(top, lp.numel()))
            return [{"token": dec([int(t)]), "id": int(t), "prob": round(float(q), 6)} for q, t in zip(p, i) if q > 0]

        out = {"base": top_list(base), "knn": [], "mix": top_list(base), "neighbours": [], "datastore": self.has_datastore}
        if self.has_datastore:
            key = cap.take()[0, -1:].float().numpy()  # (1, D)
            knn, nb = self.knn_distribution(key, cfg)
            mix = interpolate(base, knn[0], cfg.lambda_)  # (V,)
            out["knn"], out["mix"] = top_list(knn[0]), top_list(mix)
            for d, i in zip(nb.D[0], nb.I[0]):
                if i < 0:
                    continue
                source, snip = self.store.snippet(int(i))
                out["neighbours"].append({"token": dec([int(self.store.values[i])]), "distance": round(float(d), 4),
                                          "source": source, "snippet": snip, "entry": int(i)})
        return out

    def generate(self, prompt: str, *, max_new_tokens: int = 64, lambda_: float | None = None,
                 temperature: float | None = None, do_sample: bool = False, top_p: float | None = None,
                 chat: bool | None = None, on_token: Callable[[str], None] | None = None, seed: int | None = None) -> str:
        """Generate with kNN-LM inside model.generate() (a LogitsProcessor); streams via on_token."""
        from lm.generate import generate

        cfg = self._cfg(lambda_=lambda_, temperature=temperature)
        return generate(self, prompt, cfg, max_new_tokens=max_new_tokens, do_sample=do_sample, top_p=top_p,
                        chat=chat, on_token=on_token, seed=seed)
