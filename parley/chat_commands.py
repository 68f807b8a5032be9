"""The terminal chat's slash commands that act on the session and its replies' code (terminal.py
dispatches to them): /params, /save, /load, /system, /run, /copy, /why "TEXT" and /history.

Each takes the `session.Session` and a Rich console and prints what it did; bad arguments raise
ConfigError, which the chat prints as one line and goes on. Text that is not ours (replies, program
output, file names) is printed through `plain`/`printable`, never as Rich markup (see terminal.py).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from parley.code_blocks import Block, last_blocks
from parley.errors import ConfigError
from parley.files import write_atomic
from parley.printable import plain, printable
from parley.session import Session


def parse_assignments(text: str) -> dict[str, str]:
    values = {}
    for item in text.split():
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ConfigError(f"/params takes key=value pairs, got {item!r} (e.g. /params temperature=0.2)")
        values[key] = value
    return values


def save(session: Session, path: str) -> Path:
    if not path:
        raise ConfigError("/save needs a file name, e.g. /save chat.json")
    target = Path(path).expanduser()
    data = {"model": session.model, "system": session.system, "params": vars(session.params), "messages": session.messages}
    try:
        write_atomic(target, json.dumps(data, indent=2, ensure_ascii=False) + "\n")  # never half a user's file
    except OSError as e:
        raise ConfigError(f"cannot write {target}: {e.strerror}") from None
    return target


def load(session: Session, path: str) -> None:
    if not path:
        raise ConfigError("/load needs a file name, e.g. /load chat.json")
    try:
        data = json.loads(Path(path).expanduser().read_text())
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    except ValueError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    messages = data.get("messages") if isinstance(data, dict) else data
    system = data.get("system") if isinstance(data, dict) else None
    if not isinstance(messages, list):
        raise ConfigError(f"{path}: expected a list of messages or an object with 'messages'")
    for i, m in enumerate(messages):
        if not (isinstance(m, dict) and m.get("role") in ("system", "user", "assistant") and isinstance(m.get("content"), str)):
            raise ConfigError(f"{path}: message {i} needs a role (system/user/assistant) and string content")
    if messages and messages[0]["role"] == "system":
        system, messages = messages[0]["content"], messages[1:]
    session.load(messages, system)


def system(session: Session, console: Console, arg: str) -> None:
    """/system shows the prompt; /system TEXT sets it; /system --clear removes it (never by accident)."""
    if arg == "--clear":
        session.set_system(None)
        console.print(plain("system prompt cleared", "dim"))
    elif arg:
        session.set_system(arg)
        console.print(plain("system prompt set", "dim"))
    elif session.system:
        console.print(Text.assemble(("system prompt: ", "dim"), plain(session.system)))
    else:
        console.print(plain("no system prompt: set one with /system TEXT", "dim"))


def chosen_blocks(messages: list[dict], arg: str, command: str) -> tuple[list[Block], int | None]:
    """The latest reply's code blocks and the number `arg` names (None: none named), checked."""
    blocks = last_blocks(messages)
    if not blocks:
        raise ConfigError(f"{command} found no code block in the assistant's replies")
    if not arg:
        return blocks, None
    if not arg.isdigit() or not 1 <= int(arg) <= len(blocks):
        raise ConfigError(f"{command} takes a block number from 1 to {len(blocks)}, got {arg!r}")
    return blocks, int(arg)


def run_code(session: Session, console: Console, arg: str) -> None:
    """/run: the latest reply's Python blocks joined in order (a function, then its use), or block N."""
    from rich.panel import Panel

    from parley.eval.sandbox import run_python

    blocks, number = chosen_blocks(session.messages, arg, "/run")
    chosen = [blocks[number - 1]] if number else [b for b in blocks if b.python]
    if not chosen:
        raise ConfigError("/run runs Python; the latest reply's code blocks are "
                          + ", ".join(sorted({b.language for b in blocks})))
    if not chosen[0].python:
        raise ConfigError(f"/run runs Python; block {number} is {chosen[0].language}")
    with console.status("running in the sandbox…"):
        result = run_python("\n".join(b.code for b in chosen), timeout=10, memory_mb=1024)
    style = {"passed": "green", "timed_out": "yellow"}.get(result.status, "red")
    output = (result.stdout + result.stderr).rstrip() or "(no output)"
    ran = f"block {number}" if number else f"{len(chosen)} block{'s' * (len(chosen) > 1)}"
    title = f"{ran}: {result.status} in {result.seconds:.1f}s" + (f" · {result.message}" if result.message else "")
    console.print(Panel(plain(output), title=plain(title), border_style=style, title_align="left"))


