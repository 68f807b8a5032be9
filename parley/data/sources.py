"""Source specs (`--source`) → streams of records. The scheme, in full:

    [FORMAT:]LOCATION[,KEY=VALUE...]      or a built-in set's name: chatterbot, python-stdlib, python-stdlib-pairs

FORMAT may be left out: a directory is read as code (as prose when it holds .txt/.md/.rst files and no
code), a file by its extension (.jsonl/.json, .csv/.tsv, .parquet, .txt, .md/.rst, .yml, .xml[.bz2];
.gz/.bz2 compressed JSONL too) and, for JSON and tables, by the keys of its first record (a `text`,
`content` or `raw_content` column with no chat or code layout is prose). A .txt file is Persona-Chat
when its first line is, else prose. Give FORMAT to insist:

    chat:FILE            any chat layout below, detected         code:DIR|URL|FILE   code dir, repo, or code JSONL
    messages:FILE        OpenAI {"messages": [...]}              stack:FILE          The Stack {"content", "lang", "path"}
    sharegpt:FILE        {"conversations": [{from, value}]}      codesearchnet:FILE  {"code", "docstring", "func_name"}
    personachat:FILE     ParlAI text (.txt) or JSON              pairs:DIR           instruction pairs from Python
    table:FILE           CSV/TSV/Parquet/JSON prompt+response    hf:NAME             a Hugging Face dataset (streamed)
    text:FILE|DIR|URL    prose for continued pre-training: .txt/.md/.rst, JSONL/Parquet text column,
                         Wikipedia XML dumps, hf:NAME (see prose.py)
    prefs:FILE           preferences (TRL, HH-RLHF, UltraFeedback, unpaired)   feedback[:DB]  the store's feedback

KEYs: prompt=, response=, system= (column names; `a+b` joins columns) for tables and JSON pairs;
langs=python+go and max_kb=N for code; split= and config= for hf:; lang= for chatterbot;
text=COLUMN and split=document|paragraph for text; since=, until= (dates, UTC) and model= for feedback.

Examples:  --source chat:dialogs.jsonl  --source chatterbot  --source code:~/src/proj,langs=python
           --source table:qa.csv,prompt=question,response=answer  --source python-stdlib-pairs
           --source text:~/books,split=paragraph  --source text:c4-train.00000.json.gz

Every source yields `Record`s and `Bad`s; a source that yields neither is an error, and each
source's skipped items are counted by reason (`Source.skipped`). Prose documents also pass the
cleaning rules of `Source.cleaner` when one is set (`parley data prepare` sets one; evaluation does not).
"""

from __future__ import annotations

import itertools
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from parley.data import (chat_formats, chatterbot, code_files, code_formats, code_pairs, personachat,
                         preference_formats, prose, tables, wikipedia)
from parley.data.chat_formats import Columns
from parley.data.cleaning import Cleaner
from parley.data.code_files import CodeFilter
from parley.data.records import Bad, Record
from parley.data.textfiles import COMPRESSED, data_suffix, json_items, lines
from parley.errors import ConfigError, DataError

BUILTINS = ("chatterbot", "python-stdlib", "python-stdlib-pairs", "feedback")
CHAT = ("messages", "sharegpt", "personachat", "pairs")  # row layouts that are conversations
CODE = ("stack", "codesearchnet")  # row layouts that are code
FORMATS = ("chat", "code", "messages", "sharegpt", "personachat", "table", "stack", "codesearchnet", "pairs", "hf",
           "text", "prefs", "feedback")
PREFERENCE = ("prefs", "feedback")  # formats whose records are preferences (preference_formats.py)
KEYS = ("prompt", "response", "system", "langs", "max_kb", "split", "config", "lang", "text", "since", "until",
        "model")
JSON_EXT = (".jsonl", ".json", ".ndjson")
TABLE_EXT = (".csv", ".tsv", ".parquet")


