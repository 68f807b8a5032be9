"""The terminal chat: streaming Markdown replies with highlighted code, slash commands, stored turns.

    parley chat                     interactive (Enter sends; Esc then Enter, or Alt+Enter, adds a line)
    parley chat -p "question"       one answer as plain text, for scripts and pipes
    parley chat --resume ID         continue a stored conversation (`parley history` lists them)

The conversation itself (history, fit to the context window, stored turns) is a `session.Session`,
the same one the server's conversations API uses; this module only draws it. Every turn is written
to the SQLite store as it happens, so a crash loses at most the reply in progress. Ctrl-C stops the
reply being written (the partial reply is kept) and never the session; Ctrl-D or /quit leaves.

Text that is not ours (replies, program output, file names, titles, parameters, errors) is printed
as plain text, never as Rich markup, and without escape sequences or control characters (`plain`,
`printable`), so it can neither crash the chat nor drive the terminal (clipboard writes, window
titles, cursor moves). Limit: `-p` streams chunk by chunk, so a sequence the model splits across
chunks loses its control characters (it is inert) but its printable rest may show.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.markdown import Markdown
from rich.table import Table
from rich.text import Text

from parley import backend
from parley.engine import Engine, SamplingParams
from parley.errors import ConfigError, ParleyError
from parley.files import write_atomic
from parley.printable import plain, printable
from parley.session import Session
from parley.store import Store

CODE_THEME = "monokai"
CODE_BLOCK = re.compile(r"```([\w+-]*)[^\n]*\n(.*?)```", re.S)
HELP = """\
[bold]Commands[/bold]
  /help               this help
  /reset              start a new conversation (the old one stays in `parley history`)
  /system TEXT        set the system prompt (empty TEXT clears it)
  /params [k=v ...]   show or set sampling parameters, e.g. /params temperature=0.2 max_new_tokens=256
  /save FILE          write this conversation to a JSON file
  /load FILE          continue a conversation saved with /save (or a JSON list of messages)
  /history            this conversation's turns, with their token counts and what no longer fits
  /run                run the last Python code block of the assistant's replies in the sandbox
  /good [NOTE]        mark the last reply good (kept for `parley data prepare --source feedback`)
  /bad [REASON]       mark the last reply bad, with what was wrong
  /edit [TEXT]        rewrite the last reply (an editor opens on it without TEXT): kept as the better answer
  /regen              reply again; every version is kept (/versions lists them)
  /pick N             keep version N of the last reply: preferred to the other versions
  /quit               leave (Ctrl-D works too)
[bold]Keys[/bold]  Enter sends · Esc then Enter (or Alt+Enter) adds a line · Ctrl-C stops a reply"""


@dataclass
class ChatOptions:
    model: str = "smollm2"
    device: str = "auto"
    dtype: str = "auto"
    system: str | None = None
    resume: str | None = None
    params: dict = field(default_factory=dict)  # SamplingParams overrides from flags
    base_url: str | None = None  # the service for `openai:NAME` models (--base-url)
    compile: bool = False  # compile decode steps in the background (interactive chat only; compiled.py)


def open_session(engine: Engine, store: Store, options: ChatOptions) -> Session:
    """A new session with the options' settings, or the stored one `options.resume` names."""
    if options.resume:
        return Session.resume(engine, store, options.resume, system=options.system, params=options.params)
    return Session(engine, store, model=options.model, system=options.system,
                   params=SamplingParams().updated(**options.params))


def run_chat(options: ChatOptions, once: str | None = None) -> None:
    # Check what the user typed before spending seconds on loading the model.
    if once is not None and not once.strip():
        raise ConfigError("the prompt is empty: pass some text with -p or on standard input")
    SamplingParams().updated(**options.params)
    console = Console(stderr=True)
    with console.status(plain(f"loading {options.model}…"), spinner="dots"):
        engine = backend.open(options.model, device=options.device, dtype=options.dtype, base_url=options.base_url,
                              compile=options.compile and once is None)
    session = open_session(engine, Store(), options)
    if once is not None:
        return _answer_once(session, once)
    _interactive(session, Console(highlight=False))


