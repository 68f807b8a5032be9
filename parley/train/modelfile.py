"""The Ollama `Modelfile` written beside an exported GGUF file (`ollama create NAME -f Modelfile`).

    FROM ./model.gguf
    TEMPLATE \"\"\"{{ if .System }}<|im_start|>system ...\"\"\"      the chat template, as a Go template
    SYSTEM \"\"\"You are a helpful AI assistant ...\"\"\"           the template's own default system prompt, if any
    PARAMETER stop "<|im_end|>"                                   every end token and stop string Parley stops on
    PARAMETER temperature 0.7 ...                                 Parley's generation defaults

Ollama renders prompts with Go templates, not jinja, so the TEMPLATE is derived from the jinja template
the model was trained with: it is rendered with marker messages, which gives the text that opens
each role's message and the text that closes every message; the Go template built from those
pieces is then checked to render sample conversations exactly like the jinja one. A template that
does not fit that shape (e.g. one that adds a BOS or treats the first message specially) gets no
TEMPLATE line and a comment saying so; Ollama then picks a template from the GGUF's chat template.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from parley.templates import render

SENTINELS = {"system": "\x01system\x01", "user": "\x01user\x01", "assistant": "\x01assistant\x01",
             "user2": "\x01user2\x01"}


@dataclass
class Turns:
    """How a template wraps messages: open[role] + content + close, then open["assistant"] to answer."""

    open: dict[str, str]
    close: str
    default_system: str  # what the template says as system prompt when the conversation has none


def modelfile(loaded, gguf_name: str) -> str:
    """The Modelfile text for `loaded` exported as `gguf_name` in the same directory."""
    from parley.engine import SamplingParams

    turns = chat_turns(loaded.tokenizer, loaded.template)
    lines = [f"# Written by `parley export` beside {gguf_name}. Load it with: ollama create NAME -f Modelfile",
             f"FROM ./{gguf_name}"]
    if turns is None:
        lines.append("# No TEMPLATE: this chat template cannot be written as a Go template; Ollama uses "
                     "the GGUF's tokenizer.chat_template")
    else:
        lines.append(f'TEMPLATE """{go_template(turns)}"""')
        if turns.default_system:
            lines.append(f'SYSTEM """{turns.default_system}"""')
    ends = loaded.tokenizer.convert_ids_to_tokens(loaded.stop_ids) + loaded.stop_strings
    lines += [f"PARAMETER stop {json.dumps(end)}" for end in dict.fromkeys(ends)]
    defaults = SamplingParams()
    lines += [f"PARAMETER temperature {defaults.temperature}", f"PARAMETER top_p {defaults.top_p}",
              f"PARAMETER top_k {defaults.top_k}", f"PARAMETER repeat_penalty {defaults.repetition_penalty}"]
    return "\n".join(lines) + "\n"


def go_template(turns: Turns) -> str:
    """The Go template Ollama renders: the system prompt (.System) first, then each message."""
    o, c = turns.open, turns.close
    return (f"{{{{ if .System }}}}{o['system']}{{{{ .System }}}}{c}{{{{ end }}}}"
            f"{{{{ range .Messages }}}}{{{{ if eq .Role \"user\" }}}}{o['user']}{{{{ .Content }}}}{c}{o['assistant']}"
            f"{{{{ else if eq .Role \"assistant\" }}}}{{{{ .Content }}}}{c}{{{{ end }}}}{{{{ end }}}}")


def render_like_ollama(turns: Turns, system: str, messages: list[dict]) -> str:
    """What go_template(turns) renders for `system` and `messages` (user/assistant), as Ollama would."""
    o, c = turns.open, turns.close
    text = f"{o['system']}{system}{c}" if system else ""
    for m in messages:
        text += f"{o['user']}{m['content']}{c}{o['assistant']}" if m["role"] == "user" else f"{m['content']}{c}"
    return text


def chat_turns(tokenizer, template: str) -> Turns | None:
    """The pieces `template` wraps messages in, or None when it is not "open + content + close" per message."""
    s = SENTINELS
    full = render(tokenizer, template, _conversation("system", "user", "assistant", "user2"), True)
    closed = render(tokenizer, template, _conversation("system", "user", "assistant"), False)
    pieces, rest = [], full
    for key in ("system", "user", "assistant", "user2"):  # the text before each message's content, in order
        before, found, rest = rest.partition(s[key])
        if not found:
            return None
        pieces.append(before)
    pieces.append(rest)
    system_open, after_system, after_user, after_assistant, after_user2 = pieces
    close = closed.rpartition(s["assistant"])[2]
    if not (after_system.startswith(close) and after_user.startswith(close)
            and after_assistant == after_system and after_user2 == after_user):
        return None
    opened = {"system": system_open, "user": after_system[len(close):], "assistant": after_user[len(close):]}
    alone = render(tokenizer, template, _conversation("user"), True)  # no system message: any default shows here
    head = alone.partition(close + opened["user"] + s["user"])[0]
    default = head[len(system_open):] if system_open and head.startswith(system_open) else ""
    turns = Turns(opened, close, default)
    pieces_ok = not any("{{" in p or '"""' in p for p in [*opened.values(), close, default])
    return turns if pieces_ok and _renders_alike(turns, tokenizer, template) else None


def _renders_alike(turns: Turns, tokenizer, template: str) -> bool:
    """Does the Go template render sample conversations exactly like the jinja one?"""
    samples = [_conversation("user"), _conversation("system", "user", "assistant", "user2"),
               _conversation("user", "assistant", "user2")]
    for messages in samples:
        system = messages[0]["content"] if messages[0]["role"] == "system" else turns.default_system
        chat = [m for m in messages if m["role"] != "system"]
        if render_like_ollama(turns, system, chat) != render(tokenizer, template, messages, True):
            return False
    return True


def _conversation(*roles: str) -> list[dict]:
    return [{"role": role.rstrip("2"), "content": SENTINELS[role]} for role in roles]
