"""Prose for continued pre-training: books, notes, docs, web text and Wikipedia as raw-text documents.

    text:book.txt                  a .txt / .md / .rst file is one document (`,split=paragraph`: one per
                                   paragraph, i.e. per run of lines between blank lines)
    text:~/notes                   every .txt / .md / .rst file under a directory (git ls-files, else a walk
                                   that honours .gitignore; hidden and vendored paths skipped)
    text:web.jsonl[.gz]            JSONL / JSON / Parquet rows with a text column: `text`, `content` or
                                   `raw_content` (C4, FineWeb, RedPajama, The Pile), or `,text=COLUMN`
    text:enwiki-...xml.bz2         a Wikipedia dump, streamed (see wikipedia.py)
    text:hf:NAME                   a Hugging Face dataset with a text column (`hf:NAME,text=COL` also works)
    text:https://host/book.txt     any of the files above, downloaded (streamed) to a temp file first

Without `text:` a file is detected when it is unambiguous: a .md / .rst file, a Wikipedia dump, JSONL
or Parquet whose rows have a text column and no chat or code layout, a .txt file that is not
Persona-Chat, and a directory holding prose files and no code.

Every document is a raw-text record (`records.text_record`, learned whole, no chat template) marked
`prose`, so `parley data prepare` runs the cleaning rules on it (`cleaning.py`). In a directory, a file
that is not UTF-8 is skipped and counted (`not_utf8`; `clean.not_utf8 = false` stops instead, naming
file:line); a file named directly always stops with file:line. Limits: in `split=document` mode a
file is held in memory whole (use `split=paragraph` for one huge file).
"""

from __future__ import annotations

import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from parley.data import code_files, wikipedia
from parley.data.records import Bad, Record, text_record
from parley.data.textfiles import lines, not_utf8
from parley.errors import ConfigError, DataError

TEXT_EXT = (".txt", ".text", ".md", ".markdown", ".rst")
TEXT_COLUMNS = ("text", "content", "raw_content")  # detected in this order
SPLITS = ("document", "paragraph")
PROSE_LANGS = {"markdown", "rst"}  # code_files languages that are prose, not code
CHUNK = 1 << 20


def split_mode(options: dict, hub: bool) -> str:
    """`document` or `paragraph`; for hf: sources `split=` names the dataset's split instead."""
    mode = "document" if hub else options.get("split", "document")
    if mode not in SPLITS:
        raise ConfigError(f"split={mode!r}: text sources split a file by {' or '.join(SPLITS)}")
    return mode


def column(options: dict, keys: Iterable) -> str | None:
    """The text column: the one named by `text=`, else the first of TEXT_COLUMNS present."""
    keys = list(keys)
    if "text" in options:
        return options["text"] if options["text"] in keys else None
    return next((name for name in TEXT_COLUMNS if name in keys), None)


def from_row(obj, name: str, source: str, line: int | None, mode: str) -> Iterator[Record | Bad]:
    value = obj.get(name) if isinstance(obj, dict) else None
    if not isinstance(value, str):
        yield Bad(source, line, f"expected a {name!r} string (the text column)")
        return
    if mode == "paragraph":  # each paragraph of the row, all numbered with the row's line
        yield from _documents([(line, text) for _, text in paragraphs(enumerate(value.splitlines(True), 1))], source)
    else:
        yield from _documents([(line, value)], source)


def read_file(path: Path, mode: str, meter) -> Iterator[Record]:
    """A .txt / .md / .rst file named directly: bad UTF-8 stops with file:line."""
    meter.total = path.stat().st_size
    numbered = lines(path)
    pieces = paragraphs(numbered) if mode == "paragraph" else [(None, "".join(text for _, text in numbered))]
    for record in _documents(pieces, str(path)):
        meter.done += len(record.messages[0]["content"].encode("utf-8", "surrogatepass"))
        yield record


def read_dir(root: Path, mode: str, skipped: Counter, skip_not_utf8: bool, meter) -> Iterator[Record]:
    """Every prose file under `root`, in sorted order; others and non-UTF-8 files counted in `skipped`."""
    files = [rel for rel in code_files.tree_files(root, skipped) if Path(rel).suffix.lower() in TEXT_EXT]
    meter.total = sum((root / rel).stat().st_size for rel in files)
    for rel in files:
        path = root / rel
        data = path.read_bytes()
        meter.done += len(data)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            if not skip_not_utf8:
                raise not_utf8(path, data[: e.start].count(b"\n") + 1, e) from None
            skipped["not_utf8"] += 1
            continue
        numbered = enumerate(text.splitlines(keepends=True), 1)
        pieces = paragraphs(numbered) if mode == "paragraph" else [(None, text)]
        yield from _documents(pieces, str(path))


def read_dump(path: Path, mode: str, skipped: Counter, meter) -> Iterator[Record]:
    def progress(done: int, total: int) -> None:
        meter.done, meter.total = done, total

    for title, text in wikipedia.articles(path, skipped, progress):
        document = f"{title}\n\n{text}" if title else text
        for _, piece in (paragraphs(enumerate(document.splitlines(keepends=True), 1)) if mode == "paragraph" else [(None, document)]):
            yield text_record(piece, str(path), None, prose=True, title=title)


def is_prose_dir(root: Path) -> bool:
    """True when a directory holds prose files (.txt/.md/.rst) and no code: then it is read as text."""
    found = False
    for rel in code_files.tree_files(root, Counter()):
        name = Path(rel).name
        lang = code_files.NAMED_FILES.get(name) or code_files.LANGUAGES.get(Path(name).suffix.lower())
        if lang is not None and lang not in PROSE_LANGS:
            return False
        found = found or Path(name).suffix.lower() in TEXT_EXT
    return found


def paragraphs(numbered: Iterable[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    """(first line, text) of each run of non-blank lines."""
    start, buffer = None, []
    for number, text in numbered:
        if text.strip():
            if start is None:
                start = number
            buffer.append(text)
        elif buffer:
            yield start, "".join(buffer).rstrip()
            start, buffer = None, []
    if buffer:
        yield start, "".join(buffer).rstrip()


def downloaded(url: str) -> Iterator[Path]:
    """Stream `url` to a file in a temp dir (named as in the URL, so its extension still says its
    format) and yield its path; the directory is removed when the caller is done."""
    name = Path(urllib.parse.urlparse(url).path).name or "download.txt"
    with tempfile.TemporaryDirectory(prefix="parley-text-") as tmp:
        target = Path(tmp) / name
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(target, "wb") as f:
                shutil.copyfileobj(response, f, CHUNK)
        except urllib.error.HTTPError as e:
            raise DataError(f"{url}: cannot download it (HTTP {e.code} {e.reason})") from None
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", None) or e
            raise DataError(f"{url}: cannot download it ({reason}); check the URL and the network, or download it and pass the file") from None
        yield target


def is_url(location: str) -> bool:
    return location.startswith(("https://", "http://"))


def _documents(pieces: Iterable[tuple[int | None, str]], source: str) -> Iterator[Record]:
    for line, text in pieces:
        if text.strip():
            yield text_record(text, source, line, prose=True)
