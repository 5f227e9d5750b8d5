"""kNN-LM tools: next-token distributions, generation and perplexity.

Without a datastore they answer with the base LM alone and say so (`datastore: false` and a
note); they never disappear from tools/list. One torch model serves every caller, so the
forward passes are serialised by the state's lm_lock.
"""
from __future__ import annotations

from typing import Annotated, Any

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult
from pydantic import Field

from mcp_server import schemas as S
from mcp_server import tool_support as T
from mcp_server.tool_support import COMPUTE, MAX_PPL_CHARS, MAX_TEXT_CHARS, NO_DATASTORE
from retrieval.errors import InvalidInputError


def _tp(rows: Any) -> list[S.TokenProbOut]:
    return [S.TokenProbOut(token=str(r["token"]), prob=float(r["prob"])) for r in rows or []]


def _register_knn_next_tokens(server: Any) -> None:
    @server.tool(annotations=COMPUTE, title="Next-token distributions (base, kNN, mix)")
    async def knn_next_tokens(
        context: Annotated[str, Field(description="text whose next token to predict", min_length=1,
                                      max_length=MAX_TEXT_CHARS)],
        ctx: Context,
        top: Annotated[int, Field(description="how many tokens per distribution", ge=1, le=100, strict=True)] = 10,
    ) -> Annotated[CallToolResult, S.NextTokensOut]:
        """Top next tokens under the base LM, the kNN distribution and their mix, with the datastore
        neighbours' source snippets."""
        T.text(context, "context", MAX_TEXT_CHARS)
        state = T.state(ctx)

        def work() -> tuple[dict, bool]:
            knnlm = state.knnlm()
            with state.lm_lock:
                d = knnlm.next_tokens(context, top=top)
            if knnlm.store is not None:
                from lm.datastore.live import locate

                locate(getattr(knnlm.store, "store", knnlm.store), d["neighbours"])  # chunk:<id> -> file:line
            return d, bool(knnlm.has_datastore)

        d, has_ds = await T.run(work)
        neighbours = [S.NeighbourOut(token=str(n.get("token")), distance=float(n.get("distance", 0.0)),
                                     source=None if n.get("source") is None else str(n.get("source")),
                                     snippet=None if n.get("snippet") is None else str(n.get("snippet"))[:400])
                      for n in (d.get("neighbours") or [])[:top]]
        return T.result(S.NextTokensOut(context=context[:200], datastore=has_ds, base=_tp(d.get("base")),
                                       knn=_tp(d.get("knn")), mix=_tp(d.get("mix")), neighbours=neighbours,
                                       note=None if has_ds else NO_DATASTORE))


def _register_knn_generate(server: Any) -> None:
    @server.tool(annotations=COMPUTE, title="Generate with kNN-LM")
    async def knn_generate(
        prompt: Annotated[str, Field(description="the prompt", min_length=1, max_length=MAX_TEXT_CHARS)],
        ctx: Context,
        max_new_tokens: Annotated[int, Field(description="tokens to generate", ge=1, le=512, strict=True)] = 64,
        lambda_: Annotated[float | None, Field(description="kNN weight in [0, 1] (default: the datastore's)",
                                               ge=0.0, le=1.0, strict=True)] = None,
        temperature: Annotated[float | None, Field(description="kNN softmax temperature (> 0)", gt=0.0,
                                                   le=1000.0, strict=True)] = None,
        do_sample: Annotated[bool, Field(description="sample instead of greedy decoding", strict=True)] = False,
        top_p: Annotated[float | None, Field(description="nucleus sampling mass", gt=0.0, le=1.0, strict=True)] = None,
        chat: Annotated[bool | None, Field(description="wrap the prompt in the chat template "
                                                      "(default: when the LM has one)", strict=True)] = None,
        seed: Annotated[int | None, Field(description="random seed for sampling", ge=0, le=2**31 - 1,
                                                  strict=True)] = None,
    ) -> Annotated[CallToolResult, S.GenerateOut]:
        """Continue a prompt with the base LM interpolated with the kNN datastore (base LM alone without one)."""
        T.text(prompt, "prompt", MAX_TEXT_CHARS)
        state = T.state(ctx)

        def work() -> tuple[str, bool]:
            knnlm = state.knnlm()
            if max_new_tokens >= knnlm.lm.max_length:
                raise InvalidInputError(f"max_new_tokens={max_new_tokens} does not fit the LM's "
                                        f"{knnlm.lm.max_length}-token context", "ask for fewer tokens")
            with state.lm_lock:
                text = knnlm.generate(prompt, max_new_tokens=max_new_tokens, lambda_=lambda_,
                                      temperature=temperature, do_sample=do_sample, top_p=top_p, chat=chat,
                                      seed=seed)
            return text, bool(knnlm.has_datastore)

        text, has_ds = await T.run(work)
        return T.result(S.GenerateOut(prompt=prompt[:200], text=text[:40_000], datastore=has_ds,
                                     max_new_tokens=max_new_tokens, lambda_=lambda_, temperature=temperature,
                                     do_sample=do_sample, note=None if has_ds else NO_DATASTORE))


def _register_perplexity(server: Any) -> None:
    @server.tool(annotations=COMPUTE, title="Perplexity: base LM vs kNN-LM")
    async def perplexity(
        text: Annotated[str, Field(description=f"text to score (at most {MAX_PPL_CHARS} characters; longer text: "
                                               "`knnrag eval`)", min_length=1, max_length=MAX_PPL_CHARS)],
        ctx: Context,
    ) -> Annotated[CallToolResult, S.PerplexityOut]:
        """Perplexity of the text under the base LM and under kNN-LM (null without a datastore)."""
        T.text(text, "text", MAX_PPL_CHARS)
        state = T.state(ctx)

        def work() -> tuple[dict, bool]:
            knnlm = state.knnlm()
            with state.lm_lock:
                return knnlm.perplexity(text).to_dict(), bool(knnlm.has_datastore)

        d, has_ds = await T.run(work)
        if not d.get("tokens"):
            raise ToolError("the text has no token to score. Hint: pass at least two tokens of text")
        return T.result(S.PerplexityOut(
            tokens=int(d["tokens"]), base_ppl=float(d["base_ppl"]),
            knn_ppl=None if d.get("knn_ppl") is None else float(d["knn_ppl"]), datastore=has_ds,
            k=d.get("k"), lambda_=d.get("lambda", d.get("lambda_")), temperature=d.get("temperature"),
            base_seconds=d.get("base_seconds"), knn_seconds=d.get("knn_seconds"),
            note=None if has_ds else NO_DATASTORE))


REGISTRARS = (_register_knn_next_tokens, _register_knn_generate, _register_perplexity)


def register(server: Any) -> None:
    for reg in REGISTRARS:
        reg(server)
