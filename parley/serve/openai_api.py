"""The OpenAI-compatible routes: POST /v1/chat/completions, POST /v1/completions, GET /v1/models and
/v1/models/{id} (embeddings_api.py and responses_api.py hold /v1/embeddings and /v1/responses).

Request and response shapes follow OpenAI's, so the official clients work unchanged:
`messages`/`prompt`, `model`, `temperature`, `top_p`, `max_tokens` (or `max_completion_tokens`),
`stop`, `seed`, `n`, `stream` (+ `stream_options.include_usage`), `logprobs`/`top_logprobs`, and
`usage` counts, `response_format` (`text`, `json_object`, `json_schema` with or without `strict`:
either way the reply is decoded under the schema's grammar, so it parses and validates; see
parley/constraints.py), `presence_penalty`/`frequency_penalty` (OpenAI's formula), `logit_bias`, and
tool calling: `tools`, `tool_choice`, `parallel_tool_calls`, histories with assistant `tool_calls` and
`tool` results (parley/serve/openai_tools.py; the format the model sees is parley/tools.py's).
Extensions, as in vLLM: `top_k`, `repetition_penalty`, and `response_format` on /v1/completions too.
What happens to every field the official SDK sends is one table, openai_fields.FIELDS: honoured,
accepted without effect (`user`, `metadata`, `store`, ...), or refused with a 400 naming it; unknown
extra fields are accepted, as OpenAI's are. Image, audio and file content parts are a 400 that says so.

Rules: `max_tokens` is capped at the server's `--max-tokens`; an explicit `max_tokens` that does not
fit beside the prompt, or a prompt over the context window, is a 400 naming both lengths (never a
silent cut). `n` choices are n sequences seeded seed, seed+1, ... . A request of more sequences
(prompts x n) than `--max-queue` is a 400 naming `n` (or `prompt`): it could never be queued. A
`model` other than the served one is a 404, as OpenAI does.

Echo (/v1/completions): `echo: true` starts each choice's text with its prompt; with `logprobs`, the
prompt's tokens come first in `tokens`, `token_logprobs`, `top_logprobs` and `text_offset`, scored by the
model's own forward pass (Engine.score), the first token's logprob and alternatives null, as OpenAI and
vLLM give them. `max_tokens: 0` with echo returns the prompt's logprobs alone (finish_reason "length"):
the log-likelihood pattern of evaluation harnesses (lm-evaluation-harness). A remote model cannot score
prompts: echo with logprobs is then a 400.

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
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from parley.batching import Event
from parley import tools as tool_format
from parley.constraints import JSON_OBJECT
from parley.engine import ParamError, SamplingParams
from parley.serve.api_errors import ApiError, translate
from parley.serve.openai_fields import refuse
from parley.serve.openai_tools import NamedChoice, Tool, ToolCall, ToolPlan, call_deltas, check_history
from parley.serve.streaming import beside, check_room, first_event, follow, sse, submit

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


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class Message(_Strict):
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


@router.get("/models")
async def models(request: Request):
    """The one model this server serves, with its context window."""
    return {"object": "list", "data": [_card(request)]}


@router.get("/models/{model_id:path}")
async def model(model_id: str, request: Request):
    """The served model's card; any other id is a 404 (ids may hold slashes: hub ids, paths)."""
    _check_model(request, model_id)
    return _card(request)


def _card(request: Request) -> dict:
    state = request.app.state
    return {"id": state.served_name, "object": "model", "created": 0, "owned_by": "parley",
            "max_model_len": state.engine.context_window,
            "embeddings": "the served model's last hidden states, mean-pooled and normalised (POST /v1/embeddings)"}


@router.post("/chat/completions")
async def chat_completions(body: ChatRequest, request: Request):
    """Reply to `messages`, rendered with the model's own chat template."""
    _check_model(request, body.model)
    if body.top_logprobs and not body.logprobs:
        raise ApiError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    plan = ToolPlan(body.tools, body.tool_choice, body.parallel_tool_calls)
    check_history(body.messages)
    if plan.active and body.logprobs:
        raise ApiError(400, "logprobs are not supported together with tools", param="logprobs")
    if plan.schema is not None and body.response_format and body.response_format.type != "text":
        raise ApiError(400, f"response_format cannot be combined with tool_choice {plan.mode!r}: both constrain the "
                            "reply", param="response_format")
    max_tokens = body.max_completion_tokens or body.max_tokens
    params = body.params(request, body.top_logprobs or 0, max_tokens)
    if plan.schema is not None:  # the forced call's grammar (each tool's parameters compiled in ToolPlan)
        params = [dataclasses.replace(p, json_schema=plan.schema) for p in params]
    messages = plan.messages([m.plain() for m in body.messages])
    call = _Call(request, "chat.completion", "chatcmpl-", body.logprobs, body.stream_options, plan)
    return await call.run([(messages, p) for p in params], body.n, max_tokens, streaming=body.stream)


