"""kNN-LM generation inside `model.generate()`: a LogitsProcessor mixes p_kNN into every step.

The key of the newest position comes from the same forward hook used everywhere else; one
batched FAISS search per step covers the whole batch. Streaming goes through a TextStreamer
subclass that hands each finished piece of text to a callback.

Provenance: with a ProvenanceLog, every searched step keeps its neighbours' entry ids and each
neighbour's share of the mixed probability of its own value token, lambda * w_i / p_mix(v_i);
once the emitted tokens are known, a token's share from neighbour i is that share where v_i is
the token (lm.rag.provenance turns entries into chunks and sums them over answer sentences).
The no-repeat n-gram ban runs *after* the kNN mix (run before it, as generate()'s built-in one
does, the mix gave banned tokens their kNN mass back) and looks at the generated tokens only:
the built-in one also bans every n-gram of the prompt, so a RAG answer could not quote its
sources ("spans Quenta gorge since 1911" was cut after two words in the provenance test).
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from retrieval.errors import InvalidInputError

log = logging.getLogger(__name__)


def _processor_base() -> type:
    from transformers import LogitsProcessor

    return LogitsProcessor


class StepNeighbours(NamedTuple):
    """One generation step's neighbours (rows of the batch that were searched)."""

    rows: np.ndarray  # (b,) batch rows searched at this step
    entries: np.ndarray  # (b, k) int64 datastore entry ids, -1 = none
    values: np.ndarray  # (b, k) int64 the entries' next tokens, -1 = none
    share: np.ndarray  # (b, k) float32 lambda * w_i / p_mix(v_i): neighbour i's share of p_mix of its token


class ProvenanceLog:
    """Per generated step the searched neighbours (None where no row was searched)."""

    def __init__(self) -> None:
        self.steps: list[StepNeighbours | None] = []
        self.emitted = np.zeros(0, dtype=np.int64)  # (n,) the generated token ids (row 0), set by generate()

    def token_shares(self, emitted: np.ndarray, row: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per emitted token of `row`: (entries (m,), shares (m,)) of the neighbours whose value is
        that token; empty arrays where the step was not searched or no neighbour had the token."""
        out = []
        none = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32))
        for t, y in enumerate(np.asarray(emitted).reshape(-1).tolist()):
            st = self.steps[t] if t < len(self.steps) else None
            hit = None if st is None else np.flatnonzero(st.rows == row)
            if st is None or hit is None or hit.size == 0:
                out.append(none)
                continue
            r = int(hit[0])
            m = (st.values[r] == y) & (st.entries[r] >= 0)  # (k,)
            out.append((st.entries[r][m], st.share[r][m]))
        return out


def _record(log: ProvenanceLog, rows, nb, vals, mixed, lam, temperature: float) -> None:
    """Append this step's neighbours and their shares of the mixed probability of their tokens."""
    import torch

    from lm.knn import neighbour_log_weights

    w = neighbour_log_weights(torch.from_numpy(np.asarray(nb.D)), temperature).exp()  # (b, k)
    pm = mixed.float().gather(1, vals.clamp_min(0)).exp()  # (b, k) p_mix of each neighbour's token
    share = torch.where(vals >= 0, lam.float() * w / pm.clamp_min(1e-30), torch.zeros_like(w))  # (b, k)
    log.steps.append(StepNeighbours(rows.numpy(), np.asarray(nb.I, dtype=np.int64), vals.numpy(),
                                    share.clamp(0, 1).numpy().astype(np.float32)))


def make_processor(knnlm, cfg, cap, provenance: ProvenanceLog | None = None):
    """LogitsProcessor: log((1-lambda) p_LM + lambda p_kNN) for the last position of each row."""
    import torch

    from lm.knn import interpolate

    class KNNLogitsProcessor(_processor_base()):  # type: ignore[misc]
        def __init__(self) -> None:
            self.searches = 0

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            base = torch.log_softmax(scores.float(), dim=-1)  # (B, V)
            key = cap.take()[:, -1, :].float()  # (B, D) key of the position being continued
            sel = torch.ones(base.shape[0], dtype=torch.bool)  # (B,)
            if cfg.adaptive_threshold is not None:
                sel = base.max(dim=-1).values.exp() < cfg.adaptive_threshold  # (B,) confident rows skip
            if not bool(sel.any()):
                if provenance is not None:
                    provenance.steps.append(None)
                return base
            knn, nb = knnlm.knn_distribution(key[sel].numpy(), cfg)  # (b, V)
            V = base.shape[-1]
            if knn.shape[-1] != V:  # padded embedding rows never appear as values
                knn = torch.nn.functional.pad(knn[:, :V], (0, max(0, V - knn.shape[-1])), value=-float("inf"))
            out = base.clone()  # (B, V)
            lam = torch.from_numpy(knnlm.full_vocab_lambda(cfg, nb.D, nb.I, knn, base[sel]))[:, None]  # (b, 1)
            out[sel] = interpolate(base[sel], knn, lam)  # (b, V)
            if provenance is not None:
                vals = torch.from_numpy(np.where(nb.I >= 0, knnlm.store.values[np.maximum(nb.I, 0)], -1)).long()  # (b, k)
                _record(provenance, torch.nonzero(sel)[:, 0], nb, vals, out[sel], lam, cfg.temperature)
            self.searches += int(sel.sum())
            return out.to(scores.dtype)

    return KNNLogitsProcessor()


def _streamer(tok, on_token: Callable[[str], None]):
    from transformers import TextStreamer

    class CallbackStreamer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if text:
                on_token(text)

    return CallbackStreamer(tok, skip_prompt=True, skip_special_tokens=True)


def encode_prompt(tok, prompt: str, chat: bool | None):
    """Token ids (1, L) of the prompt; instruct models (a chat template) get it applied."""
    import torch

    use_chat = bool(getattr(tok, "chat_template", None)) if chat is None else chat
    if use_chat:
        if not getattr(tok, "chat_template", None):
            raise InvalidInputError("this tokenizer has no chat template", "drop --chat for a base model")
        enc = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                      tokenize=True, return_dict=True, return_tensors="pt")
        return enc["input_ids"]
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]  # (1, L)
    if ids.shape[1] == 0:
        ids = torch.tensor([[tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id]])
    return ids


