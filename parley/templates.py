"""Chat templates: the one a model was trained with, rendered the same way everywhere.

A model's template travels with it (`chat_template.jinja` in its directory) and data preparation,
chat, serving and evaluation all render through `render()`. Models that ship without one (the GPT-2
family) get `DEFAULT_TEMPLATE`, a plain-text layout documented here:

    <|system|>
    You are helpful.<|endoftext|>
    <|user|>
    Hi!<|endoftext|>
    <|assistant|>
    Hello.<|endoftext|>

Each message ends with the tokenizer's end-of-sequence token, so a model fine-tuned on it learns to
stop; a model that never saw it is also stopped by the next role marker (`DEFAULT_STOPS`).

Tools, assistant tool calls and `role: "tool"` results (a `Chat`, or messages carrying them) are
rendered by the model's own template when it is tool-aware (it reads the `tools` variable, as
Qwen2.5's, Llama 3.1's and Hermes' do: `apply_chat_template(messages, tools=...)`, with each call's
arguments given as an object, as those templates expect); otherwise they are first written into plain
messages in Parley's documented default format (parley/tools.py), the one `parley train` uses for
tool-use data. Replies are read back in the <tool_call> format either way (the format the tool-aware
templates named above teach); a template that teaches another call syntax renders fine but its calls
come back as text.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache

from parley.tools import plain_messages

DEFAULT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
DEFAULT_STOPS = ["<|user|>", "<|system|>", "<|assistant|>"]


@dataclass(frozen=True)
class Chat:
    """Chat messages in OpenAI's shape (assistant `tool_calls`, `role: "tool"` results) with the tools
    offered to the model: the prompt an engine renders when a conversation involves tools."""

    messages: list[dict]
    tools: list[dict] | None = None  # OpenAI's [{"type": "function", "function": {...}}]; None: no tools shown


def template_for(tokenizer) -> str:
    """The tokenizer's own chat template, or the documented default when it has none."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # a few tokenizers keep several named templates
        template = template.get("default") or next(iter(template.values()))
    return template or DEFAULT_TEMPLATE


def extra_stops(template: str) -> list[str]:
    """Stop strings a template needs beyond the end-of-sequence token."""
    return list(DEFAULT_STOPS) if template == DEFAULT_TEMPLATE else []


def render(tokenizer, template: str, messages: list[dict], add_generation_prompt: bool,
           tools: list[dict] | None = None) -> str:
    """The prompt text for `messages` (and the `tools` offered), exactly as the model sees it."""
    extra = {}
    if tools or any(m.get("tool_calls") or m.get("role") == "tool" for m in messages):
        if supports_tools(template):
            messages = [_with_call_objects(m) for m in messages]
            extra = {"tools": tools} if tools else {}
        else:
            messages = plain_messages(messages, tools)
    return tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=add_generation_prompt, **extra
    )


def encode_chat(tokenizer, template: str, messages: list[dict], add_generation_prompt: bool,
                tools: list[dict] | None = None) -> list[int]:
    """Token ids of the rendered conversation. The template already holds any BOS it wants."""
    text = render(tokenizer, template, messages, add_generation_prompt, tools)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@lru_cache(maxsize=32)
def supports_tools(template: str) -> bool:
    """Whether a template renders tools itself: it reads the `tools` variable transformers passes."""
    import jinja2
    from jinja2 import meta
    from jinja2.ext import loopcontrols

    try:
        parsed = jinja2.Environment(extensions=[loopcontrols]).parse(template)
    except jinja2.TemplateSyntaxError:  # e.g. transformers' own {% generation %} tag: read the text instead
        return "tools" in template and "tool_calls" in template
    return "tools" in meta.find_undeclared_variables(parsed)


def _with_call_objects(message: dict) -> dict:
    """A message whose calls' JSON-text arguments are objects: tool-aware templates write them with `tojson`."""
    if not message.get("tool_calls"):
        return message
    calls = []
    for call in message["tool_calls"]:
        arguments = call["function"].get("arguments")
        try:
            arguments = json.loads(arguments) if isinstance(arguments, str) else arguments
        except ValueError:  # kept as the text it is: the model said it so
            pass
        calls.append({**call, "function": {**call["function"], "arguments": arguments}})
    return {**message, "tool_calls": calls}


def fingerprint(template: str) -> str:
    """A short, stable id for a template, recorded with prepared data and checkpoints."""
    return hashlib.sha256(template.encode()).hexdigest()[:12]
