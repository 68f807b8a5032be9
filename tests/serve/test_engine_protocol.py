"""The Engine protocol, checked the way front ends use it, against both engines: a LocalEngine over the
tiny random Llama, and a RemoteEngine (`backend.open("openai:tiny")`) talking to a real `parley serve`
of that same model on 127.0.0.1. It lives under tests/serve for that shared server fixture.

Greedy decoding makes the two engines' texts comparable: the remote one must say exactly what the
local one says.
"""

from __future__ import annotations

import queue

import pytest

from parley import backend
from parley.batching import Event, ShuttingDown, TooLarge
from parley.engine import Engine, LocalEngine, SamplingParams
from parley.eval.completions import generate_all
from serve.live_server import CONTEXT

HELLO = [{"role": "user", "content": "Say hello."}]
GREEDY = SamplingParams(temperature=0, max_new_tokens=8)


@pytest.fixture(params=["local", "remote"])
def engine(request, tiny_loaded) -> Engine:
    if request.param == "local":
        return LocalEngine(tiny_loaded)
    url = request.getfixturevalue("server")[0]
    return backend.open("openai:tiny", base_url=url + "/v1")


@pytest.fixture
def reference(tiny_loaded) -> LocalEngine:
    """What the served model says, decoded here: the text both engines must produce."""
    return LocalEngine(tiny_loaded)


def run(driver, requests) -> tuple[list[str], list[str]]:
    """Submit one request through `driver` and wait (plainly, no event loop) until every choice closes."""
    events: queue.SimpleQueue[Event] = queue.SimpleQueue()
    driver.submit(requests, events.put)
    texts, reasons, open_ = [""] * len(requests), [""] * len(requests), len(requests)
    while open_:
        event = events.get(timeout=120)
        if event.error is not None:
            raise event.error
        if event.token is not None:
            texts[event.index] += event.token.text
        else:
            reasons[event.index] = event.finish_reason
            open_ -= 1
    return texts, reasons


def test_it_is_an_engine_with_the_models_window(engine):
    assert isinstance(engine, Engine)
    assert engine.context_window == CONTEXT
    assert engine.spec in ("tiny", "openai:tiny")


def test_generate_is_stream_joined_and_the_models_text(engine, reference):
    for prompt in (HELLO, "def fib(n):"):
        streamed = "".join(token.text for token in engine.stream(prompt, GREEDY))
        assert streamed == engine.generate(prompt, GREEDY) == reference.generate(prompt, GREEDY)
        assert streamed


def test_count_grows_with_the_conversation(engine):
    one = engine.count(HELLO)
    two = engine.count(HELLO + [{"role": "assistant", "content": "Hello there!"}] + HELLO)
    assert 0 < one < two
    assert engine.count(HELLO, add_generation_prompt=False) <= one


def test_fit_keeps_what_fits_and_the_newest_turn(engine):
    system = [{"role": "system", "content": "Be brief."}]
    short = system + HELLO
    fitted = engine.fit(short, max_new_tokens=64)
    assert fitted.messages == short and fitted.notice is None
    assert fitted.tokens == engine.count(short)

    turns = [m for i in range(60) for m in ({"role": "user", "content": f"question {i} " * 10},
                                            {"role": "assistant", "content": f"answer {i} " * 10})]
    long = system + turns + [{"role": "user", "content": "the last question"}]
    fitted = engine.fit(long, max_new_tokens=64)
    assert fitted.messages[0] == system[0] and fitted.messages[-1] == long[-1]
    assert fitted.tokens == engine.count(fitted.messages)
    assert fitted.messages == long or (fitted.dropped and fitted.tokens <= CONTEXT - 64)


def test_many_prompts_at_once_through_the_driver(engine, reference):
    prompts = [HELLO, "def fib(n):", [{"role": "user", "content": "Count to three."}], "import os\n"]
    params = [SamplingParams(temperature=0, max_new_tokens=n) for n in (8, 5, 10, 3)]
    expected = [reference.generate(p, q) for p, q in zip(prompts, params)]
    driver = engine.driver(max_batch=2, max_queue=8)
    try:
        texts, reasons = run(driver, list(zip(prompts, params)))
    finally:
        driver.close()
    assert texts == expected
    assert set(reasons) <= {"stop", "length"}
    assert generate_all(engine, prompts, params, batch=3) == expected  # `parley eval`'s way in


def test_driver_bounds_its_line_cancels_and_shuts_down(engine, reference):
    driver = engine.driver(max_batch=1, max_queue=2)
    try:
        with pytest.raises(TooLarge):  # more than the whole line: it could never be queued
            driver.submit([(HELLO, GREEDY)] * 3, lambda event: None)
        events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        long = SamplingParams(temperature=0, max_new_tokens=200)
        ticket = driver.submit([([{"role": "user", "content": "Go on"}], long)], events.put)
        assert events.get(timeout=120).token is not None  # it is generating, in the only slot
        ticket.cancel()
        # The next request needs that slot: it runs to its end only once the cancelled one has left.
        assert run(driver, [(HELLO, GREEDY)])[0] == [reference.generate(HELLO, GREEDY)]
        driver.drain(0.0)
        with pytest.raises(ShuttingDown):
            driver.submit([(HELLO, GREEDY)], lambda event: None)
    finally:
        driver.close()
    after = []
    while not events.empty():
        after.append(events.get())
    assert len(after) < 199 and all(e.finish_reason is None and e.error is None for e in after)


def test_weights_are_for_local_engines_only(engine, tiny_loaded):
    """Attribution (parley/explain) runs on the weights: a remote engine says so in one line."""
    from parley.errors import ConfigError

    if isinstance(engine, LocalEngine):
        assert engine.weights() is tiny_loaded
    else:
        with pytest.raises(ConfigError, match="attribution needs the model's weights"):
            engine.weights()
