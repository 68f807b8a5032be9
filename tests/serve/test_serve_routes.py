"""The routes beyond chat and completions, through the official openai SDK against a real server on
127.0.0.1 over the tiny random Llama: models.retrieve, echo + logprobs (prompt scoring), embeddings and
the stateless Responses API."""

from __future__ import annotations

import base64
import struct

import httpx
import numpy as np
import openai
import pytest
import torch
from pydantic import BaseModel, ConfigDict, Field

from parley import backend
from parley.engine import LocalEngine

PROMPT = "The quick brown fox jumps"


def test_models_retrieve_gives_the_served_model(client):
    card = client.models.retrieve("tiny")
    assert card.id == "tiny" and card.object == "model"
    assert "mean-pooled" in card.model_extra["embeddings"]  # says where embeddings come from


def test_models_retrieve_of_another_id_is_a_404(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("gpt-4o")
    assert caught.value.body["param"] == "model" and "tiny" in caught.value.body["message"]


def _direct_logprobs(loaded, text: str) -> tuple[list[int], list[float]]:
    """The prompt's token logprobs straight from the model: log_softmax of its logits."""
    ids = loaded.tokenizer(text)["input_ids"]
    with torch.no_grad():
        logprobs = loaded.model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
    return ids, [float(logprobs[t, ids[t + 1]]) for t in range(len(ids) - 1)]


def test_engine_score_matches_the_model(tiny_loaded):
    ids, expected = _direct_logprobs(tiny_loaded, PROMPT)
    scored = LocalEngine(tiny_loaded).score(PROMPT, top=3)
    assert [s.id for s in scored] == ids
    assert scored[0].logprob is None and scored[0].top == []
    assert [s.logprob for s in scored[1:]] == pytest.approx(expected, abs=1e-4)
    assert all(len(s.top) == 3 and s.top[0][1] >= s.logprob - 1e-6 for s in scored[1:])


def test_echo_with_max_tokens_0_scores_the_prompt(client, tiny_loaded):
    """The log-likelihood pattern of evaluation harnesses: the prompt's own logprobs, nothing generated."""
    ids, expected = _direct_logprobs(tiny_loaded, PROMPT)
    reply = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=0, echo=True, logprobs=2)
    (choice,) = reply.choices
    assert choice.text == PROMPT and choice.finish_reason == "length"
    lp = choice.logprobs
    assert "".join(lp.tokens) == PROMPT and len(lp.tokens) == len(ids)
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert lp.token_logprobs[1:] == pytest.approx(expected, abs=1e-4)
    assert all(len(top) == 2 for top in lp.top_logprobs[1:])
    assert lp.text_offset == [len("".join(lp.tokens[:i])) for i in range(len(ids))]
    assert reply.usage.prompt_tokens == len(ids) and reply.usage.completion_tokens == 0


@pytest.mark.parametrize("stream", [False, True])
def test_echo_puts_the_prompt_before_the_completion(client, stream):
    args = dict(model="tiny", prompt=PROMPT, max_tokens=5, temperature=0, logprobs=1)
    plain = client.completions.create(**args).choices[0]
    if stream:
        chunks = [c.choices[0] for c in client.completions.create(**args, echo=True, stream=True) if c.choices]
        text = "".join(c.text for c in chunks)
        tokens = [t for c in chunks if c.logprobs for t in c.logprobs.tokens]
        offsets = [o for c in chunks if c.logprobs for o in c.logprobs.text_offset]
    else:
        echoed = client.completions.create(**args, echo=True).choices[0]
        text, tokens, offsets = echoed.text, echoed.logprobs.tokens, echoed.logprobs.text_offset
    assert text == PROMPT + plain.text
    assert tokens[-len(plain.logprobs.tokens):] == plain.logprobs.tokens
    assert offsets[-len(plain.logprobs.tokens):] == [len(PROMPT) + o for o in plain.logprobs.text_offset]


def test_max_tokens_0_without_echo_is_a_400(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="tiny", prompt=PROMPT, max_tokens=0)
    assert caught.value.body["param"] == "max_tokens"


def test_scoring_a_prompt_over_the_window_names_the_prompt(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="tiny", prompt="word " * 1100, max_tokens=0, echo=True, logprobs=0)
    assert caught.value.body["param"] == "prompt" and "1024" in caught.value.body["message"]


def test_a_remote_model_refuses_to_score(server):
    remote = backend.open("openai:tiny", base_url=server[0] + "/v1")
    with pytest.raises(Exception, match="forward pass"):
        remote.score(PROMPT)


