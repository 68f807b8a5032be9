"""The OpenAI-compatible routes: POST /v1/chat/completions, POST /v1/completions, GET /v1/models.

Request and response shapes follow OpenAI's, so the official clients work unchanged:
`messages`/`prompt`, `model`, `temperature`, `top_p`, `max_tokens` (or `max_completion_tokens`),
`stop`, `seed`, `n`, `stream` (+ `stream_options.include_usage`), `logprobs`/`top_logprobs`, and
`usage` counts, `response_format` (`text`, `json_object`, `json_schema` with or without `strict`:
either way the reply is decoded under the schema's grammar, so it parses and validates; see
parley/constraints.py), `presence_penalty`/`frequency_penalty` (OpenAI's formula) and `logit_bias`.
Extensions, as in vLLM: `top_k`, `repetition_penalty`, and `response_format` on /v1/completions too.
What happens to every field the official SDK sends is one table, openai_fields.FIELDS: honoured,
accepted without effect (`user`, `metadata`, `store`, ...), or refused with a 400 naming it; unknown
extra fields are accepted, as OpenAI's are. Image, audio and file content parts are a 400 that says so.

Rules: `max_tokens` is capped at the server's `--max-tokens`; an explicit `max_tokens` that does not
fit beside the prompt, or a prompt over the context window, is a 400 naming both lengths (never a
silent cut). `n` choices are n sequences seeded seed, seed+1, ... . A request of more sequences
(prompts x n) than `--max-queue` is a 400 naming `n` (or `prompt`): it could never be queued. A
`model` other than the served one is a 404, as OpenAI does.

Logprobs: each token's `bytes` are its own (a character split over two tokens gives each its slice, and
`token` shows U+FFFD for a part of a character); `text_offset` counts the characters those bytes
decode to, so it points at each token even while text is held back for a possible stop string.
"""

from __future__ import annotations

import codecs
import dataclasses
import secrets
import time
from typing import ClassVar, Literal

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from parley.batching import Event
from parley.constraints import JSON_OBJECT
from parley.engine import ParamError, SamplingParams
from parley.serve.api_errors import ApiError, translate
from parley.serve.openai_fields import refuse
from parley.serve.streaming import check_room, first_event, follow, sse, submit

router = APIRouter(prefix="/v1", tags=["openai"])
MAX_N = 8
MAX_PROMPTS = 16
# Content parts this text-only server refuses, by type, with what to call them in the 400.
MEDIA_PARTS = {"image_url": "images", "input_image": "images", "image": "images", "input_audio": "audio inputs",
               "file": "files", "input_file": "files"}


class _Strict(BaseModel):
    # strict: "0.5" is not a number and true is not 1; unknown fields are ignored, as OpenAI's are.
    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)


class StreamOptions(_Strict):
    include_usage: bool = False


class JsonSchemaFormat(_Strict):
    name: str = Field(max_length=64)
    description: str | None = None
    schema_: dict | None = Field(None, alias="schema")  # None: any JSON object
    strict: bool | None = None  # the reply is constrained to the schema either way


class ResponseFormat(_Strict):
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


class Sampling(_Strict):
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
    logit_bias: dict[str, float] | None = None  # token id (as JSON spells it, a string) -> bias; checked by SamplingParams
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


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

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
        content = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content or [])
        return {"role": "system" if self.role == "developer" else self.role, "content": content}


class ChatRequest(Sampling):
    route: ClassVar[str] = "chat"
    messages: list[Message] = Field(min_length=1, max_length=10_000)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list | None = None


class CompletionRequest(Sampling):
    route: ClassVar[str] = "completions"
    prompt: str | list[str] = Field(min_length=1)
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1, le=MAX_N)


@router.get("/models")
async def models(request: Request):
    """The one model this server serves, with its context window."""
    state = request.app.state
    return {"object": "list", "data": [{
        "id": state.served_name, "object": "model", "created": 0, "owned_by": "parley",
        "max_model_len": state.engine.context_window,
    }]}


