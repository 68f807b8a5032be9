"""Train a byte-level BPE tokenizer (Hugging Face `tokenizers`) whose decode(encode(x)) == x for any text.

    parley tokenizer train --source python-stdlib --source chatterbot --out tok/ --vocab-size 16000

Exact round trips, for code above all: there is no normalizer (no Unicode folding, no whitespace
cleanup), the pre-tokenizer only *splits* (a GPT-4-style pattern that keeps runs of spaces, tabs and
newlines together, so indentation becomes few tokens) before mapping every byte to a symbol, and the
initial alphabet holds all 256 bytes, so tabs, mixed indentation, trailing spaces, CRLF and any
non-ASCII text survive. Records are read through the same `--source` specs as `parley data prepare`:
code files whole, chat records as their messages' text.

A share of the records (chosen by content hash) is held out of training; on it the command reports
bytes per token for code and for text, beside a reference tokenizer (the embedded model's by default),
and checks the round trip on every held-out record. The output directory holds `tokenizer.json` and
the files that `AutoTokenizer` loads from `out`, with a ChatML chat template.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from parley.data.records import Bad, Record
from parley.data.sources import parse
from parley.errors import ConfigError

# Contractions, words with one leading non-letter, 1-3 digit numbers, punctuation runs, newline runs
# with the indentation before them, and other whitespace runs (the last space joins the next word).
SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
END_OF_TEXT, TURN_START, TURN_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@dataclass
class TokenizerTrainConfig:
    """How to train the tokenizer."""

    vocab_size: int = 16000  # tokens in the vocabulary, special tokens and the 256 bytes included
    min_frequency: int = 2  # a pair must occur this often to be merged
    held_out: float = 0.02  # share of records kept out of training, for bytes/token and the round trip
    special_tokens: list[str] = field(default_factory=lambda: [END_OF_TEXT, TURN_START, TURN_END])

    def check(self) -> None:
        if self.vocab_size < 256 + len(self.special_tokens) + 1:
            raise ConfigError(f"--vocab-size must exceed {256 + len(self.special_tokens)} (the bytes and special tokens)")
        if not 0 <= self.held_out < 1:
            raise ConfigError(f"--held-out must be in [0, 1), got {self.held_out}")


def new_tokenizer():
    """An untrained byte-level BPE tokenizer set up for exact round trips."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def train(texts: Iterable[str], config: TokenizerTrainConfig):
    """A trained `tokenizers.Tokenizer` (streams `texts`: the BPE trainer keeps word counts only)."""
    from tokenizers import pre_tokenizers, trainers

    config.check()
    tokenizer = new_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=config.vocab_size,
        min_frequency=config.min_frequency,
        special_tokens=config.special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def as_transformers(tokenizer):
    """The trained tokenizer as a transformers fast tokenizer with ChatML and <|im_end|> as EOS."""
    from transformers import PreTrainedTokenizerFast

    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token=TURN_END, pad_token=END_OF_TEXT, unk_token=None, bos_token=None
    )
    wrapped.chat_template = CHATML
    return wrapped


def save(tokenizer, out: Path) -> None:
    """`tokenizer.json` plus the transformers files (config and chat template) in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    as_transformers(tokenizer).save_pretrained(str(out))
    tokenizer.save(str(out / "tokenizer.json"))


def record_text(record: Record) -> str:
    """The text a record contributes to tokenizer training: a file whole, a chat's messages joined."""
    return "\n".join(m["content"] for m in record.messages)


def is_held_out(record: Record, share: float) -> bool:
    return int(record.content_hash()[:8], 16) < share * 0x1_0000_0000


def read_records(specs: list[str]) -> Iterator[Record]:
    """Every good record of the sources (malformed ones are not worth failing a tokenizer over)."""
    for spec in specs:
        for item in parse(spec).read():
            if not isinstance(item, Bad):
                yield item


def bytes_per_token(encode, texts: list[str]) -> float:
    """UTF-8 bytes per token over `texts`, for any `encode(str) -> list[int]`."""
    tokens = sum(len(encode(t)) for t in texts)
    return sum(len(t.encode()) for t in texts) / tokens if tokens else 0.0


def round_trip_failures(tokenizer, texts: Iterable[str]) -> list[int]:
    """Indices of the texts that do not come back exactly from decode(encode(text))."""
    failures = []
    batch: list[str] = []
    start = 0
    for text in texts:
        batch.append(text)
        if len(batch) == 256:
            failures += _check(tokenizer, batch, start)
            start += len(batch)
            batch = []
    return failures + _check(tokenizer, batch, start)


def _check(tokenizer, texts: list[str], start: int) -> list[int]:
    if not texts:
        return []
    encoded = tokenizer.encode_batch(texts, add_special_tokens=False)
    decoded = tokenizer.decode_batch([e.ids for e in encoded], skip_special_tokens=False)
    return [start + i for i, (a, b) in enumerate(zip(texts, decoded)) if a != b]


def train_and_report(specs: list[str], out: Path, config: TokenizerTrainConfig, reference=None, reference_name="") -> dict:
    """Train on the sources minus the held-out share, save to `out`, and measure on the held-out share.

    `reference` is an optional transformers tokenizer to compare bytes/token with."""
    config.check()
    held: dict[str, list[str]] = {"code": [], "text": []}
    counts = {"train_records": 0, "held_out_records": 0}

    def training_texts():
        for record in read_records(specs):
            text = record_text(record)
            if is_held_out(record, config.held_out):
                held["code" if record.kind == "text" else "text"].append(text)
                counts["held_out_records"] += 1
            else:
                counts["train_records"] += 1
                yield text

    tokenizer = train(training_texts(), config)
    save(tokenizer, out)
    report = {"out": str(out), "vocab_size": tokenizer.get_vocab_size(), **counts, "bytes_per_token": {}}
    ours = lambda t: tokenizer.encode(t, add_special_tokens=False).ids  # noqa: E731
    for kind, texts in held.items():
        if texts:
            row = {"trained": round(bytes_per_token(ours, texts), 3), "records": len(texts)}
            if reference is not None:
                theirs = lambda t: reference(t, add_special_tokens=False)["input_ids"]  # noqa: E731
                row[reference_name or "reference"] = round(bytes_per_token(theirs, texts), 3)
            report["bytes_per_token"][kind] = row
    every = held["code"] + held["text"]
    report["round_trip"] = {"checked": len(every), "failed": len(round_trip_failures(tokenizer, every))}
    return report
