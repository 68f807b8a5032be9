"""The rolling buffer: exact token counts against the chat template, and the budget at its edges."""

from __future__ import annotations

import pytest

from parley.conversation import Fitted, fit_messages
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


def test_single_oversized_turn_keeps_its_start_and_end_and_cuts_its_middle(embedded_tokenizer, template):
    long = "Summarize this: " + " ".join(f"w{i}" for i in range(400)) + " FINAL QUESTION?"
    messages = [SYSTEM, {"role": "user", "content": "old"}, {"role": "assistant", "content": "reply"},
                {"role": "user", "content": long}]
    fitted = fit_messages(messages, embedded_tokenizer, template, budget=120)
    assert fitted.tokens <= 120
    assert fitted.messages[0] == SYSTEM
    kept = fitted.messages[-1]["content"]
    assert kept.startswith("Summarize this: w0 w1") and kept.endswith("w399 FINAL QUESTION?")  # the instruction stays
    assert f"[… {fitted.truncated_tokens} tokens cut …]" in kept and "w200 " not in kept
    assert fitted.truncated_tokens > 0
    assert f"cut {fitted.truncated_tokens} tokens from the middle of the last message" in fitted.notice
    assert "dropped" in fitted.notice


def test_system_prompt_alone_over_budget_is_an_error(embedded_tokenizer, template):
    messages = [{"role": "system", "content": "rules " * 200}, {"role": "user", "content": "hi"}]
    with pytest.raises(ContextError, match="system prompt alone"):
        fit_messages(messages, embedded_tokenizer, template, budget=50)


def fit_one_turn_at_a_time(messages, tokenizer, template, budget):
    """The rule as first written: drop the oldest turn and re-render until the rest fits."""
    system = [m for m in messages if m["role"] == "system"]
    rest = messages[len(system):]
    starts = [i for i, m in enumerate(rest) if m["role"] == "user"]
    for start in starts:
        kept = system + rest[start:]
        if count(tokenizer, template, kept) <= budget or start == starts[-1]:
            return fit_messages(kept, tokenizer, template, budget), rest[:start]


def varied_dialogue(turns: int) -> list[dict]:
    messages = [SYSTEM]
    for i in range(turns):  # turns of uneven length, so the cut lands at many places
        messages += [{"role": "user", "content": f"question {i} " + "why " * (i * 7 % 23)},
                     {"role": "assistant", "content": "because " * (i * 5 % 17) + f"answer {i}"}]
    return messages


def test_the_fit_is_the_one_turn_at_a_time_rule(embedded_tokenizer, template):
    messages = varied_dialogue(30)
    total = count(embedded_tokenizer, template, messages)
    for budget in list(range(60, total + 20, 37)) + [total, total - 1]:
        fitted = fit_messages(messages, embedded_tokenizer, template, budget=budget)
        expected, dropped = fit_one_turn_at_a_time(messages, embedded_tokenizer, template, budget)
        expected = Fitted(expected.messages, expected.tokens, dropped, expected.truncated_tokens)
        assert fitted == expected, budget
        assert fitted.notice == expected.notice


def test_a_long_history_is_fitted_in_a_logarithmic_number_of_renders(embedded_tokenizer, template, monkeypatch):
    import parley.conversation

    renders = []
    real = parley.conversation.encode_chat

    def counting(*args, **kwargs):
        renders.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(parley.conversation, "encode_chat", counting)
    messages = varied_dialogue(400)
    fitted = fit_messages(messages, embedded_tokenizer, template, budget=700)
    assert fitted.dropped and fitted.tokens <= 700 and fitted.messages[-1] == messages[-1]
    # One render of everything, then galloping and bisecting over 400 turns: about 2 * log2(400).
    assert len(renders) <= 2 * 9 + 2, len(renders)
