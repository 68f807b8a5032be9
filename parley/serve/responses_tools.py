"""Function tools on POST /v1/responses, in the Responses API's shapes, served by chat completions' tool calling.

The Responses API flattens what chat completions nests: a tool is `{"type": "function", "name", "description",
"parameters", "strict"}`, a named `tool_choice` is `{"type": "function", "name"}`, and a conversation carries
calls and results as input items of their own:
    {"type": "function_call", "call_id", "name", "arguments"}      (what the model called: an assistant turn)
    {"type": "function_call_output", "call_id", "output"}          (what the function returned: a tool turn)
`ResponsesTools` maps them onto serve/openai_tools.py's `ToolPlan` (the same prompt rendering, forced-call
grammar and reply parsing as /v1/chat/completions) and the chat messages the engine renders; the replies'
calls become `function_call` output items (responses_api.py writes and streams them).

400s name the field as the client wrote it: `tools[0].parameters`, `tool_choice`, `input[3].call_id` (an
output answering no earlier call). Only function tools are served: hosted tools (web search, file search,
computer use, MCP) are refused by the request model, naming `tools[i].type`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from parley.serve.api_errors import ApiError
from parley.serve.openai_tools import FunctionDef, FunctionName, NamedChoice, Strict, Tool, ToolPlan


class FunctionTool(Strict):
    type: Literal["function"]
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict | None = None
    strict: bool | None = None  # a forced call is constrained to the parameters either way


class FunctionChoice(Strict):
    type: Literal["function"]
    name: str


class TextPart(Strict):
    type: Literal["input_text", "output_text", "text"]
    text: str


class FunctionCallItem(Strict):
    type: Literal["function_call"]
    call_id: str = Field(min_length=1, max_length=256)
    name: str
    arguments: str
    id: str | None = None
    status: str | None = None


class FunctionCallOutputItem(Strict):
    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1, max_length=256)
    output: str | list[TextPart]
    id: str | None = None
    status: str | None = None

    def text(self) -> str:
        return self.output if isinstance(self.output, str) else "".join(p.text for p in self.output)


class ResponsesTools:
    """A Responses request's tools as a chat-completions ToolPlan, and its input items as chat messages."""

    def __init__(self, tools: list[FunctionTool] | None, choice, parallel: bool | None):
        self.given = [t.model_dump(exclude_none=True) for t in tools or []]
        self.parallel = parallel is not False
        chat_tools = [Tool(type="function", function=FunctionDef(
            name=t.name, description=t.description, parameters=t.parameters, strict=t.strict)) for t in tools or []]
        chat_choice = NamedChoice(type="function", function=FunctionName(name=choice.name)) \
            if isinstance(choice, FunctionChoice) else choice
        self.choice = choice.model_dump() if isinstance(choice, FunctionChoice) else (choice or "auto")
        try:
            self.plan = ToolPlan(chat_tools, chat_choice, parallel)
        except ApiError as e:  # chat's field names (tools[0].function.parameters) as the Responses API spells them
            e.param = (e.param or "").replace(".function.", ".") or None
            e.message = e.message.replace(".function.", ".")
            raise

    def messages(self, items: list) -> list[dict]:
        """Input items as chat messages: calls join the assistant turn before them, outputs are tool turns."""
        made: set[str] = set()
        messages: list[dict] = []
        for i, item in enumerate(items):
            if isinstance(item, FunctionCallItem):
                made.add(item.call_id)
                call = {"id": item.call_id, "type": "function",
                        "function": {"name": item.name, "arguments": item.arguments}}
                last = messages[-1] if messages else None
                if last is not None and last["role"] == "assistant":
                    last.setdefault("tool_calls", []).append(call)
                else:
                    messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
            elif isinstance(item, FunctionCallOutputItem):
                if item.call_id not in made:
                    raise ApiError(400, f"input[{i}].call_id {item.call_id!r} answers no function_call made earlier "
                                        "in input: give the call_id of a function_call item before it",
                                   param=f"input[{i}].call_id")
                messages.append({"role": "tool", "tool_call_id": item.call_id, "content": item.text()})
            else:
                messages.append(item.plain())
        return messages
