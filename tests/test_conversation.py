"""The rolling buffer: exact token counts against the chat template, and the budget at its edges."""

from __future__ import annotations

import pytest

from parley.conversation import fit_messages
from parley.errors import ContextError
from parley.templates import DEFAULT_TEMPLATE, encode_chat

SYSTEM = {"role": "system", "content": "You are terse."}


def dialogue(turns: int) -> list[dict]:
    messages = [SYSTEM]
    for i in range(turns):
        messages += [
            {"role": "user", "content": f"Question number {i}: what is {i} squared?"},
            {"role": "assistant", "content": f"{i} squared is {i * i}."},
        ]
    return messages + [{"role": "user", "content": "And the last one?"}]


@pytest.fixture(params=["chatml", "default"])
def template(request, embedded_tokenizer):
    return embedded_tokenizer.chat_template if request.param == "chatml" else DEFAULT_TEMPLATE


def count(tokenizer, template, messages):
    return len(encode_chat(tokenizer, template, messages, add_generation_prompt=True))


def test_everything_fits_with_an_exact_count(embedded_tokenizer, template):
    messages = dialogue(3)
    exact = count(embedded_tokenizer, template, messages)
    fitted = fit_messages(messages, embedded_tokenizer, template, budget=exact)
    assert fitted.messages == messages
    assert fitted.tokens == exact
    assert fitted.dropped == [] and fitted.notice is None


def test_one_token_short_drops_exactly_the_oldest_turn(embedded_tokenizer, template):
    messages = dialogue(3)
    exact = count(embedded_tokenizer, template, messages)
    fitted = fit_messages(messages, embedded_tokenizer, template, budget=exact - 1)
    assert fitted.dropped == messages[1:3]  # one whole turn: the question and its answer
    assert fitted.messages == [SYSTEM] + messages[3:]
    assert fitted.tokens == count(embedded_tokenizer, template, fitted.messages) <= exact - 1
    assert "dropped the 1 oldest turn (2 messages)" in fitted.notice


def test_system_stays_and_turns_are_never_split(embedded_tokenizer, template):
    messages = dialogue(6)
    for budget in range(40, count(embedded_tokenizer, template, messages), 7):
        try:
            fitted = fit_messages(messages, embedded_tokenizer, template, budget=budget)
        except ContextError:
            continue
        assert fitted.messages[0] == SYSTEM
        assert fitted.tokens <= budget
        if not fitted.truncated_tokens:
            assert fitted.messages[1]["role"] == "user"  # history starts at a turn boundary
            assert fitted.messages[1:] == messages[len(messages) - len(fitted.messages) + 1 :]


def test_single_oversized_turn_is_cut_from_its_start(embedded_tokenizer, template):
    long = " ".join(f"w{i}" for i in range(400)) + " FINAL QUESTION?"
    messages = [SYSTEM, {"role": "user", "content": "old"}, {"role": "assistant", "content": "reply"},
                {"role": "user", "content": long}]
    fitted = fit_messages(messages, embedded_tokenizer, template, budget=120)
    assert fitted.tokens <= 120
    assert fitted.messages[0] == SYSTEM
    assert fitted.messages[-1]["content"].endswith("FINAL QUESTION?")
    assert len(fitted.messages[-1]["content"]) < len(long)
    assert fitted.truncated_tokens > 0
    assert "cut" in fitted.notice and "dropped" in fitted.notice


def test_system_prompt_alone_over_budget_is_an_error(embedded_tokenizer, template):
    messages = [{"role": "system", "content": "rules " * 200}, {"role": "user", "content": "hi"}]
    with pytest.raises(ContextError, match="system prompt alone"):
        fit_messages(messages, embedded_tokenizer, template, budget=50)
