"""The web page's speed: first paint, a search round trip from the page, and the kNN-LM explorer on 500 tokens.

Real bundled models (MiniLM embedder, SmolLM2-135M) over the SQuAD 2.0 "Rhine" paragraphs, indexed with
`knnrag index --knn` (the collection's own token datastore, which the explorer uses without --datastore).
The server runs in this process (uvicorn in a thread, the app of `knnrag serve --transport http`), so the
peers use the very same loaded store and kNN-LM:
  1. search: the direct `DocStore.search(q, k=10)` (peer) against POST /ui/api/search over HTTP, interleaved
     per query, and (with Chromium) the same request made by the page itself (fetch + JSON, timed in the page);
     goal <= 1.5x the direct call at p50;
  2. explorer: `lm.eval.evaluate(knnlm, [text])` (what `knnrag eval` runs, warm, no process start or model load)
     against POST /ui/api/explore on the same 500-token wikitext-2 text, interleaved; goal <= 1.3x at the median;
  3. first paint (with Chromium): first-contentful-paint of the page in headless Chromium once the server is
     warm, median of reloads; goal <= 300 ms.

usage: python -m benchmarks web [--quick]
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time

from benchmarks.common import WORK, data_dir, median, percentile, record

PEER = "direct DocStore.search / lm.eval.evaluate (knnrag eval) in the same process, same loaded models"
NAME = "web"


def _store() -> tuple:
    store = WORK / "web" / "rhine-store"
    if not (store / ".knn" / "default" / "manifest.json").is_file():
        docs = data_dir("squad2-rhine") / "docs"
        cmd = [sys.executable, "-c", "from retrieval.cli.root import main; raise SystemExit(main())", "index", str(docs),
               "--store", str(store), "--knn", "--no-progress"]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
        print(f"built {store} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return store


def _serve(store) -> tuple:
    import uvicorn

    from mcp_server.http import HttpConfig, build_app
    from mcp_server.server import ServerConfig, ServerState, build_server

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = ServerConfig(store=store)
    state = ServerState(cfg)
    app = build_app(build_server(cfg, state=state), HttpConfig(port=port))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    threading.Thread(target=server.run, daemon=True).start()
    for _ in range(300):
        if server.started:
            break
        time.sleep(0.05)
    return state, server, port


def _post(conn: http.client.HTTPConnection, path: str, body: dict) -> tuple[float, dict]:
    """One request on the kept-alive connection (reopened, untimed, when the server closed it while idle)."""
    data = json.dumps(body).encode()
    if conn.sock is None:
        conn.connect()
    t0 = time.perf_counter()
    try:
        conn.request("POST", path, body=data, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
    except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
        conn.close()
        conn.connect()
        t0 = time.perf_counter()
        conn.request("POST", path, body=data, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
    out = json.loads(resp.read())
    dt = time.perf_counter() - t0
    if resp.status != 200:
        raise RuntimeError(f"{path}: {resp.status} {out}")
    return dt, out


def _text_of_tokens(knnlm, n: int) -> str:
    raw = (data_dir("wikitext-2") / "wiki.test.raw").read_text(encoding="utf-8")[:20_000]
    enc = knnlm.lm.tokenizer(raw, add_special_tokens=False, return_offsets_mapping=True)
    return raw[:enc["offset_mapping"][n - 1][1]]


def bench_search(state, conn, queries: list[str], drv) -> dict:
    """Per query the three paths one after the other, in an order that rotates (what runs first pays
    for the previous call's spinning onnxruntime workers on this 2-core box)."""
    store = state.store()
    times: dict[str, list[float]] = {"direct": [], "http": [], "page": []}

    def direct(q: str) -> float:
        t0 = time.perf_counter()
        store.search(q, k=10, collection="default")
        return time.perf_counter() - t0

    def page(q: str) -> float:
        return drv.execute_async_script(
            "const done = arguments[1]; const t0 = performance.now();"
            "fetch('/ui/api/search', {method: 'POST', headers: {'Content-Type': 'application/json'},"
            " body: JSON.stringify({query: arguments[0], k: 10})}).then(r => r.json())"
            ".then(() => done((performance.now() - t0) / 1000));", q)

    paths = {"direct": direct, "http": lambda q: _post(conn, "/ui/api/search", {"query": q, "k": 10})[0]}
    if drv is not None:
        paths["page"] = page
    names = list(paths)
    for i, q in enumerate(queries):
        for name in names[i % len(names):] + names[:i % len(names)]:
            times[name].append(paths[name](q))
    direct_t, http_, page_t = times["direct"], times["http"], times["page"]
    out = {"direct_p50_ms": median(direct_t) * 1e3, "http_p50_ms": median(http_) * 1e3,
           "direct_p95_ms": percentile(direct_t, 95) * 1e3, "http_p95_ms": percentile(http_, 95) * 1e3, "n": len(queries)}
    if page_t:
        out.update(page_p50_ms=median(page_t) * 1e3, page_p95_ms=percentile(page_t, 95) * 1e3)
    return out


def bench_explorer(state, conn, text: str, reps: int) -> dict:
    from lm.eval import evaluate

    knnlm = state.ask_knnlm("default")
    peer, ours = [], []
    for _ in range(reps):
        with state.lm_lock:
            t0 = time.perf_counter()
            ev = evaluate(knnlm, [text])
            peer.append(time.perf_counter() - t0)
        dt, d = _post(conn, "/ui/api/explore", {"text": text})
        ours.append(dt)
    s = d["summary"]
    assert abs(s["knn_ppl"] - ev["knn_ppl"]) <= 1e-3 * ev["knn_ppl"], (s, ev)  # the same numbers as eval
    return {"eval_median_s": median(peer), "explore_median_s": median(ours), "tokens": s["tokens"],
            "base_ppl": s["base_ppl"], "knn_ppl": s["knn_ppl"], "k": s["k"], "lambda": s["lambda"],
            "per_token_lambda": s["per_token_lambda"], "reply_bytes": len(json.dumps(d))}


def bench_paint(drv, url: str, reps: int) -> list[float]:
    fcp = []
    for i in range(reps + 1):
        drv.get(url)
        v = drv.execute_script("const e = performance.getEntriesByName('first-contentful-paint')[0]; return e ? e.startTime : null")
        if i and v is not None:  # the first load warms the browser's own start-up
            fcp.append(float(v))
    return fcp


def _browser():
    try:
        from tests.e2e.web_driver import start_browser

        return start_browser()
    except (ImportError, RuntimeError) as e:
        print(f"no headless Chromium ({e}): the page-side search and first paint are not measured", file=sys.stderr)
        return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer queries and repetitions")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    nq, reps = (15, 3) if args.quick else (60, 5)
    store = _store()
    state, server, port = _serve(store)
    qs = [json.loads(line)["question"] for line in (data_dir("squad2-rhine") / "questions.jsonl").open()][:nq]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    drv = _browser()
    try:
        url = f"http://127.0.0.1:{port}/?collection=default"
        if drv is not None:
            drv.get(url)
        _post(conn, "/ui/api/search", {"query": qs[0]})  # warm: store, embedder
        knnlm = state.ask_knnlm("default")
        text = _text_of_tokens(knnlm, 501)  # 500 scored tokens after the first
        _post(conn, "/ui/api/explore", {"text": text[:500]})  # warm: LM, datastore
        s = bench_search(state, conn, qs, drv)
        e = bench_explorer(state, conn, text, reps)
        fcp = bench_paint(drv, url, reps * 2) if drv is not None else []
    finally:
        if drv is not None:
            drv.quit()
        server.should_exit = True
        state.close()
    print(json.dumps({"search": s, "explorer": e, "first_paint_ms": fcp}, indent=1))
    record(NAME, "search_roundtrip_http_p50", s["http_p50_ms"], s["direct_p50_ms"], "ms", higher_is_better=False,
           peer_name="DocStore.search direct", goal="<= 1.5x", extra=s, quick=args.quick)
    if "page_p50_ms" in s:
        record(NAME, "search_roundtrip_page_p50", s["page_p50_ms"], s["direct_p50_ms"], "ms", higher_is_better=False,
               peer_name="DocStore.search direct", goal="<= 1.5x", extra=s, quick=args.quick)
    record(NAME, "explorer_500_tokens", e["explore_median_s"], e["eval_median_s"], "s", higher_is_better=False,
           peer_name="lm.eval.evaluate (knnrag eval), warm", goal="<= 1.3x", extra=e, quick=args.quick)
    if fcp:
        record(NAME, "first_paint_warm", median(fcp), None, "ms", higher_is_better=False, goal="<= 300 ms",
               extra={"reloads": fcp}, quick=args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
