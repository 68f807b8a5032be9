"""`parley eval explanations`: what counts as an explanation, the scores against their definition, and
the command end to end on a tiny model over a folder of documented functions."""

from __future__ import annotations

import json

import pytest
from rouge_score import rouge_scorer
from typer.testing import CliRunner

from parley.cli import app
from parley.errors import ConfigError
from parley.eval.explanations import ExplanationsConfig, explanation, requests, score_answers

SOURCE = '''
def area(width, height):
    """Area of a rectangle from its two sides.

    Multiplies rather than adding: a rectangle's area grows with both sides at once."""
    return width * height


def greet(name):
    """Greeting for a person by name, ready to print.

    An f-string keeps the punctuation in one place."""
    return f"Hello, {name}!"


def undocumented(x):
    return x
'''


@pytest.fixture
def pairs(tmp_path):
    (tmp_path / "shapes.py").write_text(SOURCE)
    return f"pairs:{tmp_path}"


@pytest.mark.parametrize("answer, expected", [
    ("```python\nx = 1\n```\n\nThis sets x to one, once.", "This sets x to one, once."),
    ("```python\nx = 1\n```\n\nSets x.", ""),                                     # under min_words
    ("Set x to one, then print it out.", ""),                                      # no code at all
    ("```python\nx = 1\nThis text is inside the unclosed fence.", ""),             # cut by the token limit
    ("First:\n```\na\n```\nthen some words between\n```\nb\n```\nwhy it is b, in five", "why it is b, in five"),
    ("    indented = 'code'\n\nThe indented block counts as code too.", "The indented block counts as code too."),
])
def test_an_explanation_is_enough_words_after_the_last_code_block(answer, expected):
    assert explanation(answer, min_words=5) == expected


def test_requests_are_the_held_out_pairs_and_their_answers_explain(pairs, tmp_path):
    found = requests([pairs], ExplanationsConfig(split="all"))
    assert [where.rsplit(":", 1)[1] for _, _, where in found] == ["2", "9"]  # undocumented() is no pair
    assert all(explanation(reference, 5) for _, reference, _ in found)
    assert len(requests([pairs], ExplanationsConfig(split="all", limit=1))) == 1
    chats = tmp_path / "chat.jsonl"
    chats.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"},
                                              {"role": "assistant", "content": "Hello there, how are you?"}]}) + "\n")
    with pytest.raises(ConfigError, match="no code answer with an explanation.*pairs:DIR"):
        requests([f"chat:{chats}"], ExplanationsConfig(split="all"))
    with pytest.raises(ConfigError, match="--min-words"):
        ExplanationsConfig(min_words=0)


def test_scores_follow_the_definition(pairs):
    config = ExplanationsConfig(split="all")
    found = requests([pairs], config)
    (_, area_ref, _), (greet_request, greet_ref, _) = found
    answers = [area_ref, "```python\ndef greet(name):\n    return name\n```"]  # the reference; code only
    results = score_answers(found, answers, config)
    assert results["metrics"]["explained"] == 0.5 and results["metrics"]["with_code"] == 1.0
    assert results["metrics"]["rougeL"] == pytest.approx(0.5)  # 1 for the reference itself, 0 for none
    assert [r["explanation"] for r in results["replies"]] == [explanation(area_ref, 5), ""]
    # The echo floor: the request's own text scored as if it were the explanation.
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    echo = [scorer.score(explanation(ref, 5), history[-1]["content"])["rougeL"].fmeasure for history, ref, _ in found]
    assert results["details"]["echo_rougeL"] == pytest.approx(sum(echo) / 2) and 0 < echo[1] < 1
    assert "Hello" in greet_ref and greet_request[-1]["role"] == "user"


def test_command_writes_json_and_markdown(tiny_dir, pairs, tmp_path):
    out = tmp_path / "why.json"
    result = CliRunner().invoke(app, ["eval", "explanations", "--model", tiny_dir, "--source", pairs, "--split", "all",
                                      "--max-new-tokens", "4", "--batch", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "explained: 0.0000" in result.output  # four tokens of a random model hold no code block
    results = json.loads(out.read_text())
    assert results["kind"] == "explanations" and results["sources"] == [pairs]
    assert [r["reference"] for r in results["replies"]] == [ref for _, ref, _ in requests([pairs], ExplanationsConfig(split="all"))]
    assert results["metrics"]["rougeL"] == 0.0 and results["details"]["requests"] == 2
    assert "| explained |" in out.with_suffix(".md").read_text()


def test_an_explanation_that_says_the_request_again_counts_as_restated(pairs):
    config = ExplanationsConfig(split="all")
    found = requests([pairs], config)
    (area_request, area_ref, _), (greet_request, _, _) = found
    echoed = "```python\ndef greet(name):\n    return name\n```\n\n" + greet_request[-1]["content"]
    results = score_answers(found, [area_ref, echoed], config)
    assert results["metrics"]["explained"] == 1.0 and results["metrics"]["restated"] == 0.5
    # The reference explains beyond the request: it is not a restatement of it.
    assert explanation(area_ref, 5) not in area_request[-1]["content"]
