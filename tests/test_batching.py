"""The continuous-batching driver over a tiny random Llama: one failing sequence ends alone, the waiting
line is bounded honestly (cancelled requests leave it, an oversized request is refused outright, and a
full line turns work away before tokenizing it)."""

from __future__ import annotations

import queue

import pytest

from parley.batching import Busy, Event, TooLarge
from parley.engine import LocalEngine, SamplingParams
from parley.errors import ContextError

HELLO = [{"role": "user", "content": "Say hello."}]
LONG = SamplingParams(temperature=0, max_new_tokens=200)


class Unchecked(SamplingParams):
    """Parameters past validation, standing in for a gap in `check()`."""

    def check(self):
        return self


@pytest.fixture
def engine(llama_loaded):
    return LocalEngine(llama_loaded)


def collect(events: queue.SimpleQueue, n: int) -> tuple[list[str], list[Event]]:
    """Each choice's text and closing event, once all `n` have closed."""
    texts, closing = [""] * n, [None] * n
    while None in closing:
        event = events.get(timeout=120)
        if event.token is not None:
            texts[event.index] += event.token.text
        else:
            closing[event.index] = event
    return texts, closing


def test_a_failing_sequence_ends_alone_and_the_others_are_unchanged(engine):
    good = [SamplingParams(temperature=0.8, seed=s, max_new_tokens=12) for s in (1, 2)]
    alone = [engine.generate(HELLO, p) for p in good]
    failing = Unchecked(top_logprobs=10**7, max_new_tokens=12)  # torch.topk raises: k beyond the vocabulary
    driver = engine.driver(max_batch=4, max_queue=8)
    try:
        events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        driver.submit([(HELLO, good[0]), (HELLO, failing), (HELLO, good[1])], events.put)  # one batch
        texts, closing = collect(events, 3)
        assert isinstance(closing[1].error, RuntimeError) and texts[1] == ""
        assert [texts[0], texts[2]] == alone
        assert [closing[0].error, closing[2].error] == [None, None]
        assert driver.active == 0
    finally:
        driver.close()


def test_a_cancelled_waiting_request_leaves_the_line(engine):
    driver = engine.driver(max_batch=1, max_queue=1)
    try:
        running: queue.SimpleQueue[Event] = queue.SimpleQueue()
        first = driver.submit([(HELLO, LONG)], running.put)
        assert running.get(timeout=120).token is not None  # it holds the only slot
        waiting = driver.submit([(HELLO, LONG)], lambda event: None)
        assert driver.waiting == 1
        waiting.cancel()  # its client went away before it started
        assert driver.waiting == 0
        driver.submit([(HELLO, LONG)], lambda event: None).cancel()  # its place is free again
        first.cancel()
    finally:
        driver.close()


def test_a_request_larger_than_the_line_is_refused_not_busy(engine):
    driver = engine.driver(max_batch=1, max_queue=2)
    try:
        with pytest.raises(TooLarge, match="3 sequences but at most 2"):
            driver.submit([(HELLO, LONG)] * 3, lambda event: None)
    finally:
        driver.close()


def test_a_full_line_turns_work_away_before_tokenizing_it(engine):
    driver = engine.driver(max_batch=1, max_queue=1)
    too_long = "word " * (engine.context_window + 10)
    try:
        running: queue.SimpleQueue[Event] = queue.SimpleQueue()
        first = driver.submit([(HELLO, LONG)], running.put)
        assert running.get(timeout=120).token is not None
        second = driver.submit([(HELLO, LONG)], lambda event: None)
        with pytest.raises(Busy):  # not ContextError: the prompt was never tokenized
            driver.submit([(too_long, LONG)], lambda event: None)
        second.cancel()
        with pytest.raises(ContextError):  # with room in the line it is tokenized, and refused for its length
            driver.submit([(too_long, LONG)], lambda event: None)
        assert driver.waiting == 0  # the place it held while tokenizing is free again
        first.cancel()
    finally:
        driver.close()
