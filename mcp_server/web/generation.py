"""kNN-LM generation one token at a time, each token with its log-probability change, for the page's stream.

model.generate() hides the base distribution behind its logits processors, so the page runs its own
greedy loop with the KV cache: per step one forward of the newest token, the key from the same hook,
one search, the same mixing as lm.generate's processor (KNNLM.knn_distribution, full_vocab_lambda,
lm.knn.interpolate). The loop checks `stop` between steps, so a closed page ends it promptly.
"""
from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Iterator
from typing import Any

from retrieval.errors import InvalidInputError


def _pad(knn: Any, V: int) -> Any:
    import torch

    if knn.shape[-1] >= V:
        return knn[:, :V]
    return torch.nn.functional.pad(knn, (0, V - knn.shape[-1]), value=-float("inf"))


def _cache_of(out: Any) -> Any:
    """The KV cache of a forward: `cache` in transformers 5, `past_key_values` before."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def steps(knnlm: Any, prompt: str, *, max_new_tokens: int, lambda_: float | None = None, chat: bool | None = None,
          stop: threading.Event | None = None) -> Iterator[dict]:
    """Yield {"type": "token", text, delta, lambda, p_base, p_knn} per generated token, then {"type": "done", ...}."""
    import torch

    from lm.generate import encode_prompt, repeat_stopper
    from lm.hooks import capture, resolve_module
    from lm.knn import interpolate
    from lm.models import autocast
    from mcp_server.web.explore import config_for

    lm = knnlm.lm
    if max_new_tokens >= lm.max_length:
        raise InvalidInputError(f"max_new_tokens={max_new_tokens} does not fit the LM's {lm.max_length}-token context",
                                "ask for fewer tokens")
    cfg = config_for(knnlm, lambda_)
    tok = lm.tokenizer
    ids = encode_prompt(tok, prompt, chat)[:, -(lm.max_length - max_new_tokens):]  # (1, L)
    mixes = bool(knnlm.has_datastore and cfg.mixes)
    repeated = repeat_stopper(tok, ids.shape[1])
    module = resolve_module(lm.model, lm.key_module_path)
    cache_arg = "cache" if "cache" in inspect.signature(lm.model.forward).parameters else "past_key_values"
    gen: list[int] = []
    shown, t0 = "", time.perf_counter()
    x, past, allx = ids, None, ids
    with torch.inference_mode(), autocast(lm), capture(module, output=lm.key_is_output) as cap:
        for _ in range(max_new_tokens):
            if stop is not None and stop.is_set():
                break
            out = lm.model(input_ids=x, use_cache=True, **({} if past is None else {cache_arg: past}))
            past = _cache_of(out)
            base = torch.log_softmax(out.logits[0, -1].float(), -1)  # (V,)
            mix, lam = base, 0.0
            if mixes:
                key = cap.take()[:, -1, :].float().numpy()  # (1, D)
                knn, nb = knnlm.knn_distribution(key, cfg)  # (1, V)
                knn = _pad(knn, base.shape[-1])
                lam = float(knnlm.full_vocab_lambda(cfg, nb.D, nb.I, knn, base[None]).reshape(-1)[0])
                mix = interpolate(base, knn[0], lam)  # (V,)
            y = int(mix.argmax())
            if y == tok.eos_token_id:
                break
            gen.append(y)
            text = tok.decode(gen, skip_special_tokens=True)
            piece = "" if text.endswith("\ufffd") else text[len(shown):]  # a split UTF-8 character waits
            shown = shown if not piece else text
            yield {"type": "token", "text": piece, "delta": round(float(mix[y] - base[y]), 4), "lambda": round(lam, 4),
                   "p_base": round(float(base[y].exp()), 5), "p_knn": round(float(mix[y].exp()), 5)}
            x = torch.tensor([[y]])
            allx = torch.cat([allx, x], dim=1)
            if bool(repeated(allx, None)[0]):  # a finished sentence repeated: a small LM would loop
                break
    seconds = time.perf_counter() - t0
    yield {"type": "done", "tokens": len(gen), "seconds": round(seconds, 3),
           "tokens_per_s": round(len(gen) / seconds, 1) if seconds and gen else None, "datastore": knnlm.has_datastore,
           "mixes": mixes, "k": cfg.k, "temperature": cfg.temperature, "lambda": cfg.lambda_}
