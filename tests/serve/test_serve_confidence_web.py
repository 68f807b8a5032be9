"""Confidence on the chat page, in real headless Chromium: the toggle colours tokens by probability (also while
a reply streams), hovering or tapping a token shows its alternatives; light and dark, 1280x900 and 390x844.
The numbers arrive with each streamed token of the conversations API."""

from __future__ import annotations

import json
import re

import httpx

from parley.explain.confidence import bucket

from serve.test_serve_web import ARTIFACTS, browser, open_page, wait_reply_done  # noqa: F401 (browser: fixture)


def test_streamed_deltas_carry_the_tokens_probabilities(server):
    url = server[0]
    cid = httpx.post(f"{url}/v1/conversations", json={}).json()["id"]
    deltas = []
    with httpx.stream("POST", f"{url}/v1/conversations/{cid}/messages", timeout=120,
                      json={"content": "Hi", "params": {"max_new_tokens": 6, "seed": 1}}) as answer:
        for line in answer.iter_lines():
            if line.startswith("data: ") and (event := json.loads(line[6:]))["type"] == "delta":
                deltas.append(event)
    assert deltas and all(d["logprob"] <= 0 and len(d["top"]) == 5 for d in deltas)
    assert all(d["top"][0][1] >= d["logprob"] - 1e-4 for d in deltas)  # the best alternative is at least as likely
    stored = httpx.get(f"{url}/v1/conversations/{cid}").json()["params"]
    assert "top_logprobs" not in stored  # asked of the engine, not saved as the user's setting


def _ask(page, text: str, tokens: int) -> None:
    page.click("#toggle-settings")
    page.fill("#max_new_tokens", str(tokens))
    page.fill("#seed", "2")
    page.click("#toggle-settings")
    page.fill("#input", text)
    page.press("#input", "Enter")


def test_the_toggle_colours_tokens_and_shows_alternatives(browser, server):
    ARTIFACTS.mkdir(exist_ok=True)
    ctx, page, errors = open_page(browser, server[0], viewport={"width": 1280, "height": 900})
    page.wait_for_selector("#app:not([hidden])")
    page.click("#toggle-confidence")
    assert page.get_attribute("#toggle-confidence", "aria-pressed") == "true"
    # Coloured while it streams: noted by the page itself at each repaint (a fast reply can end before
    # a poll from here would see it streaming).
    page.evaluate("""() => { window.tokWhileStreaming = false; new MutationObserver(() => {
        if (document.querySelector('.message.streaming .tok')) window.tokWhileStreaming = true;
    }).observe(document.getElementById('messages'), { subtree: true, childList: true }); }""")
    _ask(page, "Tell me a story.", 300)
    wait_reply_done(page, 1)
    assert page.evaluate("window.tokWhileStreaming")
    tokens = page.locator(".message.assistant .tok")
    assert tokens.count() > 10
    painted = page.eval_on_selector_all(".message.assistant .tok", "els => els.map(e => [e.className, e.dataset.logprob])")
    # Each token's colour is the bucket parley/explain/confidence.py gives its logprob (a random model is
    # unsure of nearly everything: mostly bucket 3).
    assert all(cls == f"tok c{bucket(float(logprob))}" for cls, logprob in painted)
    page.locator(".message.assistant .tok").filter(has_text=re.compile(r"\w\w")).first.hover()
    popup = page.locator("#alternatives")
    assert popup.is_visible() and popup.locator("li").count() == 5 and "%" in popup.inner_text()
    page.screenshot(path=str(ARTIFACTS / "confidence-wide-light.png"))
    page.mouse.move(1, 1)
    assert popup.is_hidden()
    page.click("#toggle-confidence")  # off: Markdown again, the same text
    assert tokens.count() == 0 and page.locator(".message.assistant .body p").count() >= 1
    page.click("#toggle-confidence")
    assert tokens.count() > 10
    assert not errors, errors
    ctx.close()


def test_phone_width_in_the_dark_theme(browser, server):
    ctx, page, errors = open_page(browser, server[0], viewport={"width": 390, "height": 844}, color_scheme="dark",
                                  has_touch=True, is_mobile=True)
    page.wait_for_selector("#app:not([hidden])")
    page.evaluate("() => localStorage.setItem('parley.confidence', '1')")  # the toggle's choice is remembered
    page.reload()
    page.wait_for_selector("#app:not([hidden])")
    assert page.get_attribute("#toggle-confidence", "aria-pressed") == "true"
    assert page.locator("#toggle-confidence").is_visible()
    _ask(page, "Hello!", 40)
    wait_reply_done(page, 1)
    token = page.locator(".message.assistant .tok").filter(has_text=re.compile(r"\w\w")).last  # a word, not a space
    token.tap()
    popup = page.locator("#alternatives")
    assert popup.is_visible() and popup.locator("li").count() == 5
    box = popup.bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= 390  # inside a phone's width
    # Readable in the dark: the token keeps the theme's light text; only its background is tinted.
    assert token.evaluate("e => getComputedStyle(e).color") == "rgb(230, 237, 243)"
    width = page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= 390  # no sideways scrolling
    page.screenshot(path=str(ARTIFACTS / "confidence-phone-dark.png"))
    assert not errors, errors
    ctx.close()
