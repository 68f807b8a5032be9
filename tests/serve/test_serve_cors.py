"""CORS (`--cors-origin`): preflights answered before authentication, allow headers for the listed origins
only (on errors and event streams too), checked with raw HTTP and from a page on another origin in Chromium."""

from __future__ import annotations

import http.server
import threading
from functools import partial

import httpx
import pytest

from parley.engine import LocalEngine
from parley.errors import ConfigError
from parley.serve.app import ServeOptions, create_app
from serve.live_server import start_server

APP_ORIGIN = "http://localhost:{port}"  # filled in with the page server's port
OTHER = "http://evil.example"
KEY = "sk-cors-test"


@pytest.fixture(scope="module")
def page_server(tmp_path_factory):
    """A second local web server: the browser app's own origin, which is not Parley's."""
    root = tmp_path_factory.mktemp("app")
    (root / "index.html").write_text("<!doctype html><title>app</title>")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(http.server.SimpleHTTPRequestHandler,
                                                                       directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield APP_ORIGIN.format(port=server.server_address[1])
    server.shutdown()


@pytest.fixture(scope="module", params=[[], [KEY]], ids=["open", "api-key"])
def cors_server(request, tiny_loaded, page_server, tmp_path_factory):
    options = ServeOptions(model="tiny", max_tokens=8, api_keys=request.param, cors_origins=[page_server],
                           db=tmp_path_factory.mktemp("cors") / "db")
    url, stop = start_server(create_app(options, engine=LocalEngine(tiny_loaded)))
    yield url, page_server, request.param
    stop()


def preflight(url: str, origin: str, path: str = "/v1/chat/completions") -> httpx.Response:
    return httpx.options(url + path, headers={"Origin": origin, "Access-Control-Request-Method": "POST",
                                              "Access-Control-Request-Headers": "authorization, content-type"})


def test_preflight_is_answered_before_authentication(cors_server):
    url, origin, _ = cors_server
    answer = preflight(url, origin)
    assert answer.status_code == 200  # was 405 (no OPTIONS route), or 401 with --api-key
    assert answer.headers["access-control-allow-origin"] == origin
    assert "POST" in answer.headers["access-control-allow-methods"]
    assert "authorization" in answer.headers["access-control-allow-headers"].lower()
    refused = preflight(url, OTHER)
    assert "access-control-allow-origin" not in refused.headers


def test_answers_carry_allow_headers_for_listed_origins_only(cors_server):
    url, origin, keys = cors_server
    auth = {"Authorization": f"Bearer {KEY}"} if keys else {}
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    ok = httpx.post(url + "/v1/chat/completions", json=body, headers={"Origin": origin, **auth}, timeout=60)
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == origin
    bad = httpx.post(url + "/v1/chat/completions", json={"messages": []}, headers={"Origin": origin, **auth})
    assert bad.status_code == 400 and bad.headers["access-control-allow-origin"] == origin
    with httpx.stream("POST", url + "/v1/chat/completions", json={**body, "stream": True},
                      headers={"Origin": origin, **auth}, timeout=60) as streamed:
        assert streamed.headers["access-control-allow-origin"] == origin
        assert "[DONE]" in streamed.read().decode()
    other = httpx.get(url + "/v1/models", headers={"Origin": OTHER, **auth})
    assert other.status_code == 200 and "access-control-allow-origin" not in other.headers
    if keys:  # a wrong key is still refused, and the page may read why
        denied = httpx.get(url + "/v1/models", headers={"Origin": origin})
        assert denied.status_code == 401 and denied.headers["access-control-allow-origin"] == origin


def test_cors_is_off_by_default(server):
    answer = preflight(server[0], OTHER)
    assert answer.status_code == 405 and "access-control-allow-origin" not in answer.headers


def test_a_cors_origin_with_a_path_is_refused():
    with pytest.raises(ConfigError, match="no trailing /"):
        ServeOptions(cors_origins=["https://app.example.com/"]).check()
    ServeOptions(cors_origins=["https://app.example.com", "http://localhost:5173", "*"]).check()


FETCH = """async ([url, key]) => {
  const headers = key ? {Authorization: "Bearer " + key} : {};
  try {
    const answer = await fetch(url + "/v1/models", {headers});
    return {status: answer.status, body: await answer.json()};
  } catch (e) { return {error: String(e)}; }
}"""


def test_a_page_on_another_origin_calls_the_api_in_a_browser(cors_server, tiny_loaded, tmp_path):
    from serve.test_serve_web import CHROMIUM, FLAGS
    from playwright.sync_api import sync_playwright

    url, origin, keys = cors_server
    # The same server without --cors-origin: the browser blocks the page from reading its answers.
    plain_url, stop = start_server(create_app(ServeOptions(model="tiny", api_keys=keys, db=tmp_path / "db"),
                                              engine=LocalEngine(tiny_loaded)))
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            page = browser.new_page()
            page.goto(origin + "/index.html")
            key = keys[0] if keys else None
            allowed = page.evaluate(FETCH, [url, key])
            blocked = page.evaluate(FETCH, [plain_url, key])
            browser.close()
    finally:
        stop()
    assert allowed == {"status": 200, "body": allowed["body"]} and allowed["body"]["data"][0]["id"] == "tiny"
    assert "Failed to fetch" in blocked["error"]