def _answer_once(session: Session, question: str) -> None:
    question = question.strip()
    fitted = session.fit(session.turn(question))
    session.commit(question)
    if fitted.notice:
        print(f"parley: {fitted.notice}", file=sys.stderr)
    reply = ""
    try:
        for token in session.engine.stream(fitted.messages, session.params):
            reply += token.text
            sys.stdout.write(printable(token.text))  # a chunk at a time: a cut sequence loses its ESC
            sys.stdout.flush()
    finally:
        sys.stdout.write("\n")
        if reply:
            session.add("assistant", reply)


def _interactive(session: Session, console: Console) -> None:
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import FileHistory

    from parley.config import parley_home

    prompt = PromptSession(history=FileHistory(str(_input_history(parley_home()))))
    resumed = f" · resumed {session.id} ({len(session.messages)} messages)" if session.messages else ""
    console.print(Text.assemble(
        ("parley", "bold"), plain(f" · {session.engine.spec} · {session.engine.context_window}-token context"
                                  f"{resumed} · /help for commands"), style="dim"))
    while True:
        try:
            text = prompt.prompt("you> ", multiline=False, key_bindings=_newline_keys())
        except KeyboardInterrupt:
            continue  # Ctrl-C at the prompt clears the line
        except EOFError:
            break
        text = text.strip()
        if not text:
            continue
        try:
            if text.startswith("/"):
                if _command(session, console, text) == "quit":
                    break
            else:
                _reply(session, console, text)
        except ParleyError as e:
            console.print(Text.assemble(("error: ", "red"), plain(e)))


def _reply(session: Session, console: Console, text: str | None) -> None:
    """Answer `text`, or (None) the last user message again: a new version of the last reply."""
    fitted = session.fit(session.turn(text))
    if text is not None:
        session.commit(text)
    if fitted.notice:
        console.print(plain(fitted.notice, "yellow"))
    reply, stopped = "", False
    stream = session.engine.stream(fitted.messages, session.params)
    with Live(console=console, auto_refresh=False, vertical_overflow="visible") as live:
        last_draw = 0.0
        try:
            for token in stream:
                reply += token.text
                if time.monotonic() - last_draw > 0.05:
                    live.update(Markdown(printable(reply), code_theme=CODE_THEME), refresh=True)
                    last_draw = time.monotonic()
        except KeyboardInterrupt:
            stopped = True
            stream.close()
        live.update(Markdown(printable(reply), code_theme=CODE_THEME), refresh=True)
    if stopped:
        console.print("[dim](stopped)[/dim]")
    if reply:
        session.answer(reply, **({"stopped": True} if stopped else {}))


def _command(session: Session, console: Console, line: str) -> str | None:
    name, _, arg = line.partition(" ")
    arg = arg.strip()
    if name in ("/quit", "/exit"):
        return "quit"
    if name == "/help":
        console.print(HELP)
    elif name == "/reset":
        session.reset()
        console.print("[dim]new conversation[/dim]")
    elif name == "/system":
        session.set_system(arg)
        console.print(f"[dim]system prompt {'set' if arg else 'cleared'}[/dim]")
    elif name == "/params":
        if arg:
            session.set_params(**_parse_assignments(arg))
        console.print(plain(", ".join(f"{k}={v}" for k, v in vars(session.params).items())))
    elif name == "/save":
        console.print(plain(f"saved to {_save(session, arg)}", "dim"))
    elif name == "/load":
        _load(session, arg)
        console.print(plain(f"loaded {len(session.messages)} messages from {arg} as conversation {session.id}", "dim"))
    elif name == "/history":
        _show_turns(session, console)
    elif name == "/run":
        _run_last_code(session, console)
    elif name in FEEDBACK_COMMANDS:
        _feedback(session, console, name, arg)
    else:
        raise ConfigError(f"unknown command {name}: /help lists the commands")
    return None


FEEDBACK_COMMANDS = ("/good", "/bad", "/edit", "/regen", "/pick", "/versions")


def _feedback(session: Session, console: Console, name: str, arg: str) -> None:
    """The commands that judge the last reply; the session stores each judgement with its context."""
    if name in ("/good", "/bad"):
        session.rate(name == "/good", arg or None)
        console.print(plain(f"marked {name[1:]}" + (f": {arg}" if arg else ""), "dim"))
    elif name == "/edit":
        text = arg or _edited(session.messages[-1]["content"] if session.messages else "")
        session.edit(text)
        console.print(plain("reply replaced by your edit (kept as the better answer)", "dim"))
    elif name == "/regen":
        _reply(session, console, None)
        _say_versions(session, console)
    elif name == "/pick":
        if not arg.isdigit():
            raise ConfigError("/pick N: N is a version number, e.g. /pick 1 (/versions lists them)")
        console.print(Markdown(printable(session.pick(int(arg))), code_theme=CODE_THEME))
        console.print(plain(f"kept version {arg}, preferred to the others", "dim"))
    else:  # /versions
        for i, text in enumerate(session.versions(), 1):
            console.print(Text.assemble((f"{i}: ", "bold"), plain(text)))


