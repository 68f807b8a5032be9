"""The stored-conversation routes the web page uses, against a real server and its real SQLite store."""

from __future__ import annotations

import json
import sqlite3
import threading
import time

import httpx
import pytest

from parley.batching import BatchDriver
from parley.conversation import fit_messages
from parley.engine import LocalEngine, SamplingParams
from parley.store import Store
from serve.live_server import start_server

GREEDY = {"temperature": 0, "max_new_tokens": 8}


def sse(response) -> list[dict]:
    return [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]


@pytest.fixture
def api(server):
    with httpx.Client(base_url=server[0], timeout=60) as http:
        yield http


def new(api, **body) -> str:
    response = api.post("/v1/conversations", json=body)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def test_create_list_rename_delete(api):
    cid = new(api, system="Be brief.", params={"temperature": 0.2})
    listed = {c["id"]: c for c in api.get("/v1/conversations").json()["data"]}
    assert listed[cid]["system"] == "Be brief." and listed[cid]["params"] == {"temperature": 0.2}
    assert api.patch(f"/v1/conversations/{cid}", json={"title": "Renamed"}).json()["title"] == "Renamed"
    assert api.get(f"/v1/conversations/{cid}").json()["title"] == "Renamed"
    assert api.patch(f"/v1/conversations/{cid}", json={"system": None}).json()["system"] is None
    assert api.delete(f"/v1/conversations/{cid}").json()["deleted"] is True
    gone = api.get(f"/v1/conversations/{cid}")
    assert gone.status_code == 404 and "no conversation" in gone.json()["error"]["message"]


def test_reply_is_the_engines_and_is_stored(api, tiny_loaded, tmp_db):
    cid = new(api, system="Be brief.")
    body = api.post(f"/v1/conversations/{cid}/messages",
                    json={"content": "Hello there", "params": GREEDY, "stream": False}).json()
    history = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]
    expected = LocalEngine(tiny_loaded).generate(history, SamplingParams(**GREEDY))
    assert body["message"]["content"] == expected
    stored = api.get(f"/v1/conversations/{cid}").json()
    assert [{k: m[k] for k in ("role", "content")} for m in stored["messages"]] == [
        {"role": "user", "content": "Hello there"}, {"role": "assistant", "content": expected}]
    assert stored["messages"][0]["id"] < stored["messages"][1]["id"]  # what feedback routes name
    assert stored["params"] == GREEDY and stored["title"] == "Hello there"
    # The same SQLite file `parley chat` uses sees it, from another connection.
    assert Store(tmp_db).messages(cid)[-1]["content"] == expected


def test_streamed_reply_and_regenerate(api):
    cid = new(api)
    with api.stream("POST", f"/v1/conversations/{cid}/messages",
                    json={"content": "Tell me a story", "params": {"max_new_tokens": 12, "seed": 1}}) as response:
        events = sse(response)
    assert events[0] == {"type": "start", "notice": None}
    assert events[-1]["type"] == "done" and events[-1]["finish_reason"] in ("stop", "length")
    first = "".join(e["text"] for e in events if e["type"] == "delta")
    assert api.get(f"/v1/conversations/{cid}").json()["messages"][-1]["content"] == first

    with api.stream("POST", f"/v1/conversations/{cid}/regenerate", json={"params": {"seed": 2}}) as response:
        again = "".join(e.get("text", "") for e in sse(response))
    messages = api.get(f"/v1/conversations/{cid}").json()["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"]  # replaced, not appended
    assert messages[-1]["content"] == again != first