@router.post("/chat/completions")
async def chat_completions(body: ChatRequest, request: Request):
    """Reply to `messages`, rendered with the model's own chat template."""
    _check_model(request, body.model)
    if body.tools:
        raise ApiError(400, "tools are not supported by this server", param="tools")
    if body.top_logprobs and not body.logprobs:
        raise ApiError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    max_tokens = body.max_completion_tokens or body.max_tokens
    params = body.params(request, body.top_logprobs or 0, max_tokens)
    messages = [m.plain() for m in body.messages]
    call = _Call(request, "chat.completion", "chatcmpl-", body.logprobs, body.stream_options)
    return await call.run([(messages, p) for p in params], body.n, max_tokens, streaming=body.stream)


@router.post("/completions")
async def completions(body: CompletionRequest, request: Request):
    """Continue `prompt` (a string, or a list of strings: one set of n choices each) as raw text."""
    _check_model(request, body.model)
    if body.echo:
        raise ApiError(400, "echo is not supported by this server", param="echo")
    if body.suffix:
        raise ApiError(400, "suffix (fill-in-the-middle) is not supported by this server", param="suffix")
    if body.best_of not in (None, body.n):
        raise ApiError(400, "best_of must equal n here (no server-side ranking)", param="best_of")
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if len(prompts) > MAX_PROMPTS or any(not p for p in prompts):
        raise ApiError(400, f"prompt: give 1 to {MAX_PROMPTS} non-empty strings", param="prompt")
    params = body.params(request, body.logprobs or 0, body.max_tokens)
    call = _Call(request, "text_completion", "cmpl-", body.logprobs is not None, body.stream_options)
    work = [(prompt, p) for prompt in prompts for p in params]
    return await call.run(work, body.n, body.max_tokens, streaming=body.stream)


def _check_model(request: Request, model: str) -> None:
    served = request.app.state.served_name
    if model and model != served:
        raise ApiError(404, f"the model {model!r} does not exist here: this server serves {served!r}",
                       param="model", code="model_not_found")


class _Choice:
    """What one choice has produced so far."""

    def __init__(self):
        self.text, self.tokens, self.finish_reason = "", 0, None
        self.logprobs: list[_Logprob] = []
        # The tokens' own bytes, decoded as they come: how many characters precede the next token, held-back
        # text and split characters included (a token inside a character points at that character).
        self.chars, self.decoder = 0, codecs.getincrementaldecoder("utf-8")(errors="replace")

    def offset(self, piece: bytes) -> int:
        """Where a token with these bytes starts in the text; remote tokens (no bytes) count released text."""
        if not piece:
            return len(self.text)
        at = self.chars
        self.chars += len(self.decoder.decode(piece))
        return at


@dataclasses.dataclass
class _Logprob:
    """One token's logprobs entry: its own bytes (maybe part of a character), where it starts in the text."""

    piece: bytes
    logprob: float
    top: list[tuple[bytes, float]]  # alternatives (their own bytes, logprob), best first
    offset: int

    @staticmethod
    def of(event: Event, offset: int) -> _Logprob:
        token = event.token
        pieces = event.top_pieces or [text.encode() for text, _ in token.top]  # remote: their text is all there is
        return _Logprob(event.piece, token.logprob, [(p, v) for p, (_, v) in zip(pieces, token.top)], offset)


def _text(piece: bytes) -> str:
    """A token's bytes as JSON text: part of a character shows as U+FFFD (the `bytes` field is exact)."""
    return piece.decode("utf-8", errors="replace")


