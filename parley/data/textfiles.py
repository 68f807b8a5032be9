"""Reading users' files as UTF-8 text, streaming, with the line number of everything yielded.

    lines(path)       (line, text) for each line, ending kept ("\\r\\n" stays "\\r\\n")
    json_items(path)  (line, value) for each record of a JSONL file, a JSON array, or a JSON object
                      whose values are arrays of records (Persona-Chat's {"train": [...], "valid": [...]})

Both read in chunks, so memory stays flat however large the file; a `.gz` or `.bz2` file is decompressed
as it is read (`data_suffix` names the format under the compression: `c4-train.json.gz` → `.json`). A line of JSONL that does not parse
is yielded as a `Bad` (the rest of the file is still read); a JSON array that does not parse cannot be
resynchronised, so it raises. Bytes that are not UTF-8 raise a `DataError` naming the line.
"""

from __future__ import annotations

import bz2
import codecs
import gzip
import json
import re
from collections.abc import Iterator
from pathlib import Path

from parley.data.records import Bad
from parley.errors import DataError

CHUNK = 1 << 20  # bytes read at a time
_WHITESPACE = " \t\r\n"
# First keys that mark a top-level JSON object as a single record rather than named arrays of records.
RECORD_FIELDS = {"messages", "conversations", "personality", "utterances", "history", "content", "code"}
_FIRST_KEY = re.compile(r'\{\s*"([^"\\]*)"')


def lines(path: Path) -> Iterator[tuple[int, str]]:
    """Each line of a UTF-8 text file, with its 1-based number and its line ending."""
    number = 0
    with _open(path) as f:
        try:
            for number, raw in enumerate(f, 1):
                try:
                    yield number, raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise not_utf8(path, number, e) from None
        except (OSError, EOFError) as e:  # a corrupt or truncated .gz / .bz2
            raise DataError(f"{path}:{number + 1}: cannot decompress it ({e}); download it again") from None


def not_utf8(path, line: int, error: UnicodeDecodeError) -> DataError:
    byte = error.object[error.start]
    return DataError(
        f"{path}:{line}: not UTF-8 text (byte 0x{byte:02x}); convert it first, "
        f"e.g. `iconv -f latin1 -t utf-8 {path} > fixed{Path(path).suffix}`"
    )


def json_items(path: Path) -> Iterator[tuple[int, object]]:
    """(line, value) per record; see the module docstring for the layouts understood."""
    scanner = _Scanner(path)
    first = scanner.peek()
    if first is None:
        return
    if first == "[":
        yield from scanner.array()
    elif first == "{" and not scanner.first_line_is_whole_json():
        yield from scanner.object_of_records()
    else:
        scanner.close()
        yield from _jsonl(path)


def _jsonl(path: Path) -> Iterator[tuple[int, object]]:
    for number, text in lines(path):
        if not text.strip():
            continue
        try:
            yield number, json.loads(text)
        except json.JSONDecodeError as e:
            yield number, Bad(str(path), number, f"not valid JSON: {e.msg} (column {e.colno})")


COMPRESSED = {".gz": gzip.open, ".bz2": bz2.open}


def data_suffix(path: Path) -> str:
    """The lower-case extension that says what a file holds, under any compression suffix."""
    suffixes = [s.lower() for s in Path(path).suffixes[-2:]]
    if len(suffixes) == 2 and suffixes[1] in COMPRESSED:
        return suffixes[0]
    return suffixes[-1] if suffixes else ""


def _open(path: Path):
    opener = COMPRESSED.get(Path(path).suffix.lower(), open)
    try:
        return opener(path, "rb")
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory; this format reads one file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read it ({e.strerror})") from None


