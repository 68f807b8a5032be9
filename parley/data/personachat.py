"""Persona-Chat / ConvAI2 in ParlAI's numbered text format, one dialogue per record.

    1 your persona: i like to remodel homes.
    2 your persona: i like to go hunting.
    3 hi , how are you doing ?<TAB>you must be very fast .<TAB><TAB>cand 1|cand 2|...
    4 i am ! for my hobby i like to do canning .<TAB>i also remodel homes .<TAB><TAB>...
    1 your persona: ...                                    (numbering restarts: the next dialogue)

Each numbered turn holds the partner's line, a TAB, and the reply the model should give; reward and
candidates after it are ignored, as are `partner's persona:` lines. `your persona:` lines become the
system prompt. A first partner line of `__SILENCE__` (the bot spoke first) is kept as the user's
turn. The JSON layouts of the same corpus are read by `chat_formats.from_personachat`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from parley.data.chat_formats import persona_prompt
from parley.data.records import Bad, Record, chat_record
from parley.data.textfiles import lines

YOUR_PERSONA = "your persona:"
PARTNER_PERSONA = "partner's persona:"


def looks_like(first_line: str) -> bool:
    """True when a text file's first line is a ParlAI numbered dialogue line."""
    number, _, rest = first_line.partition(" ")
    return number.isdigit() and (rest.startswith((YOUR_PERSONA, PARTNER_PERSONA)) or "\t" in rest)


def read(path: Path) -> Iterator[Record | Bad]:
    source = str(path)
    dialogue: _Dialogue | None = None
    previous = 0
    for line_no, raw in lines(path):
        text = raw.rstrip("\r\n")
        if not text.strip():
            continue
        number, _, rest = text.partition(" ")
        if not number.isdigit():
            yield Bad(source, line_no, "expected a numbered line: 'N text<TAB>reply' or 'N your persona: ...'")
            if dialogue is not None:
                dialogue.broken = True
            continue
        if dialogue is None or int(number) <= previous:
            if dialogue is not None:
                yield from dialogue.record(source)
            dialogue = _Dialogue(line_no)
        previous = int(number)
        problem = dialogue.add(rest)
        if problem:
            yield Bad(source, line_no, problem)
            dialogue.broken = True
    if dialogue is not None:
        yield from dialogue.record(source)


class _Dialogue:
    def __init__(self, line: int):
        self.line = line
        self.persona: list[str] = []
        self.turns: list[dict] = []
        self.broken = False

    def add(self, rest: str) -> str | None:
        if rest.startswith(YOUR_PERSONA):
            self.persona.append(rest[len(YOUR_PERSONA) :].strip())
            return None
        if rest.startswith(PARTNER_PERSONA):
            return None
        fields = rest.split("\t")
        if len(fields) < 2 or not fields[1].strip():
            return "expected the partner's line, a TAB, and the reply"
        self.turns.append({"role": "user", "content": fields[0]})
        self.turns.append({"role": "assistant", "content": fields[1]})
        return None

    def record(self, source: str) -> Iterator[Record | Bad]:
        if self.broken:
            return  # its lines were reported already
        if not self.turns:
            yield Bad(source, self.line, "a dialogue with persona lines but no turns")
            return
        system = [{"role": "system", "content": persona_prompt(self.persona)}] if self.persona else []
        yield chat_record(system + self.turns, source, self.line)
