"""Evaluation results on disk: one JSON document per run, a Markdown summary beside it, and
before/after comparisons as a table and a bar chart.

    parley eval compare base.json tuned.json --chart compare.png

A results document is a dict with at least `kind` (code, perplexity, dialogue or explain), `created`,
`settings` and `metrics` ({name: number}); code results add every sample with its verdict,
dialogue results add examples. `compare` works on the metrics of any two documents, so base and
fine-tuned runs of the same kind line up.
"""

from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from parley.errors import DataError

# Metrics where a smaller number is the better one; every other metric is higher-is-better.
LOWER_IS_BETTER = ("perplexity", "bits_per_byte", "loss")
FAILURES_SHOWN = 15
EXAMPLES_SHOWN = 5


def write_results(results: dict, path: str | Path) -> tuple[Path, Path]:
    """Write `path` (JSON) and the Markdown summary beside it (same name, .md); return both."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    results = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), **results}
    path.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    summary = path.with_suffix(".md")
    summary.write_text(markdown(results), encoding="utf-8")
    return path, summary


def read_results(path: str | Path) -> dict:
    path = Path(path)
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: no such results file") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: not a results file ({exc.msg})") from None
    if not isinstance(results, dict) or not isinstance(results.get("metrics"), dict):
        raise DataError(f"{path}: not a parley eval results file (no `metrics`)")
    return results


def markdown(results: dict) -> str:
    """A short human summary: what was measured, the numbers, then failures or examples."""
    title = f"# parley eval {results.get('kind', '?')}"
    if results.get("model"):
        title += f" — {results['model']}"
    lines = [title, "", f"Created {results.get('created', '?')}.", "", "| metric | value |", "|---|---|"]
    lines += [f"| {name} | {_fmt(value)} |" for name, value in results["metrics"].items()]
    details = {k: v for k, v in results.get("details", {}).items() if isinstance(v, (str, int, float))}
    if details:
        lines += ["", *[f"- {key.replace('_', ' ')}: {_fmt(value)}" for key, value in details.items()]]
    lines += _code_sections(results) + _explain_sections(results) + _example_sections(results)
    settings = ", ".join(f"{k}={v}" for k, v in results.get("settings", {}).items())
    return "\n".join(lines + ["", f"Settings: {settings}", ""])


def _code_sections(results: dict) -> list[str]:
    if results.get("kind") != "code":
        return []
    details = results["details"]
    lines = ["", "Verdicts: " + ", ".join(f"{s} {n}" for s, n in sorted(details["statuses"].items()))]
    if details.get("k_skipped"):
        skipped = ", ".join(f"pass@{k}" for k in details["k_skipped"])
        lines.append(f"Not reported: {skipped} (every problem needs at least k samples).")
    failures = [s for s in results["samples"] if s["status"] != "passed"]
    if failures:
        lines += ["", f"## Not passed (first {min(len(failures), FAILURES_SHOWN)} of {len(failures)})", ""]
        lines += ["| task | # | verdict | message |", "|---|---|---|---|"]
        for s in failures[:FAILURES_SHOWN]:
            message = s["message"].replace("|", "\\|")[:120]
            lines.append(f"| {s['task_id']} | {s['completion_id']} | {s['status']} | {message} |")
    return lines


def _explain_sections(results: dict) -> list[str]:
    """Faithfulness (eval/explain.py): AOPC with 95% intervals, per method and measure, and the verdicts."""
    if results.get("kind") != "explain":
        return []
    intervals = results["details"]["ci95"]
    lines = ["", "## AOPC (nats/token, 95% bootstrap CI over cases)", "",
             "| method | comprehensiveness ↑ | sufficiency ↓ |", "|---|---|---|"]
    names = dict.fromkeys(name.split(".")[0] for name in intervals)
    for name in names:
        cells = [f"{results['metrics'][key]:+.3f} [{intervals[key][0]:+.3f}, {intervals[key][1]:+.3f}]"
                 for key in (f"{name}.comprehensiveness_aopc", f"{name}.sufficiency_aopc")]
        lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
    return lines + ["", *[f"- {verdict}" for verdict in results["details"]["verdicts"]]]


def _example_sections(results: dict) -> list[str]:
    examples = results.get("examples") or []
    if not examples:
        return []
    lines = ["", "## Examples", "", "The first few replies beside their references (every reply is in the JSON)."]
    for example in examples[:EXAMPLES_SHOWN]:
        lines += ["", f"**Context:** {_quote(example.get('context', ''))}", ""]
        lines += ["| reference | generated |", "|---|---|"]
        lines.append(f"| {_cell(example['reference'])} | {_cell(example['generated'])} |")
    return lines


def compare(a: dict, b: dict) -> list[tuple[str, float | None, float | None, float | None, bool | None]]:
    """Rows (metric, A, B, B - A, B is better) for every metric in either document."""
    rows = []
    for name in list(dict.fromkeys([*a["metrics"], *b["metrics"]])):
        va, vb = a["metrics"].get(name), b["metrics"].get(name)
        if va is None or vb is None:
            rows.append((name, va, vb, None, None))
            continue
        lower = any(name.startswith(prefix) for prefix in LOWER_IS_BETTER)
        rows.append((name, va, vb, vb - va, (vb < va) if lower else (vb > va)))
    return rows


def bar_chart(a: dict, b: dict, labels: tuple[str, str], path: str | Path) -> Path:
    """One small panel per shared metric (scales differ: pass@1 vs perplexity), A beside B."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    names = [row[0] for row in compare(a, b) if row[3] is not None]
    if not names:
        raise DataError("the two results files share no metric to chart")
    cols = min(len(names), 4)
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        values = [a["metrics"][name], b["metrics"][name]]
        bars = ax.bar([0, 1], values, color=["#8c9bab", "#2b7bba"])
        ax.set_xticks([0, 1], [textwrap.fill(label, 18) for label in labels], fontsize=8)
        ax.bar_label(bars, fmt="%.3g")
        ax.set_title(name)
        ax.margins(y=0.15)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def decimals(*values: object, significant: int = 4) -> int:
    """Decimal places that give the largest of `values` `significant` digits: one precision for a
    metric's before, after and change, so the change column reads as the values do."""
    numbers = [abs(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    if all(isinstance(v, int) for v in values if v is not None):
        return 0
    largest = max(numbers, default=0)
    return max(0, significant - 1 - math.floor(math.log10(largest))) if largest else significant


def _fixed(value: object, places: int, sign: bool = False) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return str(value)
    return f"{value:{'+' if sign else ''}.{places}f}"


def _fmt(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _quote(text: str) -> str:
    return " ".join(text.split())[:300]


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")[:300]


@contextmanager
def progress(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """A rich progress bar with count, elapsed time and ETA on stderr; yields `advance(n)`."""
    from rich.console import Console
    from rich.progress import (
        BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn,
    )

    console = Console(stderr=True)
    if not console.is_terminal:  # a log file or CI: rich would draw nothing until the end
        yield _plain_progress(description, total)
        return
    columns = (
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)


def _plain_progress(description: str, total: int, every_s: float = 30.0) -> Callable[[int], None]:
    """`advance(n)` that prints a line (count, elapsed, ETA) at most every `every_s` and at the end."""
    import sys
    import time

    started = last = time.monotonic()
    done = 0

    def advance(n: int = 1) -> None:
        nonlocal done, last
        done += n
        now = time.monotonic()
        if now - last < every_s and done < total:
            return
        last = now
        elapsed = now - started
        eta = elapsed / done * (total - done) if done else float("nan")
        print(f"{description} {done}/{total} elapsed {_clock(elapsed)} ETA {_clock(eta)}", file=sys.stderr, flush=True)

    return advance


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


def show_comparison(before: str | Path, after: str | Path, chart: str | Path | None = None) -> Path:
    """Print the metrics of two results files as a table and write the bar chart; return its path."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from parley.printable import plain

    a, b = read_results(before), read_results(after)
    labels = (_label(a, before), _label(b, after))
    table = Table(title=plain(f"{labels[0]} → {labels[1]}"))  # labels come from file names: never markup
    for heading in ("metric", plain(labels[0]), plain(labels[1]), "change"):
        table.add_column(heading, justify="left" if heading == "metric" else "right")
    for name, va, vb, delta, better in compare(a, b):
        style = "" if better is None or delta == 0 else ("green" if better else "red")
        places = decimals(va, vb)
        shown = [("—" if v is None else _fixed(v, places)) for v in (va, vb)]
        change = "" if delta is None else _fixed(delta, places, sign=True)
        table.add_row(name, *shown, Text(change, style=style))
    console = Console()
    console.print(table)
    if a.get("kind") != b.get("kind"):
        console.print(f"note: comparing a {a.get('kind')} result with a {b.get('kind')} result")
    after = Path(after)
    chart = Path(chart) if chart else after.with_name(f"{after.stem}-vs-{Path(before).stem}.png")
    console.print(plain(f"chart: {bar_chart(a, b, labels, chart)}"))
    return chart


def _label(results: dict, path: str | Path) -> str:
    return str(results.get("model") or Path(path).name.split(".")[0])


def default_out(kind: str, model: str) -> Path:
    """eval-results/<kind>-<model>-<UTC time>.json under the current directory."""
    slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in model.strip("/")).strip("-.")[-60:]
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path("eval-results") / f"{kind}-{slug or 'model'}-{stamp}.json"
