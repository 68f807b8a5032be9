"""Tool calling on /v1/chat/completions: `tools`, `tool_choice`, `parallel_tool_calls`, and histories with them.

The request's tools and tool messages go to the engine as a `templates.Chat`: the model's own template
renders them when it is tool-aware, otherwise Parley's documented format does (parley/tools.py); replies
are read in the <tool_call> format. `tool_choice`:
    none      the tools are not shown and no call is made (a history with calls is still rendered)
    auto      the tools are shown; <tool_call> blocks in the reply become `tool_calls` (streamed text is
              held back from the first <tool_call> on)
    required  the reply is decoded under a schema of {name, arguments} for any tool (an array of them
              when `parallel_tool_calls`, the default), so it always is a valid call; an array cut short
              by max_tokens keeps the calls it finished, each once (small models repeat a call until the
              limit; LangChain's bind_tools(tool_choice="any") hit this)
    {"type": "function", "function": {"name": N}}  the reply is decoded under N's parameters: one call
A reply with calls has `finish_reason: "tool_calls"`. Streamed, each call is sent as OpenAI sends
it: a delta with its index, id, type and name, then its arguments in fragments.

400s naming the field: a tool_choice naming no tool, tool_choice without tools, a tool's
parameters llguidance cannot compile, a tool message whose tool_call_id answers no earlier call,
`logprobs` together with tools (refused rather than half served).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from parley import tools as fmt
from parley.constraints import GrammarError, json_grammar
from parley.templates import Chat
from parley.serve.api_errors import ApiError


class Strict(BaseModel):
    # The OpenAI routes' base: "0.5" is not a number and true is not 1; unknown fields are ignored, as OpenAI's are.
    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)


class FunctionDef(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict | None = None
    strict: bool | None = None  # calls are constrained to the parameters either way when forced


class Tool(Strict):
    type: Literal["function"]
    function: FunctionDef


class FunctionName(Strict):
    name: str


class NamedChoice(Strict):
    type: Literal["function"]
    function: FunctionName


class CalledFunction(Strict):
    name: str
    arguments: str


class ToolCall(Strict):
    id: str = Field(min_length=1, max_length=256)
    type: Literal["function"] = "function"
    function: CalledFunction


class ToolPlan:
    """What one request does with its tools: the prompt's tool list, the forced schema, how to read replies."""

    def __init__(self, tools: list[Tool] | None, choice, parallel: bool | None):
        self.tools = [t.model_dump(exclude_none=True) for t in tools or []]
        names = [t["function"]["name"] for t in self.tools]
        if choice is not None and not self.tools and choice != "none":
            raise ApiError(400, "tool_choice needs tools: give the functions in `tools`", param="tool_choice")
        choice = choice or ("auto" if self.tools else "none")
        self.name = choice.function.name if isinstance(choice, NamedChoice) else None
        if self.name is not None and self.name not in names:
            raise ApiError(400, f"tool_choice names the function {self.name!r}, which is not among the tools "
                                f"({', '.join(names)})", param="tool_choice")
        for i, tool in enumerate(self.tools):
            try:
                json_grammar(fmt.forced_schema([tool], tool["function"]["name"], False))
            except GrammarError as e:
                raise ApiError(400, f"tools[{i}].function.parameters: {e}",
                               param=f"tools[{i}].function.parameters") from None
        self.mode = "named" if self.name else choice  # none, auto, required, named
        self.schema = fmt.forced_schema(self.tools, self.name, parallel is not False) \
            if self.mode in ("required", "named") else None

    @property
    def active(self) -> bool:
        """Replies may hold calls (they are read, and held back while streaming)."""
        return self.mode != "none"

    def prompt(self, messages: list[dict]) -> Chat:
        """The history as the engine renders it, with the tools shown unless tool_choice is none."""
        return Chat(messages, (self.tools or None) if self.active else None)

    def calls(self, text: str, finish_reason: str | None) -> tuple[str | None, list[dict]]:
        """(content, tool calls) of a finished reply. A forced reply cut short is returned as text."""
        if self.mode in ("required", "named"):
            if finish_reason == "stop":
                calls = fmt.parse_forced(text, self.name)
            else:  # cut short: an array of calls keeps those it finished (a small model may repeat one)
                calls = fmt.salvage_calls(text) if self.schema.get("type") == "array" else None
            return (None, calls) if calls else (text, [])
        content, calls = fmt.parse_reply(text)
        return (content or None, calls) if calls else (text, [])


def check_history(messages) -> None:
    """Every tool message answers a call an earlier assistant message made (by tool_call_id)."""
    made: set[str] = set()
    for i, message in enumerate(messages):
        made.update(call.id for call in message.tool_calls or [])
        if message.role == "tool" and message.tool_call_id not in made:
            raise ApiError(400, f"messages[{i}].tool_call_id {message.tool_call_id!r} answers no tool call made "
                                "earlier in messages: give the id of an assistant message's tool_calls entry",
                           param=f"messages[{i}].tool_call_id")


def call_deltas(calls: list[dict]) -> list[dict]:
    """The streamed deltas of finished calls, as OpenAI sends them: id and name first, then the arguments."""
    deltas = []
    for index, call in enumerate(calls):
        name, arguments = call["function"]["name"], call["function"]["arguments"]
        deltas.append({"tool_calls": [{"index": index, "id": call["id"], "type": "function",
                                       "function": {"name": name, "arguments": ""}}]})
        for start in range(0, len(arguments), 16):
            deltas.append({"tool_calls": [{"index": index, "function": {"arguments": arguments[start:start + 16]}}]})
    return deltas
