"""The real embedded SmolLM2 end to end: it answers facts and writes code that parses."""

from __future__ import annotations

import ast
import json
import re

import pytest

from parley.engine import LocalEngine, SamplingParams

pytestmark = pytest.mark.slow


def test_capital_of_france(embedded_model):
    reply = LocalEngine(embedded_model).generate(
        [{"role": "user", "content": "What is the capital of France?"}], SamplingParams(temperature=0, max_new_tokens=32)
    )
    assert "Paris" in reply


def test_writes_a_python_function_that_parses(embedded_model):
    reply = LocalEngine(embedded_model).generate(
        [{"role": "user", "content": "Write a Python function that checks if a number is prime."}],
        SamplingParams(temperature=0, max_new_tokens=300),
    )
    blocks = re.findall(r"```(?:python)?\n(.*?)```", reply, re.S)
    assert blocks, reply
    tree = ast.parse(blocks[0])
    assert any(isinstance(node, ast.FunctionDef) for node in ast.walk(tree))


def test_a_json_schema_reply_validates(embedded_model):
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "country": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "country", "population"],
        "additionalProperties": False,
    }
    tokens = list(LocalEngine(embedded_model).stream(
        [{"role": "user", "content": "What is the capital of France? Answer as JSON with city, country, population."}],
        SamplingParams(temperature=0, max_new_tokens=100, json_schema=schema),
    ))
    value = json.loads("".join(t.text for t in tokens))
    assert set(value) == {"city", "country", "population"}
    assert isinstance(value["city"], str) and isinstance(value["country"], str) and type(value["population"]) is int
    assert "Paris" in value["city"]
    assert len(tokens) < 100  # it ended because the JSON closed
