"""`parley data stats DIR` and `parley data show DIR [N]`: what a prepared dataset will teach.

    stats   per split: examples, records, tokens, the share of tokens that carry loss, and a histogram
            of tokens per example; per source: records, bad, skipped by reason (from manifest.json);
            the cleaning rules and thresholds that were applied to text: sources
    show    example N (0-based) decoded with the dataset's own tokenizer.json: the context the loss
            skips is dimmed, the tokens the model learns are highlighted

Preference datasets (prompt_ids, chosen_ids, rejected_ids) show the context dimmed and the chosen and
rejected replies in their colours; their tokens per example count the context and the longer reply.

Only the dataset directory is read; no model is loaded.
"""

from __future__ import annotations

from pathlib import Path

from parley.data.manifest import Manifest
from parley.data.tokenize import IGNORE
from parley.errors import DataError
from parley.printable import plain

MASKED_STYLE = "dim"
LEARNED_STYLE = "bold green"
BUCKETS = 10  # histogram rows


def open_prepared(directory: Path):
    """(DatasetDict, Manifest) of a `parley data prepare` output; DataError if it is not one."""
    import datasets

    manifest = Manifest.read(directory)
    try:
        data = datasets.load_from_disk(str(directory))
    except (OSError, ValueError, FileNotFoundError) as e:
        raise DataError(f"{directory}: unreadable prepared dataset ({str(e).splitlines()[0]}); prepare it again") from e
    return data, manifest


def stats(directory: Path) -> dict:
    """Counts and length histograms, computed from the Arrow columns (fast on millions of rows)."""
    import pyarrow.compute as pc

    data, manifest = open_prepared(directory)
    splits = {}
    for name, split in data.items():
        table = split.data.table
        if "prompt_ids" in table.column_names:  # preferences: a context and up to two replies per row
            n = {c: pc.list_value_length(table.column(c)).to_pylist() for c in ("prompt_ids", "chosen_ids", "rejected_ids")}
            lengths = [p + max(c, r) for p, c, r in zip(n["prompt_ids"], n["chosen_ids"], n["rejected_ids"])]
            loss = sum(n["chosen_ids"]) + sum(n["rejected_ids"])
        else:
            lengths = pc.list_value_length(table.column("input_ids")).to_pylist()
            labels = pc.list_flatten(table.column("labels"))
            loss = int(pc.sum(pc.not_equal(labels, IGNORE)).as_py() or 0)
        tokens = sum(lengths)
        splits[name] = {
            "examples": len(lengths),
            "records": manifest.splits.get(name, {}).get("records", len(lengths)),
            "tokens": tokens,
            "loss_tokens": loss,
            "loss_share": round(loss / tokens, 4) if tokens else 0.0,
            "tokens_per_example": _summary(lengths),
            "histogram": _histogram(lengths),
        }
    return {"dir": str(directory), "splits": splits, "sources": manifest.sources,
            "length_changes": manifest.length_changes, "tokenizer": manifest.tokenizer, "settings": manifest.settings}