class _Call:
    """One chat or completion request: queue it, then answer all at once or as a stream."""

    def __init__(self, request: Request, kind: str, prefix: str, logprobs: bool, stream_options):
        self.request, self.kind, self.logprobs = request, kind, logprobs
        self.chat = kind == "chat.completion"
        self.id = prefix + secrets.token_hex(12)
        self.created = int(time.time())
        self.model = request.app.state.served_name
        self.include_usage = bool(stream_options and stream_options.include_usage)

    async def run(self, work, n: int, max_tokens: int | None, streaming: bool):
        """`work`: (prompt, params) per choice, n choices per prompt."""
        limit = self.request.app.state.options.max_queue
        if len(work) > limit:  # it could never be queued (the driver's TooLarge): name the field to lower
            param = "n" if n > 1 else "prompt"
            raise ApiError(400, f"{param}: this request asks for {len(work) // n} prompt(s) × n={n} = {len(work)} "
                                f"sequences but the server queues at most {limit} (--max-queue): lower n or send "
                                "fewer prompts", param=param)
        ticket = await submit(self.request, work, pieces=self.logprobs)
        if max_tokens is not None:  # what the client asked for, after the server's cap
            max_tokens = min(max_tokens, self.request.app.state.options.max_tokens)
        check_room(ticket, max_tokens, self.request.app.state.engine.context_window)
        self.prompt_tokens = sum(ticket.prompt_tokens[::n])  # each prompt counted once, as OpenAI does
        events = follow(ticket, self.request)
        first = await first_event(ticket, events)
        choices = [_Choice() for _ in work]
        if streaming:
            return StreamingResponse(self._stream(first, events, choices), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            if first is not None:
                self._add(choices[first.index], first)
                async for event in events:
                    self._add(choices[event.index], event)
        except Exception as e:
            raise translate(e) from e
        return {"id": self.id, "object": self.kind, "created": self.created, "model": self.model,
                "choices": [self._whole(i, c) for i, c in enumerate(choices)], "usage": self._usage(choices)}

    def _add(self, choice: _Choice, event: Event) -> None:
        if event.token is not None:
            if self.logprobs:
                choice.logprobs.append(_Logprob.of(event, choice.offset(event.piece)))
            choice.text += event.token.text
            choice.tokens += 1
        else:
            choice.finish_reason = event.finish_reason

    def _usage(self, choices: list[_Choice]) -> dict:
        completion = sum(c.tokens for c in choices)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.prompt_tokens + completion}

    def _whole(self, index: int, choice: _Choice) -> dict:
        logprobs = self._logprobs(choice.logprobs) if self.logprobs else None
        if self.chat:
            return {"index": index, "message": {"role": "assistant", "content": choice.text},
                    "logprobs": logprobs, "finish_reason": choice.finish_reason}
        return {"index": index, "text": choice.text, "logprobs": logprobs, "finish_reason": choice.finish_reason}

    def _logprobs(self, entries: list[_Logprob]) -> dict:
        if self.chat:
            return {"content": [
                {"token": _text(e.piece), "logprob": e.logprob, "bytes": list(e.piece),
                 "top_logprobs": [{"token": _text(t), "logprob": v, "bytes": list(t)} for t, v in e.top]}
                for e in entries]}
        return {"tokens": [_text(e.piece) for e in entries], "token_logprobs": [e.logprob for e in entries],
                "top_logprobs": [{_text(t): v for t, v in e.top} for e in entries],
                "text_offset": [e.offset for e in entries]}

    async def _stream(self, first: Event | None, events, choices: list[_Choice]):
        try:
            if self.chat:
                for index in range(len(choices)):
                    yield sse(self._chunk(index, {"role": "assistant", "content": ""}))
            if first is not None:
                yield self._event(choices, first)
            async for event in events:
                yield self._event(choices, event)
            if self.include_usage:
                yield sse({"id": self.id, "object": self._chunk_kind(), "created": self.created,
                           "model": self.model, "choices": [], "usage": self._usage(choices)})
        except Exception as e:  # the response has started: report the failure in-band, as OpenAI does
            error = translate(e)
            yield sse({"error": {"message": error.message, "type": error.type, "code": error.code}})
        yield sse("[DONE]")

    def _chunk_kind(self) -> str:
        return "chat.completion.chunk" if self.chat else "text_completion"

    def _chunk(self, index: int, delta: dict | None = None, text: str = "", logprobs=None, finish=None) -> dict:
        choice = {"index": index}
        if self.chat:
            choice["delta"] = delta or {}
        else:
            choice["text"] = text
        choice.update(logprobs=logprobs, finish_reason=finish)
        return {"id": self.id, "object": self._chunk_kind(), "created": self.created, "model": self.model,
                "choices": [choice]}

    def _event(self, choices: list[_Choice], event: Event) -> str:
        choice = choices[event.index]
        self._add(choice, event)
        if event.token is None:
            return sse(self._chunk(event.index, finish=event.finish_reason))
        logprobs = self._logprobs(choice.logprobs[-1:]) if self.logprobs else None
        if not event.token.text and logprobs is None:
            return ""  # text held back (a partial character or a possible stop string): nothing to send yet
        delta = {"content": event.token.text}
        return sse(self._chunk(event.index, delta=delta, text=event.token.text, logprobs=logprobs))
