"""manifest.json: what a `parley data prepare` output holds, where it came from and how it was made.

    Manifest.read(directory)       the manifest of a prepared dataset; DataError, one line, if there is none,
                                   it is not JSON, or it was written in another format
    manifest.write(directory)      written last by `prepare`, inside the directory that is renamed into place

Read by `parley data stats` and by training (which sources a run's data directory holds, the
tokenizer it was made for, the chat template it was rendered with). `FORMAT` is bumped whenever the
layout on disk changes; a manifest of another format is refused with the fix (prepare it again)
rather than read wrongly. Keys this version does not know are ignored; a missing key is refused.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from parley.errors import DataError

FILENAME = "manifest.json"
FORMAT = 1  # bump when the layout on disk changes
REDO = "prepare it again with `parley data prepare`"


@dataclass
class Manifest:
    """One prepared dataset, as `prepare` describes it (the field order is the file's key order)."""

    format: int = FORMAT  # the on-disk layout version; see FORMAT
    sources: list[dict] = field(default_factory=list)  # per source: spec, records, bad, skipped {reason: count}
    records: int = 0  # records read from every source, bad ones included
    bad_skipped: int = 0  # malformed records left out (only with skip_bad; otherwise nothing is written)
    bad_examples: list[str] = field(default_factory=list)  # the first few, as `file:line: what is wrong`
    splits: dict[str, dict] = field(default_factory=dict)  # train/validation: records, examples, tokens, loss_tokens
    length_changes: dict[str, int] = field(default_factory=dict)  # records fitted, dropped_turns, truncated, too_long
    content_hash: str = ""  # SHA-256 over every split's examples: equal hashes, equal training data
    model: str = ""  # the --model whose tokenizer and template were used ("" when they were given directly)
    chat_template: str = ""  # the template the conversations were rendered with
    template_fingerprint: str = ""  # templates.fingerprint(chat_template)
    tokenizer: dict = field(default_factory=dict)  # name, vocab_size, vocab_fingerprint, eos_token
    settings: dict = field(default_factory=dict)  # the PrepareConfig used, with max_len resolved

    def write(self, directory: Path) -> Path:
        """Write `directory`/manifest.json; returns its path. (Atomicity comes from the directory's rename.)"""
        path = Path(directory) / FILENAME
        path.write_text(json.dumps(asdict(self), indent=1, ensure_ascii=False))
        return path

    @classmethod
    def read(cls, directory: Path) -> Manifest:
        """The manifest of the prepared dataset in `directory`, checked against this version's FORMAT."""
        path = Path(directory) / FILENAME
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(f"{directory}: not a prepared dataset (no {FILENAME}); make one with `parley data prepare`") from None
        except OSError as e:
            raise DataError(f"{path}: cannot read it ({e.strerror}); {REDO}") from None
        except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
            raise DataError(f"{path}: not valid JSON ({str(e).splitlines()[0]}); {REDO}") from None
        if not isinstance(data, dict):
            raise DataError(f"{path}: expected a JSON object, got {type(data).__name__}; {REDO}")
        if data.get("format") != FORMAT:
            found = f"format {data['format']!r}" if "format" in data else "no format version"
            raise DataError(f"{path}: {found}, but this Parley reads format {FORMAT}; {REDO}")
        defaults = cls()
        missing = [f.name for f in fields(cls) if f.name not in data]
        if missing:
            raise DataError(f"{path}: missing {', '.join(missing)}; {REDO}")
        for f in fields(cls):
            want = type(getattr(defaults, f.name))  # the JSON type of each field is that of its default
            if not isinstance(data[f.name], want):
                raise DataError(f"{path}: {f.name} should be a {want.__name__}, not {type(data[f.name]).__name__}; {REDO}")
        return cls(**{f.name: data[f.name] for f in fields(cls)})
