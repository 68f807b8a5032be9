"""The terminal chat: streaming Markdown replies with highlighted code, slash commands, stored turns.

    parley chat                     interactive (Enter sends; Esc then Enter, or Alt+Enter, adds a line)
    parley chat -p "question"       one answer as plain text, for scripts and pipes
    parley chat --resume ID         continue a stored conversation (`parley history` lists them)
    parley chat -p "q" --explain    the answer, then its least certain tokens with their alternatives

Confidence (parley/explain/confidence.py): `/confidence` colours replies by each token's probability
(green, yellow, orange, red: sure to unsure; shown as plain text rather than Markdown while on), and
`/why` lists the last reply's least certain tokens, each with its top alternatives. The numbers are the
engine's own, streamed with each token (interactive replies are always decoded with `ALTERNATIVES`
alternatives, which changes no token, so /why works on any reply; -p asks for them only with --explain).

The conversation itself (history, fit to the context window, stored turns) is a `session.Session`,
the same one the server's conversations API uses; this module only draws it (the slash commands that
act on the session and on code are in chat_commands.py). Every turn is written
to the SQLite store as it happens, so a crash loses at most the reply in progress. Ctrl-C stops the
reply being written (the partial reply is kept) and never the session; Ctrl-D or /quit leaves and
says how to come back (`--resume ID`); a resumed conversation shows its latest turns first.

While a reply is on its way a spinner shows, from Enter to the first token (a long paste can take a
while to read), and the keyboard's echo is off: keys typed meanwhile wait for the next prompt instead
of landing in the middle of the reply and shifting the redrawn lines. Code blocks are drawn without
a margin, so code copied with the mouse has no extra leading space; `/run` runs the Python blocks of
the latest reply with code, in order (or `/run N`, one), and `/copy [N] [FILE]` puts a block on the
clipboard (OSC 52: most terminals, over ssh too; tmux needs `set -g set-clipboard on`) or in a file.

Text that is not ours (replies, program output, file names, titles, parameters, errors) is printed
as plain text, never as Rich markup, and without escape sequences or control characters (`plain`,
`printable`), so it can neither crash the chat nor drive the terminal (clipboard writes, window
titles, cursor moves). Limit: `-p` streams chunk by chunk, so a sequence the model splits across
chunks loses its control characters (it is inert) but its printable rest may show.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.markdown import CodeBlock, Markdown
from rich.spinner import Spinner
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from parley import backend
from parley import chat_commands as commands
from parley.engine import Engine, SamplingParams
from parley.errors import ConfigError, ParleyError
from parley.explain.confidence import ALTERNATIVES, ReplyToken, bucket, why_lines
from parley.printable import plain, printable
from parley.session import Session
from parley.store import Store

CODE_THEME = "monokai"
SHOWN_ON_RESUME = 6  # messages a resumed conversation shows before the prompt (`/history` lists all)
# The help, as (text, style) lines: our own text, so no Rich markup to misread "[k=v ...]" as a tag.
HELP = [
    ("Commands", "bold"),
    ("  /help               this help", ""),
    ("  /reset              start a new conversation (the old one stays in `parley history`)", ""),
    ("  /system [TEXT]      show the system prompt, or set it to TEXT; /system --clear removes it", ""),
    ("  /params [k=v ...]   show or set sampling parameters, e.g. /params temperature=0.2 max_new_tokens=256", ""),
    ("  /save FILE          write this conversation to a JSON file", ""),
    ("  /load FILE          continue a conversation saved with /save (or a JSON list of messages)", ""),
    ("  /history            this conversation's turns, with their token counts and what no longer fits", ""),
    ("  /run [N]            run the latest reply's Python code blocks in order (or block N) in the sandbox", ""),
    ("  /copy [N] [FILE]    copy the latest reply's code block N (default: the last) to the clipboard, or to FILE", ""),
    ("  /confidence         colour replies by how sure the model was of each token (again: off)", ""),
    ('  /why ["TEXT"]       the last reply\'s least certain tokens and their alternatives; with TEXT: what drove it', ""),
    ("  /good [NOTE]        mark the last reply good (kept for `parley data prepare --source feedback`)", ""),
    ("  /bad [REASON]       mark the last reply bad, with what was wrong", ""),
    ("  /edit [TEXT]        rewrite the last reply (an editor opens on it without TEXT): kept as the better answer", ""),
    ("  /regen              reply again; every version is kept (/versions lists them)", ""),
    ("  /pick N             keep version N of the last reply: preferred to the other versions", ""),
    ("  /quit               leave (Ctrl-D works too)", ""),
    ("Keys", "bold"),
    ("  Enter sends · Esc then Enter (or Alt+Enter) adds a line · Ctrl-C stops a reply", ""),
]


class FlushCode(CodeBlock):
    """Rich's code block without its one-column margin, so code copied with the mouse has no extra
    leading space on each line."""

    def __rich_console__(self, console, options):
        yield Syntax(str(self.text).rstrip(), self.lexer_name, theme=self.theme, word_wrap=True, padding=0)


class ReplyMarkdown(Markdown):
    elements = {**Markdown.elements, "fence": FlushCode, "code_block": FlushCode}


def markdown(text: str) -> ReplyMarkdown:
    """Untrusted Markdown (a reply, a stored message) as the chat draws it: printable, code flush left."""
    return ReplyMarkdown(printable(text), code_theme=CODE_THEME)


@dataclass
class ChatOptions:
    model: str = "smollm2"
    device: str = "auto"
    dtype: str = "auto"
    system: str | None = None
    resume: str | None = None
    params: dict = field(default_factory=dict)  # SamplingParams overrides from flags
    base_url: str | None = None  # the service for `openai:NAME` models (--base-url)
    compile: bool | None = None  # compile decoding in the background (interactive chat only); None: compiled.wanted()
    explain: bool = False  # -p: after the answer, list its least certain tokens (--explain)


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
    if options.explain and once is None:
        raise ConfigError("--explain goes with -p (one answer); in the interactive chat use /why and /confidence")
    SamplingParams().updated(**options.params)
    console = Console(stderr=True)
    with console.status(plain(f"loading {options.model}…"), spinner="dots"):
        engine = backend.open(options.model, device=options.device, dtype=options.dtype, base_url=options.base_url,
                              compile=options.compile if once is None else False)
    session = open_session(engine, Store(), options)
    if once is not None:
        return _answer_once(session, once, explain=options.explain)
    _interactive(session, Console(highlight=False))


def _answer_once(session: Session, question: str, explain: bool = False) -> None:
    question = question.strip()
    fitted = session.fit(session.turn(question))
    session.commit(question)
    if fitted.notice:
        print(f"parley: {fitted.notice}", file=sys.stderr)
    reply, tokens = "", []
    try:
        params = _with_alternatives(session.params) if explain else session.params
        for token in session.engine.stream(fitted.messages, params):
            reply += token.text
            tokens.append(ReplyToken.of(token, len(tokens)))
            sys.stdout.write(printable(token.text))  # a chunk at a time: a cut sequence loses its ESC
            sys.stdout.flush()
    finally:
        sys.stdout.write("\n")
        if reply:
            session.add("assistant", reply)
    if explain:
        sys.stdout.write("\n" + printable("\n".join(why_lines(tokens))) + "\n")


def _interactive(session: Session, console: Console) -> None:
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import FileHistory

    from parley.config import parley_home

    prompt = PromptSession(history=FileHistory(str(_input_history(parley_home()))))
    confidence = Confidence()
    resumed = f" · resumed {session.id} ({len(session.messages)} messages)" if session.messages else ""
    console.print(Text.assemble(
        ("parley", "bold"), plain(f" · {session.engine.spec} · {session.engine.context_window}-token context"
                                  f"{resumed} · /help for commands"), style="dim"))
    if session.messages:
        _show_recent(session, console)
    try:
        _prompt_loop(session, console, prompt, confidence)
    finally:
        if session.id:
            console.print(plain(f"conversation {session.id} is stored: continue it with "
                                f"`parley chat --resume {session.id}`", "dim"))


def _show_recent(session: Session, console: Console) -> None:
    """The latest turns of a resumed conversation, so the user sees where it stands."""
    earlier = len(session.messages) - SHOWN_ON_RESUME
    if earlier > 0:
        console.print(plain(f"… {earlier} earlier messages (/history lists them)", "dim"))
    if session.system:
        console.print(plain(f"system: {session.system}", "dim"))
    print_messages(console, session.messages[max(0, earlier):])


def print_messages(console: Console, messages: list[dict]) -> None:
    for m in messages:
        console.print(Text(f"{m['role']}>", style="bold"))
        console.print(markdown(m["content"]))


def _prompt_loop(session: Session, console: Console, prompt, confidence: Confidence) -> None:
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
                if _command(session, console, text, confidence) == "quit":
                    break
            else:
                _reply(session, console, text, confidence)
        except ParleyError as e:
            console.print(Text.assemble(("error: ", "red"), plain(e)))


def _reply(session: Session, console: Console, text: str | None, confidence: Confidence | None = None) -> None:
    """Answer `text`, or (None) the last user message again: a new version of the last reply."""
    confidence = confidence or Confidence()
    reply, stopped, stream = "", False, None
    confidence.last = []
    thinking = Spinner("dots", Text("thinking…", style="dim"))
    # Drawn by Live's own thread ten times a second: the spinner turns from Enter on, and a fast
    # stream costs one Markdown render per frame, not one per token.
    with _typing_held(), Live(thinking, console=console, refresh_per_second=10, vertical_overflow="visible") as live:
        try:
            fitted = session.fit(session.turn(text))
            if text is not None:
                session.commit(text)
            if fitted.notice:
                console.print(plain(fitted.notice, "yellow"))
            stream = session.engine.stream(fitted.messages, _with_alternatives(session.params))
            for token in stream:
                reply += token.text
                confidence.last.append(ReplyToken.of(token, len(confidence.last)))
                live.update(confidence.render(reply))
        except KeyboardInterrupt:
            stopped = True
            if stream is not None:
                stream.close()
        live.update(confidence.render(reply) if reply else Text(""), refresh=True)
    if stopped:
        console.print(plain("(stopped)", "dim"))
    if reply:
        session.answer(reply, **({"stopped": True} if stopped else {}))
        _mention_code(console, reply)


@contextmanager
def _typing_held() -> Iterator[None]:
    """The terminal's echo off while a reply streams: typed keys (and Ctrl-C's "^C") would otherwise be
    drawn inside the reply and shift the lines Live redraws, so the last line showed twice. What is
    typed stays in the terminal's buffer for the next prompt; Ctrl-C still interrupts."""
    try:
        import termios

        fd = sys.stdin.fileno()
        saved = termios.tcgetattr(fd)
    except (ImportError, OSError, ValueError):  # not a terminal (or not POSIX): nothing is echoed
        yield
        return
    quiet = termios.tcgetattr(fd)
    quiet[3] &= ~(termios.ECHO | termios.ECHOCTL)
    termios.tcsetattr(fd, termios.TCSANOW, quiet)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSANOW, saved)


