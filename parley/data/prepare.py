"""`parley data prepare`: sources → a tokenized dataset on disk that training reads as it is.

    parley data prepare --source chatterbot --source python-stdlib-pairs --model smollm2 --out data/mine

Output (a Hugging Face `datasets` DatasetDict, `datasets.load_from_disk(out)`):
    train/, validation/   columns input_ids, labels (-100 where not learned), source (file:line),
                          and position_ids when packed
    manifest.json         sources and their counts (records, bad, skipped by reason), split sizes,
                          token and loss-token counts, what was fitted or dropped for length, a content
                          hash of the examples, the tokenizer (name + vocabulary fingerprint), the chat
                          template, and the settings
    tokenizer.json        the tokenizer used, so `parley data show` decodes without loading the model

Records stream through: memory stays flat however large the sources (only the batch being tokenized,
one output batch per split, and digests of kept code files are held; prose's duplicate indexes are in a
temporary database on disk), and each split's Arrow file is written once, in place (the JSON beside it
is what `save_to_disk` would write). The validation split takes records by content hash, so it is
stable across runs and identical records land in the same split.

Prose (`text:` sources) is cleaned on the way (`cleaning.py`: exact and near duplicates across all the
run's sources, and quality rules), each document dropped counted under its reason in the source's
`skipped`; the rules and thresholds are `PrepareConfig.clean`, recorded in the manifest's settings.
Progress is reported every few seconds: bytes read (where the reader can tell), documents, and an ETA.

Preference sources (chosen/rejected replies: `--source feedback`, `prefs:FILE`, or a file whose records
look like preferences) make a preference dataset instead: columns prompt_ids, chosen_ids, rejected_ids,
source (preference_tokenize.py), and manifest settings.kind = "preference". They cannot be mixed with
conversation sources in one `prepare`.

Bad records: by default every source is read to the end and, if any record is malformed, nothing is
written and the error gives the count and the first ten (`file:line: what is wrong`); with
`skip_bad` they are left out and counted. Output is built in a temporary directory beside `out` and
renamed into place at the end, so a failure never leaves a half-written `out`.
"""

from __future__ import annotations

import hashlib
import json
import time
from array import array
from dataclasses import asdict, dataclass, field
from pathlib import Path

from parley.data.cleaning import CleanConfig, Cleaner
from parley.data.manifest import Manifest
from parley.data.records import Bad, Record
from parley.data.sources import Source, parse
from parley.data.tokenize import IGNORE, Encoder, Example, Packer
from parley.errors import ConfigError, DataError
from parley.files import atomic_dir
from parley.templates import fingerprint

SPLITS = ("train", "validation")
SHARD = "data-00000-of-00001.arrow"  # one Arrow stream file per split, named as save_to_disk names it
SHOWN_BAD = 10  # malformed records listed in the error
# Bounds on what is held at once, so memory stays flat whatever the corpus: Python lists of ints cost
# ~36 bytes a token, and the Rust tokenizer's encodings about as much again.
WRITE_TOKENS = 1 << 18  # tokens buffered per split before an Arrow record batch is written
BATCH_CHARS = 1 << 20  # characters of text tokenized per call (besides `batch` records)
PROGRESS_EVERY = 5.0  # seconds between progress lines while a source is read


@dataclass
class PrepareConfig:
    """How to turn sources into training examples."""

    max_len: int = 0  # longest example in tokens; 0 = the model's context window, at most 2048
    val_ratio: float = 0.05  # share of records (chosen by content hash) put in the validation split
    pack: bool = False  # concatenate consecutive short examples up to max_len (position_ids restart per record; training keeps attention within each)
    skip_bad: bool = False  # leave malformed records out (and count them) instead of stopping
    overwrite: bool = False  # replace `out` if it already holds something
    batch: int = 256  # records tokenized per call (the Rust tokenizer spreads a batch over the cores)
    clean: CleanConfig = field(default_factory=CleanConfig)  # cleaning rules for prose (text:) documents

    def check(self) -> None:
        self.clean.check()
        if self.max_len < 0 or self.max_len == 1:
            raise ConfigError(f"--max-len must be 0 (the model's context window) or at least 2, got {self.max_len}")
        if not 0 <= self.val_ratio < 1:
            raise ConfigError(f"--val-ratio must be in [0, 1), got {self.val_ratio}")
        if self.batch < 1:
            raise ConfigError(f"batch must be at least 1, got {self.batch}")


