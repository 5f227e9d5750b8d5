"""What every MCP tool shares: limits, annotations, argument checks, the worker-thread hop, results.

Each tool validates its arguments through its Pydantic signature (bounds are in the
published inputSchema), runs the blocking work in a worker thread so the event loop keeps
serving other requests, and turns every library error into an isError result that names
the problem and the fix. Results are bounded in size and say so when something was cut.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Annotated, Any, TypeVar, cast

import anyio
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult, ContentBlock, ResourceLink, TextContent, ToolAnnotations
from pydantic import BaseModel, Field

from mcp_server import schemas as S
from retrieval.errors import KnnragError, NotFoundError
from retrieval.types import Hit

if TYPE_CHECKING:
    from mcp_server.state import ServerState

log = logging.getLogger("knnrag.mcp")
R = TypeVar("R")

MAX_QUERY_CHARS = 10_000
MAX_TEXT_CHARS = 20_000  # generation inputs: a 135M LM on CPU, keep calls under a minute
# perplexity scores every token: 20k characters took 115 s and 1 GB (issue 30); 4,000 characters
# (~1,000 tokens) measured 77 s on a 2-core machine shared by 8 jobs, 2,000 took 32 s
MAX_PPL_CHARS = 4_000
MAX_HIT_TEXT = 4_000
MAX_META_VALUE = 1_000  # characters of one metadata value (or heading) in a hit, then a "[cut: ...]" marker
MAX_META_CHARS = 4_000  # JSON characters of one hit's metadata: a hit stays near MAX_HIT_TEXT + this
META_CUT = "…[cut: "
COLLECTION_RE = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
NO_DATASTORE = ("no kNN datastore is configured (start the server with --datastore DIR): "
                "this result uses the base LM alone")

Collection = Annotated[str, Field(description="collection name", pattern=COLLECTION_RE, max_length=64)]
READ = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False)
COMPUTE = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=False, open_world_hint=False)
WRITE = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=False)
DESTRUCTIVE = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=False)
LOCK_WAIT_S = 30.0  # how long a write call waits for the write lock before it says who holds it

# CLI wording in library hints -> the MCP parameter or tool a caller can act on
_CLI_TO_MCP = [
    (re.compile(r"--collection ([A-Za-z0-9_-]+)"), r'collection="\1"'),
    (re.compile(r"\(--collection NAME\)"), "(the `collection` parameter)"),
    (re.compile(r"raise --context-tokens / lower --max-new-tokens|lower --max-new-tokens or raise --context-tokens"),
     "ask with a smaller `k` (fewer sources)"),
    (re.compile(r"knnrag index PATH --store DIR"), "call index_paths or add_texts"),
    (re.compile(r"`?knnrag collections`?"), "list_collections"),
    (re.compile(r"(?<![\w-])-k (\d+)|--k\b"), r"k=\1"),
    (re.compile(r"--min-score"), "the server's --min-score"),
    (re.compile(r"--source PATH or --id ID"), "`sources` or `ids`"),
    (re.compile(r"without --embedder"), "without the server's --embedder"),
    (re.compile(r" and --exclude patterns"), ""),
]


FILTERS_HELP = ("metadata filters, applied inside the search (never after it): {KEY: VALUE} for equality (source: a "
                "glob like 'docs/*.md'; tags: has the tag), {KEY: [V, ...]} for any of them (tags: all of them), "
                "{KEY: {OP: V}} with OP one of $eq $ne $in $nin $gt $gte $lt $lte ($gt...$lte compare numbers or ISO "
                "dates), and {\"$and\": [filter, ...]} / {\"$or\": [filter, ...]}. KEY: source, kind, tags, doc_id, page "
                "or any metadata key (e.g. language, or one given to add_texts). A kind, tag or key no chunk has is refused "
                "with the ones there are")
Filters = Annotated[dict[str, Any], Field(description=FILTERS_HELP, max_length=64, examples=[
    {"source": "docs/*.md"}, {"kind": {"$in": ["markdown", "rst"]}, "page": {"$gte": 3}},
    {"$or": [{"owner": "ana"}, {"tags": "public"}]}])]


def state(ctx: Context) -> ServerState:
    """The server's shared state: build_server's lifespan yields it (the SDK types it as a dict)."""
    return cast("ServerState", ctx.request_context.lifespan_context)


def result(model: BaseModel, links: Sequence[S.HitOut] = ()) -> CallToolResult:
    """Structured content plus its compact JSON as text (for clients without outputSchema support),
    and a resource_link to each hit's chunk:// resource."""
    content: list[ContentBlock] = [TextContent(type="text", text=model.model_dump_json())]
    content += [ResourceLink(type="resource_link", uri=h.uri, name=f"chunk {h.id}", mime_type="text/plain",
                             description=f"{h.source}:{h.start_line}-{h.end_line}"[:300]) for h in links]
    return CallToolResult(content=content, structured_content=model.model_dump(mode="json"))


def mcp_hint(text: str) -> str:
    """A library hint with its CLI flags put as the MCP parameters and tools a caller has."""
    for pattern, repl in _CLI_TO_MCP:
        text = pattern.sub(repl, text)
    return text


def tool_error(e: KnnragError) -> ToolError:
    hint = mcp_hint(e.hint) if e.hint else ""
    return ToolError(f"{mcp_hint(e.message)}. Hint: {hint}" if hint else mcp_hint(e.message))


async def run(fn: Callable[[], R]) -> R:
    """Blocking work in a worker thread; library errors become clear isError results."""
    try:
        return await anyio.to_thread.run_sync(fn)
    except KnnragError as e:
        raise tool_error(e) from e
    except (MemoryError, RecursionError) as e:
        raise ToolError(f"the request is too large to process ({type(e).__name__})") from e


