"""Which answer mode "auto" picks: generate only with an LM big enough to write reliably.

The size is read without loading weights: from the model's config.json (a local folder or the
Hugging Face cache), or from an LM that is already loaded. The bundled SmolLM2-135M, and any
model whose size cannot be told without loading it, get the extractive mode.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("knnrag.rag")

GENERATE_MIN_PARAMS = 1_000_000_000  # below this, "auto" extracts (SmolLM2-135M wrote 1 right answer in 5)


def params_from_config(cfg: dict) -> int | None:
    """Parameter count of a decoder-only transformer from its config (within ~10%: embeddings,
    attention and a gated or plain feed-forward per layer)."""
    d = cfg.get("hidden_size") or cfg.get("n_embd") or cfg.get("d_model")
    n_layers = cfg.get("num_hidden_layers") or cfg.get("n_layer") or cfg.get("num_layers")
    vocab = cfg.get("vocab_size")
    if not (isinstance(d, int) and isinstance(n_layers, int) and isinstance(vocab, int)):
        return None
    ff = cfg.get("intermediate_size") or cfg.get("n_inner") or 4 * d
    gated = "intermediate_size" in cfg  # Llama-style SwiGLU: three projections
    return int(n_layers * (4 * d * d + (3 if gated else 2) * d * ff) + vocab * d)


def model_params(spec: str | None) -> int | None:
    """Parameters of the model named by `spec`, or None when unknown without loading it."""
    if spec in (None, "", "default", "smollm2"):
        return 135_000_000
    path = Path(spec).expanduser() / "config.json"
    try:
        if path.is_file():
            return params_from_config(json.loads(path.read_text(encoding="utf-8")))
        from transformers import AutoConfig

        return params_from_config(AutoConfig.from_pretrained(spec).to_dict())
    except Exception as e:  # an id that is not in the offline cache, a malformed config
        log.info("cannot size model %s without loading it: %s", spec, e)
        return None


def loaded_params(obj: Any) -> int | None:
    """Parameters of a loaded KNNLM / LoadedLM; None for a lazy loader (which is not called)."""
    lm = getattr(obj, "lm", obj)
    model = getattr(lm, "model", None)
    if model is None or not hasattr(model, "parameters"):
        return None
    return int(sum(p.numel() for p in model.parameters()))


def resolve(mode: str, spec: str | None, lm: Any) -> str:
    """extractive | generate for RagConfig.answer_mode (auto decides by size, see GENERATE_MIN_PARAMS)."""
    if mode != "auto":
        return mode
    n = loaded_params(lm)
    if n is None:
        n = model_params(spec)
    return "generate" if n is not None and n >= GENERATE_MIN_PARAMS else "extractive"