@router.post("/completions")
async def completions(body: CompletionRequest, request: Request):
    """Continue `prompt` (a string, or a list of strings: one set of n choices each) as raw text."""
    _check_model(request, body.model)
    if body.max_tokens == 0 and not body.echo:
        raise ApiError(400, "max_tokens: 0 asks for no reply, which only makes sense with echo: true "
                            "(to score the prompt itself)", param="max_tokens")
    if body.suffix:
        raise ApiError(400, "suffix (fill-in-the-middle) is not supported by this server", param="suffix")
    if body.best_of not in (None, body.n):
        raise ApiError(400, "best_of must equal n here (no server-side ranking)", param="best_of")
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if len(prompts) > MAX_PROMPTS or any(not p for p in prompts):
        raise ApiError(400, f"prompt: give 1 to {MAX_PROMPTS} non-empty strings", param="prompt")
    params = body.params(request, body.logprobs or 0, body.max_tokens or None)
    call = _Call(request, "text_completion", "cmpl-", body.logprobs is not None, body.stream_options)
    if body.echo:
        await call.echo_prompts(prompts, body.logprobs, scored=body.logprobs is not None or body.max_tokens == 0)
    if body.max_tokens == 0:
        return call.prompts_only(body.n, streaming=body.stream)
    work = [(prompt, p) for prompt in prompts for p in params]
    return await call.run(work, body.n, body.max_tokens, streaming=body.stream)


def _check_model(request: Request, model: str) -> None:
    """A 404 for a model other than the served one ("" means the served one)."""
    served = request.app.state.served_name
    if model and model != served:
        raise ApiError(404, f"the model {model!r} does not exist here: this server serves {served!r}",
                       param="model", code="model_not_found")