async def run_write(state: Any, what: str, fn: Callable[[], Any], wait_s: float | None = None) -> Any:
    """`run(fn)` holding the write lock, waited for on the event loop so that queued writes hold
    no worker thread and reads always find one (locks.WriteLock.held_async)."""
    try:
        async with state.write.held_async(what, LOCK_WAIT_S if wait_s is None else wait_s):
            return await run(fn)
    except KnnragError as e:
        raise tool_error(e) from e


def give_back_memory() -> None:
    """Return freed heap pages to the OS after a big write (glibc keeps them otherwise, and a server's
    RSS stays at its peak for good); a no-op where there is no glibc."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def text(value: str, what: str, limit: int) -> str:
    """Refuse text with nothing to read: empty, blank, or only NULs and other control characters."""
    if not value.strip() or not any(ch.isprintable() and not ch.isspace() for ch in value):
        raise ToolError(f"{what} is empty (only blanks or control characters). Hint: pass some words")
    if len(value) > limit:  # also bounded in the schema; kept for direct Python callers
        raise ToolError(f"{what} is {len(value)} characters, over the limit of {limit}. Hint: shorten it")
    return value


def require_collection(store: Any, name: str) -> None:
    """Unknown collection -> NotFoundError with an MCP-flavoured hint (cheap: collections are cached)."""
    try:
        store.collection(name)
    except NotFoundError as e:
        raise NotFoundError(e.message, "call list_collections to see them, or index_paths to create one") from e


def _cut(value: str, limit: int) -> str:
    return value if len(value) <= limit else f"{value[:limit]}{META_CUT}{len(value)} characters in all]"


def cap_metadata(md: dict[str, Any]) -> dict[str, Any]:
    """A hit's metadata within MAX_META_CHARS: long values cut with a marker that gives their size,
    keys past the budget replaced by one "…" entry counting them (stores written before the
    write-time limit, JSONL records, and other writers may hold anything)."""
    import json

    out: dict[str, Any] = {}
    used = 0
    for n, (key, value) in enumerate(md.items()):
        if not isinstance(value, (str, int, float, bool, type(None))):
            value = json.loads(json.dumps(value, default=str))
            dumped = json.dumps(value, ensure_ascii=False)
            if len(dumped) > MAX_META_VALUE:
                value = _cut(dumped, MAX_META_VALUE)
        elif isinstance(value, str):
            value = _cut(value, MAX_META_VALUE)
        key = _cut(str(key), 200)
        size = len(json.dumps({key: value}, ensure_ascii=False))
        if used + size > MAX_META_CHARS:
            out["…"] = f"{len(md) - n} more metadata keys omitted to keep the hit small"
            break
        out[key] = value
        used += size
    return out


def meta_cut(h: S.HitOut) -> bool:
    return "…" in h.metadata or any(isinstance(v, str) and META_CUT in v for v in h.metadata.values())


def hit(h: Hit) -> S.HitOut:
    text = h.text or ""
    coll = h.collection or "default"
    return S.HitOut(
        id=str(h.id), uri=replace(h, collection=coll).uri, score=float(h.score or 0.0),  # a PDF's: #page=N
        scores={k: float(v) for k, v in (h.scores or {}).items() if v is not None},
        source=str(h.source), start_line=int(h.start_line or 0), end_line=int(h.end_line or 0),
        start_char=int(h.start_char or 0), end_char=int(h.end_char or 0),
        heading=_cut(h.heading, MAX_META_VALUE) if h.heading else None,
        text=text[:MAX_HIT_TEXT], text_truncated=len(text) > MAX_HIT_TEXT, collection=coll,
        metadata=cap_metadata(dict(h.metadata or {})),
    )


def bound_hits(hits: list[S.HitOut], budget_chars: int) -> tuple[list[S.HitOut], bool, str | None]:
    """Keep hits in rank order while their JSON fits `budget_chars`; say what was cut."""
    kept: list[S.HitOut] = []
    used = 0
    for h in hits:
        size = len(h.model_dump_json())
        if kept and used + size > budget_chars:
            break
        kept.append(h)
        used += size
    cut_texts = sum(h.text_truncated for h in kept)
    notes = []
    if len(kept) < len(hits):
        notes.append(f"{len(hits) - len(kept)} lower-ranked hits omitted to keep the result under the size limit; "
                     "ask for a smaller k or narrow the filters")
    if cut_texts:
        notes.append(f"{cut_texts} hit texts cut to {MAX_HIT_TEXT} characters; read the full chunk via its `uri` resource")
    cut_meta = sum(meta_cut(h) for h in kept)
    if cut_meta:
        notes.append(f"{cut_meta} hits' metadata cut to {MAX_META_CHARS} characters (values to {MAX_META_VALUE}); "
                     "the stored metadata is unchanged")
    return kept, bool(notes), ("; ".join(notes) or None)


def bound_context(before: list[S.HitOut], chunk: S.HitOut, after: list[S.HitOut],
                  budget_chars: int) -> tuple[list[S.HitOut], list[S.HitOut], str | None]:
    """chunk_context's neighbours within `budget_chars` of JSON: the farthest go first, alternately."""
    sizes = {id(h): len(h.model_dump_json()) for h in (*before, chunk, *after)}
    used = sum(sizes.values())
    before, after = list(before), list(after)
    dropped = 0
    while used > budget_chars and (before or after):
        side = before if len(before) >= len(after) else after
        used -= sizes[id(side.pop(0 if side is before else -1))]
        dropped += 1
    note = (f"{dropped} far neighbours left out to keep the result under the size limit; call chunk_context "
            "again from the first or last chunk shown") if dropped else None
    return before, after, note


def jsonable(obj: Any) -> Any:
    import json

    return json.loads(json.dumps(obj, default=str))