@dataclass
class Source:
    """One `--source`: what was asked for, and a fresh stream of its records on each `read()`."""

    spec: str
    format: str | None  # as given, or None for auto-detection
    location: str
    options: dict[str, str] = field(default_factory=dict)
    skipped: Counter = field(default_factory=Counter)  # reason → count, filled while reading
    cleaner: Cleaner | None = None  # cleaning rules for prose documents (shared by a run's sources), or none
    done: int = 0  # bytes read so far, where the reader can tell (prose sources), for progress
    total: int = 0  # bytes to read, where known before reading (0 = unknown)

    def check(self) -> None:
        """Fail now, before any model is loaded, if the location plainly cannot be read."""
        if self.format in BUILTINS or self.format == "hf" or code_files.is_url(self.location) or prose.is_url(self.location):
            return
        if self.format == "text" and self.location.startswith("hf:"):
            return
        if not Path(self.location).expanduser().exists():
            raise DataError(f"{self.location}: no such file or directory")

    @property
    def kind(self) -> str:
        """`preference` (chosen/rejected replies) or `sft` (conversations, code, text)."""
        if self.format in PREFERENCE:
            return "preference"
        path = Path(self.location).expanduser()
        if self.format is None and path.is_file() and path.suffix.lower() in JSON_EXT + (".parquet",):
            rows = tables.parquet_rows(path) if path.suffix.lower() == ".parquet" else json_items(path)
            first = next((obj for _, obj in rows if not isinstance(obj, Bad)), None)
            if preference_formats.detect(first) is not None:
                return "preference"
        return "sft"

    def read(self) -> Iterator[Record | Bad]:
        self.skipped.clear()
        self.done = self.total = 0
        found = 0
        for item in _dispatch(self):
            if self.cleaner is not None and isinstance(item, Record) and item.meta.get("prose"):
                why = self.cleaner.reason(item.messages[0]["content"])
                if why:
                    self.skipped[why] += 1
                    continue
            found += 1
            yield item
        if not found:
            why = ", ".join(f"{k} {v}" for k, v in sorted(self.skipped.items()))
            raise DataError(f"{self.spec}: no records found" + (f" (skipped: {why})" if why else ""))


def parse(spec: str) -> Source:
    """A Source from a spec string; ConfigError names what is wrong in it."""
    head, *rest = spec.split(",")
    options = {}
    for item in rest:
        key, eq, value = item.partition("=")
        if not eq or key not in KEYS:
            raise ConfigError(f"--source {spec}: {item!r} is not KEY=VALUE with KEY one of {', '.join(KEYS)}")
        options[key] = value
    fmt, colon, location = head.partition(":")
    if head in BUILTINS:
        return Source(spec, head, "", options)
    if colon and fmt in FORMATS:
        return Source(spec, fmt, location, options)
    if colon and fmt.isidentifier() and not Path(head).exists() and "/" not in fmt:
        raise ConfigError(f"--source {spec}: unknown format {fmt!r}; use one of {', '.join(FORMATS)}, or a built-in: {', '.join(BUILTINS)}")
    return Source(spec, None, head, options)


def anchored(spec: str, base: Path) -> str:
    """`spec` with a relative file or directory location made relative to `base` (a config file's
    folder), so a config means the same files from any working directory; built-ins, hub sets and
    URLs are left as they are."""
    source = parse(spec)
    if source.format in BUILTINS or source.format == "hf" or code_files.is_url(source.location):
        return spec
    location = Path(source.location).expanduser()
    if not source.location or location.is_absolute():
        return spec
    head = f"{source.format}:" if spec.startswith(f"{source.format}:") else ""
    return head + os.path.normpath(base / location) + spec[len(head) + len(source.location):]


