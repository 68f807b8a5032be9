"""Preference records → token ids: the context once, then each reply as the model would say it after it.

Each row of a prepared preference dataset holds `prompt_ids` (the context rendered with the model's chat
template and its generation prompt), `chosen_ids` and `rejected_ids` (what the template adds for that
reply: its content and end-of-turn marker, `tokenize.said`), either of which is empty for an unpaired
judgement (a thumbs up has no rejected reply), and `source` (file:line). The context is tokenized once
per record and shared by both replies; training joins prompt + reply itself.

Length: a row must fit `max_len` with its longer reply. Replies longer than half of `max_len` are cut
from their end first, then the context keeps its newest tokens (TRL's keep-end truncation); both are
counted as `truncated`. A context the template renders differently once a reply follows is refused
with a one-line DataError naming the record (the prefix rule of tokenize.py).

Limits: rows are held in memory until each split is written (preference sets are thousands to a few
hundred thousand rows, not the billions of tokens SFT corpora reach).
"""

from __future__ import annotations

import hashlib
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

from parley.data.manifest import Manifest
from parley.data.preference_formats import Preference
from parley.data.records import Bad
from parley.data.tokenize import said
from parley.errors import DataError
from parley.templates import render

COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")


@dataclass
class PreferenceEncoder:
    tokenizer: object  # a transformers fast tokenizer
    template: str  # the jinja chat template
    max_len: int  # longest prompt + reply in tokens
    counts: Counter = field(default_factory=Counter)  # truncated

    def encode_batch(self, prefs: list[Preference]) -> list[dict]:
        texts = []
        for pref in prefs:
            prompt = self._render(pref.prompt, True, pref.where)
            texts.append(prompt)
            for reply in (pref.chosen, pref.rejected):
                texts.append("" if reply is None else self._reply(pref, prompt, reply))
        fast = self.tokenizer.backend_tokenizer
        ids = [e.ids for e in fast.encode_batch(texts, add_special_tokens=False)]
        rows = []
        for i, pref in enumerate(prefs):
            prompt, chosen, rejected = ids[3 * i : 3 * i + 3]
            rows.append(self._fitted(prompt, chosen, rejected) | {"source": pref.where})
        return rows

    def _reply(self, pref: Preference, prompt: str, reply: str) -> str:
        whole = self._render(pref.prompt + [{"role": "assistant", "content": reply}], False, pref.where)
        if not whole.startswith(prompt):
            raise DataError(f"{pref.where}: the chat template renders the context differently once a reply "
                            "follows, so the reply's tokens cannot be separated from it")
        return said(whole[len(prompt) :], reply)

    def _fitted(self, prompt: list[int], chosen: list[int], rejected: list[int]) -> dict:
        half = self.max_len // 2
        longest = max(len(chosen), len(rejected))
        if len(prompt) + longest > self.max_len:
            self.counts["truncated"] += 1
            if longest > half:
                chosen, rejected = chosen[:half], rejected[:half]
                longest = max(len(chosen), len(rejected))
            prompt = prompt[len(prompt) - (self.max_len - longest):] if len(prompt) + longest > self.max_len else prompt
        return {"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected}

    def _render(self, messages: list[dict], add_generation_prompt: bool, where: str) -> str:
        try:
            return render(self.tokenizer, self.template, messages, add_generation_prompt)
        except Exception as e:  # jinja's TemplateError and the template's own raise_exception()
            raise DataError(f"{where}: the chat template refuses this conversation: {e}") from e


def _encoded(encoder: PreferenceEncoder, batch: list[Preference], count: dict, bad: list[str], shown_bad: int):
    """Rows of `batch`; a record the template refuses is counted bad (found one by one) and gives None."""
    try:
        return encoder.encode_batch(batch)
    except DataError:
        rows = []
        for pref in batch:
            try:
                rows += encoder.encode_batch([pref])
            except DataError as e:
                count["bad"] += 1
                count["records"] -= 1
                if len(bad) < shown_bad:
                    bad.append(str(e))
                rows.append(None)
        return rows


def build(sources, tmp: Path, tokenizer, template: str, config, max_len: int, progress, in_validation,
          shown_bad: int) -> Manifest:
    """Read every preference source, tokenize, and save train/validation splits into `tmp`."""
    import datasets

    encoder = PreferenceEncoder(tokenizer, template, max_len)
    splits = {"train": [], "validation": []}
    bad: list[str] = []
    counts = []
    for source in sources:
        count = {"spec": source.spec, "records": 0, "bad": 0, "skipped": {}, "pairs": 0, "unpaired": 0}
        counts.append(count)
        kept = []
        for item in source.read():
            if isinstance(item, Bad):
                count["bad"] += 1
                if len(bad) < shown_bad:
                    bad.append(str(item))
                continue
            count["records"] += 1
            count["pairs" if item.paired else "unpaired"] += 1
            kept.append(item)
        for start in range(0, len(kept), config.batch):
            batch = kept[start : start + config.batch]
            for pref, row in zip(batch, _encoded(encoder, batch, count, bad, shown_bad)):
                if row is not None:
                    splits["validation" if in_validation(pref, config.val_ratio) else "train"].append(row)
        count["skipped"] = dict(sorted(source.skipped.items()))
        progress(f"{source.spec}: {count['records']} records ({count['pairs']} pairs, {count['unpaired']} unpaired)"
                 + (f", {count['bad']} bad" if count["bad"] else ""))
    total_bad = sum(c["bad"] for c in counts)
    if total_bad and not config.skip_bad:
        shown = "\n".join(f"  {line}" for line in bad)
        more = f"\n  ... and {total_bad - len(bad)} more" if total_bad > len(bad) else ""
        raise DataError(f"{total_bad} bad record{'s' * (total_bad > 1)}; fix them or pass --skip-bad to leave them out:\n{shown}{more}")
    if not splits["train"] and not splits["validation"]:
        raise DataError("nothing to train on: no preference records were read")

    import pyarrow as pa

    from parley.data.prepare import SHARD, describe_splits

    features = datasets.Features({c: datasets.List(datasets.Value("int32")) for c in COLUMNS}
                                 | {"source": datasets.Value("string")})
    digest = hashlib.sha256()
    summary, written = {}, {}
    for name, rows in splits.items():
        split_digest = hashlib.sha256()
        for r in rows:
            split_digest.update(b"|".join(array("i", r[c]).tobytes() for c in COLUMNS) + b"\n")
        digest.update(split_digest.digest())
        path = tmp / name / SHARD
        path.parent.mkdir(parents=True, exist_ok=True)
        # One Arrow stream file per split, as the SFT writer makes (an empty split still gets a batch).
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, features.arrow_schema) as writer:
            columns = {c: [r[c] for r in rows] for c in (*COLUMNS, "source")}
            writer.write_batch(pa.RecordBatch.from_pydict(columns, schema=features.arrow_schema))
        written[name] = SimpleNamespace(path=path, digest=split_digest, examples=len(rows))
        summary[name] = {"records": len(rows), "examples": len(rows),
                         "pairs": sum(1 for r in rows if r["chosen_ids"] and r["rejected_ids"]),
                         "tokens": sum(len(r[c]) for r in rows for c in COLUMNS),
                         "loss_tokens": sum(len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in rows)}
    describe_splits(tmp, written)
    return Manifest(
        sources=counts, records=sum(c["records"] + c["bad"] for c in counts), bad_skipped=total_bad,
        bad_examples=bad, splits=summary, length_changes={"truncated": encoder.counts["truncated"]},
        content_hash=digest.hexdigest(),
    )
