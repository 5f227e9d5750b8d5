"""Grounded answers: retrieval -> the passage that answers (default) or generation from numbered sources.

Modes (RagConfig.answer_mode): "extractive" copies the shortest passage of the retrieved chunks
that holds the answer, and a phrase inside it when the reader is confident (lm.rag.extractive,
with the fitted model of lm/rag/params.json), with exact file, lines and characters; no LM at all;
"generate" asks the LM to write from numbered sources; "auto" (default) generates only with a
model of at least GENERATE_MIN_PARAMS parameters (known from --model's config.json or the
loaded LM) and otherwise extracts, because a 135M LM invents text. In every mode the abstention
model (lm.rag.abstain) decides first, without the LM, whether the sources hold an answer.

Why the generate steps are shaped this way:
- Whether the sources hold an answer is the fitted abstention model's call (evidence that
  transfers across corpora); `min_score` (off by default) can also drop hits below a dense cosine.
- The prompt is measured with the LM's own tokenizer *after* its chat template is applied, and
  sources are cut token-wise until it fits `context_tokens - max_new_tokens`: it never overflows.
- Citations are parsed back from the answer and mapped to source path + line range; markers the
  LM made up (out of range) are reported, not silently kept.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from lm.rag.citations import EchoCutStream, cut_echo, echoes, extract_citations
from lm.rag.modes import GENERATE_MIN_PARAMS  # noqa: F401  (re-exported: the answer-mode size rule)
from lm.rag.protocols import AnswerLM, AnswerStore, KNNLMSource
from lm.rag.provenance import SpanCitation
from lm.rag.records import AnswerSpan, Citation, Excerpt, Source
from retrieval.errors import InvalidInputError
from retrieval.types import Hit

ANSWER_MODES = ("auto", "extractive", "generate")

log = logging.getLogger("knnrag.rag")

SYSTEM_PROMPT = (
    "You are a careful assistant. Answer the question using only the numbered sources. "
    "After each claim, cite the source it comes from as [1], [2], ... "
    "If the sources do not contain the answer, say that you do not know. Be brief."
)
FALLBACK_TEMPLATE = "System: {system}\n\nUser: {user}\n\nAssistant:"


@dataclass(frozen=True)
class RagConfig:
    k: int = 5
    mode: str = "hybrid"
    min_score: float | None = None  # dense cosine below which a hit is dropped; None: the fitted abstention decides
    min_bm25: float = 1.0  # used only for hits without a dense score (bm25 mode)
    max_new_tokens: int = 256
    context_tokens: int | None = None  # None = min(LM context, 1024): CPU prefill delays the first token
    max_source_tokens: int = 512  # one long chunk must not crowd out the others
    lambda_: float | None = None
    temperature: float | None = None
    answer_mode: str = "auto"  # auto | extractive | generate (see the module docstring)
    model: str | None = None  # the answering LM's spec, so "auto" can size it without loading it
    abstain_threshold: float | None = None  # None = the fitted one (lm/rag/params.json); 0 never abstains
    no_repeat_ngram: int = 4  # generate: never repeat a 4-gram (stops the 256-token loops)

    def __post_init__(self) -> None:
        if self.answer_mode not in ANSWER_MODES:
            raise InvalidInputError(f"unknown answer mode {self.answer_mode!r}", "use auto, extractive or generate")
        if self.abstain_threshold is not None and not 0.0 <= self.abstain_threshold <= 1.0:
            raise InvalidInputError(f"abstain threshold {self.abstain_threshold} is outside [0, 1]", "use e.g. 0.5")
        if not 1 <= self.k <= 50:
            raise InvalidInputError(f"k={self.k} is out of range", "use 1 <= k <= 50")
        if not 1 <= self.max_new_tokens <= 4096:
            raise InvalidInputError(f"max_new_tokens={self.max_new_tokens} is out of range", "use 1..4096")
        if self.context_tokens is not None and self.context_tokens < 128:
            raise InvalidInputError(f"context_tokens={self.context_tokens} is too small", "use at least 128")
        if self.mode not in ("hybrid", "dense", "bm25"):
            raise InvalidInputError(f"unknown mode {self.mode!r}", "use hybrid, dense or bm25")


@dataclass
class RagAnswer:
    question: str
    answer: str
    grounded: bool
    citations: list[Citation]  # every numbered source (given to the LM, or retrieved), with `cited`
    model: str
    used_knn: bool
    prompt_tokens: int = 0
    invalid_citations: list[int] = field(default_factory=list)
    attributed: bool = False  # True: the LM cited no valid source and we added the markers (provenance, else overlap)
    note: str | None = None
    streamed: bool = False
    mode: str = "generate"  # the mode that produced the answer: extractive | generate | abstain
    answer_span: AnswerSpan | None = None  # extractive: the copied passage's file, lines, chars and heading
    phrase: Excerpt | None = None  # extractive: the short answer inside the passage, when the reader is confident
    phrase_confidence: float | None = None  # its p(phrase | unit) * p(unit), also when below the threshold
    confidence: float | None = None  # p(answerable) from lm.rag.abstain
    spans: list[SpanCitation] = field(default_factory=list)  # generate: each sentence's chunks and basis (lm.rag.provenance)
    agreement: float | None = None  # generate: share of sentences whose provenance and overlap top chunks agree

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("streamed")
        return d


def relevance(hit: Hit, cfg: RagConfig) -> bool:
    """On the dense cosine where the dense search found the hit, else on its BM25 score; every hit
    when no `min_score` was asked for (the fitted abstention model then judges the evidence)."""
    if cfg.min_score is None:
        return True
    if "dense" in hit.scores:
        return hit.scores["dense"] >= cfg.min_score
    if "bm25" in hit.scores:
        return hit.scores["bm25"] >= cfg.min_bm25
    return hit.score >= cfg.min_score


def source_header(n: int, hit: Hit) -> str:
    from retrieval.ingest.documents.units import where

    head = f" — {hit.heading}" if hit.heading else ""
    place = where(hit.source, hit.metadata) if (hit.metadata or {}).get("page_start") else f"{hit.source} (lines {hit.start_line}-{hit.end_line})"
    return f"[{n}] {place}{head}\n"


def build_messages(question: str, sources: Sequence[str]) -> list[dict[str, str]]:
    body = "\n\n".join(sources) if sources else "(no sources)"
    return [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": f"Sources:\n\n{body}\n\nQuestion: {question}"}]


def render_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The exact text the LM sees: its chat template when it has one, a plain layout otherwise."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return FALLBACK_TEMPLATE.format(system=messages[0]["content"], user=messages[1]["content"])


def count_tokens(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=True)["input_ids"])


def _cut(tokenizer: Any, text: str, n_tokens: int) -> str:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return text if len(ids) <= n_tokens else tokenizer.decode(ids[:max(0, n_tokens)], skip_special_tokens=True)


def fit_sources(question: str, hits: Sequence[Hit], tokenizer: Any, budget: int,
                max_source_tokens: int) -> tuple[str, list[Source], int]:
    """Prompt text, the sources it numbers, and its token count (<= budget)."""
    base = count_tokens(tokenizer, render_prompt(tokenizer, build_messages(question, [])))
    if base > budget:
        raise InvalidInputError(f"the question alone takes {base} tokens, over the prompt budget of {budget}",
                                "shorten the question, or raise --context-tokens / lower --max-new-tokens")
    remaining = budget - base - 4
    blocks: list[str] = []
    used: list[Source] = []
    for hit in hits:
        header = source_header(len(used) + 1, hit)
        h_cost = count_tokens(tokenizer, header) + 2
        text = _cut(tokenizer, hit.text, max_source_tokens)
        t_cost = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        truncated = text != hit.text
        if h_cost + t_cost > remaining:
            if remaining - h_cost < 48:
                break
            text, truncated = _cut(tokenizer, text, remaining - h_cost), True
            t_cost = remaining - h_cost
        blocks.append(header + text)
        used.append(Source(hit, truncated))
        remaining -= h_cost + t_cost
        if remaining < 48:
            break
    while True:  # exact check on the rendered template; trim until it fits
        prompt = render_prompt(tokenizer, build_messages(question, blocks))
        total = count_tokens(tokenizer, prompt)
        if total <= budget or not blocks:
            return prompt, used, total
        last = blocks[-1]
        body = last.split("\n", 1)[1] if "\n" in last else ""
        n_body = len(tokenizer(body, add_special_tokens=False)["input_ids"])
        if n_body <= 32:
            blocks.pop(), used.pop()
        else:
            blocks[-1] = last.split("\n", 1)[0] + "\n" + _cut(tokenizer, body, n_body - max(16, total - budget))
            used[-1] = used[-1]._replace(truncated=True)


def _model_id(lm: Any, knnlm: Any) -> str:
    return str(getattr(lm, "model_id", None) or getattr(getattr(knnlm, "lm", None), "model_id", None) or "not loaded")


def _abstain(question: str, collection: str, knnlm: Any, lm: Any, why: str, on_token: Callable[[str], None] | None,
             confidence: float | None = None, citations: list[Citation] | None = None) -> RagAnswer:
    text = (f"I could not find anything relevant to this question in collection {collection!r} ({why}), "
            "so I will not guess. Try rephrasing, a larger k, or indexing more documents.")
    if on_token:
        on_token(text)
    return RagAnswer(question, text, False, citations or [], _model_id(lm, knnlm), bool(getattr(knnlm, "has_datastore", False)),
                     note=f"abstained: {why}; the LM was not called", streamed=on_token is not None, mode="abstain",
                     confidence=confidence)


def answer(question: str, *, store: AnswerStore, knnlm: KNNLMSource, lm: AnswerLM | None = None, collection: str = "default",
           config: RagConfig | None = None, on_token: Callable[[str], None] | None = None,
           fitted: Any = None) -> RagAnswer:
    """Answer `question` from `store` (a DocStore).

    `knnlm`: a KNNLM (kNN mixing when it has a datastore) or a zero-argument callable returning
    one, called only when the answer is generated (so extraction and abstention never load the LM).
    `lm`: its LoadedLM (default: knnlm.lm), whose tokenizer measures the prompt.
    `fitted`: the answer model's Params (default: lm/rag/params.json; benchmarks pass held-out fits).
    """
    from lm.rag import modes, params
    from lm.rag.evidence import term_stats
    from lm.rag.extractive import read

    cfg = config or RagConfig()
    if not isinstance(question, str) or not question.strip():
        raise InvalidInputError("the question is empty", "ask something")
    fitted = fitted or params.default()  # a missing or edited parameter file is refused before any work
    hits: list[Hit] = store.search(question, k=cfg.k, mode=cfg.mode, collection=collection)
    relevant = [h for h in hits if relevance(h, cfg)]
    if not relevant:
        dense = [h.scores["dense"] for h in hits if "dense" in h.scores]
        best = (f"best relevance {max(dense):.2f} < threshold {cfg.min_score:.2f}" if dense and cfg.min_score is not None
                else "nothing was retrieved")
        return _abstain(question, collection, knnlm, lm, best, on_token)
    emb = store.embedder_for(store.collection(collection))
    # query-path embeddings: the numpy BERT fast path never imports torch (a fresh process paid
    # 15-28 s for torch + the torch model under load), then a one-thread onnxruntime session
    def embed(texts: list[str]) -> np.ndarray:
        return np.stack([emb.embed_query(t) for t in texts])  # (n, d) unit rows

    r = read(question, relevant, term_stats(store, collection), embed, fitted)
    if r.span is None:
        return _abstain(question, collection, knnlm, lm, "no retrieved sentence", on_token)
    p = r.p_answerable
    threshold = fitted.abstain_threshold if cfg.abstain_threshold is None else cfg.abstain_threshold
    if p < threshold:
        return _abstain(question, collection, knnlm, lm, f"answerable with p={p:.2f} < {threshold:.2f}", on_token, p)
    if modes.resolve(cfg.answer_mode, cfg.model, knnlm if lm is None else lm) == "extractive":
        res = extractive_answer(question, r, _model_id(lm, knnlm), bool(getattr(knnlm, "has_datastore", False)))
        res.confidence = p  # not streamed: the caller prints the passage (the CLI marks its phrase)
        return res
    res = _generate(question, relevant, knnlm, lm, cfg, on_token, store, collection)
    res.confidence = p
    return res


def _generate(question: str, relevant: list[Hit], knnlm: Any, lm: Any, cfg: RagConfig,
              on_token: Callable[[str], None] | None, store: Any = None, collection: str = "default") -> RagAnswer:
    if callable(knnlm) and not hasattr(knnlm, "generate"):
        knnlm = knnlm()
    lm = lm if lm is not None else knnlm.lm
    tok = lm.tokenizer
    context = cfg.context_tokens or min(int(getattr(lm, "max_length", 1024) or 1024), 1024)
    budget = context - cfg.max_new_tokens
    if budget < 64:
        raise InvalidInputError(f"max_new_tokens={cfg.max_new_tokens} leaves no room for sources in a "
                                f"{context}-token context", "lower --max-new-tokens or raise --context-tokens")
    prompt, used, n_prompt = fit_sources(question, relevant, tok, budget, cfg.max_source_tokens)
    log.info("rag: %d relevant hits, %d in a %d-token prompt", len(relevant), len(used), n_prompt)
    stream = EchoCutStream(on_token) if on_token else None
    from lm.generate import ProvenanceLog, generate
    from lm.knnlm import KNNLM
    from lm.rag import provenance as prov

    plog = None
    if isinstance(knnlm, KNNLM):  # with the repetition guards (a no-repeat n-gram, a stop on a repeated sentence)
        plog = ProvenanceLog() if knnlm.has_datastore else None
        raw = generate(knnlm, prompt, knnlm._cfg(lambda_=cfg.lambda_, temperature=cfg.temperature),
                       max_new_tokens=cfg.max_new_tokens, chat=False, on_token=stream,
                       no_repeat_ngram_size=cfg.no_repeat_ngram, stop_on_repeat=True, provenance=plog,
                       stop_text=echoes)
    else:
        raw = knnlm.generate(prompt, max_new_tokens=cfg.max_new_tokens, lambda_=cfg.lambda_,
                             temperature=cfg.temperature, chat=False, on_token=stream)
    if stream:
        stream.close()
    text = cut_echo(raw).strip()
    numbered = [src.hit.id for src in used]
    spans = prov.spans_for(raw, text, plog, getattr(knnlm, "store", None), tok,
                           [(src.hit.id, src.hit.text) for src in used])
    cited = extract_citations(text)
    valid = [n for n in cited if 1 <= n <= len(used)]
    invalid = [n for n in cited if n not in valid]
    notes = []
    basis = {n: "lm" for n in valid}
    extra: list[Hit] = []
    attributed = False
    if not valid:
        outside = prov.outside_chunks(spans, numbered)
        found = {h.id: h for h in store.get(outside, collection=collection)} if outside and store else {}
        marks, extra_ids, basis = prov.markers(spans, numbered, set(found))
        text = prov.apply_markers(text, spans, marks)
        extra = [found[c] for c in extra_ids]
        valid = sorted(basis)
        attributed = bool(valid)
        notes.append(_attribution_note(spans) if valid else "the LM cited no source and no answer sentence matches one")
    if invalid:
        notes.append(f"markers {invalid} name no source and were made up by the LM")
    sources = used + [Source(h) for h in extra]
    citations = [Citation.of(n, src.hit, n in valid, src.truncated) for n, src in enumerate(sources, 1)]
    for c in citations:
        c.basis, c.in_prompt = basis.get(c.n), c.n <= len(used)
    _locate_span_chunks(spans, citations)
    return RagAnswer(question, text, bool(valid), citations, str(lm.model_id), bool(knnlm.has_datastore),
                     prompt_tokens=n_prompt, invalid_citations=invalid, attributed=attributed,
                     note="; ".join(notes) or None, streamed=on_token is not None, mode="generate",
                     spans=spans, agreement=prov.agreement(spans))


def _attribution_note(spans: list[SpanCitation]) -> str:
    n_p = sum(sp.basis == "provenance" for sp in spans)
    n_o = sum(sp.basis == "overlap" for sp in spans)
    return (f"the LM cited no source; markers were attributed by kNN provenance ({n_p} sentences) and by word "
            f"overlap between answer sentences and sources ({n_o} sentences, fallback)")


def _locate_span_chunks(spans: list[SpanCitation], citations: list[Citation]) -> None:
    """Give each span's cited chunks their [n], file and lines (chunks outside the prompt and store: none)."""
    by_id = {c.chunk_id: c for c in citations}
    for sp in spans:
        for ch in sp.chunks:
            if (c := by_id.get(ch.chunk_id)) is not None:
                ch.n, ch.source, ch.start_line, ch.end_line = c.n, c.source, c.start_line, c.end_line