@dataclass
class _SourceCount:
    spec: str
    records: int = 0
    bad: int = 0
    skipped: dict = field(default_factory=dict)


def prepare(
    specs: list[str],
    out: Path,
    tokenizer,
    template: str,
    config: PrepareConfig | None = None,
    *,
    model: str = "",
    context_window: int = 2048,
    progress=lambda message: None,
) -> Manifest:
    """Tokenize every source into `out` (see the module docstring); returns its manifest."""
    config = config or PrepareConfig()
    sources = check_inputs(specs, out, config)
    out = Path(out)
    max_len = config.max_len or min(context_window, 2048)
    preference = _kind(sources) == "preference"
    with atomic_dir(out) as tmp:
        if preference:
            from parley.data import preference_tokenize

            manifest = preference_tokenize.build(sources, tmp, tokenizer, template, config, max_len, progress,
                                                 in_validation, SHOWN_BAD)
        else:
            manifest = _build(sources, tmp, tokenizer, template, config, max_len, progress)
        manifest.model, manifest.chat_template, manifest.template_fingerprint = model, template, fingerprint(template)
        manifest.tokenizer = tokenizer_info(tokenizer)
        manifest.settings = {**asdict(config), "max_len": max_len, "kind": "preference" if preference else "sft"}
        manifest.write(tmp)
        tokenizer.backend_tokenizer.save(str(tmp / "tokenizer.json"))
        if _occupied(out) and not config.overwrite:
            raise DataError(f"{out} appeared while preparing; choose another --out or pass --overwrite")
    return manifest


def check_inputs(specs: list[str], out: Path, config: PrepareConfig) -> list[Source]:
    """The parsed sources, once every cheap check has passed (settings, specs, files exist, `out` free)."""
    config.check()
    if not specs:
        raise ConfigError("no --source given; e.g. --source chatterbot or --source chat:FILE.jsonl")
    sources = [parse(spec) for spec in specs]
    for source in sources:
        source.check()
    if _kind(sources) == "preference" and config.pack:
        raise ConfigError("--pack: preference data is not packed (each row is a context and its replies); drop --pack")
    if _occupied(Path(out)) and not config.overwrite:
        raise DataError(f"{out} already exists and is not empty; choose another --out or pass --overwrite")
    return sources


def _kind(sources: list[Source]) -> str:
    """`preference` or `sft`: what every source holds (the two make different datasets)."""
    kinds = {source.kind for source in sources}
    if len(kinds) > 1:
        prefs = ", ".join(s.spec for s in sources if s.kind == "preference")
        raise ConfigError(f"--source: {prefs} hold preferences (chosen/rejected replies) and the others hold "
                          "conversations; they make different datasets: prepare them separately")
    return kinds.pop()


def tokenizer_info(tokenizer) -> dict:
    """Name, size and a fingerprint of the vocabulary (ids ↔ tokens, added tokens included)."""
    vocab = json.dumps(sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]), ensure_ascii=False)
    return {
        "name": getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__,
        "vocab_size": len(tokenizer),
        "vocab_fingerprint": hashlib.sha256(vocab.encode()).hexdigest()[:16],
        "eos_token": tokenizer.eos_token,
    }


def in_validation(record: Record, ratio: float) -> bool:
    return int(record.content_hash()[:8], 16) < ratio * 0x1_0000_0000


