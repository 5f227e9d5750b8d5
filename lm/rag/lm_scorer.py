"""The LM's own likelihood of candidate answer spans: log p(span + end of turn | sentence, question).

One forward over the shared prompt, then one batched forward over all candidates with the
prompt's KV cache repeated (the candidates are a few tokens each, so this costs about as much as
the prompt). Scoring the end-of-turn token too makes the LM judge where the answer stops.
With `pmi`, log p(span | sentence) without the question is subtracted: a span that is likely
whatever the question is (a frequent name) gains nothing.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

INSTRUCTION = "Answer with a few words copied from the text."


def _prompt_ids(tok, sentence: str, question: str | None):
    user = f"{sentence}\n\nQuestion: {question}\n{INSTRUCTION}" if question else f"{sentence}\n\n{INSTRUCTION}"
    msgs = [{"role": "user", "content": user}]
    if getattr(tok, "chat_template", None):
        return tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True,
                                       return_tensors="pt")["input_ids"]  # (1, P)
    return tok(f"{user}\nAnswer:", return_tensors="pt", add_special_tokens=False)["input_ids"]


def _end_id(tok) -> int:
    for t in ("<|im_end|>",):
        i = tok.convert_tokens_to_ids(t)
        if isinstance(i, int) and i != tok.unk_token_id:
            return i
    return int(tok.eos_token_id)


def span_log_probs(lm, sentence: str, question: str | None, cands: Sequence[str]) -> np.ndarray:
    """(n,) sum of log p over each candidate's tokens and the end token, given the prompt."""
    import torch

    from lm.models import autocast

    tok = lm.tokenizer
    ids = _prompt_ids(tok, sentence, question)  # (1, P)
    end = _end_id(tok)
    enc = [tok(c, add_special_tokens=False)["input_ids"] + [end] for c in cands]
    L = max(len(e) for e in enc)
    pad = tok.pad_token_id or 0
    x = torch.full((len(enc), L), pad, dtype=torch.long)  # (n, L)
    mask = torch.zeros((len(enc), L), dtype=torch.long)  # (n, L)
    for i, e in enumerate(enc):
        x[i, :len(e)] = torch.tensor(e)
        mask[i, :len(e)] = 1
    with torch.inference_mode(), autocast(lm):
        out = lm.model(input_ids=ids, use_cache=True)
        first = torch.log_softmax(out.logits[0, -1].float(), -1)  # (V,) the first candidate token
        cache = out.past_key_values
        cache.batch_repeat_interleave(len(enc))
        full_mask = torch.cat([torch.ones((len(enc), ids.shape[1]), dtype=torch.long), mask], 1)  # (n, P + L)
        logits = lm.model(input_ids=x, attention_mask=full_mask, cache=cache, use_cache=True).logits  # (n, L, V)
        lp = torch.log_softmax(logits.float(), -1)  # (n, L, V)
    tot = first[x[:, 0]]  # (n,)
    if L > 1:
        nxt = lp[:, :-1].gather(2, x[:, 1:, None])[..., 0]  # (n, L-1)
        tot = tot + (nxt * mask[:, 1:]).sum(1)
    return tot.numpy()


def score_spans(lm, sentence: str, question: str, cands: Sequence[str], pmi: bool = True) -> np.ndarray:
    s = span_log_probs(lm, sentence, question, cands)
    return s - span_log_probs(lm, sentence, None, cands) if pmi else s
