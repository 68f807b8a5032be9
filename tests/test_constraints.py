"""Constrained decoding (parley/constraints.py) in the engine, on tiny random models: their replies are
noise, so JSON that parses and matches the schema can only come from the grammar."""

from __future__ import annotations

import json

import pytest

from parley.constraints import JSON_OBJECT
from parley.engine import LocalEngine, ParamError, SamplingParams

CHAT = [{"role": "user", "content": "Describe a person as JSON."}]
# Bounded strings and numbers: an untrained model never chooses to close a string by itself, so an
# unbounded one would run to max_new_tokens (an incomplete reply, finish_reason "length").
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["admin", "user", "guest"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 3},
    },
    "required": ["name", "age", "role", "tags"],
    "additionalProperties": False,
}


def check_person(value: dict) -> None:
    """PERSON's rules, checked by hand (jsonschema is not a dependency)."""
    assert set(value) == {"name", "age", "role", "tags"}
    assert isinstance(value["name"], str) and len(value["name"]) <= 12
    assert type(value["age"]) is int and 0 <= value["age"] <= 120
    assert value["role"] in ("admin", "user", "guest")
    assert isinstance(value["tags"], list) and len(value["tags"]) <= 3
    assert all(isinstance(t, str) and len(t) <= 6 for t in value["tags"])


@pytest.fixture(params=["llama", "gpt2"])
def engine(request, llama_loaded, gpt2_loaded):
    return LocalEngine(llama_loaded if request.param == "llama" else gpt2_loaded)


@pytest.mark.parametrize("temperature, seed", [(0, None), (1.0, 1), (1.0, 2), (1.5, 3)])
def test_a_random_model_replies_with_json_that_matches_the_schema(engine, temperature, seed):
    params = SamplingParams(temperature=temperature, seed=seed, max_new_tokens=200, json_schema=PERSON)
    tokens = list(engine.stream(CHAT, params))
    check_person(json.loads("".join(t.text for t in tokens)))
    # It ended because the JSON was complete, not at the length limit.
    assert len(tokens) < 200


@pytest.mark.parametrize("temperature, seed", [(0, None), (1.0, 4)])
def test_json_object_mode_gives_an_object(llama_loaded, temperature, seed):
    # The tiny Llama closes its object at once, greedily and with this seed (about a third of seeds do);
    # any key it opened would be an unbounded string (see PERSON).
    params = SamplingParams(temperature=temperature, seed=seed, max_new_tokens=100, json_schema=JSON_OBJECT)
    assert isinstance(json.loads(LocalEngine(llama_loaded).generate(CHAT, params)), dict)


def test_a_constrained_sequence_leaves_its_batch_neighbours_alone(engine):
    """The mask is that sequence's alone: an unconstrained neighbour gets exactly its solo tokens."""
    free = SamplingParams(temperature=0.9, seed=5, max_new_tokens=24)
    bound = SamplingParams(temperature=0.9, seed=6, max_new_tokens=200, json_schema=PERSON)
    solo = [t.id for t in engine.stream(CHAT, free)]
    solo_json = engine.generate(CHAT, bound)
    seqs = [engine.start(CHAT, bound), engine.start(CHAT, free)]
    batch = engine.new_batch()
    ids = {id(s): [t.id] for s, t in zip(seqs, batch.add_many(seqs))}
    while batch.seqs:
        for seq in [s for s in batch.seqs if s.done]:
            batch.remove(seq)
        if batch.seqs:
            for seq, token in zip(list(batch.seqs), batch.step()):
                ids[id(seq)].append(token.id)
    assert ids[id(seqs[1])] == solo
    assert seqs[0].text == solo_json and seqs[1].finish_reason == "length"
    check_person(json.loads(seqs[0].text))
    assert seqs[0].finish_reason == "stop"


@pytest.mark.parametrize("schema, part", [
    ({"type": "object", "not": {"required": ["a"]}}, '"not"'),
    ({"type": "object", "properties": {"a": {"type": "strnig"}}}, "strnig"),
    ({"type": "string", "pattern": "(?<=a)b"}, "look-around"),
    ({"$ref": "https://example.com/person.json"}, "example.com"),
    (["not", "an", "object"], "JSON object"),
])
def test_a_schema_the_library_cannot_compile_is_refused_naming_the_part(schema, part):
    with pytest.raises(ParamError, match=part) as caught:
        SamplingParams(json_schema=schema).check()
    assert caught.value.key == "json_schema"


def test_json_schema_from_params_text():
    """/params json_schema={...} in the terminal: JSON text, or none."""
    params = SamplingParams().updated(json_schema='{"type": "object"}')
    assert params.json_schema == {"type": "object"}
    assert params.updated(json_schema="none").json_schema is None
    with pytest.raises(ParamError, match="not"):
        SamplingParams().updated(json_schema='{"not": {}}')
