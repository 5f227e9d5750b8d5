"""PDFs over MCP (issue 27): index_paths skips a broken PDF with its reason and keeps serving;
search hits carry their pages and a chunk uri ending in #page=N that the resource reads."""
from __future__ import annotations

import pytest
from mcp import Client

from mcp_server.server import build_server
from tests.support.mcp import text_of
from tests.support.pdfgen import make_pdf, recursive_pdf

pytest.importorskip("pypdfium2")
pytestmark = pytest.mark.anyio


async def test_pdfs_over_mcp(env):
    pdfs = env["root"] / "pdfs"
    pdfs.mkdir()
    (pdfs / "atlas.pdf").write_bytes(make_pdf([["Atlas of coasts"], ["Fjords are glacial valleys flooded by the sea,",
                                                                    "deep and narrow, with steep cliff walls."]]))
    (pdfs / "locked.pdf").write_bytes(make_pdf([["secret"]], encrypt=True))
    (pdfs / "loop.pdf").write_bytes(recursive_pdf())
    async with Client(build_server(env["cfg"], state=env["state"])) as c:
        res = await c.call_tool("index_paths", {"paths": [str(pdfs)], "collection": "pdfs"})
        assert not res.is_error, text_of(res)
        skipped = {s["source"].rsplit("/", 1)[-1]: s["reason"] for s in res.structured_content["skipped"]}
        assert "password" in skipped["locked.pdf"] and skipped["loop.pdf"]
        res = await c.call_tool("search", {"query": "fjords glacial valleys", "collection": "pdfs", "k": 1, "mode": "bm25"})
        hit = res.structured_content["hits"][0]
        md = hit["metadata"]
        assert hit["source"].endswith("atlas.pdf") and (md["page_start"], md["page_end"]) == (1, 2)  # one chunk, both pages
        assert hit["uri"].endswith("#page=1")
        body = (await c.read_resource(hit["uri"])).contents[0].text
        assert body == hit["text"] and "Fjords are glacial valleys" in body
        again = await c.call_tool("search", {"query": "fjords", "collection": "pdfs", "k": 1})
        assert not again.is_error  # the server goes on after the broken files