class _Choice:
    """What one choice has produced so far."""

    def __init__(self):
        self.text, self.tokens, self.finish_reason = "", 0, None
        self.released = 0  # characters of text sent as content while streaming with tools (the rest is held)
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
    logprob: float | None  # None: a prompt's first token (echo), which nothing predicts
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

    def __init__(self, request: Request, kind: str, prefix: str, logprobs: bool, stream_options,
                 tools: ToolPlan | None = None):
        self.request, self.kind, self.logprobs = request, kind, logprobs
        self.tools = tools if tools is not None and tools.active else None
        self.chat = kind == "chat.completion"
        self.id = prefix + secrets.token_hex(12)
        self.created = int(time.time())
        self.model = request.app.state.served_name
        self.include_usage = bool(stream_options and stream_options.include_usage)
        self.echoed: list[tuple[str, list[_Logprob]]] = []  # per prompt (echo): its text, its tokens' logprobs
        self.n = 1

    async def echo_prompts(self, prompts: list[str], top: int | None, scored: bool) -> None:
        """echo: each reply starts with its prompt; `scored`: with the prompt tokens' logprobs from the
        model's own forward pass (Engine.score), the first token's null, as OpenAI and vLLM give them."""
        engine = self.request.app.state.engine
        for prompt in prompts:
            entries = []
            if scored:
                choice = _Choice()  # only for its offsets, counted the way the reply's are
                entries = [_Logprob(s.piece, s.logprob, s.top, choice.offset(s.piece))
                           for s in await beside(self.request, "prompt", engine.score, prompt, top or 0)]
            self.echoed.append((prompt, entries))
        self.prompt_tokens = sum(len(entries) for _, entries in self.echoed)

    def prompts_only(self, n: int, streaming: bool):
        """max_tokens 0 with echo (log-likelihood evaluation): the prompts and their logprobs, no reply."""
        self.n = n
        choices = [_Choice() for _ in range(len(self.echoed) * n)]
        for choice in choices:
            choice.finish_reason = "length"
        if streaming:
            return self._respond_stream(self._stream(None, _nothing(), choices))
        return self._answer(choices)

    def _respond_stream(self, events):
        return StreamingResponse(events, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def _answer(self, choices: list[_Choice]) -> dict:
        return {"id": self.id, "object": self.kind, "created": self.created, "model": self.model,
                "choices": [self._whole(i, c) for i, c in enumerate(choices)], "usage": self._usage(choices)}

    def _echo(self, index: int) -> tuple[str, list[_Logprob]]:
        """What choice `index` repeats of its prompt ("" and no entries without echo)."""
        return self.echoed[index // self.n] if self.echoed else ("", [])

    async def run(self, work, n: int, max_tokens: int | None, streaming: bool):
        """`work`: (prompt, params) per choice, n choices per prompt."""
        limit = self.request.app.state.options.max_queue
        if len(work) > limit:  # it could never be queued (the driver's TooLarge): name the field to lower
            param = "n" if n > 1 else "prompt"
            raise ApiError(400, f"{param}: this request asks for {len(work) // n} prompt(s) × n={n} = {len(work)} "
                                f"sequences but the server queues at most {limit} (--max-queue): lower n or send "
                                "fewer prompts", param=param)
        self.n = n
        ticket = await submit(self.request, work, pieces=self.logprobs)
        if max_tokens is not None:  # what the client asked for, after the server's cap
            max_tokens = min(max_tokens, self.request.app.state.options.max_tokens)
        check_room(ticket, max_tokens, self.request.app.state.engine.context_window)
        self.prompt_tokens = sum(ticket.prompt_tokens[::n])  # each prompt counted once, as OpenAI does
        events = follow(ticket, self.request)
        first = await first_event(ticket, events)
        choices = [_Choice() for _ in work]
        if streaming:
            return self._respond_stream(self._stream(first, events, choices))
        try:
            if first is not None:
                self._add(choices[first.index], first)
                async for event in events:
                    self._add(choices[event.index], event)
        except Exception as e:
            raise translate(e) from e
        return self._answer(choices)

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
        logprobs = self._logprobs(choice.logprobs, index) if self.logprobs else None
        if self.chat:
            message = {"role": "assistant", "content": choice.text}
            finish = choice.finish_reason
            if self.tools is not None:
                content, calls = self.tools.calls(choice.text, finish)
                message["content"] = content
                if calls:
                    message["tool_calls"], finish = calls, "tool_calls"
            return {"index": index, "message": message, "logprobs": logprobs, "finish_reason": finish}
        prompt, _ = self._echo(index)
        return {"index": index, "text": prompt + choice.text, "logprobs": logprobs,
                "finish_reason": choice.finish_reason}

    def _logprobs(self, entries: list[_Logprob], index: int, echo: bool = True) -> dict:
        """`entries` of choice `index`, shaped for the route; completions with echo put the prompt's first
        (when `echo`) and count offsets from the prompt's start."""
        if self.chat:
            return {"content": [
                {"token": _text(e.piece), "logprob": e.logprob, "bytes": list(e.piece),
                 "top_logprobs": [{"token": _text(t), "logprob": v, "bytes": list(t)} for t, v in e.top]}
                for e in entries]}
        prompt, echoed = self._echo(index)
        entries = (echoed if echo else []) + [dataclasses.replace(e, offset=e.offset + len(prompt)) for e in entries]
        return {"tokens": [_text(e.piece) for e in entries], "token_logprobs": [e.logprob for e in entries],
                "top_logprobs": [None if e.logprob is None else {_text(t): v for t, v in e.top} for e in entries],
                "text_offset": [e.offset for e in entries]}

    async def _stream(self, first: Event | None, events, choices: list[_Choice]):
        try:
            for index in range(len(choices)):
                if self.chat:
                    yield sse(self._chunk(index, {"role": "assistant", "content": ""}))
                elif self.echoed:  # the prompt (and its logprobs) come first, as vLLM streams them
                    prompt, echoed = self._echo(index)
                    logprobs = self._logprobs([], index) if self.logprobs else None
                    yield sse(self._chunk(index, text=prompt, logprobs=logprobs))
                if choices[index].finish_reason:  # nothing to generate (max_tokens 0)
                    yield sse(self._chunk(index, finish=choices[index].finish_reason))
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
        if self.tools is not None:
            return self._tool_event(choice, event)
        if event.token is None:
            return sse(self._chunk(event.index, finish=event.finish_reason))
        logprobs = self._logprobs(choice.logprobs[-1:], event.index, echo=False) if self.logprobs else None
        if not event.token.text and logprobs is None:
            return ""  # text held back (a partial character or a possible stop string): nothing to send yet
        delta = {"content": event.token.text}
        return sse(self._chunk(event.index, delta=delta, text=event.token.text, logprobs=logprobs))

    def _tool_event(self, choice: _Choice, event: Event) -> str:
        """A streamed chat event while tools are active: text that cannot start a call goes out as content;
        at the end the calls (or the held text, when it held none) and the finish reason."""
        index = event.index
        if event.token is not None:
            if self.tools.schema is not None:
                return ""  # a forced call: all of it is the call, sent when complete
            upto = tool_format.releasable(choice.text)
            delta, choice.released = choice.text[choice.released:upto], max(upto, choice.released)
            return sse(self._chunk(index, delta={"content": delta})) if delta else ""
        content, calls = self.tools.calls(choice.text, event.finish_reason)
        held = (content or "")[choice.released:]
        chunks = [self._chunk(index, delta={"content": held})] if held else []
        chunks += [self._chunk(index, delta=d) for d in call_deltas(calls)]
        chunks.append(self._chunk(index, finish="tool_calls" if calls else event.finish_reason))
        return "".join(sse(c) for c in chunks)


async def _nothing():
    return
    yield
