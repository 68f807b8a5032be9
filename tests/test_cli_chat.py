"""`parley chat` and `parley history` as a user runs them: real subprocesses, a real pseudo-terminal."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pexpect
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from test_constraints import PERSON, check_person

PARLEY = str(Path(sys.executable).with_name("parley"))
# A fresh prompt: prompt_toolkit draws "you>" and moves the cursor; its redraw of an accepted line
# reads "you> TEXT", so this pattern matches only the prompt that waits for the next input.
PROMPT = re.compile(r"you>\x1b\[")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")



def run(*args, input=None, env=None):
    return subprocess.run([PARLEY, *args], capture_output=True, text=True, input=input, env=env or os.environ, timeout=300)


def spawn(*args) -> pexpect.spawn:
    # pexpect is a terminal that never answers cursor-position requests; say so instead of making
    # prompt_toolkit wait for one.
    env = dict(os.environ, TERM="xterm", PROMPT_TOOLKIT_NO_CPR="1")
    # 200 columns: the tmp paths the tests print (longer under pytest-xdist) must not wrap.
    child = pexpect.spawn(PARLEY, list(args), env=env, encoding="utf-8", dimensions=(50, 200), timeout=240)
    child.expect(PROMPT)
    return child


def say(child: pexpect.spawn, text: str) -> str:
    """Send one line and return everything printed until the next prompt, without terminal codes."""
    child.sendline(text)
    child.expect(PROMPT)
    return ANSI.sub("", child.before)


def test_one_shot_prints_plain_text_and_is_stored(tiny_dir):
    result = run("chat", "--model", tiny_dir, "-p", "hello there", "--seed", "3", "--max-new-tokens", "8")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() and "\x1b" not in result.stdout
    history = run("history")
    assert "hello there" in history.stdout


def test_piped_stdin_answers_once(tiny_dir):
    result = run("chat", "--model", tiny_dir, "--max-new-tokens", "4", "--seed", "1", input="a question on stdin\n")
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "no-such/model", "-p", "hi"], "not in the local Hugging Face cache"),
        (["-p", "   "], "the prompt is empty"),
        (["--temperature", "-1", "-p", "hi"], "temperature=-1.0 is out of range"),
        (["--model", "/no/such/dir", "-p", "hi"], "does not exist"),
    ],
)
def test_bad_input_is_one_line_without_traceback(args, message):
    result = run("chat", *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_one_shot_json_schema_prints_json_that_matches_it(tiny_dir, tmp_path):
    schema = tmp_path / "person.json"
    schema.write_text(json.dumps(PERSON))
    result = run("chat", "--model", tiny_dir, "-p", "Describe a person.", "--json-schema", str(schema),
                 "--temperature", "1", "--seed", "2", "--max-new-tokens", "200")
    assert result.returncode == 0, result.stderr
    check_person(json.loads(result.stdout))


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ('{"type": "object", "not": {}}', 'Unimplemented keys: ["not"]'),
    (None, "cannot read it"),
])
def test_a_bad_json_schema_file_is_one_line_naming_it(tmp_path, content, message):
    schema = tmp_path / "schema.json"
    if content is not None:
        schema.write_text(content)
    result = run("chat", "-p", "hi", "--json-schema", str(schema))
    assert result.returncode == 2
    assert f"--json-schema {schema}: " in result.stderr and message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_tiny_temperature_is_greedy_not_a_traceback(tiny_dir):
    args = ("chat", "--model", tiny_dir, "-p", "hi", "--max-new-tokens", "6")
    tiny = run(*args, "--temperature", "1e-300")  # once NaN probabilities and a traceback
    assert tiny.returncode == 0, tiny.stderr
    assert tiny.stdout == run(*args, "--temperature", "0").stdout  # below 1e-5 a temperature is greedy


def test_overlong_input_is_cut_with_a_notice(tiny_dir):
    # The tiny model's window is 256 tokens; this question is far longer, so its start is cut.
    long = "filler words " * 400 + "the real question?"
    result = run("chat", "--model", tiny_dir, "-p", long, "--max-new-tokens", "4", "--temperature", "0")
    assert result.returncode == 0, result.stderr
    assert "context full: cut" in result.stderr


def test_unwritable_home_is_one_line(tmp_path, tiny_dir):
    blocker = tmp_path / "file"
    blocker.write_text("")
    env = dict(os.environ, PARLEY_HOME=str(blocker / "home"))
    result = run("chat", "--model", tiny_dir, "-p", "hi", env=env)
    assert result.returncode == 2 and "PARLEY_HOME" in result.stderr and "Traceback" not in result.stderr


def test_slash_commands_and_errors_keep_the_session(tmp_path, tiny_dir):
    child = spawn("chat", "--model", tiny_dir, "--temperature", "0", "--max-new-tokens", "6")
    assert "/params [k=v ...]" in say(child, "/help")  # our own brackets, not read as Rich markup
    assert "unknown command /bogus" in say(child, "/bogus")
    assert "not a valid float" in say(child, "/params temperature=warm")
    assert "seed=1180591620717411303424 is out of range" in say(child, "/params seed=1180591620717411303424")
    assert "temperature=0.0" in say(child, "/params")
    assert "max_new_tokens=5" in say(child, "/params max_new_tokens=5")
    assert "no system prompt" in say(child, "/system")
    say(child, "/system You are a pirate.")
    assert "You are a pirate." in say(child, "/system")  # no argument shows it, never clears it
    say(child, "first question")
    say(child, "second question")
    table = say(child, "/history")
    assert "first question" in table and "second question" in table

    saved = tmp_path / "chat.json"
    assert "saved" in say(child, f"/save {saved}")
    data = json.loads(saved.read_text())
    assert data["system"] == "You are a pirate."
    assert [m["role"] for m in data["messages"]] == ["user", "assistant", "user", "assistant"]
    assert data["params"]["max_new_tokens"] == 5

    assert "new conversation" in say(child, "/reset")
    assert "no messages yet" in say(child, "/history")
    assert "loaded 4 messages" in say(child, f"/load {saved}")
    assert "first question" in say(child, "/history")
    assert "cannot read" in say(child, f"/load {tmp_path / 'missing.json'}")
    assert "no code block" in say(child, "/run")

    code_chat = tmp_path / "code.json"
    reply = "Here you go:\n```python\nimport os\nprint(6 * 7, os.getcwd())\n```\n"
    code_chat.write_text(json.dumps([{"role": "user", "content": "code?"}, {"role": "assistant", "content": reply}]))
    say(child, f"/load {code_chat}")
    ran = say(child, "/run")
    assert "passed" in ran and "42 /sandbox" in ran  # it ran inside the sandbox's own directory
    assert "system prompt cleared" in say(child, "/system --clear")
    assert "no system prompt" in say(child, "/system")
    child.sendline("/quit")
    child.expect(pexpect.EOF)
    assert "continue it with `parley chat --resume " in ANSI.sub("", child.before)


# A reply whose second block uses the first's function, as models write them, then a shell block.
TWO_BLOCKS = ("Define it:\n```python\ndef add(a, b):\n    return a + b\n```\nThen:\n```python\n"
              "print(add(40, 2))\n```\nOr from a shell:\n```bash\necho hi\n```\n")


def test_run_and_copy_take_every_block_of_the_reply(tmp_path, tiny_dir):
    chat = tmp_path / "blocks.json"
    chat.write_text(json.dumps([{"role": "user", "content": "add?"}, {"role": "assistant", "content": TWO_BLOCKS}]))
    child = spawn("chat", "--model", tiny_dir)
    say(child, f"/load {chat}")
    ran = say(child, "/run")
    assert "2 blocks: passed" in ran and "42" in ran  # both Python blocks, in order: no NameError
    assert "NameError" in say(child, "/run 2")  # one block alone
    assert "block 3 is bash" in say(child, "/run 3")
    assert "a block number from 1 to 3, got '9'" in say(child, "/run 9")

    copied = say(child, "/copy 1")
    payload = base64.b64encode(b"def add(a, b):\n    return a + b\n").decode()
    assert f"\x1b]52;c;{payload}\x07" in child.before and "block 1 copied" in copied  # OSC 52: the clipboard
    target = tmp_path / "add.py"
    assert f"block 2 written to {target}" in say(child, f"/copy 2 {target}")
    assert target.read_text() == "print(add(40, 2))\n"
    assert "block 3 written" in say(child, f"/copy {tmp_path / 'last.sh'}")  # the last block by default
    child.sendline("/quit")
    child.expect(pexpect.EOF)
    quit_line = ANSI.sub("", child.before)
    cid = re.search(r"parley chat --resume ([0-9a-f]+)", quit_line).group(1)

    # Resumed: the earlier turns are shown, their code flush left (no margin gets copied with the mouse).
    resumed = spawn("chat", "--model", tiny_dir, "--resume", cid)
    shown = ANSI.sub("", resumed.before)
    assert "add?" in shown and "Define it:" in shown
    assert re.search(r"^def add\(a, b\):", shown, re.M) and re.search(r"^    return a \+ b", shown, re.M)
    resumed.sendline("/quit")
    resumed.expect(pexpect.EOF)


@pytest.mark.slow
def test_real_model_remembers_forgets_and_resumes():
    """Turn 2 needs turn 1; after /reset it is gone; --resume brings it back. Ctrl-C stops only the reply."""
    child = spawn("chat", "--temperature", "0", "--max-new-tokens", "2000")
    # First, on an empty conversation (what a 135M model writes depends on it): a reply far longer
    # than the time Ctrl-C takes to land, however fast the machine decodes.
    child.sendline("Write a very long essay about the history of computing.")
    child.expect_exact("computer", timeout=120)  # the reply is streaming
    child.sendcontrol("c")
    stopped = child.expect([re.escape("(stopped)"), PROMPT])
    assert stopped == 0, f"the reply ended without (stopped): {ANSI.sub('', child.before)[-300:]!r}"
    child.expect(PROMPT)
    assert "new conversation" in say(child, "/reset")

    say(child, "/params max_new_tokens=60")
    say(child, "Hi, my name is Zorblax. Please remember it.")
    assert "Zorblax" in say(child, "What is my name?")

    say(child, "/reset")
    assert "Zorblax" not in say(child, "What is my name?")
    child.sendline("/quit")
    child.expect(pexpect.EOF)

    listing = run("history").stdout
    first = next(line for line in listing.splitlines() if "Hi, my name is" in line)
    conversation_id = re.search(r"\b[0-9a-f]{8}\b", first).group(0)
    resumed = spawn("chat", "--resume", conversation_id, "--temperature", "0", "--max-new-tokens", "60")
    assert "Zorblax" in say(resumed, "What is my name?")
    resumed.sendline("/quit")
    resumed.expect(pexpect.EOF)


def test_a_crash_keeps_every_finished_turn(tiny_dir):
    """SIGKILL mid-session: what was said before the kill is in the store."""
    from parley.store import Store

    child = spawn("chat", "--model", tiny_dir, "--seed", "1", "--max-new-tokens", "4")
    say(child, "remember this first line")
    child.sendline("and this second one")
    child.expect_exact("and this second one")
    time.sleep(1.5)  # the question is stored before the reply starts
    child.kill(signal.SIGKILL)
    child.close()
    store = Store()
    latest = store.list(limit=1)[0]
    contents = [m["content"] for m in store.messages(latest.id)]
    assert contents[0] == "remember this first line" and len(contents) >= 3
    assert contents[2] == "and this second one"


# Untrusted text for the terminal: Rich markup (which altered or crashed the output) and escape
# sequences (a clipboard write, a window title, a screen clear, an 8-bit CSI) that must not reach it.
MARKUP = "[bold]x[/] and [/]"
OSC52 = "\x1b]52;c;aGFja2Vk\x1b\\"
ESCAPES = f"{OSC52}\x1b]0;pwned\x07\x1b[2J\x9b31m\r"


def scripted_service(reply: str, refusal: str):
    """A remote OpenAI-compatible model (the true boundary) that streams `reply` three characters at a
    time, so escape sequences straddle chunks, and refuses any message containing "refuse"."""
    app = FastAPI()

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": "scripted", "object": "model", "created": 0, "owned_by": "test"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        question = (await request.json())["messages"][-1]["content"]
        if "refuse" in question:
            return JSONResponse({"error": {"message": refusal, "type": "invalid_request_error"}}, status_code=400)
        slow = "slowly" in question  # a reply that takes long enough to type over and interrupt
        text = "Counting:" + " tick" * 300 if slow else reply

        async def events():
            for i in range(0, len(text), 3):
                delta = {"index": 0, "delta": {"content": text[i:i + 3]}, "finish_reason": None}
                chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "scripted", "choices": [delta]}
                yield f"data: {json.dumps(chunk)}\n\n"
                if slow:
                    await asyncio.sleep(0.1)
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


def assert_plain(output: str) -> None:
    """No escape sequence got through: no ESC or other control character (but the carriage returns and
    cursor moves the chat draws with), no clipboard payload, no title."""
    assert not re.search(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]", ANSI.sub("", output)), repr(output)
    assert "aGFja2Vk" not in output and "pwned" not in output


@pytest.fixture(scope="module")
def scripted():
    from serve.live_server import start_server

    url, stop = start_server(scripted_service(f"Reply: {MARKUP} {ESCAPES}done.", f"bad {MARKUP}"))
    yield ["--model", "openai:scripted", "--base-url", url + "/v1"]
    stop()


def test_one_shot_strips_escape_sequences_from_the_model(scripted):
    result = run("chat", *scripted, "-p", "hi")
    assert result.returncode == 0, result.stderr
    assert MARKUP in result.stdout and "done." in result.stdout
    # Streamed as it comes, so a sequence cut between chunks loses its control characters (inert),
    # not necessarily its printable tail.
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", result.stdout), repr(result.stdout)


def test_chat_prints_untrusted_text_as_plain_text(scripted, tmp_path):
    child = spawn("chat", *scripted)
    reply = say(child, "hello")
    assert f"Reply: {MARKUP}" in reply and "done." in reply
    assert_plain(child.before)
    assert f"bad {MARKUP}" in say(child, "please refuse")  # an error carrying markup
    assert "stop=['[/]']" in say(child, "/params stop=[/]")
    assert "unknown parameter '[bold]k[/]'" in say(child, "/params [bold]k[/]=1")
    assert "cannot read nofile[/x]" in say(child, "/load nofile[/x]")  # a file name in an error

    title = f"Title {MARKUP}{ESCAPES}"
    # The program writes the escapes; its source (shown by `parley history ID`) holds them as hex.
    code = f'print("{MARKUP}")\nprint(bytes.fromhex("{ESCAPES.encode().hex()}").decode())\nraise ValueError("[/] boom")'
    chat = tmp_path / "chat [bold]x[red].json"  # a file name with markup
    chat.write_text(json.dumps([{"role": "system", "content": f"Sys {MARKUP}{ESCAPES}"},
                                {"role": "user", "content": title},
                                {"role": "assistant", "content": f"Run:\n```python\n{code}\n```\n"}]))
    assert f"loaded 2 messages from {chat}" in say(child, f"/load {chat}")
    table = say(child, "/history")
    assert f"Title {MARKUP}" in table
    assert_plain(child.before)
    ran = say(child, "/run")
    assert MARKUP in ran and "[/] boom" in ran
    assert_plain(child.before)
    assert f"saved to {tmp_path / '[x].json'}" in say(child, f"/save {tmp_path / '[x].json'}")
    assert f"system prompt: Sys {MARKUP}" in say(child, "/system")
    assert_plain(child.before)
    child.sendline("/quit")
    child.expect(pexpect.EOF)
    cid = re.search(r"parley chat --resume ([0-9a-f]+)", ANSI.sub("", child.before)).group(1)
    resumed = spawn("chat", *scripted, "--resume", cid)  # the earlier turns, shown as plain text
    assert f"Title {MARKUP}" in resumed.before and f"system: Sys {MARKUP}" in ANSI.sub("", resumed.before)
    assert_plain(resumed.before)
    resumed.sendline("/quit")
    resumed.expect(pexpect.EOF)

    wide = dict(os.environ, COLUMNS="200")  # the table's title column whole, on one line
    listing = run("history", env=wide)
    assert listing.returncode == 0, listing.stderr
    assert f"Title {MARKUP}" in listing.stdout
    assert_plain(listing.stdout)
    cid = re.search(r"\b([0-9a-f]{8})\b.*Title", listing.stdout).group(1)
    shown = run("history", cid, env=wide)
    assert shown.returncode == 0, shown.stderr
    assert f"Title {MARKUP}" in shown.stdout and "[/] boom" in shown.stdout
    assert_plain(shown.stdout)


def test_a_streaming_reply_shows_life_and_keeps_typed_keys_out(scripted):
    child = spawn("chat", *scripted)
    child.sendline("answer slowly")
    child.expect_exact("thinking")  # a spinner from Enter on, before any token
    child.expect_exact("tick tick")
    child.send("typed meanwhile")  # keys typed during the reply are not drawn into it
    child.sendcontrol("c")
    child.expect_exact("(stopped)")
    during = child.before
    child.expect(PROMPT)
    assert "typed meanwhile" not in during and "^C" not in during, during[-300:]
    assert "Counting:" in say(child, "/history")  # the partial reply is kept
    child.sendline("/quit")
    child.expect(pexpect.EOF)


def test_why_quoted_text_explains_that_part_of_the_last_reply(tmp_path, tiny_dir):
    chat = tmp_path / "add.json"
    chat.write_text(json.dumps({"system": "Answer with code.", "messages": [
        {"role": "user", "content": "Add a and b.\nUse Python."},
        {"role": "assistant", "content": "def add(a, b):\n    return a + b"}]}))
    child = spawn("chat", "--model", tiny_dir)
    assert "/why" in say(child, "/help")
    assert "ask something first" in say(child, '/why "a + b"')
    say(child, f"/load {chat}")
    shown = say(child, '/why "a + b"')
    assert "why 'a + b'" in shown and "log p =" in shown
    assert "0 system" in shown and "1 user" in shown and "(assistant prompt)" in shown
    assert "Use Python." in shown  # a line of the prompt, with its score
    assert "not in the reply" in say(child, '/why "a * b"')
    assert "Traceback" not in shown
    child.sendline("/quit")
    child.expect(pexpect.EOF)


def test_feedback_commands_land_in_the_store(tiny_dir):
    """/good, /regen then /pick, /bad with a reason, /edit in the editor line: each is a judgement in
    the store, with the context it judged."""
    from parley.store import Store

    child = spawn("chat", "--model", tiny_dir, "--max-new-tokens", "6", "--temperature", "1.0")
    say(child, "Name a colour")
    assert "marked good: crisp" in say(child, "/good crisp")
    assert "version 2 of 2" in say(child, "/regen")
    assert "kept version 1" in say(child, "/pick 1")
    assert "marked bad: too vague" in say(child, "/bad too vague")
    child.sendline("/edit")
    child.expect("edit> ")
    # Ctrl-U clears to the start of a line and Backspace joins it to the one above: repeated, they
    # clear a sampled reply of any shape (it may hold newlines)
    child.send("\x15\x7f" * 32)
    child.sendline("Blue, like the sky.")
    child.expect(PROMPT)
    assert "kept as the better answer" in ANSI.sub("", child.before)
    assert "N is a version number" in say(child, "/pick x")
    child.sendline("/quit")
    child.expect(pexpect.EOF)

    store = Store()
    cid = store.list(limit=1)[0].id
    feedback = store.feedback(conversation_id=cid)
    kinds = [f.kind for f in feedback]
    assert {"good", "bad", "edit"} <= set(kinds) and all(f.context[-1]["content"] == "Name a colour" for f in feedback)
    first, second = store.versions(cid, store.replies(cid)[-1]["id"])[:2]
    assert ("pick" in kinds) == (first != second)  # two equal versions are no preference
    edit = next(f for f in feedback if f.kind == "edit")
    assert edit.chosen == "Blue, like the sky." and edit.rejected == first
    assert store.messages(cid)[-1]["content"] == "Blue, like the sky."
    assert next(f for f in feedback if f.kind == "bad").note == "too vague"