def test_rolling_buffer_drops_oldest_turns_and_says_so(api, tiny_loaded):
    cid = new(api, system="Keep this.")
    long = "word " * 400  # three of these overflow the 1024-token window
    notices = []
    for i in range(3):
        with api.stream("POST", f"/v1/conversations/{cid}/messages",
                        json={"content": f"{i} {long}", "params": GREEDY}) as response:
            notices.append(sse(response)[0]["notice"])
    assert notices[0] is None
    assert notices[-1] and notices[-1].startswith("context full: dropped the 1 oldest turn")
    # The rule is conversation.fit_messages': the same call gives the same verdict.
    messages = api.get(f"/v1/conversations/{cid}").json()["messages"][:-1]
    fitted = fit_messages([{"role": "system", "content": "Keep this."}] + messages, tiny_loaded.tokenizer,
                          tiny_loaded.template, 1024 - 8)
    assert fitted.notice == notices[-1]


@pytest.fixture(scope="module")
def long_api(tiny_loaded, tmp_path_factory):
    """A server of its own that allows replies long enough (1000 tokens) to stop one halfway."""
    from parley.serve.app import ServeOptions, create_app

    app = create_app(ServeOptions(max_tokens=1000, db=tmp_path_factory.mktemp("long") / "db"), engine=LocalEngine(tiny_loaded))
    url, stop = start_server(app)
    with httpx.Client(base_url=url, timeout=60) as http:
        yield http
    stop()


def test_stop_keeps_the_partial_reply(long_api, tiny_loaded):
    api = long_api
    cid = new(api)
    params = {"temperature": 0, "max_new_tokens": 1000}
    with api.stream("POST", f"/v1/conversations/{cid}/messages",
                    json={"content": "Go on", "params": params}) as response:
        lines = response.iter_lines()
        shown = ""
        for line in lines:
            event = json.loads(line[6:]) if line.startswith("data: ") else {}
            shown += event.get("text", "")
            if len(shown) > 10:
                break  # the page's Stop button: the connection closes mid-reply
    full = LocalEngine(tiny_loaded).generate([{"role": "user", "content": "Go on"}],
                                        SamplingParams(temperature=0, max_new_tokens=1000))
    deadline = time.monotonic() + 10
    while len(messages := api.get(f"/v1/conversations/{cid}").json()["messages"]) < 2:
        assert time.monotonic() < deadline, "the partial reply was never stored"
        time.sleep(0.05)
    stored = messages[-1]["content"]
    assert stored.startswith(shown) and full.startswith(stored) and len(stored) < len(full)
    assert messages[-1]["stopped"] is True and "stopped" not in messages[0]  # the page marks it


def test_editing_a_message_replaces_it_and_what_followed(api, tiny_loaded):
    cid = new(api)
    for text in ("first question", "second question"):
        api.post(f"/v1/conversations/{cid}/messages", json={"content": text, "params": GREEDY, "stream": False})
    edited = api.post(f"/v1/conversations/{cid}/messages",
                      json={"content": "first, rephrased", "params": GREEDY, "stream": False, "edit": 0})
    assert edited.status_code == 200, edited.text
    expected = LocalEngine(tiny_loaded).generate([{"role": "user", "content": "first, rephrased"}], SamplingParams(**GREEDY))
    shown = api.get(f"/v1/conversations/{cid}").json()["messages"]
    assert [(m["role"], m["content"]) for m in shown] == [("user", "first, rephrased"), ("assistant", expected)]
    for index in (1, 2, 99):  # a reply, or past the end: a 400 naming the field, and nothing changes
        refused = api.post(f"/v1/conversations/{cid}/messages", json={"content": "x", "edit": index, "stream": False})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "edit", refused.text
    assert len(api.get(f"/v1/conversations/{cid}").json()["messages"]) == 2


@pytest.mark.parametrize("body, words", [
    ({"content": ""}, "content"),
    ({"content": 5}, "content"),
    ({"content": "hi", "params": {"temperature": "hot"}}, "temperature"),
    ({"content": "hi", "params": {"warmth": 1}}, "warmth"),
    ({"content": "hi", "params": {"top_p": 7}}, "top_p"),
    ({"content": "hi", "params": {"seed": [1]}}, "seed"),
    ({"content": "hi", "extra": 1}, "extra"),
])
def test_bad_messages(api, body, words):
    cid = new(api)
    response = api.post(f"/v1/conversations/{cid}/messages", json=body)
    assert response.status_code == 400, response.text
    assert words in response.json()["error"]["message"]
    assert api.get(f"/v1/conversations/{cid}").json()["messages"] == []  # nothing half-stored


