"""Pydantic output models of the MCP tools: they become each tool's published outputSchema."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class HitOut(BaseModel):
    id: str = Field(description="chunk id; read the whole chunk as the resource `uri`")
    uri: str = Field(description="chunk://{collection}/{id} resource with the full chunk text")
    score: float = Field(description="fused ranking score (higher is better)")
    scores: dict[str, float] = Field(default_factory=dict, description="component scores: dense (cosine), bm25")
    source: str = Field(description="source file path (or record id for JSONL)")
    start_line: int = Field(description="first line of the chunk in the source, 1-based")
    end_line: int = Field(description="last line of the chunk in the source, inclusive")
    start_char: int
    end_char: int
    heading: str | None = Field(default=None, description="heading path the chunk sits under")
    text: str = Field(description="chunk text (cut to text_limit characters when text_truncated)")
    text_truncated: bool = False
    collection: str
    metadata: dict[str, Any] = Field(default_factory=dict)


def light_hits(*lists: str) -> Callable[[dict[str, Any]], None]:
    """Publish the `lists` fields' items as {"type": "object", "required": [every HitOut field]} and the
    full typed HitOut under `$defs` for reading.

    Why: the Python SDK client checks every structured result against the output schema with
    `jsonschema`, which walks each property of each hit (~20 us a node on this CPU): 2.7 ms of a
    10-hit search with HitOut referenced, 0.3 ms with this light item schema (benchmarks/bench_mcp.py,
    benchmarks/results/mcp.jsonl: the SDK client's own cost per call fell ~2 ms). The server itself validates every
    result against the full pydantic model before sending it, so the client's walk re-checks what
    was already checked; a client that wants it anyway validates against `$defs/HitOut`."""
    required = list(HitOut.model_fields)

    def extra(schema: dict[str, Any]) -> None:
        for name in lists:
            prop = schema["properties"][name]
            target = prop["items"] if prop.get("type") == "array" else prop  # a list of hits, or one hit
            target.clear()
            target.update({"type": "object", "required": required,
                           "description": "a chunk hit: each field's type and meaning is `$defs/HitOut`"})
        schema["$defs"] = {"HitOut": HitOut.model_json_schema()}

    return extra


class SearchOut(BaseModel):
    model_config = ConfigDict(json_schema_extra=light_hits("hits"))

    query: str
    collection: str
    mode: str
    hits: list[HitOut]
    returned: int = Field(description="number of hits in this result")
    offset: int = Field(default=0, description="rank of the first hit here (0-based): > 0 on later pages")
    truncated: bool = Field(description="true when hits or texts were cut to keep the result under the size limit")
    next_cursor: str | None = Field(default=None, description="pass as `cursor` (same query) for the next page; "
                                                              "null when this page ends the k hits")
    note: str | None = Field(default=None, description="what was cut and how to get the rest")


class CitationOut(BaseModel):
    n: int = Field(description="the [n] marker used in the answer")
    cited: bool = Field(description="whether the answer actually cites [n]")
    source: str
    start_line: int
    end_line: int
    chunk_id: str
    uri: str
    score: float
    heading: str | None = None
    truncated: bool = Field(default=False, description="generate: the LM was given only the start of the chunk")
    start_char: int | None = Field(default=None, description="extractive: where the copied answer starts in the file")
    end_char: int | None = Field(default=None, description="extractive: where the copied answer ends in the file")
    chunk_start_line: int | None = Field(default=None, description="first line of the whole source chunk")
    chunk_end_line: int | None = Field(default=None, description="last line of the whole source chunk")
    basis: str | None = Field(default=None, description="why [n] is cited: lm (the LM wrote the marker), provenance "
                                                        "(the kNN neighbours behind the answer came from this chunk) "
                                                        "or overlap (word overlap, the fallback)")
    in_prompt: bool | None = Field(default=None, description="generate: whether the LM was given this chunk "
                                                             "(a chunk cited by provenance may not have been)")
    page_start: int | None = Field(default=None, description="PDF: first page of the cited chunk (1-based)")
    page_end: int | None = Field(default=None, description="PDF: last page of the cited chunk")


class SpanCitationOut(BaseModel):
    start: int = Field(description="first character of the sentence in `answer`")
    end: int
    text: str
    basis: str = Field(description="provenance, overlap (fallback) or none")
    chunks: list[dict[str, Any]] = Field(description="the cited chunks: chunk_id, weight, n, source, start_line, end_line")
    provenance_chunk: str | None = Field(default=None, description="the chunk with most of the sentence's kNN mass")
    provenance_weight: float = Field(default=0.0, description="its share of the sentence's mixed probability")
    overlap_chunk: str | None = Field(default=None, description="the numbered source sharing most of its words")
    overlap_score: float = 0.0
    agree: bool | None = Field(default=None, description="provenance and overlap name the same chunk")
    tokens: int = 0
    knn_tokens: int = 0


class AskOut(BaseModel):
    question: str
    answer: str
    grounded: bool = Field(description="false when the sources do not hold an answer (an abstention): the answer says so")
    citations: list[CitationOut] = Field(description="the numbered sources the LM was given, [n] -> file and lines")
    model: str = Field(description="the answering LM")
    used_knn: bool = Field(description="whether kNN-LM mixing was used while generating")
    attributed: bool = Field(default=False, description="true: the LM cited no valid source and the [n] markers were "
                                                       "added by kNN provenance, else word overlap (see citations[].basis)")
    note: str | None = None
    mode: str = Field(default="generate", description="what produced the answer: extractive, generate or abstain")
    answer_span: dict[str, Any] | None = Field(
        default=None, description="extractive: the copied passage's source, lines, characters, heading path and "
                                  "(a table row) its table's header row")
    phrase: dict[str, Any] | None = Field(
        default=None, description="extractive: the short answer inside the passage with its offsets, when the reader "
                                  "is confident of one; else null")
    phrase_confidence: float | None = Field(default=None, description="the phrase's p(phrase | unit) * p(unit)")
    confidence: float | None = Field(default=None, description="p(answerable) from the abstention model")
    spans: list[SpanCitationOut] = Field(default_factory=list, description="generate: each answer sentence's cited "
                                                                            "chunks and the basis of the citation")
    agreement: float | None = Field(default=None, description="generate: share of sentences where provenance and "
                                                              "word overlap cite the same chunk")


class SkippedOut(BaseModel):
    source: str
    reason: str


class IndexOut(BaseModel):
    collection: str
    paths: list[str] = Field(description="resolved paths that were indexed")
    files_seen: int = 0
    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    chunks_added: int = 0
    chunks_removed: int = 0
    skipped: list[SkippedOut] = Field(default_factory=list, description="files skipped with the reason (first 50)")
    skipped_total: int = 0
    dropped: dict[str, int] = Field(default_factory=dict, description="chunks dropped: empty, low_quality, duplicates")
    seconds: float = 0.0
    knn: dict[str, Any] | None = Field(default=None, description="with knn: true, the collection's kNN-LM datastore "
                                                                 "update (entries added, entries of removed chunks masked)")


class DeleteOut(BaseModel):
    collection: str
    removed_chunks: int
    removed_sources: int
    sources: list[str] = Field(default_factory=list, description="the source paths or patterns as matched "
                                                                 "(relative ones resolved under the first allowed root)")


class JobOut(BaseModel):
    job_id: str
    state: str = Field(description="queued | running | done | failed | cancelled")
    what: str
    collection: str
    percent: float = Field(description="0-100, only grows; 100 when done")
    stage: str = Field(description="queued, scanning, chunking, embedding, done")
    done: int = Field(description="items done in this stage")
    total: int | None = Field(default=None, description="items in this stage (null while unknown)")
    message: str
    elapsed_seconds: float
    error: str | None = None
    result: IndexOut | None = Field(default=None, description="the index report, once done")


class JobsOut(BaseModel):
    jobs: list[JobOut] = Field(description="the asked job, or every job the server remembers (newest last)")


class AddTextsOut(BaseModel):
    collection: str
    ids: list[str] = Field(description="the chunk ids, in the order of the texts (given ones, or assigned)")
    added: int


class CollectionCreatedOut(BaseModel):
    name: str
    embedder: str
    dim: int


class CollectionDroppedOut(BaseModel):
    name: str
    chunks: int = Field(description="chunks that were in it")
    sources: int


class ChunksOut(BaseModel):
    model_config = ConfigDict(json_schema_extra=light_hits("chunks"))

    collection: str
    chunks: list[HitOut] = Field(description="the chunks found, in the order asked (score 0)")
    missing: list[str] = Field(default_factory=list, description="ids with no chunk in this collection")


class ChunkContextOut(BaseModel):
    model_config = ConfigDict(json_schema_extra=light_hits("before", "chunk", "after"))

    collection: str
    id: str
    before: list[HitOut] = Field(description="preceding chunks of the same document, in reading order")
    chunk: HitOut
    after: list[HitOut] = Field(description="following chunks of the same document, in reading order")
    note: str | None = Field(default=None, description="set when far neighbours were left out to keep the result small")


class CollectionOut(BaseModel):
    name: str
    chunks: int = 0
    sources: int = 0
    embedder: str | None = None
    dim: int | None = None
    index_type: str | None = None


class CollectionsOut(BaseModel):
    collections: list[CollectionOut]


class StatsOut(BaseModel):
    collection: str | None = Field(description="the collection asked about, or null for the whole store")
    store: str = Field(description="store folder")
    stats: dict[str, Any]
    datastore: dict[str, Any] | None = Field(
        default=None, description="the kNN-LM token datastore of --datastore: entries, index and its calibration "
                                  "(chosen k, temperature, lambda, held-out size and measured gain); null without one")


class SourceOut(BaseModel):
    source: str = Field(description="file path as indexed (what search hits name), or add_texts' `source`")
    kind: str | None = Field(default=None, description="markdown, rst, text, code, html, jsonl, pdf, ...")
    chunks: int = Field(description="chunks it has in the collection (0: every chunk was dropped as empty or a duplicate)")
    pages: int | None = Field(default=None, description="its last page, when its chunks carry page numbers; else null")
    tags: list[str] = Field(default_factory=list)
    indexed_at: str | None = Field(default=None, description="when it was last (re)indexed, ISO 8601 UTC")
    modified: str | None = Field(default=None, description="the file's modification time when indexed, ISO 8601 UTC")
    size: int | None = Field(default=None, description="bytes, when indexed")
    content_hash: str | None = Field(default=None, description="sha256 of the bytes indexed")


class SourcesOut(BaseModel):
    collection: str
    sources: list[SourceOut] = Field(description="sources by path")
    total: int = Field(description="sources in the collection (matching `source`, when given)")
    offset: int = Field(description="position of the first source here (0-based)")
    returned: int
    next_cursor: str | None = Field(default=None, description="pass as `cursor` for the next page; null on the last")
    note: str | None = None


class TokenProbOut(BaseModel):
    token: str
    prob: float


class NeighbourOut(BaseModel):
    token: str
    distance: float
    source: str | None = None
    snippet: str | None = None


class NextTokensOut(BaseModel):
    context: str = Field(description="the context (cut to 200 characters here)")
    datastore: bool = Field(description="false: no kNN datastore; knn is empty and mix equals base")
    base: list[TokenProbOut]
    knn: list[TokenProbOut]
    mix: list[TokenProbOut]
    neighbours: list[NeighbourOut]
    note: str | None = None


class GenerateOut(BaseModel):
    prompt: str = Field(description="the prompt (cut to 200 characters here)")
    text: str = Field(description="the generated continuation")
    datastore: bool = Field(description="whether kNN-LM mixing was used")
    max_new_tokens: int
    lambda_: float | None = None
    temperature: float | None = None
    do_sample: bool = False
    note: str | None = None


class PerplexityOut(BaseModel):
    tokens: int
    base_ppl: float
    knn_ppl: float | None = Field(description="null without a datastore")
    datastore: bool
    k: int | None = None
    lambda_: float | None = None
    temperature: float | None = None
    base_seconds: float | None = None
    knn_seconds: float | None = None
    note: str | None = None


def compact_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """The same JSON schema with every `$ref` inlined (`$defs` that nothing refers to, such as
    light_hits' HitOut, stay as documentation) and `anyOf: [{type: T}, {type: null}]` as
    `type: [T, null]`: equivalent, readable by clients that do not resolve `$defs`, and cheaper to
    check: the SDK client validates every result with jsonschema, and this cut that check for a
    10-hit search from 2.39 to 1.88 ms (benchmarks/bench_mcp.py, same machine, same run)."""
    defs = schema.get("$defs", {})
    used: set[str] = set()

    def walk(node: Any, depth: int) -> Any:
        if depth > 20:  # our models are not recursive; never loop on a schema that is
            return node
        if isinstance(node, list):
            return [walk(x, depth + 1) for x in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/") and ref[8:] in defs:
            used.add(ref[8:])
            return walk({**defs[ref[8:]], **{k: v for k, v in node.items() if k != "$ref"}}, depth + 1)
        out = {k: walk(v, depth + 1) for k, v in node.items() if k != "$defs"}
        alts = out.get("anyOf")
        if isinstance(alts, list) and len(alts) == 2 and {"type": "null"} in alts:
            other = alts[0] if alts[1] == {"type": "null"} else alts[1]
            if set(other) == {"type"} and isinstance(other["type"], str):
                del out["anyOf"]
                out["type"] = [other["type"], "null"]
        return out

    out = walk(schema, 0)
    docs = {name: walk(d, 1) for name, d in defs.items() if name not in used}  # unreferenced: documentation (light_hits)
    return {**out, "$defs": docs} if docs else out
