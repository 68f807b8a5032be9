"""Confidence in the terminal as a user sees it: `/confidence` colours replies by token probability, `/why`
lists the least certain tokens with their alternatives, and `parley chat -p ... --explain` prints the same."""

from __future__ import annotations

import re

import pexpect

from test_cli_chat import run, say, spawn

COLOUR = re.compile(r"\x1b\[[0-9;]*(3[1-6]|38;5;\d+)m")  # a foreground colour: what the buckets paint
ALTERNATIVES = re.compile(r"instead: ('.*?' [<\d.]+% · ){4}'.*?' [<\d.]+%")  # five alternatives


def test_confidence_colours_replies_and_why_lists_alternatives(tiny_dir):
    child = spawn("chat", "--model", tiny_dir, "--max-new-tokens", "12", "--seed", "1")
    try:
        assert "ask something first" in say(child, "/why")
        child.sendline("hello there")
        child.expect(r"you>\x1b\[")
        assert not COLOUR.search(child.before)  # off by default: Markdown, uncoloured
        assert "confidence colouring on" in say(child, "/confidence")
        child.sendline("hello again")
        child.expect(r"you>\x1b\[")
        assert COLOUR.search(child.before)  # a random model is unsure of its tokens: coloured
        why = say(child, "/why")
        assert re.search(r"the 5 least certain of 12 tokens:", why)
        assert len(re.findall(r"#\d+ ", why)) == 5 and len(ALTERNATIVES.findall(why)) == 5
        assert "confidence colouring off" in say(child, "/confidence")
        assert "is not in the reply" in say(child, '/why "hello"')  # with text: attribution's branch, not this one
    finally:
        child.sendline("/quit")
        child.expect(pexpect.EOF)


def test_one_shot_explain_prints_the_least_certain_tokens(tiny_dir):
    result = run("chat", "--model", tiny_dir, "-p", "hello there", "--seed", "3", "--max-new-tokens", "8",
                 "--explain")
    assert result.returncode == 0, result.stderr
    answer, _, explained = result.stdout.partition("\n\nthe ")
    assert answer.strip() and explained.startswith("5 least certain of 8 tokens:")
    assert len(ALTERNATIVES.findall(explained)) == 5 and "\x1b" not in result.stdout