BASIS_MARK = {"provenance": "  (attributed by kNN provenance)", "overlap": "  (attributed by word overlap, fallback)"}


def format_sources(res: RagAnswer) -> str:
    from retrieval.store.source_paths import shown

    lines = ["Sources:"]
    for c in res.citations:
        mark = BASIS_MARK.get(c.basis or "", "") if c.cited else "  (not cited)"
        if c.in_prompt is False:
            mark += " (not in the prompt: the kNN neighbours came from it)"
        if c.cited and res.answer_span:
            mark = f"  (answer copied from lines {c.start_line}-{c.end_line}, characters {c.start_char}-{c.end_char})"
        first = c.start_line if c.chunk_start_line is None else c.chunk_start_line
        last = c.end_line if c.chunk_end_line is None else c.chunk_end_line
        src = shown(c.source)  # relative to the current folder when under it
        place = f"{src} p. {c.page_start}" if c.page_start else f"{src}:{first}-{last}"
        if c.page_end and c.page_end != c.page_start:
            place = f"{src} pp. {c.page_start}-{c.page_end}"
        lines.append(f"  [{c.n}] {place}{mark}")
    if res.note:
        lines.append(f"note: {res.note}")
    return "\n".join(lines)


def marked_answer(res: RagAnswer) -> str:
    """The passage for a terminal: its heading path first, the confident phrase between ** marks."""
    sp, ph = res.answer_span, res.phrase
    if sp is None:
        return res.answer
    text = sp.text
    if ph is not None:
        a, b = ph.chunk_start - sp.chunk_start, ph.chunk_end - sp.chunk_start
        text = f"{text[:a]}**{text[a:b]}**{text[b:]}"
    head = f"[{sp.heading}]\n" if sp.heading else ""
    table = f"{sp.table_header.text}\n" if sp.table_header else ""
    return head + table + text


def extractive_answer(question: str, r: Any, model_id: str, used_knn: bool) -> RagAnswer:
    """The copied passage as the answer; its chunk is citation [n] with the passage's exact lines."""
    span = r.span
    hits = r.table.hits
    citations = [Citation.of(i + 1, h, i == r.hit) for i, h in enumerate(hits)]
    c = citations[r.hit]
    c.chunk_start_line, c.chunk_end_line = c.start_line, c.end_line
    c.start_line, c.end_line, c.start_char, c.end_char = span.start_line, span.end_line, span.start_char, span.end_char
    note = f"extractive: copied from [{r.hit + 1}] lines {span.start_line}-{span.end_line}; the LM was not called"
    return RagAnswer(question, span.text, True, citations, model_id, used_knn, mode="extractive", answer_span=span,
                     phrase=r.phrase, phrase_confidence=r.phrase_confidence, note=note)
