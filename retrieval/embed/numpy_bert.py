"""A BERT encoder forward pass in plain numpy, for embedding one query without importing torch.

Why: a cold `knnrag search` must answer in under 2 s, and importing torch costs about 3 s here
(sentence-transformers about 11 s). A 6-layer, 384-d MiniLM over a 20-token query is a few
milliseconds of numpy. The weights are read straight from the model's safetensors file (memory
mapped), so this is the same model, not a copy: tests check cosine >= 0.9999 against torch.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

_SQRT_HALF = 1.0 / math.sqrt(2.0)


def _erf(x: np.ndarray) -> np.ndarray:
    """erf via Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7), so BERT's exact GELU needs no scipy."""
    s = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * np.exp(-a * a)
    return s * y


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + _erf(x * _SQRT_HALF))


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)  # (B, T, 1)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)  # (B, T, 1)
    return (x - mu) / np.sqrt(var + eps) * w + b  # (B, T, C)


def load_weights(model_dir: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(config.json, weights by name without the "bert." prefix) of a BERT checkpoint in safetensors."""
    from safetensors import safe_open

    model_dir = Path(model_dir)
    cfg = json.loads((model_dir / "config.json").read_text())
    w: dict[str, np.ndarray] = {}
    with safe_open(str(model_dir / "model.safetensors"), framework="np") as f:
        for key in f.keys():
            w[key[5:] if key.startswith("bert.") else key] = f.get_tensor(key)
    return cfg, w


def pool(h: np.ndarray, attention_mask: np.ndarray, pooling: str = "mean") -> np.ndarray:
    """Sentence embeddings from hidden states (B, T, C): [CLS] or masked mean, then L2-normalised."""
    if pooling == "cls":
        e = h[:, 0]  # (B, C)
    else:
        m = attention_mask[..., None].astype(np.float32)  # (B, T, 1)
        e = (h * m).sum(1) / np.maximum(m.sum(1), 1e-9)  # (B, C)
    return (e / np.maximum(np.linalg.norm(e, axis=-1, keepdims=True), 1e-12)).astype(np.float32)  # (B, C)


class NumpyBert:
    """Holds the weights of a BertModel; `encode` returns mean-pooled, L2-normalised embeddings."""

    def __init__(self, model_dir: str | Path) -> None:
        cfg, self.w = load_weights(model_dir)
        if cfg.get("model_type") != "bert" or cfg.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"NumpyBert supports BERT with exact GELU, not {cfg.get('model_type')}")
        self.n_layer = int(cfg["num_hidden_layers"])
        self.n_head = int(cfg["num_attention_heads"])
        self.eps = float(cfg.get("layer_norm_eps", 1e-12))

    def _linear(self, x: np.ndarray, name: str) -> np.ndarray:
        return x @ self.w[name + ".weight"].T + self.w[name + ".bias"]

    def encode(self, input_ids: np.ndarray, attention_mask: np.ndarray, pooling: str = "mean") -> np.ndarray:
        w = self.w
        B, T = input_ids.shape
        x = w["embeddings.word_embeddings.weight"][input_ids]  # (B, T, C)
        x = x + w["embeddings.position_embeddings.weight"][:T][None]  # (B, T, C)
        x = x + w["embeddings.token_type_embeddings.weight"][0][None, None]  # (B, T, C)
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], self.eps)
        C = x.shape[-1]
        H, hd = self.n_head, C // self.n_head
        bias = (1.0 - attention_mask[:, None, None, :].astype(np.float32)) * -1e9  # (B, 1, 1, T)
        for i in range(self.n_layer):
            p = f"encoder.layer.{i}."
            q = self._linear(x, p + "attention.self.query").reshape(B, T, H, hd).transpose(0, 2, 1, 3)  # (B, H, T, hd)
            k = self._linear(x, p + "attention.self.key").reshape(B, T, H, hd).transpose(0, 2, 1, 3)  # (B, H, T, hd)
            v = self._linear(x, p + "attention.self.value").reshape(B, T, H, hd).transpose(0, 2, 1, 3)  # (B, H, T, hd)
            att = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd) + bias  # (B, H, T, T)
            att = np.exp(att - att.max(-1, keepdims=True))  # (B, H, T, T)
            att = att / att.sum(-1, keepdims=True)  # (B, H, T, T)
            y = (att @ v).transpose(0, 2, 1, 3).reshape(B, T, C)  # (B, T, C)
            y = self._linear(y, p + "attention.output.dense")  # (B, T, C)
            x = _layer_norm(x + y, w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"], self.eps)
            h = _gelu(self._linear(x, p + "intermediate.dense"))  # (B, T, 4C)
            h = self._linear(h, p + "output.dense")  # (B, T, C)
            x = _layer_norm(x + h, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], self.eps)
        return pool(x, attention_mask, pooling)  # (B, C)
