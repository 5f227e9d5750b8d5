"""The page's request bodies: the MCP tools' own bounds (tool_support, tools), extra fields refused.

A request that breaks one is answered 400 with validation.describe()'s one sentence per field.
"""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from mcp_server.tool_support import COLLECTION_RE, MAX_QUERY_CHARS, MAX_TEXT_CHARS, Filters
from mcp_server.tools import MAX_SEARCH_K
from retrieval.store.admin import MAX_NEIGHBOURS

Coll = Annotated[str, Field(pattern=COLLECTION_RE, max_length=64)]
Lambda = Annotated[float | None, Field(ge=0.0, le=1.0, alias="lambda")]
MAX_GENERATE_TOKENS = 512  # knn_generate's bound


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class SearchIn(_In):
    query: Annotated[str, Field(min_length=1, max_length=MAX_QUERY_CHARS)]
    k: Annotated[int, Field(ge=1, le=MAX_SEARCH_K, strict=True)] = 10
    mode: Literal["hybrid", "dense", "bm25"] = "hybrid"
    filters: Filters | None = None
    collection: Coll = "default"


class ContextIn(_In):
    id: Annotated[str, Field(min_length=1, max_length=200)]
    collection: Coll = "default"
    before: Annotated[int, Field(ge=0, le=MAX_NEIGHBOURS, strict=True)] = 2
    after: Annotated[int, Field(ge=0, le=MAX_NEIGHBOURS, strict=True)] = 2


class AskIn(_In):
    question: Annotated[str, Field(min_length=1, max_length=MAX_QUERY_CHARS)]
    k: Annotated[int, Field(ge=1, le=20, strict=True)] = 5
    collection: Coll = "default"
    mode: Literal["auto", "extractive", "generate"] = "auto"


class CollectionIn(_In):
    collection: Coll = "default"


class ExploreIn(_In):
    text: Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS)]
    collection: Coll = "default"
    lambda_: Lambda = None


class TokenIn(ExploreIn):
    position: Annotated[int, Field(ge=1, le=1_000_000, strict=True, description="index of the token in the text's ids")]


class GenerateIn(_In):
    prompt: Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS)]
    collection: Coll = "default"
    max_new_tokens: Annotated[int, Field(ge=1, le=MAX_GENERATE_TOKENS, strict=True)] = 48
    lambda_: Lambda = None
    chat: bool | None = None


class IndexIn(_In):
    paths: Annotated[list[Annotated[str, Field(min_length=1, max_length=4096)]], Field(min_length=1, max_length=100)]
    collection: Coll = "default"
    knn: bool = False
