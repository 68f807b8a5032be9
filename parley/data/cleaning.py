"""Cleaning prose documents before training: duplicates, near-duplicates and low-quality text, counted by reason.

    with Cleaner(CleanConfig(), scratch=folder) as cleaner:   # the duplicate indexes: a temp database in folder
        why = cleaner.reason(text)   # None to keep; else one of REASONS (the document is counted under it)

Applied by `parley data prepare` to the documents of `text:` sources (books, notes, web text,
Wikipedia), in this order, each on by default with its threshold in `CleanConfig`:

    too_short         fewer than `min_chars` characters (after stripping)
    too_few_words     fewer than `min_words` words
    symbols           share of non-space characters that are symbols (not letters, digits or sentence
                      punctuation) above `max_symbol_ratio`: tables of markup, ASCII art, encoded blobs
    digits            share of non-space characters that are digits above `max_digit_ratio`: number dumps
    repeated_lines    share of non-empty lines that repeat an earlier line above `max_dup_line_ratio`
    repeated_ngrams   share of the words' characters inside word 10-grams seen more than once above
                      `max_dup_ngram_ratio` (Gopher's duplicate n-gram rule, Rae et al. 2021, looser:
                      Gopher drops above 0.10 at n=10, which also drops ~1 in 10 technical documents
                      such as package READMEs or the Python reference, whose phrases recur)
    duplicate         the same text as an earlier document (whitespace at the ends ignored)
    near_duplicate    estimated Jaccard similarity of word 5-gram shingles with an earlier kept document at
                      or above `near_dup_threshold` (MinHash + LSH from datasketch: some band of the two
                      signatures is equal, with the bands datasketch picks for the threshold)
    not_utf8          (counted by the reader) a file in a `text:DIR` folder that is not UTF-8; a file named
                      directly (or a JSONL line) that is not stops the run with file:line instead

The quality rules come before the duplicate checks so that a rejected document never enters the
indexes. Dedup is across every text source of one `prepare` run, in source order: the first copy is kept.

The duplicate indexes live on disk (`dedup_index.py`: a temporary SQLite file with a bounded page
cache, ~200 bytes per kept document), so memory stays flat however large the corpus; a near-duplicate
is what datasketch's `MinHashLSH.query` would return, found in the same single pass. The thresholds
are tuned for English-like prose; scripts without spaces between words (Chinese, Japanese, Thai) count
few words, so lower `min_words` for them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from parley.data.dedup_index import DedupIndex
from parley.errors import ConfigError

REASONS = ("too_short", "too_few_words", "symbols", "digits", "repeated_lines", "repeated_ngrams",
           "duplicate", "near_duplicate", "not_utf8")
SHINGLE = 5  # words per MinHash shingle
DUP_NGRAM = 10  # words per n-gram of the repeated n-gram rule
_WORD = re.compile(r"\w+", re.UNICODE)
_SENTENCE_PUNCTUATION = set(".,;:!?'\"()[]-–—…‘’“”«»/")


@dataclass
class CleanConfig:
    """Which documents of `text:` sources are dropped (each rule is off at 0 / false)."""

    min_chars: int = 20  # drop documents shorter than this many characters (0 = off)
    min_words: int = 5  # drop documents with fewer words than this (0 = off)
    max_symbol_ratio: float = 0.25  # drop when more than this share of non-space characters are symbols (1 = off)
    max_digit_ratio: float = 0.25  # drop when more than this share of non-space characters are digits (1 = off)
    max_dup_line_ratio: float = 0.3  # drop when more than this share of non-empty lines repeat an earlier line (1 = off)
    max_dup_ngram_ratio: float = 0.3  # drop when more than this share of word characters sit in repeated word 10-grams (1 = off)
    dedup: bool = True  # drop exact duplicate documents (the first copy is kept)
    near_dup: bool = True  # drop near-duplicates of a kept document (MinHash LSH over word 5-grams)
    near_dup_threshold: float = 0.8  # estimated Jaccard similarity at which a document is a near-duplicate
    num_perm: int = 128  # MinHash permutations: more is more exact and slower
    not_utf8: bool = True  # skip (and count) files of a text:DIR folder that are not UTF-8; false = stop at the first, naming file:line

    def check(self) -> None:
        for name in ("max_symbol_ratio", "max_digit_ratio", "max_dup_line_ratio", "max_dup_ngram_ratio"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"clean.{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0 < self.near_dup_threshold <= 1:
            raise ConfigError(f"clean.near_dup_threshold must be in (0, 1], got {self.near_dup_threshold}")
        if self.min_chars < 0 or self.min_words < 0:
            raise ConfigError("clean.min_chars and clean.min_words must be 0 (off) or more")
        if self.num_perm < 16:
            raise ConfigError(f"clean.num_perm must be at least 16, got {self.num_perm}")

    def describe(self) -> str:
        """One line of what is on, with thresholds, for `parley data stats`."""
        rules = [
            (self.min_chars, f"min_chars {self.min_chars}"), (self.min_words, f"min_words {self.min_words}"),
            (self.max_symbol_ratio < 1, f"max_symbol_ratio {self.max_symbol_ratio}"),
            (self.max_digit_ratio < 1, f"max_digit_ratio {self.max_digit_ratio}"),
            (self.max_dup_line_ratio < 1, f"max_dup_line_ratio {self.max_dup_line_ratio}"),
            (self.max_dup_ngram_ratio < 1, f"max_dup_ngram_ratio {self.max_dup_ngram_ratio}"),
            (self.dedup, "dedup"), (self.near_dup, f"near_dup {self.near_dup_threshold} ({self.num_perm} perms)"),
            (self.not_utf8, "skip not_utf8"),
        ]
        return ", ".join(text for on, text in rules if on) or "off"


def with_overrides(config: CleanConfig, items: list[str]) -> CleanConfig:
    """`config` with `KEY=VALUE` items applied (`parley data prepare --clean min_words=20`); `off` turns
    every rule off. A ConfigError names the item and what it takes."""
    kinds = {f.name: type(getattr(config, f.name)) for f in dataclasses.fields(config)}
    for item in items:
        if item.strip() == "off":
            config = dataclasses.replace(config, min_chars=0, min_words=0, max_symbol_ratio=1.0, max_digit_ratio=1.0,
                                         max_dup_line_ratio=1.0, max_dup_ngram_ratio=1.0, dedup=False, near_dup=False)
            continue
        key, eq, text = item.partition("=")
        key, text = key.strip(), text.strip()
        if not eq or key not in kinds:
            raise ConfigError(f"--clean {item!r}: expected off or KEY=VALUE with KEY one of {', '.join(kinds)}")
        kind = kinds[key]
        try:
            if kind is bool:
                if text.lower() not in ("true", "false"):
                    raise ValueError
                value = text.lower() == "true"
            else:
                value = kind(text)
        except ValueError:
            what = {bool: "true or false", int: "a whole number", float: "a number"}[kind]
            raise ConfigError(f"--clean {item!r}: {key} must be {what}") from None
        config = dataclasses.replace(config, **{key: value})
    config.check()
    return config


class Cleaner:
    """The rules of one `CleanConfig`, with the duplicate indexes of one preparation run (on disk, in a
    temporary database under `scratch`, the system's temp dir if None, deleted by `close()` or `with`)."""

    def __init__(self, config: CleanConfig, scratch: Path | None = None):
        config.check()
        self.config = config
        self.scratch = scratch
        self.counts: Counter = Counter()  # reason → documents dropped (over all sources)
        self._index: DedupIndex | None = None  # made at the first document that reaches the duplicate checks
        self._template = self._bands = None
        if config.near_dup:
            from datasketch import MinHash, MinHashLSH

            self._template = MinHash(num_perm=config.num_perm, seed=1)
            # datasketch's choice of bands for the threshold; the index stores their keys (dedup_index.py)
            self._bands = MinHashLSH(threshold=config.near_dup_threshold, num_perm=config.num_perm).hashranges

    def __enter__(self) -> Cleaner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Delete the duplicate indexes (a later document starts fresh ones)."""
        if self._index is not None:
            self._index.close()
            self._index = None

    def reason(self, text: str) -> str | None:
        """Why `text` is dropped, or None to keep it (a kept text enters the duplicate indexes)."""
        why = quality_reason(text, self.config) or self._duplicate(text)
        if why:
            self.counts[why] += 1
        return why

    def _duplicate(self, text: str) -> str | None:
        if not (self.config.dedup or self.config.near_dup):
            return None
        if self._index is None:
            self._index = DedupIndex(self.scratch)
        if self.config.dedup:
            digest = hashlib.blake2b(text.strip().encode("utf-8", "surrogatepass"), digest_size=16).digest()
            if not self._index.add_exact(digest):
                return "duplicate"
        if self._bands is not None:
            keys = self._band_keys(text)
            if keys is None:  # shorter than one shingle: the exact check is all there is
                return None
            if self._index.seen_band(keys):
                return "near_duplicate"
            self._index.add_bands(keys)
        return None

    def _band_keys(self, text: str) -> list[bytes] | None:
        """The MinHash LSH band keys of `text`, as datasketch's `MinHashLSH` (with an 8-byte blake2b
        `hashfunc`) computes them: each band's slice of the signature, byte-swapped, hashed."""
        shingles = {" ".join(g).encode("utf-8", "surrogatepass") for g in _ngrams(_words(text.lower()), SHINGLE)}
        if not shingles:
            return None
        from datasketch import MinHash

        signature = MinHash(num_perm=self.config.num_perm, permutations=self._template.permutations,
                            scheme=self._template.scheme)
        signature.update_batch(shingles)
        values = signature.hashvalues
        return [hashlib.blake2b(bytes(values[start:end].byteswap().data), digest_size=8).digest()
                for start, end in self._bands]


