"""Headless Debian Chromium driven by selenium, and one helper per view of the web page.

The browser tests (test_web_browser.py) and the committed screenshots (docs/img, taken with the real
bundled models: `python -m tests.e2e.web_driver URL OUT_DIR`) go through the same helpers.
No browser here is downloaded: Debian's chromium + chromium-driver, or the tests fail saying so.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
DRIVER = ("chromedriver", "chromium-driver")
MISSING = ("the browser tests need Debian's headless Chromium and its driver, and selenium: "
           "`apt-get install -y chromium chromium-driver` and `pip install selenium` (knnrag[dev])")
WAIT_S = 60


def _which(names: tuple[str, ...]) -> str | None:
    for n in names:
        found = shutil.which(n) or (f"/usr/lib/chromium/{n}" if os.path.exists(f"/usr/lib/chromium/{n}") else None)
        if found:
            return found
    return None


def start_browser(width: int = 1280, height: int = 800):
    """A headless Chromium, or RuntimeError(MISSING) when it cannot be found (tests turn it into a failure)."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as e:
        raise RuntimeError(MISSING) from e
    binary, driver = _which(CHROMIUM), _which(DRIVER)
    if binary is None or driver is None:
        raise RuntimeError(f"{MISSING} (found browser: {binary}, driver: {driver})")
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
              f"--window-size={width},{height}", "--force-device-scale-factor=1"):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(executable_path=driver), options=opts)


def wait(drv, css: str, n: int = 1, timeout: float = WAIT_S):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def found(d):
        els = [e for e in d.find_elements(By.CSS_SELECTOR, css) if e.is_displayed()]
        return els if len(els) >= n else False

    return WebDriverWait(drv, timeout, ignored_exceptions=(StaleElementReferenceException,)).until(found)


def wait_text(drv, css: str, pred, timeout: float = WAIT_S):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(drv, timeout, ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda d: next((e for e in d.find_elements(By.CSS_SELECTOR, css) if pred(e.text)), False))


def tid(name: str) -> str:
    return f'[data-testid="{name}"]'


def view(drv, name: str) -> None:
    wait(drv, f"#tab-{name}")[0].click()
    wait(drv, f"#view-{name}")


def open_page(drv, url: str) -> None:
    drv.get(url)
    wait(drv, "#collection option")


def search(drv, query: str, k: int | None = None):
    view(drv, "search")
    box = wait(drv, tid("search-input"))[0]
    box.clear()
    box.send_keys(query)
    if k is not None:
        kbox = drv.find_element("id", "search-k")
        kbox.clear()
        kbox.send_keys(str(k))
    drv.find_element("css selector", tid("search-submit")).click()
    wait_text(drv, "#search-note", lambda t: "hits" in t or "error" in t.lower())
    return drv.find_elements("css selector", tid("hit"))


def open_context(drv, hit):
    hit.find_element("css selector", tid("hit-source")).click()
    wait(drv, "#chunk-body mark.exact")
    return drv.find_element("id", "chunk-dialog")


def close_dialog(drv) -> None:
    drv.find_element("id", "chunk-close").click()


def ask(drv, question: str, mode: str = "auto"):
    from selenium.webdriver.support.ui import Select

    view(drv, "ask")
    box = wait(drv, tid("ask-input"))[0]
    box.clear()
    box.send_keys(question)
    Select(drv.find_element("id", "ask-mode")).select_by_value(mode)
    drv.find_element("css selector", tid("ask-submit")).click()
    return wait(drv, tid("answer"), timeout=300)[0]


def explore(drv, text: str, lambda_: float | None = None):
    view(drv, "explorer")
    box = wait(drv, tid("explorer-input"))[0]
    box.clear()
    drv.execute_script("arguments[0].value = arguments[1];", box, text)  # send_keys is slow for long text
    lam = drv.find_element("id", "explorer-lambda")
    lam.clear()
    if lambda_ is not None:
        lam.send_keys(str(lambda_))
    drv.find_element("css selector", tid("explorer-submit")).click()
    wait(drv, tid("ppl-knn"), timeout=300)
    return drv.find_elements("css selector", tid("token"))


def token_detail(drv, token):
    token.click()
    return wait(drv, tid("neighbour"), timeout=120)


def generate(drv, prompt: str, max_new_tokens: int = 24, lambda_: float | None = None, chat: str = "false"):
    from selenium.webdriver.support.ui import Select

    view(drv, "generate")
    box = wait(drv, tid("generate-input"))[0]
    box.clear()
    box.send_keys(prompt)
    n = drv.find_element("id", "generate-max")
    n.clear()
    n.send_keys(str(max_new_tokens))
    lam = drv.find_element("id", "generate-lambda")
    lam.clear()
    if lambda_ is not None:
        lam.send_keys(str(lambda_))
    Select(drv.find_element("id", "generate-chat")).select_by_value(chat)
    drv.find_element("css selector", tid("generate-submit")).click()
    wait_text(drv, "#generate-summary", lambda t: "tokens/s" in t or "error" in t.lower() or "—" in t, timeout=300)
    return drv.find_elements("css selector", tid("gen-token"))


def shot(drv, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    drv.save_screenshot(str(path))
    return path


def take_all(url: str, out: Path, *, query: str, question: str, text: str, prompt: str) -> list[Path]:
    """One screenshot of each view (docs/img): search, a hit in context, ask, explorer (a token selected), generate."""
    drv = start_browser()
    try:
        open_page(drv, url)
        shots = []
        hits = search(drv, query, k=5)
        shots.append(shot(drv, out / "search.png"))
        open_context(drv, hits[0])
        shots.append(shot(drv, out / "context.png"))
        close_dialog(drv)
        ask(drv, question)
        shots.append(shot(drv, out / "ask.png"))
        toks = explore(drv, text)
        best = max(toks[len(toks) // 3:], key=lambda t: float(t.get_attribute("data-delta")))  # mid-text: more context
        token_detail(drv, best)
        drv.execute_script("document.getElementById('explorer-summary').scrollIntoView()")
        shots.append(shot(drv, out / "explorer.png"))
        generate(drv, prompt, max_new_tokens=40)
        shots.append(shot(drv, out / "generate.png"))
        return shots
    finally:
        drv.quit()


if __name__ == "__main__":  # python -m tests.e2e.web_driver URL OUT_DIR QUERY QUESTION TEXT_FILE PROMPT
    url, out, query, question, text_file, prompt = sys.argv[1:7]
    for p in take_all(url, Path(out), query=query, question=question, text=Path(text_file).read_text(), prompt=prompt):
        print(p)