def _build(sources: list[Source], tmp: Path, tokenizer, template, config: PrepareConfig, max_len: int, progress) -> Manifest:
    encoder = Encoder(tokenizer, template, max_len)
    writers = {s: _SplitWriter(tmp / s / SHARD, max_len if config.pack else 0) for s in SPLITS}
    bad: list[str] = []
    counts = []
    # One cleaner for the run, so duplicates are found across sources; its indexes live in `tmp` and are
    # deleted when the sources are read (or reading fails), before `tmp` becomes the output.
    with Cleaner(config.clean, scratch=tmp) as cleaner:
        for source in sources:
            source.cleaner = cleaner
            count = _SourceCount(source.spec)
            counts.append(count)
            failed = any(c.bad for c in counts[:-1]) and not config.skip_bad
            _read_source(source, count, encoder, writers, config, bad, failed, _Meter(source, count, progress))
            dropped = sum(count.skipped.values())
            progress(f"{source.spec}: {count.records} records" + (f", {count.bad} bad" if count.bad else "")
                     + (f", {dropped} skipped" if dropped else ""))

    for writer in writers.values():
        writer.close()
    total_bad = sum(c.bad for c in counts)
    if total_bad and not config.skip_bad:
        shown = "\n".join(f"  {line}" for line in bad)
        more = f"\n  ... and {total_bad - len(bad)} more" if total_bad > len(bad) else ""
        raise DataError(f"{total_bad} bad record{'s' * (total_bad > 1)}; fix them or pass --skip-bad to leave them out:\n{shown}{more}")
    if not writers["train"].examples and not writers["validation"].examples:
        raise DataError(f"nothing to train on: all {sum(c.records for c in counts)} records were dropped "
                        f"({encoder.counts['too_long']} longer than --max-len {max_len} even after dropping turns)")

    describe_splits(tmp, writers)
    digest = hashlib.sha256()
    for s in SPLITS:
        digest.update(writers[s].digest.digest())
    return Manifest(
        sources=[asdict(c) for c in counts],
        records=sum(c.records for c in counts),
        bad_skipped=total_bad,
        bad_examples=bad,
        splits={s: w.summary() for s, w in writers.items()},
        length_changes={k: encoder.counts[k] for k in ("fitted", "dropped_turns", "truncated", "too_long")},
        content_hash=digest.hexdigest(),
    )


def describe_splits(tmp: Path, writers: dict) -> None:
    """The JSON files that make `tmp` a `save_to_disk` DatasetDict around the Arrow files as written
    (`writers`: split name → an object with the file's `path`, a sha256 `digest` and `examples`).

    Written here rather than by `save_to_disk`, which would copy every row once more and, reading
    through a memory map, hold the whole dataset's pages in the process's resident memory."""
    import datasets

    for name, writer in writers.items():
        info = datasets.Dataset.from_file(str(writer.path)).info  # the features, from the schema's metadata
        state = {
            "_data_files": [{"filename": writer.path.name}], "_fingerprint": writer.digest.hexdigest()[:16],
            "_format_columns": None, "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False,
            "_split": name,
        }
        (writer.path.parent / "state.json").write_text(json.dumps(state, indent=2))
        (writer.path.parent / "dataset_info.json").write_text(json.dumps(asdict(info), indent=2, sort_keys=True))
    (tmp / "dataset_dict.json").write_text(json.dumps({"splits": list(writers)}))
    loaded = datasets.load_from_disk(str(tmp))  # checks the layout against this version of datasets
    for name, writer in writers.items():
        if len(loaded[name]) != writer.examples:
            raise DataError(f"{tmp}: the {name} split reads back {len(loaded[name])} rows, not {writer.examples}")


class _Meter:
    """Progress lines for one source, at most every PROGRESS_EVERY seconds: bytes, documents, ETA."""

    def __init__(self, source: Source, count: _SourceCount, progress):
        self.source, self.count, self.progress = source, count, progress
        self.started = self.last = time.monotonic()

    def tick(self) -> None:
        now = time.monotonic()
        if now - self.last < PROGRESS_EVERY:
            return
        self.last = now
        self.progress(progress_line(self.source.spec, self.count.records, sum(self.source.skipped.values()),
                                    self.source.done, self.source.total, now - self.started))


def progress_line(spec: str, records: int, skipped: int, done: int, total: int, seconds: float) -> str:
    """`spec: 12.0/100.0 MB (12%), 3,456 documents (78 skipped), 1.2 MB/s, ETA 0:01:13` (the parts known)."""
    parts = [f"{records:,} documents" + (f" ({skipped:,} skipped)" if skipped else "")]
    if done:
        size = f"{done / 1e6:,.1f}/{total / 1e6:,.1f} MB ({min(done / total, 1):.0%})" if total else f"{done / 1e6:,.1f} MB"
        parts.insert(0, size)
        if seconds > 0:
            parts.append(f"{done / 1e6 / seconds:,.1f} MB/s")
        if total and done < total:
            left = round((total - done) * seconds / done)
            parts.append(f"ETA {left // 3600}:{left // 60 % 60:02d}:{left % 60:02d}")
    return f"{spec}: " + ", ".join(parts)