def _mention_code(console: Console, reply: str) -> None:
    """Under a reply with code: how to run or copy it."""
    from parley.code_blocks import code_blocks

    blocks = code_blocks(reply)
    if blocks:
        listed = ", ".join(f"{i} {b.language or 'code'}" for i, b in enumerate(blocks, 1))
        console.print(plain(f"code blocks: {listed} · /run [N] runs them · /copy [N] copies one", "dim"))


def _command(session: Session, console: Console, line: str, confidence: Confidence | None = None) -> str | None:
    name, _, arg = line.partition(" ")
    arg = arg.strip()
    if name in ("/quit", "/exit"):
        return "quit"
    if name == "/help":
        console.print(Text("\n").join(Text(line, style=style) for line, style in HELP))
    elif name == "/reset":
        session.reset()
        console.print("[dim]new conversation[/dim]")
    elif name == "/system":
        commands.system(session, console, arg)
    elif name == "/params":
        if arg:
            session.set_params(**commands.parse_assignments(arg))
        console.print(plain(", ".join(f"{k}={v}" for k, v in vars(session.params).items())))
    elif name == "/save":
        console.print(plain(f"saved to {commands.save(session, arg)}", "dim"))
    elif name == "/load":
        commands.load(session, arg)
        console.print(plain(f"loaded {len(session.messages)} messages from {arg} as conversation {session.id}", "dim"))
    elif name == "/history":
        commands.show_turns(session, console)
    elif name == "/run":
        commands.run_code(session, console, arg)
    elif name == "/copy":
        commands.copy_code(session, console, arg)
    elif name == "/why" and arg:  # attribution of a part of the reply; /why alone is confidence's
        commands.why_span(session, console, arg)
    elif name in ("/confidence", "/why"):
        _confidence_command(console, name, arg, confidence or Confidence())
    elif name in FEEDBACK_COMMANDS:
        _feedback(session, console, name, arg)
    else:
        raise ConfigError(f"unknown command {name}: /help lists the commands")
    return None