@pytest.mark.parametrize("encoding", [{}, {"encoding_format": "float"}])
def test_embeddings_are_the_models_pooled_states(client, tiny_loaded, encoding):
    """Left to itself the SDK asks for base64 and decodes it; both encodings give the same unit vectors."""
    texts = [PROMPT, "Hello there"]
    reply = client.embeddings.create(model="tiny", input=texts, **encoding)
    for item, text in zip(reply.data, texts):
        ids = tiny_loaded.tokenizer(text)["input_ids"]
        with torch.no_grad():
            states = tiny_loaded.model(torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0]
        expected = torch.nn.functional.normalize(states.mean(0), dim=0).numpy()
        assert np.allclose(item.embedding, expected, atol=1e-5)
    assert [d.index for d in reply.data] == [0, 1]
    total = sum(len(tiny_loaded.tokenizer(t)["input_ids"]) for t in texts)
    assert reply.usage.prompt_tokens == total == reply.usage.total_tokens


def test_embeddings_take_token_ids_and_base64_over_http(server, tiny_loaded):
    ids = tiny_loaded.tokenizer(PROMPT)["input_ids"]
    body = httpx.post(server[0] + "/v1/embeddings", json={"input": ids, "encoding_format": "base64"}).json()
    raw = base64.b64decode(body["data"][0]["embedding"])
    vector = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert len(vector) == tiny_loaded.model.config.hidden_size
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
    assert body["usage"]["prompt_tokens"] == len(ids)


@pytest.mark.parametrize("args, param", [
    ({"input": ["x"] * 65}, "input"),
    ({"input": []}, "input"),
    ({"input": [""]}, "input"),
    ({"input": "word " * 1100}, "input"),  # over the 1024-token context window
    ({"input": [0, 10**9]}, "input"),  # not a token id
    ({"input": "x", "dimensions": 8}, "dimensions"),
    ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
    ({"input": "x", "model": "other"}, "model"),
])
def test_bad_embedding_requests_name_the_field(server, args, param):
    answer = httpx.post(server[0] + "/v1/embeddings", json=args)
    assert answer.status_code in (400, 404) and answer.json()["error"]["param"] == param


def test_responses_create_replies_with_the_chat_reply(client):
    args = dict(model="tiny", instructions="Be brief.", input="Say hello.", max_output_tokens=8, temperature=0)
    response = client.responses.create(**args)
    chat = client.chat.completions.create(
        model="tiny", messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello."}],
        max_tokens=8, temperature=0)
    assert response.output_text == chat.choices[0].message.content
    assert response.usage.input_tokens == chat.usage.prompt_tokens
    assert response.usage.output_tokens == chat.usage.completion_tokens
    assert response.status == ("incomplete" if chat.choices[0].finish_reason == "length" else "completed")
    assert response.store is False


def test_responses_take_a_list_of_messages_with_input_text_parts(client):
    response = client.responses.create(model="tiny", max_output_tokens=6, temperature=0, input=[
        {"role": "user", "content": [{"type": "input_text", "text": "Say hello."}]}])
    text = client.responses.create(model="tiny", max_output_tokens=6, temperature=0, input="Say hello.").output_text
    assert response.output_text == text


def test_responses_stream_events_in_order(client):
    args = dict(model="tiny", input="Say hello.", max_output_tokens=10, temperature=0, top_p=0.9)
    whole = client.responses.create(**args)
    with client.responses.stream(**args) as stream:
        events = list(stream)
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          f"response.{whole.status}"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == whole.output_text
    # As OpenAI does, a reply cut by max_output_tokens ends with response.incomplete, not .completed
    assert events[-1].response.output_text == whole.output_text
    assert events[-1].response.usage.output_tokens == whole.usage.output_tokens


class Event(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=12)
    hours: int = Field(ge=0, le=24)


def test_responses_text_format_json_schema(client):
    response = client.responses.create(model="tiny", input="The event?", max_output_tokens=100, temperature=1.0,
                                       text={"format": {"type": "json_schema", "name": "event",
                                                        "schema": Event.model_json_schema()}})
    Event.model_validate_json(response.output_text)
    parsed = client.responses.parse(model="tiny", input="The event?", max_output_tokens=100, text_format=Event)
    assert isinstance(parsed.output_parsed, Event)
    with client.responses.stream(model="tiny", input="The event?", max_output_tokens=100, text_format=Event) as stream:
        final = stream.get_final_response()  # needs response.completed: the JSON ended the reply
    assert isinstance(final.output_parsed, Event)


@pytest.mark.parametrize("args, param", [
    ({"previous_response_id": "resp_1"}, "previous_response_id"),
    ({"store": True}, "store"),
    ({"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "integr"}}}}, "text.format.schema"),
])
def test_responses_refusals_name_the_field(client, args, param):
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="tiny", input="Hi", max_output_tokens=4, **args)
    assert caught.value.body["param"] == param


def test_nothing_is_stored(server, client):
    before = httpx.get(server[0] + "/v1/conversations").json()["data"]
    client.responses.create(model="tiny", input="Hi", max_output_tokens=4, store=False)
    assert httpx.get(server[0] + "/v1/conversations").json()["data"] == before
