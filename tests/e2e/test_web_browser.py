"""The web page in a real headless Chromium, served by `knnrag ui` over a store built by `knnrag index --knn`
(hash-64 embedder, tiny random LM: fast, deterministic). Without Chromium these tests FAIL, naming what to
install (web_driver.MISSING). Screenshots of each view go to the test's tmp dir.
"""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e import web_driver as W
from tests.support.docs import write_docs
from tests.support.tiny_lm import make_tiny_lm

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]
XSS = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'
TEXT = "Run the server behind a reverse proxy that terminates TLS. Use several worker processes for throughput."
MIXED = "Use curly braces behind the worker. Run the server behind a reverse proxy with a max-age directive."


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1", "KNNRAG_MCP_TOKEN": ""}


def _knnrag(*args: str) -> list[str]:
    return [sys.executable, "-c", "from retrieval.cli.root import main; raise SystemExit(main())", *args]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    base = tmp_path_factory.mktemp("web-e2e")
    root = write_docs(base / "root")
    (root / "hostile.md").write_text(f"# Hostile\n\nA page that says {XSS} inside its text, about zanzibar.\n")
    (base / "more").mkdir()
    (base / "more" / "extra.md").write_text("# Extra\n\nIndexed from the page, with a progress bar.\n")
    lm = make_tiny_lm(base / "lm", vocab="word", extra_words=XSS + " zanzibar Indexed page progress bar Extra Hostile")
    store = base / "store"
    subprocess.run(_knnrag("index", str(root), "--store", str(store), "--embedder", "hash-64", "--knn", "--knn-model",
                           str(lm), "--no-progress"), check=True, env=_env(), capture_output=True, timeout=300)
    port = _free_port()
    proc = subprocess.Popen(_knnrag("ui", "--store", str(store), "--model", str(lm), "--port", str(port), "--embedder", "hash-64",
                                    "--allow-root", str(root), "--allow-root", str(base / "more")),
                            env=_env(), stderr=subprocess.PIPE, text=True)
    try:
        url = None
        deadline = time.monotonic() + 120
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            line = proc.stderr.readline()
            m = re.search(r"knnrag ui: (http://127\.0\.0\.1:\d+/\S*)", line)
            url = m.group(1) if m else None
        assert url, f"knnrag ui did not announce its address (exit {proc.poll()})"
        import threading

        threading.Thread(target=proc.stderr.read, daemon=True).start()  # drain its log: a full pipe would stall it
        _wait_up(port)
        yield {"url": url, "base": base, "shots": base / "shots"}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _wait_up(port: int) -> None:
    for _ in range(200):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on port {port}")


@pytest.fixture(scope="module")
def drv(site):
    try:
        d = W.start_browser()
    except RuntimeError as e:
        pytest.fail(str(e))
    yield d
    d.quit()


def test_search_shows_hits_with_file_and_lines(site, drv):
    W.open_page(drv, site["url"])
    hits = W.search(drv, "reverse proxy")
    assert hits
    src = hits[0].find_element("css selector", W.tid("hit-source")).text
    assert re.fullmatch(r".+deploy\.md:\d+(-\d+)?", src), src
    assert {m.text.lower() for m in hits[0].find_elements("css selector", "mark")} >= {"reverse", "proxy"}
    W.shot(drv, site["shots"] / "search.png")


def test_a_hit_opens_its_file_context_with_the_characters_marked(site, drv):
    hits = W.search(drv, "reverse proxy")
    text = hits[0].find_element("css selector", ".hit-text").text
    dlg = W.open_context(drv, hits[0])
    assert dlg.get_attribute("open") is not None
    marked = dlg.find_element("css selector", "mark.exact").text
    assert marked.strip() == text.strip()
    assert "deploy.md" in drv.find_element("id", "chunk-title").text
    W.shot(drv, site["shots"] / "context.png")
    W.close_dialog(drv)


def test_ask_shows_a_cited_answer_linked_to_its_characters(site, drv):
    W.open_page(drv, site["url"])  # its own page: nothing left open by an earlier test
    ans = W.ask(drv, "How are path parameters declared in the route?", mode="extractive")
    assert ans.get_attribute("data-grounded") == "true"
    phrase = ans.find_element("css selector", "mark.exact").text
    cites = drv.find_elements("css selector", W.tid("citation"))
    assert cites and "routing.md:" in cites[0].text
    W.shot(drv, site["shots"] / "ask.png")
    cites[0].click()
    W.wait(drv, "#chunk-body mark.exact")
    assert drv.find_element("css selector", "#chunk-body mark.exact").text.strip() == phrase.strip()
    W.close_dialog(drv)
    off = W.ask(drv, "quantum zebra migration")
    W.wait_text(drv, W.tid("answer"), lambda t: "not grounded" in t)
    assert off.is_displayed()