# ---- Confidence: /confidence, /why, --explain (the maths is parley/explain/confidence.py) ----

CONFIDENCE_STYLES = ("green", "yellow", "dark_orange", "bold red")  # colour buckets 0 (sure) .. 3 (unsure)


@dataclass
class Confidence:
    """The chat's confidence view: whether replies are coloured by token probability, and the last reply's
    tokens with their probabilities and alternatives (what /why reads)."""

    colour: bool = False
    last: list[ReplyToken] = field(default_factory=list)

    def render(self, reply: str):
        """The reply as drawn: Markdown, or (colouring on) its tokens coloured by their bucket."""
        if not self.colour:
            return markdown(reply)
        return Text.assemble(*((printable(t.text), CONFIDENCE_STYLES[bucket(t.logprob)]) for t in self.last))


def _with_alternatives(params: SamplingParams) -> SamplingParams:
    """`params` asking the engine for each token's alternatives (what /why and --explain show)."""
    return dataclasses.replace(params, top_logprobs=max(params.top_logprobs, ALTERNATIVES))


def _confidence_command(console: Console, name: str, arg: str, confidence: Confidence) -> None:
    if name == "/confidence":
        confidence.colour = not confidence.colour
        legend = Text.assemble(*((f" {label} ", style) for label, style in
                                 zip((">=80%", ">=50%", ">=20%", "<20%"), CONFIDENCE_STYLES)))
        console.print(Text.assemble(("confidence colouring on:", "dim"), legend) if confidence.colour
                      else Text("confidence colouring off", style="dim"))
        return
    if not confidence.last:
        raise ConfigError("/why explains the last reply: ask something first")
    console.print(plain("\n".join(why_lines(confidence.last))))


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
        console.print(markdown(session.pick(int(arg))))
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
    print_messages(console, store.messages(cid))