def answer_no_repeat(n: int, prompt_len: int):
    """LogitsProcessor: no n-gram twice within the generated tokens (the prompt's may be quoted)."""
    import torch

    class AnswerNoRepeatNGram(_processor_base()):  # type: ignore[misc]
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            for row in range(input_ids.shape[0]):
                gen = input_ids[row, prompt_len:].tolist()
                if len(gen) < n:
                    continue
                head = gen[len(gen) - n + 1:]
                banned = [gen[i + n - 1] for i in range(len(gen) - n + 1) if gen[i:i + n - 1] == head]
                if banned:
                    scores[row, banned] = -float("inf")
            return scores

    return AnswerNoRepeatNGram()


def repeat_stopper(tok, prompt_len: int, stop_text: Callable[[str], bool] | None = None, repeats: bool = True):
    """StoppingCriteria: stop once the newest finished sentence repeats an earlier one of the
    answer (a 135M LM otherwise loops until max_new_tokens: 256 tokens in 5 minutes, issue 12),
    or once `stop_text(answer so far)` says the rest would be thrown away (a prompt echo)."""
    import re

    import torch
    from transformers import StoppingCriteria

    class RepeatedSentence(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kw) -> torch.Tensor:
            text = tok.decode(input_ids[0, prompt_len:], skip_special_tokens=True)
            done = [s.strip().lower() for s in re.split(r"(?<=[.!?\n])\s+", text)[:-1] if len(s.strip()) > 8]
            stop = repeats and len(done) >= 2 and done[-1] in done[:-1]
            stop = stop or (stop_text is not None and stop_text(text))
            return torch.full((input_ids.shape[0],), stop, dtype=torch.bool)

    return RepeatedSentence()


def generate(knnlm, prompt: str, cfg, *, max_new_tokens: int = 64, do_sample: bool = False, top_p: float | None = None,
             chat: bool | None = None, on_token: Callable[[str], None] | None = None, seed: int | None = None,
             no_repeat_ngram_size: int = 0, stop_on_repeat: bool = False,
             provenance: ProvenanceLog | None = None, stop_text: Callable[[str], bool] | None = None) -> str:
    """Greedy or sampled text after `prompt`; `provenance` (with a datastore) collects, per step,
    the neighbours behind the emitted token (see the module docstring)."""
    import torch
    from transformers import GenerationConfig, LogitsProcessorList, TopPLogitsWarper

    from lm.hooks import capture, resolve_module
    from lm.models import autocast

    if not prompt or not prompt.strip():
        raise InvalidInputError("the prompt is empty", "pass some text to continue")
    if max_new_tokens < 1:
        raise InvalidInputError("max_new_tokens must be >= 1", "pass --max-new-tokens 64")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise InvalidInputError(f"top_p must be in (0, 1], got {top_p}", "pass --top-p 0.9")
    lm = knnlm.lm
    tok = lm.tokenizer
    ids = encode_prompt(tok, prompt, chat)  # (1, L)
    if ids.shape[1] + max_new_tokens > lm.max_length:
        ids = ids[:, -(lm.max_length - max_new_tokens):]
    if seed is not None:
        torch.manual_seed(seed)
    gen_cfg = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=do_sample, top_k=None, top_p=None,
                               temperature=None, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                               bos_token_id=tok.bos_token_id)
    from transformers import StoppingCriteriaList

    stops = StoppingCriteriaList([repeat_stopper(tok, ids.shape[1], stop_text, stop_on_repeat)]
                                 if stop_on_repeat or stop_text is not None else [])
    procs = LogitsProcessorList()
    module = resolve_module(lm.model, lm.key_module_path)
    streamer = _streamer(tok, on_token) if on_token else None
    with torch.inference_mode(), autocast(lm), capture(module, output=lm.key_is_output) as cap:
        if knnlm.has_datastore and cfg.mixes:  # lambda 0: the plain LM, no search per step
            procs.append(make_processor(knnlm, cfg, cap, provenance))
        if no_repeat_ngram_size:  # after the mix: a ban before it would get its kNN mass back
            procs.append(answer_no_repeat(no_repeat_ngram_size, ids.shape[1]))
        if do_sample and top_p is not None and top_p < 1.0:
            procs.append(TopPLogitsWarper(top_p))  # after the mix, so kNN can promote tokens into the nucleus
        out = lm.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=gen_cfg,
                                logits_processor=procs, stopping_criteria=stops, streamer=streamer)  # (1, L + new)
    if provenance is not None:
        provenance.emitted = out[0, ids.shape[1]:].numpy().astype(np.int64)  # (new,)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