class _Scanner:
    """A forward-only JSON reader over a growing text buffer: values are parsed one at a time
    with `json.JSONDecoder.raw_decode`, so only the current record is ever held in memory."""

    def __init__(self, path: Path):
        self.path = path
        self.file = _open(path)
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.json = json.JSONDecoder()
        self.buf = ""
        self.pos = 0
        self.line = 1  # line number at self.pos
        self.eof = False

    def close(self) -> None:
        self.file.close()

    def _fill(self, size: int = CHUNK) -> bool:
        if self.eof:
            return False
        try:
            raw = self.file.read(size)
        except (OSError, EOFError) as e:  # a corrupt or truncated .gz / .bz2
            raise DataError(f"{self.path}:{self.line}: cannot decompress it ({e}); download it again") from None
        try:
            text = self.decoder.decode(raw, final=not raw)
        except UnicodeDecodeError as e:
            line = self.line + self.buf.count("\n", self.pos) + e.object[: e.start].count(b"\n")
            raise not_utf8(self.path, line, e) from None
        if not raw:
            self.eof = True
            self.file.close()
        if self.pos > CHUNK:  # drop what has been consumed
            self.buf, self.pos = self.buf[self.pos :], 0
        self.buf += text
        return bool(raw)

    def _advance(self, to: int) -> None:
        self.line += self.buf.count("\n", self.pos, to)
        self.pos = to

    def peek(self) -> str | None:
        """The next non-whitespace character (not consumed), or None at the end of the file."""
        while True:
            i = self.pos
            while i < len(self.buf) and self.buf[i] in _WHITESPACE:
                i += 1
            self._advance(i)
            if i < len(self.buf):
                return self.buf[i]
            if not self._fill():
                return None

    def take(self, expected: str) -> None:
        found = self.peek()
        if found != expected:
            what = "the end of the file" if found is None else repr(found)
            raise DataError(f"{self.path}:{self.line}: not valid JSON: expected {expected!r}, found {what}")
        self._advance(self.pos + 1)

    def value(self) -> tuple[int, object]:
        self.peek()
        size = CHUNK
        while True:
            try:
                value, end = self.json.raw_decode(self.buf, self.pos)
                if end < len(self.buf) or self.eof:  # a number cut at the buffer's end would look whole
                    start = self.line
                    self._advance(end)
                    return start, value
            except json.JSONDecodeError as e:
                if self.eof:
                    line = self.line - self.buf.count("\n", 0, self.pos) + e.lineno - 1
                    raise DataError(f"{self.path}:{line}: not valid JSON: {e.msg}") from None
            self._fill(size)
            size *= 2  # a record larger than the buffer: read more at a time, not quadratically

    def array(self) -> Iterator[tuple[int, object]]:
        self.take("[")
        if self.peek() == "]":
            self._advance(self.pos + 1)
            return
        while True:
            yield self.value()
            if self.peek() == ",":
                self._advance(self.pos + 1)
                continue
            self.take("]")
            return

    def object_of_records(self) -> Iterator[tuple[int, object]]:
        """A JSON object: either one record (its first key is a record field such as `messages`)
        or named arrays of records, streamed item by item."""
        key = _FIRST_KEY.match(self.buf, self.pos)
        if key and key.group(1) in RECORD_FIELDS:
            yield self.value()
            return
        self.take("{")
        if self.peek() == "}":
            return
        while True:
            line, key = self.value()
            self.take(":")
            if self.peek() != "[":
                raise DataError(
                    f"{self.path}:{line}: key {key!r} does not hold an array of records; "
                    f"expected one record per line (JSONL), an array, or {{\"train\": [...], ...}}"
                )
            yield from self.array()
            if self.peek() == ",":
                self._advance(self.pos + 1)
                continue
            self.take("}")
            return

    def first_line_is_whole_json(self) -> bool:
        """True for JSONL (the first line parses alone), False for a pretty-printed document."""
        while "\n" not in self.buf[self.pos :] and self._fill():
            pass
        end = self.buf.find("\n", self.pos)
        first = self.buf[self.pos : end if end >= 0 else len(self.buf)]
        try:
            json.loads(first)
            return True
        except json.JSONDecodeError:
            return False