def test_regenerate_needs_a_user_message(api):
    cid = new(api)
    response = api.post(f"/v1/conversations/{cid}/regenerate", json={})
    assert response.status_code == 400 and response.json()["error"]["code"] == "nothing_to_regenerate"
    assert api.post("/v1/conversations/nope/messages", json={"content": "hi"}).status_code == 404


def test_plain_fallback_form(api):
    response = api.post("/plain", data={"message": "<b>Hi</b> & bye"})
    assert response.status_code == 200
    assert "&lt;b&gt;Hi&lt;/b&gt; &amp; bye" in response.text and "<b>Hi</b>" not in response.text
    # The answer is the model's text: escaped, and a page that may run no script and load nothing.
    policy = dict(part.strip().split(" ", 1) for part in response.headers["content-security-policy"].split(";"))
    assert policy["default-src"] == "'none'" and "script-src" not in policy and policy["form-action"] == "'self'"
    titles = [c["title"] for c in api.get("/v1/conversations").json()["data"]]
    assert "<b>Hi</b> & bye" in titles


BAD_PARAMS = [
    ({"stop": [""]}, "params.stop"),  # would end every reply at once, empty
    ({"stop": [str(i) for i in range(17)]}, "params.stop"),
    ({"stop": ["x" * 257]}, "params.stop"),
    ({"stop": [str(i) for i in range(70_000)]}, "params.stop"),  # under the body limit, slow on every token
    ({"seed": 2**70}, "params.seed"),  # torch refuses it: every later message would be a 500
    ({"seed": -1}, "params.seed"),
    ({"json_schema": {"type": "object", "not": {}}}, "params.json_schema"),  # llguidance cannot compile `not`
    ({"logit_bias": {"5": 101}}, "params.logit_bias"),
    ({"logit_bias": {"five": 1}}, "params.logit_bias.five"),  # not a token id
    ({"presence_penalty": 2.5}, "params.presence_penalty"),
    ({"frequency_penalty": -3}, "params.frequency_penalty"),
]


def test_stored_logit_bias_and_penalties_shape_every_reply(api, tiny_loaded):
    hello = tiny_loaded.tokenizer.convert_tokens_to_ids("hello")
    cid = new(api, params={**GREEDY, "logit_bias": {str(hello): 100}, "frequency_penalty": 0.5})
    for _ in range(2):  # the second reply reads the params back from SQLite, where JSON made the ids strings
        body = api.post(f"/v1/conversations/{cid}/messages", json={"content": "hi", "stream": False}).json()
        assert body["message"]["content"] == "hello" * 8


@pytest.mark.parametrize("params, field", BAD_PARAMS)
def test_params_are_checked_wherever_they_are_stored_or_used(api, params, field):
    cid = new(api, params=GREEDY)
    api.post(f"/v1/conversations/{cid}/messages", json={"content": "hi", "stream": False})
    before = api.get(f"/v1/conversations/{cid}").json()
    answers = [
        api.post("/v1/conversations", json={"params": params}),
        api.patch(f"/v1/conversations/{cid}", json={"params": params}),
        api.post(f"/v1/conversations/{cid}/messages", json={"content": "again", "params": params}),
        api.post(f"/v1/conversations/{cid}/regenerate", json={"params": params}),
    ]
    for response in answers:
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["param"] == field and error["message"].startswith(field + ":")
    assert api.get(f"/v1/conversations/{cid}").json() == before  # nothing stored, nothing replaced


