"""POST /v1/explain against a real server on 127.0.0.1 over the tiny random Llama: the document it
answers is the library's own numbers, a costly integrated-gradients request is refused naming the
budget, bad spans name the field, /openapi.json documents the route, and other users' replies keep
decoding while an explanation runs."""

from __future__ import annotations

import httpx
import pytest
import torch

from parley.explain.attribution import gradient_x_input
from parley.explain.layout import lay_out

MESSAGES = [{"role": "system", "content": "Answer with code."}, {"role": "user", "content": "Add a and b.\nIn Python."}]
REPLY = "def add(a, b):\n    return a + b"


def post(server, body: dict) -> httpx.Response:
    return httpx.post(server[0] + "/v1/explain", json=body, timeout=120)


def test_explain_answers_the_librarys_numbers(server, tiny_loaded):
    answer = post(server, {"messages": MESSAGES, "reply": REPLY, "methods": ["gxi", "occlusion"], "rows": True})
    assert answer.status_code == 200, answer.text
    document = answer.json()
    layout = lay_out(tiny_loaded, MESSAGES, REPLY)
    expected, _ = gradient_x_input(tiny_loaded, layout, (0, len(layout.reply_ids)))
    assert document["scores"]["gradient_x_input"] == pytest.approx(expected, abs=1e-5)
    assert [m["message"] for m in document["by_message"]["occlusion"]] == ["0 system", "1 user", "(assistant prompt)"]
    assert len(document["attributions"]["gradient_x_input"]) == len(document["reply_tokens"])
    assert document["model"] == "tiny" and "".join(document["prompt_tokens"]) == layout.prompt_text


def test_a_span_and_a_contrast(server):
    document = post(server, {"messages": MESSAGES, "reply": REPLY, "span": "a + b", "contrast": "a - b"}).json()
    first, end = document["span"]
    assert "a + b" in "".join(t["text"] for t in document["reply_tokens"][first:end])
    assert document["contrast"]["alternative"] == "a - b"
    assert len(document["contrast"]["scores"]) == len(document["prompt_tokens"])


def test_integrated_gradients_over_the_budget_is_refused_naming_it(server):
    long = [{"role": "user", "content": "Explain this code. " + "x = x + 1\n" * 120}]
    answer = post(server, {"messages": long, "reply": REPLY, "methods": ["integrated_gradients"], "steps": 1024,
                           "rows": True})
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["param"] == "steps" and error["code"] == "explain_budget_exceeded"
    assert "--explain-budget 2,000,000" in error["message"] and "lower steps" in error["message"]


@pytest.mark.parametrize("body, param", [
    ({"messages": MESSAGES, "reply": REPLY, "span": "nowhere"}, "span"),
    ({"messages": MESSAGES, "reply": REPLY, "methods": ["lime"]}, "methods[0]"),
    ({"messages": [], "reply": REPLY}, "messages"),
    ({"messages": MESSAGES, "reply": REPLY, "steps": 0}, "steps"),
    ({"messages": MESSAGES, "reply": REPLY, "contrast": "0" * 1500}, "contrast"),  # over the 1024-token window
    ({"messages": MESSAGES, "reply": REPLY, "contrast": ""}, "contrast"),
])
def test_bad_fields_are_named(server, body, param):
    answer = post(server, body)
    assert answer.status_code == 400 and answer.json()["error"]["param"] == param, answer.text


def test_the_route_is_documented(server):
    schema = httpx.get(server[0] + "/openapi.json").json()
    route = schema["paths"]["/v1/explain"]["post"]
    assert route["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("ExplanationDocument")
    assert "400" in route["responses"] and "429" in route["responses"]


def test_a_full_line_of_explanations_is_a_429(server):
    app = server[1]
    app.state.explaining = app.state.options.max_queue  # as many waiting as the line holds
    try:
        answer = post(server, {"messages": MESSAGES, "reply": REPLY})
    finally:
        app.state.explaining = 0
    assert answer.status_code == 429 and answer.headers["Retry-After"] == "5"
    assert answer.json()["error"]["code"] == "queue_full"


def test_decoding_goes_on_while_an_explanation_is_in_flight(server, client, tiny_loaded):
    """An integrated-gradients explanation is held inside its first forward pass (a pre-hook on the
    shared model pauses any forward that records gradients, which decoding never does) until another
    client's streamed chat completion has finished: the chat can finish only if decoding does not wait
    for the explanation (its lane is a worker thread beside the batching driver). Then the
    explanation completes."""
    import threading

    from parley.explain.attribution import integrated_gradients

    in_flight, chat_done, released = threading.Event(), threading.Event(), []

    def hold(module, args, kwargs):
        if torch.is_grad_enabled() and not in_flight.is_set():
            in_flight.set()
            released.append(chat_done.wait(timeout=120))  # False: the chat never finished (the test fails)

    hook = tiny_loaded.model.register_forward_pre_hook(hold, with_kwargs=True)
    explained: list[httpx.Response] = []
    body = {"messages": MESSAGES, "reply": REPLY, "methods": ["integrated_gradients"], "steps": 256}
    explaining = threading.Thread(target=lambda: explained.append(post(server, body)))
    try:
        explaining.start()
        assert in_flight.wait(timeout=120), "the explanation never started its forward pass"
        stream = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hello!"}],
                                                max_tokens=24, temperature=0.9, seed=3, stream=True,
                                                stream_options={"include_usage": True})
        chunks = list(stream)
        assert not explained  # the explanation is still held: it cannot have answered before the chat
        chat_done.set()
        explaining.join(timeout=300)
    finally:
        chat_done.set()
        hook.remove()
    assert released == [True]
    assert chunks[-1].usage.completion_tokens >= 1 and any(c.choices and c.choices[0].delta.content for c in chunks)
    assert explained[0].status_code == 200, explained[0].text
    document = explained[0].json()
    layout = lay_out(tiny_loaded, MESSAGES, REPLY)
    expected, _, _ = integrated_gradients(tiny_loaded, layout, (0, len(layout.reply_ids)), steps=256)
    assert document["scores"]["integrated_gradients"] == pytest.approx(expected, abs=1e-4)
