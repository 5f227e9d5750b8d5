"""KNNLM: a causal LM plus a token datastore, for perplexity, explanations and generation.

One forward per strided window, the keys of all its scored positions captured by a hook, and one
batched FAISS search per window (never one call per token). Adaptive retrieval (He et al., 2021)
skips the search where the base LM is already confident.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lm.knnconfig import KNNConfig, KNNOverrides, PerplexityResult, Retrieval, TokenScores, config_nll, mix_nll
from retrieval.errors import InvalidInputError

if TYPE_CHECKING:
    from lm.datastore.calibration import Calibration
    from lm.datastore.token_store import TokenStore
    from lm.models import LoadedLM

__all__ = ["KNNLM", "KNNConfig", "KNNOverrides", "PerplexityResult", "Retrieval", "TokenScores", "config_nll", "mix_nll"]
log = logging.getLogger(__name__)


def calibrated_config(store: TokenStore | None) -> tuple[Calibration | None, KNNConfig]:
    """The datastore's calibration and config; old or uncalibrated datastores: the defaults, with a note."""
    if store is None:
        return None, KNNConfig()
    from lm.datastore.calibration import Calibration

    raw = store.manifest.get("calibration")
    if raw and "k" in raw:
        cal = Calibration.from_json(raw)
        return cal, cal.apply(KNNConfig())
    d = KNNConfig()
    why = raw["skipped"] if raw and "skipped" in raw else "it was built before calibration existed"
    log.warning("datastore %s is not calibrated (%s): using the old defaults k=%d lambda=%g temperature=%g; "
                "run `knnrag datastore calibrate %s` to fit them to this corpus", store.path, why, d.k, d.lambda_,
                d.temperature, store.path)
    return None, d


