"""Shared fixtures for the MCP / RAG tests: a tiny random causal LM on disk and a small docs folder.

The LM is built from a config (2 layers, 32 dims) with a word-level tokenizer trained on the
fly, saved with save_pretrained (safetensors), so `load_lm(path)` loads it like any local HF
model, offline, in well under a second. It has a chat template, so the chat path is exercised.
"""
from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

DOCS = {
    "routing.md": "# Routing\n\nPath parameters are declared with curly braces in the route, e.g. /items/{item_id}.\n"
                  "The value is passed to the function as an argument.\n",
    "deploy.md": "# Deployment\n\nRun the server behind a reverse proxy that terminates TLS.\n"
                 "Use several worker processes for throughput.\n",
    "notes/cache.md": "# Caching\n\nResponses can be cached with an ETag header and a max-age directive.\n",
}


def write_docs(root: Path) -> Path:
    for rel, text in DOCS.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


def tiny_lm_dir(path: Path, seed: int = 0) -> Path:
    """Build (once per path) a random 2-layer Llama with a word-level tokenizer."""
    if (path / "config.json").exists():
        return path
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    corpus = [t for t in DOCS.values()] + ["the a of to and is in it you that was for on are with as I his they be at one"]
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(corpus, trainers.WordLevelTrainer(
        special_tokens=["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<|im_end|>",
                                   bos_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id)
    model = LlamaForCausalLM(cfg)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    fast.save_pretrained(path)
    return path
