"""The web page's HTTP side, in-process through the real ASGI app (http.build_app): the page and its
JSON endpoints behind the MCP endpoint's Host/Origin checks and token, the MCP tools' bounds, and
each endpoint's answer on a hash-64 store with a tiny random LM and the collection's own datastore.
"""
from __future__ import annotations

import json
import math
import re
import time

import numpy as np
import pytest
from starlette.testclient import TestClient

from mcp_server.http import HttpConfig, build_app
from mcp_server.server import ServerConfig, ServerState, build_server
from mcp_server.web.explore import MAX_EXPLORE_TOKENS
from tests.support.docs import write_docs
from tests.support.tiny_lm import make_tiny_lm

BASE = "http://127.0.0.1:8123"
TOKEN = "t" * 24
TEXT = "Run the server behind a reverse proxy that terminates TLS. Use several worker processes for throughput."


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("web")
    root = write_docs(base / "root")
    lm = make_tiny_lm(base / "lm", vocab="word")
    cfg = ServerConfig(store=base / "store", model=str(lm), embedder="hash-64", allow_roots=(root,))
    state = ServerState(cfg)
    yield {"cfg": cfg, "state": state, "root": root, "base": base}
    state.close()


def client_for(env, **http) -> TestClient:
    app = build_app(build_server(env["cfg"], state=env["state"]), HttpConfig(port=8123, **http))
    return TestClient(app, base_url=BASE)


@pytest.fixture(scope="module")
def client(env):
    with client_for(env) as c:
        job = c.post("/ui/api/index", json={"paths": [str(env["root"])], "knn": True}).json()
        for _ in range(600):
            if job["state"] in ("done", "failed", "cancelled"):
                break
            time.sleep(0.05)
            job = c.get(f"/ui/api/jobs/{job['job_id']}").json()
        assert job["state"] == "done" and job["percent"] == 100.0, job
        assert job["result"]["knn"]["entries_added"] > 0
        yield c