def _edited(reply: str) -> str:
    """The user's rewrite of `reply`, typed over it in an editor line (Esc then Enter adds a line)."""
    from prompt_toolkit import PromptSession

    return PromptSession().prompt("edit> ", default=reply, multiline=False, key_bindings=_newline_keys())


def _say_versions(session: Session, console: Console) -> None:
    count = len(session.versions())
    if count > 1:
        console.print(plain(f"version {count} of {count} · /pick N keeps another · /versions lists them", "dim"))


def _parse_assignments(text: str) -> dict[str, str]:
    values = {}
    for item in text.split():
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ConfigError(f"/params takes key=value pairs, got {item!r} (e.g. /params temperature=0.2)")
        values[key] = value
    return values


def _save(session: Session, path: str) -> Path:
    if not path:
        raise ConfigError("/save needs a file name, e.g. /save chat.json")
    target = Path(path).expanduser()
    data = {"model": session.model, "system": session.system, "params": vars(session.params), "messages": session.messages}
    try:
        write_atomic(target, json.dumps(data, indent=2, ensure_ascii=False) + "\n")  # never half a user's file
    except OSError as e:
        raise ConfigError(f"cannot write {target}: {e.strerror}") from None
    return target


def _load(session: Session, path: str) -> None:
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


def last_python_block(messages: list[dict]) -> str | None:
    """The last fenced code block in the assistant's replies, if it is Python (or unlabelled)."""
    for message in reversed(messages):
        if message["role"] != "assistant":
            continue
        blocks = CODE_BLOCK.findall(message["content"])
        if blocks:
            language, code = blocks[-1]
            if language.lower() not in ("", "python", "py", "python3"):
                raise ConfigError(f"/run runs Python; the last code block is {language}")
            return code
    return None


def _run_last_code(session: Session, console: Console) -> None:
    from rich.panel import Panel

    from parley.eval.sandbox import run_python

    code = last_python_block(session.messages)
    if code is None:
        raise ConfigError("/run found no code block in the assistant's replies")
    with console.status("running in the sandbox…"):
        result = run_python(code, timeout=10, memory_mb=1024)
    style = {"passed": "green", "timed_out": "yellow"}.get(result.status, "red")
    output = (result.stdout + result.stderr).rstrip() or "(no output)"
    title = f"{result.status} in {result.seconds:.1f}s" + (f" · {result.message}" if result.message else "")
    console.print(Panel(plain(output), title=plain(title), border_style=style, title_align="left"))


def _show_turns(session: Session, console: Console) -> None:
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


def _newline_keys():
    from prompt_toolkit.key_binding import KeyBindings

    keys = KeyBindings()

    @keys.add("escape", "enter")
    def _(event):
        event.current_buffer.insert_text("\n")

    return keys


def _input_history(home: Path) -> Path:
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError:
        return Path(os.devnull)
    return home / "input-history"


def show_history(limit: int) -> None:
    console = Console()
    conversations = Store().list(limit=limit)
    if not conversations:
        console.print("no conversations yet: start one with `parley chat`")
        return
    table = Table()
    for column in ("id", "updated", "messages", "model", "title"):
        table.add_column(column)
    for c in conversations:
        updated = time.strftime("%Y-%m-%d %H:%M", time.localtime(c.updated_at))
        table.add_row(c.id, updated, str(c.message_count), plain(c.model), plain(c.title))
    console.print(table)


def show_conversation(prefix: str) -> None:
    store = Store()
    cid = store.resolve(prefix)
    conversation = store.get(cid)
    console = Console()
    console.print(Text.assemble(plain(conversation.title or cid, "bold"), plain(f" · {cid} · {conversation.model}")),
                  style="dim")
    if conversation.system:
        console.print(plain(f"system: {conversation.system}", "dim"))
    for m in store.messages(cid):
        console.print(Text(f"{m['role']}>", style="bold"))
        console.print(Markdown(printable(m["content"]), code_theme=CODE_THEME))