def _read_source(source: Source, count: _SourceCount, encoder, writers, config: PrepareConfig, bad: list[str], failed: bool,
                 meter: _Meter) -> None:
    """Read one source to the end, tokenizing in bounded batches; after the first bad record of a
    run that will fail, only check the rest, so the error can give the full count."""
    batch: list[Record] = []
    chars = 0
    for item in source.read():
        meter.tick()
        if isinstance(item, Bad):
            count.bad += 1
            if len(bad) < SHOWN_BAD:
                bad.append(str(item))
            failed = failed or not config.skip_bad
            continue
        count.records += 1
        if failed:
            continue
        batch.append(item)
        chars += sum(len(m["content"]) for m in item.messages)
        if len(batch) >= config.batch or chars >= BATCH_CHARS:
            _encode(batch, encoder, writers, config.val_ratio, count, bad)
            batch, chars = [], 0
    if not failed:
        _encode(batch, encoder, writers, config.val_ratio, count, bad)
    count.skipped = dict(sorted(source.skipped.items()))


def _encode(batch: list[Record], encoder: Encoder, writers: dict, val_ratio: float, count: _SourceCount, bad: list[str]) -> None:
    if not batch:
        return
    try:
        encoded = encoder.encode_batch(batch)
    except DataError:  # one record the template refuses: find which, one by one
        encoded = []
        for record in batch:
            try:
                encoded.append(encoder.encode(record))
            except DataError as e:
                count.bad += 1
                count.records -= 1
                if len(bad) < SHOWN_BAD:
                    bad.append(str(e))
                encoded.append([])
    for record, examples in zip(batch, encoded):
        writer = writers["validation" if in_validation(record, val_ratio) else "train"]
        writer.records += bool(examples)
        for example in examples:
            writer.add(example)


class _SplitWriter:
    """Appends examples to one split's Arrow stream file, in batches; counts and hashes them."""

    def __init__(self, path: Path, pack_len: int):
        import datasets
        import pyarrow as pa

        columns = {"input_ids": datasets.List(datasets.Value("int32")), "labels": datasets.List(datasets.Value("int32"))}
        if pack_len:
            columns["position_ids"] = datasets.List(datasets.Value("int32"))
        columns["source"] = datasets.Value("string")
        self.schema = datasets.Features(columns).arrow_schema
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.sink = pa.OSFile(str(path), "wb")
        self.writer = pa.ipc.new_stream(self.sink, self.schema)
        self.packer = Packer(pack_len) if pack_len else None
        self.rows: list[Example] = []
        self.buffered = 0  # tokens in self.rows
        self.records = self.examples = self.tokens = self.loss_tokens = 0
        self.digest = hashlib.sha256()

    def add(self, example: Example) -> None:
        for done in self.packer.add(example) if self.packer else [example]:
            self._row(done)

    def _row(self, example: Example) -> None:
        self.rows.append(example)
        self.buffered += len(example.input_ids)
        self.examples += 1
        self.tokens += len(example.input_ids)
        self.loss_tokens += sum(1 for label in example.labels if label != IGNORE)
        self.digest.update(array("i", example.input_ids).tobytes() + b"|" + array("i", example.labels).tobytes())
        if self.buffered >= WRITE_TOKENS:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if not self.rows:
            return
        data = {
            "input_ids": [r.input_ids for r in self.rows],
            "labels": [r.labels for r in self.rows],
            "source": [r.source for r in self.rows],
        }
        if self.packer:
            data["position_ids"] = [r.position_ids for r in self.rows]
        self.writer.write_batch(pa.RecordBatch.from_pydict(data, schema=self.schema))
        self.rows = []
        self.buffered = 0

    def close(self) -> None:
        if self.packer:
            for done in self.packer.flush():
                self._row(done)
        self._flush()
        if not self.examples:  # datasets cannot load a split without a record batch: write an empty one
            import pyarrow as pa

            self.writer.write_batch(pa.RecordBatch.from_pylist([], schema=self.schema))
        self.writer.close()
        self.sink.close()

    def summary(self) -> dict:
        return {"records": self.records, "examples": self.examples, "tokens": self.tokens, "loss_tokens": self.loss_tokens}


def _occupied(out: Path) -> bool:
    return out.exists() and (not out.is_dir() or any(out.iterdir()))


def prepare_for_model(specs: list[str], out: Path, model: str, config: PrepareConfig, progress=lambda m: None) -> Manifest:
    """`prepare` with the tokenizer, chat template and context window of a local model spec (`backend.local`)."""
    from parley import backend

    check_inputs(specs, out, config)  # seconds before the model would have loaded
    loaded = backend.local(model, device="cpu", purpose=f"--model {model}: data preparation")
    return prepare(specs, out, loaded.tokenizer, loaded.template, config, model=model,
                   context_window=loaded.context_window, progress=progress)
