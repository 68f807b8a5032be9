"""POST /v1/responses: the stateless core of OpenAI's Responses API, so `client.responses.create(...)`
and `client.responses.stream(...)` work unchanged.

Taken: `input` (text, or a list of messages whose content is text or `input_text`/`output_text`
parts), `instructions` (a system message before the input), `max_output_tokens`, `temperature`,
`top_p`, `stream`, `text.format` (`text`, `json_object`, `json_schema`: the reply is decoded under the
schema's grammar, parley/constraints.py), `model`, and harmless `metadata`, `user`, `truncation`.

Function tools: `tools` (`{"type": "function", "name", "parameters"}`), `tool_choice` (`none`, `auto`,
`required`, `{"type": "function", "name"}`), `parallel_tool_calls`, and `function_call` /
`function_call_output` input items, served by chat completions' tool calling (serve/responses_tools.py).
The reply's calls are `function_call` output items, after a `message` item when the model also wrote text.

Stateless: nothing is stored, so `store: true` and `previous_response_id` are 400s naming them (send
the whole history as `input` instead); the answer says `store: false`.

Streaming: `event: TYPE` + `data: {...}` server-sent events, each with a `sequence_number`, in the
order OpenAI sends them: response.created, response.in_progress, response.output_item.added,
response.content_part.added, response.output_text.delta..., response.output_text.done,
response.content_part.done, response.output_item.done, then response.completed (or
response.incomplete when max_output_tokens ran out); a failure after the start is response.failed.
With tools, the message item opens only once there is text that cannot start a call (a forced call has
none), and each call follows as its own item: response.output_item.added (a `function_call` with empty
arguments), response.function_call_arguments.delta..., response.function_call_arguments.done,
response.output_item.done.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import Field

from parley.constraints import JSON_OBJECT
from parley.engine import ParamError, SamplingParams
from parley.serve.api_errors import ApiError, translate
from parley import tools as tool_format
from parley.serve.openai_api import _check_model
from parley.serve.openai_tools import Strict
from parley.serve.responses_tools import (FunctionCallItem, FunctionCallOutputItem, FunctionChoice, FunctionTool,
                                          ResponsesTools)
from parley.serve.streaming import check_room, first_event, follow, sse, submit

router = APIRouter(prefix="/v1", tags=["openai"])


class InputPart(Strict):
    type: Literal["input_text", "output_text", "text"]
    text: str


class InputMessage(Strict):
    type: Literal["message"] = "message"
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[InputPart]

    def plain(self) -> dict:
        content = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": content}


class TextFormat(Strict):
    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str | None = Field(None, max_length=64)
    schema_: dict | None = Field(None, alias="schema")
    description: str | None = None
    strict: bool | None = None  # constrained either way


class TextOptions(Strict):
    format: TextFormat = TextFormat()


class ResponsesRequest(Strict):
    input: str | list[InputMessage | FunctionCallItem | FunctionCallOutputItem] = Field(min_length=1)
    model: str = Field("", max_length=512)
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stream: bool = False
    store: bool | None = None
    previous_response_id: str | None = None
    text: TextOptions | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | FunctionChoice | None = None
    parallel_tool_calls: bool | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    truncation: Literal["auto", "disabled"] | None = None

    def messages(self, tools: ResponsesTools) -> list[dict]:
        given = [{"role": "user", "content": self.input}] if isinstance(self.input, str) else \
            tools.messages(self.input)
        return ([{"role": "system", "content": self.instructions}] if self.instructions else []) + given

    def params(self, cap: int) -> SamplingParams:
        schema = None
        if self.text and self.text.format.type == "json_object":
            schema = JSON_OBJECT
        elif self.text and self.text.format.type == "json_schema":
            schema = self.text.format.schema_ or JSON_OBJECT
        params = SamplingParams(temperature=1.0 if self.temperature is None else self.temperature,
                                top_p=1.0 if self.top_p is None else self.top_p,
                                max_new_tokens=min(self.max_output_tokens or cap, cap), json_schema=schema)
        try:
            return params.check()
        except ParamError as e:
            if e.key != "json_schema":
                raise
            raise ApiError(400, f"text.format.schema: {e}", param="text.format.schema") from None


@router.post("/responses")
async def responses(body: ResponsesRequest, request: Request):
    """A reply to `input` (after `instructions`), whole or as Responses stream events; nothing is stored."""
    _check_model(request, body.model)
    tools = ResponsesTools(body.tools, body.tool_choice, body.parallel_tool_calls)
    if tools.plan.schema is not None and body.text and body.text.format.type != "text":
        raise ApiError(400, f"text.format cannot be combined with tool_choice {tools.plan.mode!r}: both constrain "
                            "the reply", param="text.format")
    if body.store:
        raise ApiError(400, "store: this server keeps no responses; send store: false (or leave it out) "
                            "and resend the history as input", param="store")
    if body.previous_response_id:
        raise ApiError(400, "previous_response_id: this server keeps no responses; send the whole "
                            "conversation as input instead", param="previous_response_id")
    state = request.app.state
    reply = _Reply(request, body, tools)
    params = body.params(state.options.max_tokens)
    if tools.plan.schema is not None:  # the forced call's grammar, as on chat completions
        params = dataclasses.replace(params, json_schema=tools.plan.schema)
    prompt = tools.plan.prompt(body.messages(tools))
    ticket = await submit(request, [(prompt, params)])
    requested = min(body.max_output_tokens, state.options.max_tokens) if body.max_output_tokens else None
    check_room(ticket, requested, state.engine.context_window)
    reply.input_tokens = ticket.prompt_tokens[0]
    events = follow(ticket, request)
    first = await first_event(ticket, events)
    if body.stream:
        return StreamingResponse(reply.stream(first, events), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    try:
        for event in [first] if first else []:
            reply.add(event)
        async for event in events:
            reply.add(event)
    except Exception as e:
        raise translate(e) from e
    return reply.response()


class _Reply:
    """One response being written: its text so far, and the Responses-shaped bodies and events."""

    def __init__(self, request: Request, body: ResponsesRequest, tools: ResponsesTools):
        self.body, self.tools = body, tools
        self.plan = tools.plan if tools.plan.active else None  # replies are read for calls
        self.id = "resp_" + secrets.token_hex(12)
        self.item_id = "msg_" + secrets.token_hex(12)
        self.created = int(time.time())
        self.model = request.app.state.served_name
        self.text, self.tokens, self.finish, self.input_tokens, self.sequence = "", 0, None, 0, 0
        self._read: tuple[str | None, list[dict]] | None = None

    def add(self, event) -> None:
        if event.token is not None:
            self.text += event.token.text
            self.tokens += 1
        else:
            self.finish = event.finish_reason

    @property
    def status(self) -> str:
        return "incomplete" if self.finish == "length" else "completed"

    def read(self) -> tuple[str | None, list[dict]]:
        """(message text or None, calls) of the finished reply."""
        if self._read is None:
            self._read = self.plan.calls(self.text, self.finish) if self.plan else (self.text, [])
        return self._read

    def item(self, status: str, content: list) -> dict:
        return {"id": self.item_id, "type": "message", "role": "assistant", "status": status, "content": content}

    def part(self, text: str | None = None) -> dict:
        return {"type": "output_text", "text": self.text if text is None else text, "annotations": [], "logprobs": []}

    def output(self, status: str) -> list[dict]:
        """The finished output items: the message (unless the reply is calls alone), then one per call."""
        content, calls = self.read()
        items = [self.item(status, [self.part(content)])] if content is not None or not calls else []
        return items + [_call_item(call, "completed") for call in calls]

    def response(self, status: str | None = None) -> dict:
        """The Response object; `status` in_progress while streaming, else from how decoding ended."""
        status = status or self.status
        done = status in ("completed", "incomplete")
        body = self.body
        text_format = body.text.format.model_dump(by_alias=True, exclude_none=True) if body.text else {"type": "text"}
        return {
            "id": self.id, "object": "response", "created_at": self.created, "status": status,
            "model": self.model, "output": self.output(status) if done else [],
            "error": None, "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "instructions": body.instructions, "max_output_tokens": body.max_output_tokens,
            "metadata": body.metadata or {}, "parallel_tool_calls": self.tools.parallel, "previous_response_id": None,
            "store": False, "temperature": body.temperature, "top_p": body.top_p, "tool_choice": self.tools.choice,
            "tools": self.tools.given, "text": {"format": text_format}, "truncation": body.truncation or "disabled",
            "usage": {"input_tokens": self.input_tokens, "output_tokens": self.tokens,
                      "total_tokens": self.input_tokens + self.tokens,
                      "input_tokens_details": {"cached_tokens": 0},
                      "output_tokens_details": {"reasoning_tokens": 0}} if done else None,
        }

    def _event(self, kind: str, **fields) -> str:
        self.sequence += 1
        return f"event: {kind}\n" + sse({"type": kind, "sequence_number": self.sequence - 1, **fields})

    def _releasable(self) -> int:
        """How much of the text may go out as message text now (all of it without tools; none of a forced call)."""
        if self.plan is None:
            return len(self.text)
        return 0 if self.plan.schema is not None else tool_format.releasable(self.text)

    async def stream(self, first, events):
        yield self._event("response.created", response=self.response("in_progress"))
        yield self._event("response.in_progress", response=self.response("in_progress"))
        message = _MessageStream(self)
        if self.plan is None:
            yield message.open()
        try:
            async for event in _chain(first, events):
                self.add(event)
                delta = self.text[message.sent:self._releasable()]
                if delta:
                    yield message.send(delta)
        except Exception as e:  # the stream has started: the failure is an event, as OpenAI sends it
            error = translate(e)
            failed = {**self.response("failed"), "error": {"code": error.code or "server_error",
                                                           "message": error.message}}
            yield self._event("response.failed", response=failed)
            return
        content, calls = self.read()
        if content is not None or not calls:
            held = (content or "")[message.sent:] if (content or "").startswith(self.text[:message.sent]) else ""
            if held or not message.opened:
                yield message.send(held)
            yield message.close(content or "")
        for index, call in enumerate(calls, start=message.index + message.opened):
            yield self._call_events(call, index)
        yield self._event(f"response.{self.status}", response=self.response())

    def _call_events(self, call: dict, index: int) -> str:
        """One function_call item streamed: added (empty arguments), argument fragments, done."""
        arguments = call["function"]["arguments"]
        item = _call_item(call, "in_progress")
        where = {"item_id": item["id"], "output_index": index}
        out = [self._event("response.output_item.added", output_index=index, item={**item, "arguments": ""})]
        out += [self._event("response.function_call_arguments.delta", delta=arguments[i:i + 16], **where)
                for i in range(0, len(arguments), 16)]
        out.append(self._event("response.function_call_arguments.done", arguments=arguments, name=item["name"],
                               **where))
        out.append(self._event("response.output_item.done", output_index=index,
                               item={**item, "status": "completed"}))
        return "".join(out)


class _MessageStream:
    """The streamed message item of a reply: opened on its first text, then deltas, then closed."""

    def __init__(self, reply: _Reply):
        self.reply, self.index = reply, 0
        self.opened, self.sent = False, 0  # whether its added events went out; characters of text sent

    def open(self) -> str:
        self.opened = True
        where = {"item_id": self.reply.item_id, "output_index": self.index, "content_index": 0}
        return (self.reply._event("response.output_item.added", output_index=self.index,
                                  item=self.reply.item("in_progress", []))
                + self.reply._event("response.content_part.added",
                                    part={"type": "output_text", "text": "", "annotations": []}, **where))

    def send(self, delta: str) -> str:
        out = "" if self.opened else self.open()
        self.sent += len(delta)
        if delta:
            out += self.reply._event("response.output_text.delta", delta=delta, logprobs=[], item_id=self.reply.item_id,
                                     output_index=self.index, content_index=0)
        return out

    def close(self, text: str) -> str:
        reply, where = self.reply, {"item_id": self.reply.item_id, "output_index": self.index, "content_index": 0}
        return (reply._event("response.output_text.done", text=text, logprobs=[], **where)
                + reply._event("response.content_part.done", part=reply.part(text), **where)
                + reply._event("response.output_item.done", output_index=self.index,
                               item=reply.item(reply.status, [reply.part(text)])))


def _call_item(call: dict, status: str) -> dict:
    """A chat-completions tool call as a Responses `function_call` output item."""
    function = call["function"]
    return {"type": "function_call", "id": "fc_" + call["id"].removeprefix("call_"), "call_id": call["id"],
            "name": function["name"], "arguments": function["arguments"], "status": status}


async def _chain(first, events):
    if first is not None:
        yield first
    async for event in events:
        yield event