def _dispatch(src: Source) -> Iterator[Record | Bad]:
    fmt, where, opts = src.format, src.location, src.options
    if fmt == "feedback":
        return preference_formats.from_store(where, opts)
    if src.kind == "preference":
        return _preferences(Path(where).expanduser())
    if fmt == "chatterbot":
        return chatterbot.read(src.skipped, opts.get("lang", "english"))
    if fmt in ("python-stdlib", "python-stdlib-pairs"):
        filt = _code_filter(opts, default_langs="python")
        files = code_files.read_code(str(code_files.stdlib_root()), filt, src.skipped)
        return _pairs(files, src.skipped) if fmt.endswith("pairs") else files
    if fmt == "hf" or (fmt == "text" and where.startswith("hf:")):
        name = where.removeprefix("hf:")
        return _rows(src, tables.hub_rows(name, opts.get("config"), opts.get("split", "train")), f"hf:{name}", table=True)
    if fmt in (None, "text") and prose.is_url(where):
        return _download(src, where)
    path = Path(where).expanduser()
    if fmt == "text" and path.is_dir() or fmt is None and path.is_dir() and prose.is_prose_dir(path):
        skip = src.cleaner.config.not_utf8 if src.cleaner is not None else True
        return prose.read_dir(path, prose.split_mode(opts, hub=False), src.skipped, skip, src)
    if fmt == "pairs":
        return _pairs(code_files.read_code(where, _code_filter(opts, "python"), src.skipped), src.skipped)
    if fmt in (None, "code") and (path.is_dir() or code_files.is_url(where)):
        return code_files.read_code(where, _code_filter(opts), src.skipped)
    if not path.exists():
        raise DataError(f"{where}: no such file or directory")
    if path.is_dir():
        raise DataError(f"{where}: is a directory; {fmt}: reads a file (code:DIR, pairs:DIR and text:DIR read directories)")
    return _file(src, path)


def _download(src: Source, url: str) -> Iterator[Record | Bad]:
    for path in prose.downloaded(url):
        yield from _file(src, path)


def _file(src: Source, path: Path) -> Iterator[Record | Bad]:
    ext = data_suffix(path)
    text = src.format == "text"
    if ext == ".txt" and src.format in (None, "chat", "personachat"):
        first = next((line for _, line in lines(path) if line.strip()), "")
        if personachat.looks_like(first):
            return personachat.read(path)
        if src.format is not None:
            raise DataError(f"{path}:1: not the Persona-Chat text format ('1 your persona: ...' or 'N text<TAB>reply'); "
                            f"for prose, use text:{path}")
        text = True
    if wikipedia.is_dump(path) and src.format in (None, "text"):
        mode = prose.split_mode(src.options, hub=False)
        return prose.read_dump(path, mode, src.skipped, src)
    if text and ext in prose.TEXT_EXT or src.format is None and ext in (".md", ".markdown", ".rst"):
        return prose.read_file(path, prose.split_mode(src.options, hub=False), src)
    if text and ext not in JSON_EXT + (".parquet",):
        raise DataError(f"{path}: text: reads .txt/.md/.rst, JSONL/JSON/Parquet with a text column, or a Wikipedia "
                        f".xml/.xml.bz2 dump, not {ext or '(no extension)'!r}")
    if ext in (".yml", ".yaml") and src.format in (None, "chat"):
        return chatterbot.read_file(path)
    if ext in (".csv", ".tsv"):
        return _rows(src, tables.csv_rows(path), str(path), table=True, columns=tables.csv_header(path))
    if ext == ".parquet":
        return _rows(src, tables.parquet_rows(path), str(path), table=True, columns=tables.parquet_columns(path))
    # Progress counts the text read, so a compressed file's size is no total to compare it with.
    src.total = 0 if path.suffix.lower() in COMPRESSED else path.stat().st_size
    if ext in JSON_EXT:
        return _rows(src, json_items(path), str(path), table=False)
    raise DataError(
        f"{path}: unknown format {ext or '(no extension)'!r}; use .jsonl/.json, .csv/.tsv, .parquet, .txt "
        f"(Persona-Chat or prose), .md/.rst (prose), .xml[.bz2] (Wikipedia) or .yml (chatterbot), or a directory"
    )