def test_page_and_static_files_load_nothing_from_outside(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in r.headers["content-security-policy"] and "default-src 'none'" in r.headers["content-security-policy"]
    bodies = [r.text] + [client.get(f"/ui/static/{n}").text for n in ("app.js", "app.css")]
    for b in bodies:
        urls = set(re.findall(r"(?:https?:)?//[A-Za-z0-9.-]+\.[A-Za-z]{2,}", b)) - {"http://www.w3.org"}
        assert not urls, urls
    assert "innerHTML" not in bodies[1] and "insertAdjacentHTML" not in bodies[1]
    for tid in ("search-input", "search-submit", "ask-input", "ask-submit", "explorer-input", "explorer-submit"):
        assert f'data-testid="{tid}"' in r.text
    assert client.get("/ui/static/../server.py").status_code == 404


def test_host_origin_and_content_type_checks_are_the_mcp_endpoints(client):
    for path in ("/", "/ui/api/collections", "/ui/static/app.js"):
        assert client.get(path, headers={"Host": "evil.example"}).status_code == 421, path
    assert client.post("/ui/api/search", json={"query": "proxy"}, headers={"Origin": "http://evil.example"}).status_code == 403
    assert client.post("/ui/api/search", json={"query": "proxy"}, headers={"Origin": BASE}).status_code == 200
    r = client.post("/ui/api/search", content=b'{"query": "proxy"}', headers={"Content-Type": "text/plain"})
    assert r.status_code == 400  # a cross-site form cannot post here


def test_the_token_guards_the_api_but_not_the_page(env, client):
    with client_for(env, token=TOKEN) as c:
        assert c.get("/").status_code == 200 and c.get("/ui/static/app.js").status_code == 200
        assert c.get("/ui/api/info").status_code == 401
        assert c.post("/ui/api/search", json={"query": "proxy"}).status_code == 401
        assert c.get("/ui/api/info", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_requests_are_bounded_like_the_mcp_tools(env, client):
    r = client.post("/ui/api/search", json={"query": "proxy", "k": 100_000})
    assert r.status_code == 400 and "k=100000 is over the limit of 1000" in r.json()["error"]
    assert client.post("/ui/api/search", json={"query": "x" * 10_001}).status_code == 400
    assert client.post("/ui/api/search", json={"query": "proxy", "evil": 1}).status_code == 400
    assert client.post("/ui/api/explore", json={"text": "a " * 30_000}).status_code in (400, 413)
    r = client.post("/ui/api/search", content=b"{" + b" " * 1_100_000 + b"}", headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert client.post("/ui/api/search", content=b"{not json", headers={"Content-Type": "application/json"}).status_code == 400
    r = client.post("/ui/api/search", json={"query": "proxy", "collection": "nope"})
    assert r.status_code == 404 and r.json()["hint"]
    assert client.get("/ui/api/jobs/job-99999").status_code == 400
    assert client.get("/ui/api/jobs/..%2Fx").status_code in (400, 404)


def test_collections_show_both_halves_and_verify(client):
    d = client.get("/ui/api/collections").json()
    (c,) = d["collections"]
    assert c["name"] == "default" and c["chunks"] >= 3 and c["sources"] == 3 and c["embedder"].startswith("hash")
    assert c["fusion"]["state"] in ("default", "calibrated") and c["knn"]["entries"] > 0
    assert c["knn"]["calibration"]["state"] in ("calibrated", "not calibrated")
    v = client.post("/ui/api/verify", json={"collection": "default"}).json()
    assert v["ok"] is True and v["knn"]["ok"] is True


def test_search_marks_the_matching_words_and_opens_the_context(client):
    d = client.post("/ui/api/search", json={"query": "reverse proxies", "k": 3}).json()
    top = d["hits"][0]
    assert top["source"].endswith("deploy.md") and top["start_line"] >= 1
    words = {top["text"][a:b].lower() for a, b in top["marks"]}
    assert words == {"reverse", "proxy"}  # stemmed like BM25: "proxies" marks "proxy"
    ctx = client.post("/ui/api/context", json={"id": top["id"]}).json()
    assert ctx["chunk"]["id"] == top["id"] and ctx["chunk"]["text"] == top["text"]
    hostile = "<script>alert(1)</script> proxy"
    assert client.post("/ui/api/search", json={"query": hostile}).json()["query"] == hostile


def test_ask_cites_its_chunk(client):
    d = client.post("/ui/api/ask", json={"question": "How are path parameters declared in the route?",
                                         "mode": "extractive"}).json()
    assert d["grounded"] is True and d["citations"][0]["source"].endswith("routing.md"), d
    span = d["answer_span"]
    chunk = client.post("/ui/api/context", json={"id": span["chunk_id"]}).json()["chunk"]
    assert chunk["text"][span["chunk_start"]:span["chunk_end"]] == span["text"]
    off = client.post("/ui/api/ask", json={"question": "quantum zebra migration"}).json()
    assert off["grounded"] is False and off["answer"]


def test_explorer_scores_every_token_as_perplexity_does(env, client):
    knnlm = env["state"].ask_knnlm("default")
    assert knnlm.has_datastore
    d = client.post("/ui/api/explore", json={"text": TEXT, "lambda": 0.5}).json()
    toks, s = d["tokens"], d["summary"]
    n = len(knnlm.lm.tokenizer(TEXT, add_special_tokens=False)["input_ids"])
    assert len(toks) == n - 1 == s["tokens"] and s["lambda"] == 0.5 and s["datastore"]
    assert all(TEXT[t["start"]:t["end"]].strip() for t in toks)
    assert any(abs(t["delta"]) > 1e-3 for t in toks)
    assert all(math.isclose(t["delta"], t["knn"] - t["base"], abs_tol=2e-4) for t in toks)
    from lm.knnconfig import KNNOverrides

    ref = knnlm.perplexity(TEXT, config=KNNOverrides(lambda_=0.5).apply(knnlm.config))
    assert math.isclose(s["base_ppl"], ref.base_ppl, rel_tol=1e-3) and math.isclose(s["knn_ppl"], ref.knn_ppl, rel_tol=1e-3)
    assert math.isclose(s["knn_ppl"], float(np.exp(-np.mean([t["knn"] for t in toks]))), rel_tol=1e-3)


def test_a_token_shows_top5_and_neighbours_with_sources(client):
    i = 5
    d = client.post("/ui/api/token", json={"text": TEXT, "position": i, "lambda": 0.5}).json()
    assert len(d["base_top"]) == 5 and len(d["knn_top"]) == 5 and d["lambda"] == 0.5
    assert d["neighbours"] and all(n["distance"] >= 0 for n in d["neighbours"])
    n = d["neighbours"][0]
    assert n["source"].endswith(".md") and n["line"] >= 1 and n["chunk_id"]
    ctx = client.post("/ui/api/context", json={"id": n["chunk_id"]}).json()["chunk"]
    assert ctx["text"][n["char"]:n["char_end"]] in (n["token"], n["token"].lstrip())  # the stored token's characters
    assert client.post("/ui/api/token", json={"text": TEXT, "position": 10_000}).status_code == 400


def test_sweep_and_streamed_generation(env, client):
    d = client.post("/ui/api/sweep", json={"text": TEXT}).json()
    assert d["grid"] and d["best"]["ppl"] <= d["base_ppl"] * 1.5
    with client.stream("POST", "/ui/api/generate", json={"prompt": "Run the server", "max_new_tokens": 6,
                                                          "lambda": 0.5, "chat": False}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
        events = [json.loads(line) for line in r.iter_lines() if line]
    toks = [e for e in events if e["type"] == "token"]
    assert 1 <= len(toks) <= 6 and events[-1]["type"] == "done" and events[-1]["mixes"] is True
    assert all(math.isfinite(e["delta"]) for e in toks)
    knnlm = env["state"].ask_knnlm("default")  # the same greedy kNN-LM text as knn_generate's model.generate()
    assert "".join(e["text"] for e in toks) == knnlm.generate("Run the server", max_new_tokens=6, lambda_=0.5, chat=False)
    r = client.post("/ui/api/generate", json={"prompt": "x", "max_new_tokens": 100_000})
    assert r.status_code == 400


def test_index_outside_the_allowed_roots_is_refused(env, client):
    r = client.post("/ui/api/index", json={"paths": [str(env["base"])]})
    assert r.status_code == 400 and "allow" in (r.json()["error"] + str(r.json()["hint"])).lower()


def test_explorer_token_limit(client):
    r = client.post("/ui/api/explore", json={"text": "proxy " * (MAX_EXPLORE_TOKENS + 10)})
    assert r.status_code == 400 and str(MAX_EXPLORE_TOKENS) in r.json()["error"]


def test_knnrag_ui_needs_a_store_and_stays_on_loopback(env, client, capsys):
    from retrieval.cli.root import build_parser, main

    assert main(["ui", "--store", str(env["base"] / "nope")]) != 0
    err = capsys.readouterr().err
    assert "is not a knnrag store" in err and "knnrag index" in err
    with pytest.raises(SystemExit):  # no --host: the page is never served beyond this machine
        build_parser().parse_args(["ui", "--store", "s", "--host", "0.0.0.0"])
