"""Tool calls in Parley's one documented format: how tools and calls are written for the model, and read back.

A conversation with tools, assistant `tool_calls` or `role: "tool"` results becomes plain
system/user/assistant messages through `plain_messages()` when the model's chat template cannot render
tools itself (parley/templates.py `render` decides, for chat, serving and `count`/`fit` alike), and always
in training data (parley/data/chat_formats.py), so a model fine-tuned on tool-use records sees exactly
what `parley serve` shows it. The format is the Hermes/Qwen convention:

    system     (the system prompt, if any, then)
               You may call functions ... <tools>
               {"type": "function", "function": {"name": "add", "parameters": {...}}}
               </tools> ... <tool_call>{"name": <function-name>, "arguments": <args-json-object>}</tool_call>
    assistant  (any text, then one block per call)
               <tool_call>
               {"name": "add", "arguments": {"a": 1, "b": 2}}
               </tool_call>
    user       <tool_response>
               3
               </tool_response>          (consecutive tool results share one user turn)

Reading replies back: `parse_reply()` finds <tool_call> blocks in free text (tool_choice `auto`);
a forced call (tool_choice `required` or a named function) is decoded under `forced_schema()`, a JSON
Schema built from the tools, so its reply is the call itself as JSON (`parse_forced()`).

Which models: `required` and a named function always give a valid call (the grammar sees to it,
even for a random model). `auto` leaves the choice to the model: SmolLM2-135M-Instruct (the embedded
model) rarely calls a tool unprompted; models trained on this format (Hermes, Qwen2.5 and later) or
fine-tuned on tool-use records with `parley train` do. Models whose own template is tool-aware render
tools their own way (templates.py); their calls are read back in this format.
"""

from __future__ import annotations

import json
import re
import secrets

TOOLS_PROMPT = (
    "You may call functions to help with the user's request. The functions are described by JSON "
    "schemas inside <tools></tools>:\n<tools>\n{tools}\n</tools>\n"
    "To call functions, reply with one <tool_call></tool_call> block per call, each holding a JSON object "
    "with the function's name and its arguments:\n"
    '<tool_call>\n{{"name": <function-name>, "arguments": <args-json-object>}}\n</tool_call>'
)
OPEN, CLOSE = "<tool_call>", "</tool_call>"
_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)  # a reply may end before the close tag


def plain_messages(messages: list[dict], tools: list[dict] | None = None) -> list[dict]:
    """`messages` (OpenAI shape: assistant `tool_calls`, `tool` results) as system/user/assistant text."""
    out = [dict(m) for m in messages]
    if tools:
        section = TOOLS_PROMPT.format(tools="\n".join(json.dumps(t, ensure_ascii=False) for t in tools))
        if out and out[0]["role"] == "system":
            out[0]["content"] = f"{out[0]['content']}\n\n{section}" if out[0]["content"] else section
        else:
            out.insert(0, {"role": "system", "content": section})
    plain: list[dict] = []
    for message in out:
        calls = message.pop("tool_calls", None) or []
        if message["role"] == "tool":
            result = f"<tool_response>\n{message.get('content') or ''}\n</tool_response>"
            if plain and plain[-1].get("tool_results"):  # consecutive results: one user turn
                plain[-1]["content"] += "\n" + result
            else:
                plain.append({"role": "user", "content": result, "tool_results": True})
            continue
        message.pop("tool_call_id", None)
        blocks = [f"{OPEN}\n{call_json(c)}\n{CLOSE}" for c in calls]
        message["content"] = "\n".join(filter(None, [message.get("content") or "", *blocks]))
        plain.append(message)
    for message in plain:
        message.pop("tool_results", None)
    return plain


def call_json(call: dict) -> str:
    """One OpenAI tool call ({function: {name, arguments: JSON text}}) as the format's JSON object."""
    function = call["function"]
    arguments = function.get("arguments") or "{}"
    try:
        arguments = json.loads(arguments)
    except ValueError:  # kept as the string it is: the model said it so
        pass
    return json.dumps({"name": function["name"], "arguments": arguments}, ensure_ascii=False)


def forced_schema(tools: list[dict], name: str | None, parallel: bool) -> dict:
    """The JSON Schema a forced reply is decoded under: a named function's parameters; otherwise one
    {name, arguments} object for any of the tools, or (parallel) a non-empty array of them."""
    if name is not None:
        return _parameters(next(t for t in tools if t["function"]["name"] == name))
    one = {"anyOf": [{
        "type": "object", "additionalProperties": False, "required": ["name", "arguments"],
        "properties": {"name": {"const": t["function"]["name"]}, "arguments": _parameters(t)},
    } for t in tools]}
    return {"type": "array", "items": one, "minItems": 1} if parallel else one


def _parameters(tool: dict) -> dict:
    return tool["function"].get("parameters") or {"type": "object", "properties": {}}


def parse_forced(text: str, name: str | None) -> list[dict] | None:
    """The calls in a reply decoded under `forced_schema` (None when it was cut short and does not parse)."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if name is not None:
        return [new_call(name, value)]
    return [new_call(c["name"], c["arguments"]) for c in (value if isinstance(value, list) else [value])]


def salvage_calls(text: str) -> list[dict]:
    """The complete, distinct calls at the start of a forced array reply cut short by the token limit.

    Decoded under `forced_schema(parallel=True)`, the text is a valid JSON prefix `[{...}, {...}, {...`; a
    small model may go on repeating a call until the limit. The calls it finished are kept, each once: the
    same function with the same arguments twice in one reply is that loop, not a request."""
    decoder, calls, seen = json.JSONDecoder(), [], set()
    at = text.find("[") + 1
    while at > 0:
        while at < len(text) and text[at] in " \t\n\r,":
            at += 1
        try:
            value, at = decoder.raw_decode(text, at)
        except ValueError:
            break
        if not isinstance(value, dict) or not isinstance(value.get("name"), str):
            break
        key = json.dumps([value["name"], value.get("arguments")], sort_keys=True)
        if key not in seen:
            seen.add(key)
            calls.append(new_call(value["name"], value.get("arguments", {})))
    return calls


def parse_reply(text: str) -> tuple[str, list[dict]]:
    """(content before the calls, calls) of a free reply; no calls when a block is not a {name, arguments} object."""
    start = text.find(OPEN)
    if start < 0:
        return text, []
    calls = []
    for block in _BLOCK.findall(text[start:]):
        try:
            value = json.loads(block)
        except ValueError:
            return text, []
        if not isinstance(value, dict) or not isinstance(value.get("name"), str):
            return text, []
        calls.append(new_call(value["name"], value.get("arguments", {})))
    return text[:start].rstrip(), calls


def releasable(text: str) -> int:
    """How much of a streamed free reply may be sent as content: all of it before a <tool_call>, or
    before a tail that could still become one."""
    start = text.find(OPEN)
    if start >= 0:
        return start
    for keep in range(min(len(OPEN) - 1, len(text)), 0, -1):
        if OPEN.startswith(text[-keep:]):
            return len(text) - keep
    return len(text)


def new_call(name: str, arguments) -> dict:
    """An OpenAI tool call with a fresh id; arguments as JSON text, as OpenAI sends them."""
    text = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    return {"id": "call_" + secrets.token_hex(12), "type": "function", "function": {"name": name, "arguments": text}}