def test_the_explorer_colours_tokens_and_shows_neighbours_with_sources(site, drv):
    toks = W.explore(drv, MIXED, lambda_=0.5)
    deltas = [float(t.get_attribute("data-delta")) for t in toks]
    assert len(toks) > 10 and min(deltas) < 0 < max(deltas)  # stored continuations helped, new ones hurt
    colours = {t.value_of_css_property("background-color") for t in toks}
    assert len(colours) > 2  # coloured by the change, not one flat colour
    assert float(drv.find_element("css selector", W.tid("ppl-base")).text) > 0
    assert float(drv.find_element("css selector", W.tid("ppl-knn")).text) > 0
    helped = max(toks, key=lambda t: float(t.get_attribute("data-delta")))
    nbs = W.token_detail(drv, helped)
    srcs = [n.find_element("css selector", W.tid("neighbour-source")).text for n in nbs]
    assert all(re.fullmatch(r".+\.md:\d+", s) for s in srcs), srcs
    W.shot(drv, site["shots"] / "explorer.png")
    nbs[0].find_element("css selector", W.tid("neighbour-source")).click()
    W.wait(drv, "#chunk-body mark.exact")
    W.close_dialog(drv)
    drv.find_element("id", "sweep-button").click()
    W.wait(drv, W.tid("sweep-svg") + " polyline", timeout=120)


def test_tokens_work_from_the_keyboard(site, drv):
    from selenium.webdriver.common.keys import Keys

    toks = W.explore(drv, TEXT, lambda_=0.5)
    drv.execute_script("arguments[0].focus()", toks[3])
    drv.switch_to.active_element.send_keys(Keys.ENTER)
    W.wait(drv, W.tid("neighbour"), timeout=120)
    assert "selected" in toks[3].get_attribute("class")


def test_generation_streams_coloured_tokens(site, drv):
    toks = W.generate(drv, "Run the server", max_new_tokens=8, lambda_=0.5)
    assert toks and all(t.get_attribute("data-delta") is not None for t in toks)
    assert "tokens/s" in drv.find_element("id", "generate-summary").text
    W.shot(drv, site["shots"] / "generate.png")


def test_an_xss_probe_stays_text(site, drv):
    hits = W.search(drv, "zanzibar hostile")
    hostile = next(h for h in hits if "hostile.md" in h.find_element("css selector", W.tid("hit-source")).text)
    assert "<script>window.__pwned=2</script>" in hostile.text
    W.search(drv, XSS)
    W.ask(drv, XSS)
    W.explore(drv, XSS + " " + TEXT, lambda_=0.5)
    joined = drv.execute_script("return document.getElementById('explorer-tokens').textContent")
    assert joined == XSS + " " + TEXT
    assert drv.execute_script("return window.__pwned === undefined")
    assert not drv.find_elements("css selector", "main img, main script, #hits img, #explorer-tokens img")


def test_an_index_job_shows_its_progress(site, drv):
    W.view(drv, "index")
    box = W.wait(drv, "#index-paths")[0]
    box.clear()
    box.send_keys(str(site["base"] / "more"))
    coll = drv.find_element("id", "index-collection")
    coll.clear()
    coll.send_keys("more")
    drv.find_element("css selector", W.tid("index-submit")).click()
    W.wait_text(drv, "#index-message", lambda t: t.startswith("done") or "error" in t.lower() or "failed" in t)
    assert drv.find_element("id", "index-message").text.startswith("done")
    assert drv.find_element("id", "index-progress").get_attribute("value") in ("100", "100.0")
    assert "more" in [o.get_attribute("value") for o in drv.find_elements("css selector", "#collection option")]


def test_readable_on_a_phone(site, drv):
    drv.set_window_size(390, 844)
    try:
        W.open_page(drv, site["url"])
        W.search(drv, "reverse proxy")
        assert drv.execute_script("return document.documentElement.scrollWidth") <= 392
        W.shot(drv, site["shots"] / "search-phone.png")
    finally:
        drv.set_window_size(1280, 800)


def test_first_paint_is_reported(site, drv):
    W.open_page(drv, site["url"])
    W.open_page(drv, site["url"])  # warm
    fcp = drv.execute_script("const e = performance.getEntriesByName('first-contentful-paint')[0]; return e ? e.startTime : null")
    assert fcp is not None and fcp < 3000, fcp


def test_collections_show_both_halves_and_verify_on_demand(site, drv):
    W.open_page(drv, site["url"])
    W.view(drv, "collections")
    row = W.wait_text(drv, "#collections-table tbody tr", lambda t: t.startswith("default"))
    assert "hash" in row.text and "entries" in row.text  # the embedder, and the kNN half's datastore
    row.find_element("css selector", "#verify-default button").click()
    W.wait_text(drv, "#verify-default", lambda t: t.startswith("ok") or "DAMAGED" in t)
    assert drv.find_element("id", "verify-default").text.startswith("ok")
    W.shot(drv, site["shots"] / "collections.png")