def quality_reason(text: str, config: CleanConfig) -> str | None:
    """The first quality rule `text` fails, or None."""
    stripped = text.strip()
    if config.min_chars and len(stripped) < config.min_chars:
        return "too_short"
    words = _words(stripped)
    if config.min_words and len(words) < config.min_words:
        return "too_few_words"
    visible = [c for c in stripped if not c.isspace()]
    if visible:
        if config.max_digit_ratio < 1 and sum(c.isdigit() for c in visible) / len(visible) > config.max_digit_ratio:
            return "digits"
        if config.max_symbol_ratio < 1 and sum(map(_is_symbol, visible)) / len(visible) > config.max_symbol_ratio:
            return "symbols"
    if config.max_dup_line_ratio < 1 and dup_line_ratio(stripped) > config.max_dup_line_ratio:
        return "repeated_lines"
    if config.max_dup_ngram_ratio < 1 and dup_ngram_ratio(words) > config.max_dup_ngram_ratio:
        return "repeated_ngrams"
    return None


def dup_line_ratio(text: str) -> float:
    """Share of non-empty lines that repeat an earlier line (0 for fewer than 3 lines)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) < 3:
        return 0.0
    return (len(lines) - len(set(lines))) / len(lines)


def dup_ngram_ratio(words: list[str], n: int = DUP_NGRAM) -> float:
    """Share of the words' characters covered by word n-grams that occur more than once."""
    grams = _ngrams(words, n)
    if not grams:
        return 0.0
    counts = Counter(grams)
    covered = [False] * len(words)
    for i, gram in enumerate(grams):
        if counts[gram] > 1:
            covered[i : i + n] = [True] * n
    total = sum(map(len, words))
    return sum(len(w) for w, c in zip(words, covered) if c) / total if total else 0.0


def _is_symbol(char: str) -> bool:
    if char.isalnum() or char in _SENTENCE_PUNCTUATION:
        return False
    return True if char in "#*_|=<>{}~^`\\@$%&+" else unicodedata.category(char)[0] in "SC"


def _words(text: str) -> list[str]:
    return _WORD.findall(text)


def _ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