def copy_code(session: Session, console: Console, arg: str) -> None:
    """/copy [N] [FILE]: block N (default the last) to FILE, or to the clipboard by OSC 52."""
    number, _, path = arg.partition(" ")
    if number and not number.isdigit():  # /copy FILE
        number, path = "", arg
    blocks, chosen = chosen_blocks(session.messages, number, "/copy")
    chosen = chosen or len(blocks)
    code = blocks[chosen - 1].code
    if path.strip():
        target = Path(path.strip()).expanduser()
        try:
            write_atomic(target, code)
        except OSError as e:
            raise ConfigError(f"cannot write {target}: {e.strerror}") from None
        console.print(plain(f"block {chosen} written to {target}", "dim"))
        return
    # OSC 52 asks the terminal itself to set the clipboard: it works over ssh, with no helper program.
    console.file.write(f"\x1b]52;c;{base64.b64encode(code.encode()).decode()}\x07")
    console.file.flush()
    console.print(plain(f"block {chosen} copied ({len(code.splitlines())} lines; if your terminal ignores "
                        f"clipboard requests: /copy {chosen} FILE)", "dim"))


def why_span(session: Session, console: Console, arg: str) -> None:
    """`/why "TEXT"`: attribution of TEXT (a piece of the last reply) to the prompt's messages, lines
    and tokens, by gradient x input and leave-one-message-out occlusion (parley/explain)."""
    import shlex

    from parley.explain.attribution import explain
    from parley.explain.config import ExplainConfig
    from parley.explain.layout import lay_out

    try:
        words = shlex.split(arg)
    except ValueError:  # an unclosed quote: take the text as typed
        words = [arg.strip("\"'")]
    text = " ".join(words)
    last = max((i for i, m in enumerate(session.messages) if m["role"] == "assistant"), default=None)
    if last is None:
        raise ConfigError("/why needs a reply to explain: ask something first")
    loaded = session.engine.weights()
    layout = lay_out(loaded, session._system() + session.messages[:last], session.messages[last]["content"])
    config = ExplainConfig(methods=("gradient_x_input", "occlusion"), span=layout.span_of(text), rows=False)
    with console.status("working out why…"):
        found = explain(loaded, layout, config)
    console.print(Text.assemble(("why ", "bold"), plain(repr(text[:80])),
                                plain(f" · log p = {found.target_logprob:.2f}", "dim")))
    table = Table(title="messages (occlusion: how much leaving each out lowers it; gradient x input: summed)")
    for column in ("message", "occlusion", "gradient x input"):
        table.add_column(column)
    for (label, dropped), (_, gxi) in zip(found.by_message("occlusion"), found.by_message("gradient_x_input")):
        table.add_row(plain(label), f"{dropped:+.3f}", f"{gxi:+.3f}")
    console.print(table)
    lines = sorted(found.by_line("gradient_x_input"), key=lambda item: -abs(item[1]))[:5]
    console.print(plain("lines that counted most (gradient x input):", "bold"))
    for line, score in lines:
        console.print(Text.assemble((f"  {score:+.3f}  ", "red" if score > 0 else "blue"), plain(printable(line)[:100])))


def show_turns(session: Session, console: Console) -> None:
    if not session.messages:
        console.print("[dim]no messages yet[/dim]")
        return
    fitted = session.fit()
    table = Table(title=plain(f"conversation {session.id} · {fitted.tokens} of {session.engine.context_window} tokens"))
    for column in ("#", "role", "tokens", "in context", "text"):
        table.add_column(column)
    dropped = len(fitted.dropped)
    for i, m in enumerate(session.messages):
        tokens = session.engine.count([m], add_generation_prompt=False)  # with the template's markers
        preview = printable(m["content"].replace("\n", " "))
        table.add_row(str(i + 1), m["role"], str(tokens), "no" if i < dropped else "yes", plain(preview[:60]))
    console.print(table)