def test_bad_params_stored_by_an_older_parley_are_a_400_not_an_empty_reply(api, tmp_db):
    cid = new(api)
    Store(tmp_db).update(cid, params={"stop": [""], "temperature": 0})  # written before the check existed
    response = api.post(f"/v1/conversations/{cid}/messages", json={"content": "hi", "stream": False})
    assert response.status_code == 400 and response.json()["error"]["param"] == "params.stop"
    api.patch(f"/v1/conversations/{cid}", json={"params": {"temperature": 0}})  # the fix the message implies
    reply = api.post(f"/v1/conversations/{cid}/messages", json={"content": "hi", "stream": False}).json()
    assert reply["message"]["content"]


def test_listing_refuses_an_offset_sqlite_cannot_hold(api):
    assert api.get("/v1/conversations", params={"offset": 2**63 - 1}).json()["data"] == []
    response = api.get("/v1/conversations", params={"offset": 2**63})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "offset"


def test_an_empty_regenerated_reply_leaves_the_old_one(api, tiny_loaded):
    cid = new(api, params=GREEDY)
    old = api.post(f"/v1/conversations/{cid}/messages", json={"content": "Hello", "stream": False}).json()
    greedy = LocalEngine(tiny_loaded).generate([{"role": "user", "content": "Hello"}], SamplingParams(**GREEDY))
    # A stop string that the reply starts with: the new reply ends before its first character.
    with api.stream("POST", f"/v1/conversations/{cid}/regenerate", json={"params": {"stop": [greedy[0]]}}) as response:
        events = sse(response)
    assert events[-1]["type"] == "done" and not any(e["type"] == "delta" for e in events)
    messages = [{k: m[k] for k in ("role", "content")} for m in api.get(f"/v1/conversations/{cid}").json()["messages"]]
    assert messages == [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": old["message"]["content"]}]


class Gated:
    """The real engine, whose batches wait at a gate before each prefill, so a test can act while a
    request is queued: `reached` is set when a request gets there, `gate.set()` lets it through."""

    def __init__(self, engine):
        self.engine, self.gate, self.reached = engine, threading.Event(), threading.Event()

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def driver(self, max_batch=8, max_queue=64):
        return BatchDriver(self.engine, self._new_batch, max_batch, max_queue)

    def _new_batch(self):
        batch = self.engine.new_batch()
        prefill = batch.add_many

        def gated(seqs):
            self.reached.set()
            assert self.gate.wait(60), "the test never opened the gate"
            return prefill(seqs)

        batch.add_many = gated
        return batch


@pytest.fixture
def gated(tiny_loaded, tmp_path, monkeypatch):
    """(api, engine, db): a server of its own over a Gated engine; its store gives up on a locked
    database after 0.3 s."""
    from parley.serve.app import ServeOptions, create_app

    monkeypatch.setattr("parley.store.BUSY_TIMEOUT_S", 0.3)
    engine, db = Gated(LocalEngine(tiny_loaded)), tmp_path / "parley.db"
    url, stop = start_server(create_app(ServeOptions(db=db, max_tokens=64), engine=engine))
    with httpx.Client(base_url=url, timeout=60) as http:
        yield http, engine, db
    engine.gate.set()
    stop()


def in_background(call):
    """Run `call` in a thread; the returned function joins it and gives its result."""
    result = {}
    thread = threading.Thread(target=lambda: result.update(value=call()), daemon=True)
    thread.start()
    return lambda: (thread.join(60), result["value"])[1]


def test_a_regenerated_reply_never_deletes_what_another_client_added(gated):
    api, engine, db = gated
    cid = new(api, params=GREEDY)
    engine.gate.set()
    api.post(f"/v1/conversations/{cid}/messages", json={"content": "first", "stream": False})
    engine.gate.clear()
    engine.reached.clear()
    regenerated = in_background(lambda: api.post(f"/v1/conversations/{cid}/regenerate", json={"stream": False}))
    assert engine.reached.wait(60)
    before = Store(db).messages(cid)
    assert [m["role"] for m in before] == ["user", "assistant"]  # the old reply stays until the new one exists
    Store(db).add_message(cid, "user", "another client's question")
    engine.gate.set()
    response = regenerated()
    assert response.status_code == 409, response.text
    assert response.json()["error"]["code"] == "conversation_changed"
    assert Store(db).messages(cid) == before + [{"role": "user", "content": "another client's question"}]


def test_the_question_is_stored_when_queued_and_done_means_stored(gated):
    api, engine, db = gated
    cid = new(api, params=GREEDY)

    def ask():
        with api.stream("POST", f"/v1/conversations/{cid}/messages", json={"content": "queued"}) as response:
            return sse(response)

    events = in_background(ask)
    assert engine.reached.wait(60)  # queued; no token can come before the gate opens
    deadline = time.monotonic() + 30
    while Store(db).messages(cid) != [{"role": "user", "content": "queued"}]:
        assert time.monotonic() < deadline, "the question was not stored while its reply was queued"
        time.sleep(0.05)
    lock = sqlite3.connect(db, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")  # the reply cannot be stored while this is held
    engine.gate.set()
    ended = events()
    lock.execute("ROLLBACK")
    assert ended[-1]["type"] == "error" and "locked" in ended[-1]["message"]
    assert not any(e["type"] == "done" for e in ended)  # never "done" for a reply that was not stored
    assert Store(db).messages(cid) == [{"role": "user", "content": "queued"}]


@pytest.mark.parametrize("host, allowed", [
    ("127.0.0.1:8000", True), ("localhost", True), ("LOCALHOST:1", True), ("[::1]:8000", True),
    ("evil.example", False),  # DNS rebinding: the attacker's name, pointed at 127.0.0.1
    ("evil.example:8000", False), ("192.168.1.5", False), ("[::1", False), ("", False),
])
def test_a_loopback_server_answers_only_to_loopback_names(api, host, allowed):
    response = api.get("/v1/conversations", headers={"Host": host})
    if allowed:
        assert response.status_code == 200, response.text
        return
    assert response.status_code == 400 and response.json()["error"]["code"] == "host_not_allowed"
    message = response.json()["error"]["message"]
    assert "localhost, 127.0.0.1, ::1" in message and "--allowed-host" in message


def test_a_server_on_every_interface_answers_to_addresses_and_allowed_names(tiny_loaded, tmp_path):
    from parley.serve.app import ServeOptions, create_app

    options = ServeOptions(host="0.0.0.0", allowed_hosts=["chat.example.com"], db=tmp_path / "db")
    url, stop = start_server(create_app(options, engine=LocalEngine(tiny_loaded)))
    try:
        for host, status in [("10.1.2.3:8000", 200), ("[fe80::1]", 200), ("localhost", 200),
                             ("Chat.Example.com:443", 200), ("evil.example", 400)]:
            assert httpx.get(url + "/health", headers={"Host": host}).status_code == status, host
    finally:
        stop()


@pytest.mark.parametrize("headers, status", [
    ({"Sec-Fetch-Site": "cross-site"}, 403),
    ({"Sec-Fetch-Site": "same-site"}, 403),  # another port of the same machine is another origin
    ({"Origin": "http://evil.example"}, 403),  # a browser without Sec-Fetch-Site
    ({"Origin": "null"}, 403),
    ({"Sec-Fetch-Site": "same-origin"}, 200),
    ({"Sec-Fetch-Site": "none"}, 200),  # typed or bookmarked
    ({}, 200),  # not a browser (curl): no cross-site forgery possible
])
def test_plain_refuses_cross_site_form_posts(api, headers, status):
    before = len(api.get("/v1/conversations", params={"limit": 500}).json()["data"])
    response = api.post("/plain", data={"message": "forged?"}, headers=headers)
    assert response.status_code == status, response.text
    after = len(api.get("/v1/conversations", params={"limit": 500}).json()["data"])
    assert after == before + (status == 200)
    if status == 403:
        assert "from another site" in response.text


def test_plain_accepts_a_post_from_its_own_origin(api):
    own = str(api.base_url).rstrip("/")
    assert api.post("/plain", data={"message": "hi"}, headers={"Origin": own}).status_code == 200
