"""The one tiny-LM builder of the suite: a random 2-layer causal LM (Llama or GPT-2), saved to disk.

It loads through lm.models.load_lm exactly like a real local model, offline, in well under a
second. `vocab="bpe"` trains a byte-level BPE on CORPUS (kNN-LM tests: any text encodes);
`vocab="word"` a word-level tokenizer with a chat template (RAG / MCP tests: the chat path runs).
"""
from __future__ import annotations

from pathlib import Path

from tests.support.docs import DOCS

CORPUS = (
    "The quick brown fox jumps over the lazy dog. A kNN language model memorises the training text. "
    "Retrieval makes rare names and numbers easier to predict: Zanzibar 1987, Oslo 2004, Quito 1822. "
    "Each stored key is the hidden state before the last feed-forward layer, and its value is the next token. "
) * 3

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _bpe_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([CORPUS], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>")


def _word_tokenizer(extra: str = ""):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = list(DOCS.values()) + ["the a of to and is in it you that was for on are with as I his they be at one", extra]
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(corpus, trainers.WordLevelTrainer(
        special_tokens=["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<|im_end|>",
                                   bos_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def make_tiny_lm(path: Path, arch: str = "llama", *, vocab: str = "bpe", seed: int = 0, extra_words: str = "") -> Path:
    """Build (once per path) and save a random tiny causal LM with its tokenizer; returns `path`.
    `extra_words` joins the word vocabulary (a planted fact's words must not read as <unk>)."""
    if (path / "config.json").exists():
        return path
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    tok = _bpe_tokenizer() if vocab == "bpe" else _word_tokenizer(extra_words)
    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    torch.manual_seed(seed)
    if arch == "llama":
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4 if vocab == "bpe" else 2, num_key_value_heads=2,
                          max_position_embeddings=128 if vocab == "bpe" else 512, tie_word_embeddings=vocab == "bpe", **ids)
    elif arch == "gpt2":
        cfg = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4, n_positions=128, **ids)
    else:
        raise ValueError(f"unknown tiny architecture {arch!r}")
    path.mkdir(parents=True, exist_ok=True)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path