def _rows(src: Source, rows, source: str, table: bool, columns: list[str] | None = None) -> Iterator[Record | Bad]:
    """Records from (line, object) rows, their layout taken from the format or the first good row."""
    rows = iter(rows)
    head_bad, first = [], None
    for item in rows:  # malformed lines before the first good row are reported, not used to detect
        if not isinstance(item[1], Bad):
            first = item
            break
        head_bad.append(item)
    layout = _layout(src, first[1] if first else None, columns, source)
    resolved = _columns(src, layout, columns or (first[1].keys() if first and isinstance(first[1], dict) else []), source, table)
    filt = _code_filter(src.options)
    if layout == "text":
        name = prose.column(src.options, columns or (first[1].keys() if first and isinstance(first[1], dict) else []))
        mode = prose.split_mode(src.options, hub=source.startswith("hf:"))
    for line, obj in itertools.chain(head_bad, [first] if first else [], rows):
        if isinstance(obj, Bad):
            yield obj
        elif layout == "text":
            for item in prose.from_row(obj, name, source, line, mode):
                if isinstance(item, Record):
                    src.done += len(item.messages[0]["content"].encode("utf-8", "surrogatepass"))
                yield item
        elif layout == "stack":
            record = code_formats.from_stack(obj, source, line, filt, src.skipped)
            if record is not None:
                yield record
        elif layout == "codesearchnet":
            record = code_formats.from_codesearchnet(obj, source, line, src.skipped)
            if record is not None:
                yield record
        elif layout == "pairs":
            cols = resolved or (Columns(**_column_opts(src)).resolve(obj.keys()) if isinstance(obj, dict) else None)
            if cols is None:
                yield Bad(source, line, Columns(**_column_opts(src)).missing(obj.keys() if isinstance(obj, dict) else []))
            else:
                yield chat_formats.from_row(obj, cols, source, line)
        else:
            yield chat_formats.READERS[layout](obj, source, line)


def _layout(src: Source, first, columns, source: str) -> str:
    """The row layout: the one asked for, else detected from the first good row."""
    asked = {"table": "pairs"}.get(src.format, src.format)
    if asked in CHAT + CODE:
        return asked
    if first is None and columns is None:
        raise DataError(f"{source}: no records found")
    sample = first if first is not None else dict.fromkeys(columns)
    if _column_opts(src):
        return "pairs"
    keys = list(sample.keys()) if isinstance(sample, dict) else []
    if asked == "text" or "text" in src.options:
        if prose.column(src.options, keys) is None:
            wanted = src.options.get("text") or " or ".join(prose.TEXT_COLUMNS)
            raise DataError(f"{source}: no {wanted} column for the text (columns: {', '.join(map(str, keys))}); name it with ,text=COLUMN")
        return "text"
    detected = chat_formats.detect(sample) or code_formats.detect(sample) or ("text" if prose.column({}, keys) else None)
    keys = ", ".join(map(str, sample.keys())) if isinstance(sample, dict) else type(sample).__name__
    if detected is None and columns is not None:  # a table: say which columns it lacks
        raise DataError(f"{source}: {Columns().missing(columns)}")
    if detected is None:
        raise DataError(
            f"{source}: unknown record layout (keys: {keys}); expected messages, conversations, "
            f"personality/utterances, prompt/response columns, The Stack or CodeSearchNet rows, or a text column"
        )
    family = {"chat": CHAT, "code": CODE}.get(src.format or "")
    if family and detected not in family:
        raise DataError(f"{source}: its records look like {detected}, not {src.format} (keys: {keys})")
    return detected


def _columns(src: Source, layout: str, available, source: str, table: bool):
    """For tables, resolve prompt/response columns once from the header: a missing one is one line."""
    if layout != "pairs" or not table:
        return None
    columns = Columns(**_column_opts(src))
    resolved = columns.resolve(available)
    if resolved is None:
        raise DataError(f"{source}: {columns.missing(available)}")
    return resolved


def _column_opts(src: Source) -> dict:
    return {k: src.options[k] for k in ("prompt", "response", "system") if k in src.options}


def _code_filter(opts: dict, default_langs: str | None = None) -> CodeFilter:
    langs = opts.get("langs", default_langs)
    try:
        max_kb = int(opts.get("max_kb", 256))
    except ValueError:
        raise ConfigError(f"max_kb={opts['max_kb']!r} is not a whole number of kilobytes") from None
    return CodeFilter(langs=frozenset(langs.split("+")) if langs else None, max_kb=max_kb)


def _preferences(path: Path) -> Iterator:
    if not path.is_file():
        raise DataError(f"{path}: no such file (preferences are read from .jsonl/.json or .parquet files)")
    rows = tables.parquet_rows(path) if path.suffix.lower() == ".parquet" else json_items(path)
    for line, obj in rows:
        yield obj if isinstance(obj, Bad) else preference_formats.read(obj, str(path), line)


def _pairs(files: Iterator[Record], skipped: Counter) -> Iterator[Record]:
    for record in files:
        yield from code_pairs.pairs_from_file(record, skipped)
