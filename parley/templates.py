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

Tools, assistant tool calls and tool results are written into plain messages by parley/tools.py
before any template renders them (one documented format, for serving and training alike).
"""

from __future__ import annotations

import hashlib

DEFAULT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
DEFAULT_STOPS = ["<|user|>", "<|system|>", "<|assistant|>"]


def template_for(tokenizer) -> str:
    """The tokenizer's own chat template, or the documented default when it has none."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # a few tokenizers keep several named templates
        template = template.get("default") or next(iter(template.values()))
    return template or DEFAULT_TEMPLATE


def extra_stops(template: str) -> list[str]:
    """Stop strings a template needs beyond the end-of-sequence token."""
    return list(DEFAULT_STOPS) if template == DEFAULT_TEMPLATE else []


def render(tokenizer, template: str, messages: list[dict], add_generation_prompt: bool) -> str:
    """The prompt text for `messages`, exactly as the model sees it."""
    return tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def encode_chat(tokenizer, template: str, messages: list[dict], add_generation_prompt: bool) -> list[int]:
    """Token ids of the rendered conversation. The template already holds any BOS it wants."""
    text = render(tokenizer, template, messages, add_generation_prompt)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def fingerprint(template: str) -> str:
    """A short, stable id for a template, recorded with prepared data and checkpoints."""
    return hashlib.sha256(template.encode()).hexdigest()[:12]
