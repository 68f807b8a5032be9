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

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from parley.batching import Event
from parley import tools as tool_format
from parley.serve.api_errors import ApiError, translate
from parley.serve.openai_requests import MAX_PROMPTS, ChatRequest, CompletionRequest
from parley.serve.openai_tools import ToolPlan, call_deltas, check_history
from parley.serve.streaming import beside, check_room, first_event, follow, sse, submit

router = APIRouter(prefix="/v1", tags=["openai"])


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
    prompt = plan.prompt([m.plain() for m in body.messages])
    call = _Call(request, "chat.completion", "chatcmpl-", body.logprobs, body.stream_options, plan)
    return await call.run([(prompt, p) for p in params], body.n, max_tokens, streaming=body.stream)


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
