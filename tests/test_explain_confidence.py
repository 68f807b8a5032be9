"""The shared confidence maths (parley/explain/confidence.py): buckets, entropy, least-certain ranking."""

from __future__ import annotations

import math
import re
from pathlib import Path

from parley.explain.confidence import BUCKETS, ReplyToken, bucket, entropy, least_certain, why_lines

ln = math.log


def test_buckets_follow_the_thresholds():
    assert [bucket(ln(p)) for p in (1.0, 0.8, 0.79, 0.5, 0.49, 0.2, 0.19, 1e-9)] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert bucket(math.nan) == 0  # unknown: left uncoloured


def test_the_page_uses_the_same_thresholds():
    app = (Path(__file__).resolve().parents[1] / "parley" / "serve" / "web" / "app.js").read_text()
    found = re.search(r"CONFIDENCE_BUCKETS = \[([^\]]*)\]", app)
    assert found and tuple(float(x) for x in found[1].split(",")) == BUCKETS


def test_entropy_counts_the_missing_mass_as_one_outcome():
    assert entropy([("a", ln(1.0))]) == 0
    assert math.isclose(entropy([("a", ln(0.5)), ("b", ln(0.5))]), ln(2))
    assert math.isclose(entropy([("a", ln(0.5))]), ln(2))  # the other half is one outcome
    quarter = [(c, ln(0.25)) for c in "abcd"]
    assert math.isclose(entropy(quarter), ln(4))


def test_least_certain_ranks_by_probability_then_entropy():
    tokens = [ReplyToken(0, "a", ln(0.9)), ReplyToken(1, "b", ln(0.1), [("x", ln(0.5))]),
              ReplyToken(2, "c", ln(0.1), [(c, ln(0.2)) for c in "yzwv"]), ReplyToken(3, "d", math.nan),
              ReplyToken(4, "e", ln(0.4))]
    assert [t.index for t in least_certain(tokens, 3)] == [2, 1, 4]
    lines = why_lines(tokens, 2)
    assert lines[0] == "the 2 least certain of 5 tokens:"
    assert lines[1].split()[:3] == ["#3", "'c'", "10.0%"]
    assert lines[2].strip() == "instead: 'y' 20.0% · 'z' 20.0% · 'w' 20.0% · 'v' 20.0%"  # ln 5 nats > ln 2
    assert why_lines([]) == ["no token probabilities for this reply"]


def test_a_token_that_released_no_text_is_named_by_its_alternative():
    from parley.engine import Token

    end = ReplyToken.of(Token(2, "", ln(0.7), [("<|im_end|>", ln(0.7)), (" It", ln(0.1))], [2, 9]), 4)
    assert end.text == "" and end.piece == "<|im_end|>"
    assert "'<|im_end|>'" in why_lines([end])[1]
    assert ReplyToken.of(Token(5, " Paris", ln(0.9), [(" Paris", ln(0.9))], [5]), 0).piece is None