class KNNLM:
    """A LoadedLM, an optional TokenStore and the config (calibrated by the datastore by default)."""

    def __init__(self, lm: LoadedLM, store: TokenStore | None = None, config: KNNConfig | None = None,
                 calibration: Calibration | None = None) -> None:
        self.lm = lm
        self.store = store
        self.config = config or KNNConfig()
        self.calibration = calibration
        import faiss
        import torch

        faiss.omp_set_num_threads(max(1, torch.get_num_threads()))

    @classmethod
    def load(cls, model: str | LoadedLM | None = None, datastore: str | Path | None = None,
             config: KNNConfig | None = None, overrides: KNNOverrides | None = None) -> KNNLM:
        """model: None (the datastore's model, else bundled SmolLM2), an HF id/path, or a LoadedLM.

        config=None: the datastore's calibrated config (old datastores: the old defaults, with a
        note); `overrides` (the user's flags) then replace single settings. An explicit config is
        used as given.
        """
        from lm.datastore.token_store import TokenStore
        from lm.models import LoadedLM, load_lm

        spec = None
        if datastore is not None and model is None:
            spec = TokenStore.open(datastore).manifest.get("lm_spec")
        lm = model if isinstance(model, LoadedLM) else load_lm(model if model is not None else spec)
        store = None
        if datastore is not None:
            store = TokenStore.open(datastore, lm_id=lm.model_id, tokenizer_hash=lm.tokenizer_hash,
                                     vocab_size=lm.vocab_size)
            if store.manifest["key_layer"] != lm.key_layer:
                from retrieval.errors import MismatchError

                raise MismatchError(f"datastore {store.manifest['key_layer']} key layer differs from {lm.key_layer}",
                                    "load the model with the datastore's key layer, or rebuild")
            from lm.datastore.live import refresh_mask

            refresh_mask(store)  # a collection's datastore never serves chunks its collection deleted
        cal, cfg = None, config
        if cfg is None:
            cal, cfg = calibrated_config(store)
            cfg = (overrides or KNNOverrides()).apply(cfg)
            if cal is not None and not cfg.mixes and cal.message():
                log.warning("%s", cal.message())
        if store is not None and 0 < store.count < cfg.k and (overrides is None or overrides.k is None):
            # the default k only; a k the user asked for is checked (and refused) where it is used
            from dataclasses import replace

            log.warning("datastore has %d entries: using k=%d instead of %d", store.count, store.count, cfg.k)
            cfg = replace(cfg, k=store.count, lambda_fn=None)
        return cls(lm, store, cfg, cal)

    def refresh(self) -> None:
        """For long-lived holders (the MCP server): see deletes committed since the load."""
        ds = getattr(self.store, "store", self.store)  # a ShardedStore reads its local TokenStore's tombstones
        if ds is not None and hasattr(ds, "refresh_tombstones"):
            from lm.datastore.live import refresh_mask

            refresh_mask(ds)

    @property
    def has_datastore(self) -> bool:
        return self.store is not None and self.store.count > 0

    def _cfg(self, **over) -> KNNConfig:
        return KNNOverrides(**over).apply(self.config)

    def _encode(self, text: str) -> np.ndarray:
        ids = np.asarray(self.lm.tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int64)  # (L,)
        if ids.size < 2:
            raise InvalidInputError(f"the text has {ids.size} token(s); perplexity needs at least 2",
                                    "pass a longer text")
        return ids

    def _search(self, xq: np.ndarray, cfg: KNNConfig):
        assert self.store is not None
        return self.store.search(xq, cfg.k, nprobe=cfg.nprobe, exact=cfg.exact,
                                 rerank=cfg.rerank_factor if cfg.rerank_exact else 0)

    def window_size(self, window: int | None = None) -> int:
        from lm.windows import default_window

        return min(default_window(self.lm.max_length, window or self.config.window), self.lm.max_length)

    def score_tokens(self, text: str, configs: list[KNNConfig] | None = None, *, window: int | None = None,
                     stride: int | None = None) -> TokenScores:
        """One strided pass over `text`: base log-probs, and per config one batched search per window.

        Several configs (e.g. exact and fast) share the forward pass, so their extra cost is timed
        alone and compared on identical keys.
        """
        return self.score_ids(self._encode(text), configs, window=window, stride=stride)

    def score_ids(self, ids: np.ndarray, configs: list[KNNConfig] | None = None, *, window: int | None = None,
                  stride: int | None = None, first_target: int = 1) -> TokenScores:
        """score_tokens on token ids; targets before `first_target` are context only (held-out tails)."""
        from lm.hooks import resolve_module
        from lm.windows import plan_windows

        configs = list(configs if configs is not None else [self.config]) if self.has_datastore else []
        for cfg in configs:
            if self.store is not None and cfg.k > self.store.count:
                raise InvalidInputError(f"k={cfg.k} is larger than the datastore ({self.store.count} entries)",
                                        f"pass -k {self.store.count} or less, or add text to the datastore")
        W = self.window_size(window)
        S = int(stride or self.config.stride or W // 2)
        module = resolve_module(self.lm.model, self.lm.key_module_path)
        parts: list[tuple] = []
        t_base = 0.0
        for w in plan_windows(int(ids.size), W, S):
            if w.end <= first_target:
                continue
            t0 = time.perf_counter()
            blp, mp, keys, tgt = self._forward(module, ids[w.begin:w.end], max(w.first_target, first_target) - w.begin)
            t_base += time.perf_counter() - t0
            parts.append((blp, mp, [self._retrieve(keys, tgt, mp, cfg) for cfg in configs]))
        rets = [Retrieval(np.concatenate([p[2][c][0] for p in parts]), np.concatenate([p[2][c][1] for p in parts]),
                          np.concatenate([p[2][c][2] for p in parts]), sum(p[2][c][3] for p in parts),
                          sum(p[2][c][4] for p in parts)) for c in range(len(configs))]
        return TokenScores(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), t_base, rets)

    def _forward(self, module, window_ids: np.ndarray, first: int):
        """One window: base log p of its targets first..T-1, top probabilities, keys, target ids."""
        import torch

        from lm.hooks import capture
        from lm.models import autocast

        x = torch.from_numpy(window_ids)[None]  # (1, T)
        with torch.inference_mode(), autocast(self.lm), capture(module, output=self.lm.key_is_output) as cap:
            logits = self.lm.model(input_ids=x, use_cache=False).logits  # (1, T, V)
            pos = torch.arange(first - 1, x.shape[1] - 1)  # (n,) predicting positions
            tgt = x[0, pos + 1]  # (n,)
            lp = torch.log_softmax(logits[0, pos].float(), dim=-1)  # (n, V)
            blp = lp.gather(1, tgt[:, None])[:, 0]  # (n,)
            mp = lp.max(dim=-1).values.exp()  # (n,)
        return blp.numpy(), mp.numpy(), cap.take()[0, pos].float().numpy(), tgt.numpy()

    def _retrieve(self, keys: np.ndarray, tgt: np.ndarray, mp: np.ndarray, cfg: KNNConfig):
        """(D, hit, values, seconds, searched) for one window's keys (n, D): one batched search."""
        assert self.store is not None
        t1 = time.perf_counter()
        n = len(tgt)
        sel = np.ones(n, dtype=bool) if cfg.adaptive_threshold is None else mp < cfg.adaptive_threshold
        D = np.full((n, cfg.k), np.inf, dtype=np.float32)  # (n, k)
        vals = np.full((n, cfg.k), -1, dtype=np.int32)  # (n, k)
        if sel.any():
            nb = self._search(np.ascontiguousarray(keys[sel]), cfg)  # one batched search per window
            D[sel] = nb.D
            vals[sel] = np.where(nb.I >= 0, self.store.values[np.maximum(nb.I, 0)], -1)
        hit = vals == tgt[:, None]  # (n, k)
        return D, hit, vals, time.perf_counter() - t1, int(sel.sum())

    def perplexity(self, text: str, *, stride: int | None = None, config: KNNConfig | None = None) -> PerplexityResult:
        """Strided sliding-window perplexity of the base LM and (with a datastore) of kNN-LM."""
        cfg = config or self.config
        sc = self.score_tokens(text, [cfg] if cfg.mixes else [], window=cfg.window, stride=stride or cfg.stride)
        knn_ppl = knn_s = None
        searched = 0
        if sc.retrievals:
            r = sc.retrievals[0]
            t0 = time.perf_counter()
            knn_ppl = float(np.exp(config_nll(sc, r, cfg).mean()))
            knn_s = round(sc.base_seconds + r.seconds + time.perf_counter() - t0, 4)
            searched = r.searched
        elif self.has_datastore:  # lambda 0: kNN-LM is the base LM, no search needed
            knn_ppl, knn_s = float(np.exp(-sc.base_lp.mean())), round(sc.base_seconds, 4)
        W = self.window_size(cfg.window)
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
        assert self.store is not None
        if cfg.k > self.store.count:
            raise InvalidInputError(f"k={cfg.k} is larger than the datastore ({self.store.count} entries)",
                                    f"pass -k {self.store.count} or less")
        nb = self._search(np.asarray(key, dtype=np.float32), cfg)
        vals = torch.from_numpy(np.where(nb.I >= 0, self.store.values[np.maximum(nb.I, 0)], -1))  # (m, k)
        return knn_log_probs(torch.from_numpy(nb.D), vals, self.lm.vocab_size, cfg.temperature), nb  # (m, V)

    def full_vocab_lambda(self, cfg: KNNConfig, D: np.ndarray, I: np.ndarray, knn, base) -> np.ndarray:
        """(m,) lambda per row for full-vocabulary mixing (explain, generate): the same features as
        perplexity, read from the (m, V) kNN and base log-probs."""
        import torch

        if cfg.lambda_fn is None:
            return np.asarray(cfg.gated(np.full(D.shape[0], cfg.lambda_, dtype=np.float32), D[:, 0]), dtype=np.float32)
        assert self.store is not None
        v0 = torch.from_numpy(np.where(I[:, 0] >= 0, self.store.values[np.maximum(I[:, 0], 0)], 0).astype(np.int64))  # (m,)
        top = knn.gather(1, v0[:, None])[:, 0].exp().numpy()  # (m,) p_kNN of the nearest neighbour's token
        d0 = np.asarray(D[:, 0], dtype=np.float64)
        feats = np.stack([np.log1p(np.maximum(d0, 0)), top, torch.as_tensor(base).max(dim=-1).values.exp().numpy()], 1)
        return np.asarray(cfg.gated(cfg.lambda_fn(feats), d0), dtype=np.float32)

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

        neighbours: list[dict] = []
        out: dict[str, Any] = {"base": top_list(base), "knn": [], "mix": top_list(base), "neighbours": neighbours,
                               "datastore": self.has_datastore, "lambda": cfg.lambda_, "per_token_lambda": cfg.lambda_fn is not None,
                               "note": self.calibration.message() if self.calibration and not cfg.mixes else None}
        if self.store is not None and self.has_datastore:
            key = cap.take()[0, -1:].float().numpy()  # (1, D)
            knn, nb = self.knn_distribution(key, cfg)
            mix = interpolate(base, knn[0], self.full_vocab_lambda(cfg, nb.D, nb.I, knn, base[None])[0])  # (V,)
            out["knn"], out["mix"] = top_list(knn[0]), top_list(mix)
            for d, i in zip(nb.D[0], nb.I[0]):
                if i < 0:
                    continue
                source, snip = self.store.snippet(int(i))
                neighbours.append({"token": dec([int(self.store.values[i])]), "distance": round(float(d), 4),
                                          "source": source, "snippet": snip, "entry": int(i)})
        return out

    def generate(self, prompt: str, *, max_new_tokens: int = 64, lambda_: float | None = None,
                 temperature: float | None = None, do_sample: bool = False, top_p: float | None = None,
                 chat: bool | None = None, on_token: Callable[[str], None] | None = None, seed: int | None = None,
                 stop_on_repeat: bool = True) -> str:
        """Generate with kNN-LM inside model.generate() (a LogitsProcessor); streams via on_token.

        Stops once a finished sentence repeats an earlier one (a small LM otherwise loops to
        max_new_tokens: the demo printed one sentence 4 times); stop_on_repeat=False lets it run."""
        from lm.generate import generate

        cfg = self._cfg(lambda_=lambda_, temperature=temperature)
        return generate(self, prompt, cfg, max_new_tokens=max_new_tokens, do_sample=do_sample, top_p=top_p,
                        chat=chat, on_token=on_token, seed=seed, stop_on_repeat=stop_on_repeat)
