"""Regenerate docs/page-desktop.png and docs/page-phone.png: the chat page with a short real
conversation with the embedded SmolLM2 (greedy, so the same words each time), in Debian's chromium.

    python docs/screenshots.py          # about a minute on 2 CPU cores; needs `make test-deps`' chromium

The server is the real app on 127.0.0.1 over a throwaway store; nothing is written outside docs/.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the live-server helper the browser tests use

QUESTIONS = ["Write a Python function that checks whether a word is a palindrome.",
             "How do I use it?"]


def main() -> None:
    from playwright.sync_api import sync_playwright

    from parley import models
    from parley.engine import LocalEngine
    from parley.serve.app import ServeOptions, create_app
    from serve.live_server import start_server

    with tempfile.TemporaryDirectory() as tmp:
        engine = LocalEngine(models.load("smollm2", device="cpu"))
        url, stop = start_server(create_app(ServeOptions(db=Path(tmp) / "db"), engine=engine))
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=["--headless", "--no-sandbox"])
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.goto(url)
                page.wait_for_selector("#app:not([hidden])")
                page.click("#toggle-settings")
                page.fill("#system", "You are a concise coding assistant.")
                page.fill("#temperature", "0")
                page.fill("#max_new_tokens", "120")
                page.click("#toggle-settings")
                for n, question in enumerate(QUESTIONS, 1):
                    page.fill("#input", question)
                    page.press("#input", "Enter")
                    page.wait_for_function(
                        "n => document.querySelectorAll('.message.assistant').length >= n"
                        " && !document.querySelector('.message.streaming')", arg=n, timeout=600_000)
                page.evaluate("document.querySelector('#messages').scrollTop = 0")
                page.screenshot(path=str(HERE / "page-desktop.png"))
                page.set_viewport_size({"width": 390, "height": 844})
                page.wait_for_function("() => document.querySelector('#sidebar').getBoundingClientRect().right <= 0")
                page.evaluate("document.querySelector('#messages').scrollTop = 0")
                page.screenshot(path=str(HERE / "page-phone.png"))
                browser.close()
        finally:
            stop()
    print(HERE / "page-desktop.png", HERE / "page-phone.png")


if __name__ == "__main__":
    main()
