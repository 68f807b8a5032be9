"""The request bodies of the OpenAI routes (openai_api.py): pydantic models that validate at the edge,
so a bad field is a 400 naming it, and `Sampling.params()`, which turns a request into one
SamplingParams per choice (checked by SamplingParams.check(), the limits every front end shares)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

from fastapi import Request
from pydantic import ConfigDict, Field, field_validator, model_validator

from parley.constraints import JSON_OBJECT
from parley.engine import ParamError, SamplingParams
from parley.serve.api_errors import ApiError
from parley.serve.openai_fields import refuse
from parley.serve.openai_tools import NamedChoice, Strict, Tool, ToolCall

MAX_N = 8
MAX_PROMPTS = 16
# Content parts this text-only server refuses, by type, with what to call them in the 400.
MEDIA_PARTS = {"image_url": "images", "input_image": "images", "image": "images", "input_audio": "audio inputs",
               "file": "files", "input_file": "files"}


class StreamOptions(Strict):
    include_usage: bool = False


class JsonSchemaFormat(Strict):
    name: str = Field(max_length=64)
    description: str | None = None
    schema_: dict | None = Field(None, alias="schema")  # None: any JSON object
    strict: bool | None = None  # the reply is constrained to the schema either way


class ResponseFormat(Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    def schema(self) -> dict | None:
        """The JSON Schema the reply is constrained to (SamplingParams.json_schema); None for text."""
        if self.type == "text":
            return None
        if self.type == "json_object":
            return JSON_OBJECT
        if self.json_schema is None:
            raise ApiError(400, "response_format.json_schema is required when type is json_schema: "
                                "give {\"name\": ..., \"schema\": {...}}", param="response_format.json_schema")
        return JSON_OBJECT if self.json_schema.schema_ is None else self.json_schema.schema_


class Sampling(Strict):
    """The fields both routes share. Fields the SDK sends that are not declared here are kept (extra="allow")
    only so that `openai_fields.refuse` sees them: openai_fields.FIELDS says what happens to each."""

    model_config = ConfigDict(extra="allow")
    route: ClassVar[str]  # "chat" or "completions": its column in openai_fields.FIELDS

    model: str = Field("", max_length=512)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0, le=100_000)
    repetition_penalty: float | None = Field(None, gt=0, le=10)
    max_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    n: int = Field(1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None  # token id (a string in JSON) -> bias; checked by SamplingParams
    user: str | None = None
    response_format: ResponseFormat | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, value):
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("up to 4 non-empty strings")
        return stops

    def params(self, request: Request, top_logprobs: int, max_tokens: int | None) -> list[SamplingParams]:
        """One SamplingParams per choice; seeds seed, seed+1, ..."""
        refuse(self.route, {**(self.model_extra or {}), **{k: getattr(self, k) for k in self.model_fields_set}})
        cap = request.app.state.options.max_tokens
        base = SamplingParams(
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=self.top_k or 0,
            repetition_penalty=self.repetition_penalty or 1.0,
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            max_new_tokens=min(max_tokens or cap, cap),
            stop=list(self.stop or []),
            top_logprobs=top_logprobs,
            json_schema=self.response_format.schema() if self.response_format else None,
        )
        try:  # here, not in the driver, so a schema it cannot compile names the API's field
            base = base.updated(logit_bias=self.logit_bias or {})  # ids from strings, and check()ed
        except ParamError as e:
            if e.key != "json_schema":
                raise  # a 400 naming e.key (api_errors.translate), e.g. logit_bias
            raise ApiError(400, f"response_format.json_schema.schema: {e}",
                           param="response_format.json_schema.schema") from None
        seeds = [None if self.seed is None else self.seed + i for i in range(self.n)]
        return [dataclasses.replace(base, seed=seed, stop=list(base.stop)) for seed in seeds]


class TextPart(Strict):
    type: Literal["text"]
    text: str


class Message(Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None  # assistant messages only
    tool_call_id: str | None = None  # tool messages: the call this result answers

    @model_validator(mode="after")
    def _tool_fields(self):
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        if (self.role == "tool") != (self.tool_call_id is not None):
            raise ValueError("a tool message needs tool_call_id (and only a tool message has one)")
        return self

    @field_validator("content", mode="before")
    @classmethod
    def _text_only(cls, content):
        # Said before the union is tried: otherwise the error is "Input should be a valid string".
        for part in content if isinstance(content, list) else []:
            kind = part.get("type") if isinstance(part, dict) else None
            if isinstance(kind, str) and kind in MEDIA_PARTS:
                raise ValueError(f"{MEDIA_PARTS[kind]} are not supported: this model reads text only; "
                                 "send text parts ({\"type\": \"text\", ...})")
        return content

    def plain(self) -> dict:
        """The message as parley/tools.py reads it: role, text content, OpenAI-shaped tool fields."""
        content = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content or [])
        message = {"role": "system" if self.role == "developer" else self.role, "content": content}
        if self.tool_calls:
            message["tool_calls"] = [c.model_dump() for c in self.tool_calls]
        if self.tool_call_id is not None:  # some tool-aware templates write it beside the result
            message["tool_call_id"] = self.tool_call_id
        return message


class ChatRequest(Sampling):
    route: ClassVar[str] = "chat"
    messages: list[Message] = Field(min_length=1, max_length=10_000)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[Tool] | None = Field(None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedChoice | None = None
    parallel_tool_calls: bool | None = None


class CompletionRequest(Sampling):
    route: ClassVar[str] = "completions"
    prompt: str | list[str] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=0)  # 0: score the prompt alone (with echo)
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1, le=MAX_N)
