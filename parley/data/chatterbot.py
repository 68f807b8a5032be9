"""The built-in offline dialogue set `chatterbot`: the YAML corpus in the PyPI package `chatterbot-corpus`.

    chatterbot                 the English conversations (about 1,000 short exchanges, 20 topics)
    chatterbot,lang=spanish    another of the package's languages (a folder name under its data/)

Each conversation in a file is a list of alternating lines, user first; it becomes one record
(`source` is the YAML file, `line` the line where the conversation starts). The package's own few
malformed entries (one in english/trivia.yml) are skipped and counted, not reported as the user's
errors. Only the data files are used: the package has no code dependencies.
"""

from __future__ import annotations

import importlib.util
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from parley.data.records import Bad, Record, chat_record
from parley.errors import DataError


def data_dir() -> Path:
    spec = importlib.util.find_spec("chatterbot_corpus")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the built-in set `chatterbot` needs the package chatterbot-corpus: pip install chatterbot-corpus")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def read(skipped: Counter, lang: str = "english") -> Iterator[Record]:
    folder = data_dir() / lang
    if not folder.is_dir():
        known = ", ".join(sorted(p.name for p in data_dir().iterdir() if p.is_dir()))
        raise DataError(f"chatterbot: no language {lang!r}; choose one of {known}")
    for path in sorted(folder.glob("*.yml")):
        for item in read_file(path):
            if isinstance(item, Bad):
                skipped["malformed"] += 1
            else:
                yield item


def read_file(path: Path) -> Iterator[Record | Bad]:
    import yaml

    source = str(path)
    try:
        node = yaml.compose(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise DataError(f"{source}: not a readable YAML corpus file ({str(e).splitlines()[0]})") from None
    conversations = _mapping_value(node, "conversations")
    if conversations is None:
        raise DataError(f"{source}: no `conversations:` list")
    for conversation in conversations.value:
        line = conversation.start_mark.line + 1
        turns = yaml.safe_load(yaml.serialize(conversation))
        if not isinstance(turns, list) or not all(isinstance(t, (str, int, float)) for t in turns):
            yield Bad(source, line, "a conversation must be a list of lines")
            continue
        messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": str(t)} for i, t in enumerate(turns)]
        yield chat_record(messages, source, line)


def _mapping_value(node, key: str):
    """The node under `key` in a YAML mapping node (kept as nodes: they carry line numbers)."""
    for k, v in getattr(node, "value", []) if node is not None and node.id == "mapping" else []:
        if k.value == key and v.id == "sequence":
            return v
    return None