def print_stats(directory: Path, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    report = stats(directory)
    table = Table(title=f"{directory}", show_edge=False)
    for column in ("split", "examples", "records", "tokens", "learned", "share", "min/med/max"):
        table.add_column(column, justify="right" if column != "split" else "left")
    for name, s in report["splits"].items():
        t = s["tokens_per_example"]
        table.add_row(name, f"{s['examples']:,}", f"{s['records']:,}", f"{s['tokens']:,}", f"{s['loss_tokens']:,}",
                      f"{s['loss_share']:.1%}", f"{t['min']}/{t['median']}/{t['max']}")
    console.print(table)
    for name, s in report["splits"].items():
        console.print(f"\n[bold]{name}[/]: tokens per example")
        peak = max((n for _, _, n in s["histogram"]), default=0) or 1
        for low, high, n in s["histogram"]:
            bar = "█" * round(30 * n / peak)
            console.print(f"  {low:>6}-{high:<6} {bar} {n}")
    console.print()
    for line in source_lines(report["sources"]):
        console.print(plain(line))
    clean = report["settings"].get("clean")
    if clean is not None:  # only text: sources are cleaned; the rules are shown whatever the sources
        from parley.data.cleaning import CleanConfig

        console.print(plain(f"cleaning (text: sources): {CleanConfig(**clean).describe()}"))
    changes = {k: v for k, v in report["length_changes"].items() if v}
    if changes:
        console.print("length: " + ", ".join(f"{k} {v}" for k, v in changes.items()))


def render_example(input_ids: list[int], labels: list[int], tokenizer):
    """A rich Text of the decoded example: masked runs dimmed, learned runs highlighted."""
    from rich.text import Text

    text = Text()
    for ids, learned in _runs(input_ids, labels):
        text.append(tokenizer.decode(ids, skip_special_tokens=False), style=LEARNED_STYLE if learned else MASKED_STYLE)
    return text


def show(directory: Path, index: int = 0, split: str = "train", console=None) -> None:
    from rich.console import Console
    from rich.text import Text
    from tokenizers import Tokenizer

    console = console or Console()
    data, _ = open_prepared(directory)
    if split not in data:
        raise DataError(f"{directory}: no split {split!r}; it has {', '.join(data)}")
    rows = data[split]
    if not 0 <= index < len(rows):
        raise DataError(f"{directory}: example {index} is out of range; {split} has {len(rows)} (0 to {len(rows) - 1})")
    tokenizer = Tokenizer.from_file(str(Path(directory) / "tokenizer.json"))
    row = rows[index]
    if "prompt_ids" in row:  # a preference: the context, then each reply the model is to prefer or not
        console.print(Text.assemble((f"{split}[{index}]", "bold"), plain(f" from {row['source']}")))
        console.print(Text(tokenizer.decode(row["prompt_ids"], skip_special_tokens=False), style=MASKED_STYLE), soft_wrap=True)
        for name, style in (("chosen", LEARNED_STYLE), ("rejected", "bold red")):
            if row[f"{name}_ids"]:
                console.print(Text.assemble((f"{name}: ", "bold"), (tokenizer.decode(row[f"{name}_ids"], skip_special_tokens=False), style)),
                              soft_wrap=True)
        return
    learned = sum(1 for label in row["labels"] if label != IGNORE)
    console.print(Text.assemble((f"{split}[{index}]", "bold"), plain(f" from {row['source']}: "),
                                f"{len(row['input_ids'])} tokens, ", (f"{learned} learned", LEARNED_STYLE),
                                ", ", (f"{len(row['input_ids']) - learned} context", MASKED_STYLE)))
    console.print(render_example(row["input_ids"], row["labels"], tokenizer), highlight=False, soft_wrap=True)


def _runs(input_ids: list[int], labels: list[int]):
    """Consecutive (ids, learned) runs."""
    run: list[int] = []
    state = None
    for token, label in zip(input_ids, labels):
        learned = label != IGNORE
        if run and learned != state:
            yield run, state
            run = []
        run.append(token)
        state = learned
    if run:
        yield run, state


def _summary(lengths: list[int]) -> dict:
    if not lengths:
        return {"min": 0, "median": 0, "mean": 0, "max": 0}
    ordered = sorted(lengths)
    return {"min": ordered[0], "median": ordered[len(ordered) // 2], "mean": round(sum(ordered) / len(ordered), 1), "max": ordered[-1]}


def source_lines(sources: list[dict]) -> list[str]:
    """Per source, and in total: records kept, and records left out with every reason (bad records
    that --skip-bad dropped and those the reader skipped are all left out, so counted together)."""
    lines, kept, left = [], 0, 0
    for source in sources:
        reasons = {**({"bad": source["bad"]} if source.get("bad") else {}), **source.get("skipped", {})}
        out = sum(reasons.values())
        kept, left = kept + source["records"], left + out
        why = ", ".join(f"{k} {v:,}" for k, v in reasons.items())
        lines.append(f"{source['spec']}: {source['records']:,} records kept" + (f", {out:,} left out ({why})" if out else ""))
    if len(sources) > 1:
        lines.append(f"total: {kept:,} records kept" + (f", {left:,} left out" if left else ""))
    return lines


def _histogram(lengths: list[int]) -> list[tuple[int, int, int]]:
    """(low, high, count) over at most BUCKETS equal ranges spanning the data's own min..max (a span
    over the whole context window left most rows empty)."""
    if not lengths:
        return []
    low, high = min(lengths), max(lengths)
    width = -(-(high - low + 1) // BUCKETS)
    counts = [0] * (-(-(high - low + 1) // width))
    for n in lengths:
        counts[(n - low) // width] += 1
    return [(low + i * width, min(high, low + (i + 1) * width - 1), c) for i, c in enumerate(counts)]
