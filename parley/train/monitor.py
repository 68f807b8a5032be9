"""Watching a run: the progress bar, RUN_DIR/metrics.jsonl, RUN_DIR/loss.png and accelerate's trackers.
(A DPO run's loss.png also draws its reward accuracy, train and validation, on a second axis.)

Only the main process writes. Every logged record is one JSON line in metrics.jsonl
(`{"step", "loss", "lr", "tokens_per_s", ...}` for training, `{"step", "val_loss", "val_ppl"}` for
evaluations); loss.png is redrawn from that file at each evaluation, so it also shows the part of a
run before a resume. On resume the lines after the checkpoint's step are dropped first: they belong
to steps that will be trained again.

The bar names what the run is doing ("train", "validation", "checkpoint", "final save"), so a long
evaluation at step 0 or at the end does not look like a hang; its ETA is the remaining steps times
the recent seconds per training step, with the time spent evaluating and saving left out.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from parley.files import write_atomic

METRICS = "metrics.jsonl"
PLOT = "loss.png"


class Monitor:
    """Logging for one run on one process (a no-op on processes other than the main one)."""

    def __init__(self, accelerator, run_dir: Path, total_steps: int, start_step: int, progress: bool):
        self.accelerator = accelerator
        self.main = accelerator.is_main_process
        self.run_dir = Path(run_dir)
        self._bar = None
        self.total = total_steps
        self._eta = StepClock(start_step)
        if self.main and progress:
            self._bar = _progress_bar()
            self._task = self._bar.add_task("train", total=total_steps, completed=start_step,
                                            loss="-", lr="-", tps="-", eta="-:--:--")
            self._bar.start()
        self._file = open(self.run_dir / METRICS, "a", encoding="utf-8") if self.main else None

    def log(self, record: dict) -> None:
        """Append one record to metrics.jsonl and send it to the trackers."""
        if self.main:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        values = {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))}
        self.accelerator.log(values, step=record["step"])

    def advance(self, step: int, loss: float, lr: float, tokens_per_s: float) -> None:
        eta = self._eta.tick(step, self.total)
        if self._bar is not None:
            self._bar.update(self._task, completed=step, loss=f"{loss:.4f}", lr=f"{lr:.2e}", tps=f"{tokens_per_s:,.0f}",
                             eta=eta)

    def phase(self, name: str) -> None:
        """Label the bar with what the run does now; anything but "train" is left out of the ETA."""
        self._eta.pause() if name != "train" else self._eta.resume()
        if self._bar is not None:
            self._bar.update(self._task, description=name)
            self._bar.refresh()

    def say(self, text: str) -> None:
        """A line of text above the progress bar (or on stderr without one)."""
        if not self.main:
            return
        if self._bar is not None:
            self._bar.console.print(text)
        else:
            import sys

            print(text, file=sys.stderr, flush=True)

    def plot(self) -> None:
        if self.main:
            plot_losses(self.run_dir / METRICS, self.run_dir / PLOT)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        if self._file is not None:
            self._file.close()
            self._file = None


def _progress_bar():
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"), TextColumn("lr {task.fields[lr]}"),
        TextColumn("{task.fields[tps]} tok/s"), TimeElapsedColumn(), TextColumn("ETA {task.fields[eta]}"),
        console=Console(stderr=True),
    )


class StepClock:
    """Seconds per training step (a moving average over the recent steps), for the ETA. Rich's own
    estimate forgets samples older than 30 s, so steps slower than that never showed one."""

    def __init__(self, step: int):
        self.step, self.per_step = step, 0.0
        self._since: float | None = time.perf_counter()

    def pause(self) -> None:
        self._since = None

    def resume(self) -> None:
        if self._since is None:
            self._since = time.perf_counter()

    def tick(self, step: int, total: int) -> str:
        """Note that `step` is done; the time left for the rest as H:MM:SS."""
        now = time.perf_counter()
        if self._since is not None and step > self.step:
            current = (now - self._since) / (step - self.step)
            self.per_step = current if not self.per_step else 0.8 * self.per_step + 0.2 * current
        self.step, self._since = step, now
        if not self.per_step:
            return "-:--:--"
        seconds = round(self.per_step * max(total - step, 0))
        return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def read_metrics(path: Path) -> list[dict]:
    if not Path(path).is_file():
        return []
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a kill; its step is trained (and logged) again
    return records


def truncate_metrics(path: Path, last_step: int) -> None:
    """Keep only records up to `last_step` (the checkpoint a run resumes from)."""
    kept = [r for r in read_metrics(path) if r.get("step", 0) <= last_step]
    write_atomic(Path(path), "".join(json.dumps(r) + "\n" for r in kept).encode())


SMOOTH_FROM = 20  # steps logged before a smoothed train curve is drawn over the raw one


def smoothed(values, weight: float = 0.9) -> list[float]:
    """Exponential moving average, debiased so the start is not pulled to 0 (TensorBoard's smoothing)."""
    out, average = [], 0.0
    for i, value in enumerate(values, start=1):
        average = weight * average + (1 - weight) * value
        out.append(average / (1 - weight**i))
    return out


def plot_losses(metrics: Path, out: Path) -> None:
    """Train and validation loss against step, as a PNG (written atomically)."""
    import io

    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    records = read_metrics(metrics)
    train = [(r["step"], r["loss"]) for r in records if "loss" in r and math.isfinite(r["loss"])]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        steps, losses = zip(*train)
        ax.plot(steps, losses, label="train", linewidth=1, alpha=0.35, color="C0")
        if len(train) >= SMOOTH_FROM:
            ax.plot(steps, smoothed(losses), label="train (smoothed)", linewidth=1.5, color="C0")
    if val:
        ax.plot(*zip(*val), "o-", label="validation", linewidth=1.5, color="C1")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats per pair)" if any("reward_accuracy" in r for r in records) else "loss (nats per token)")
    ax.grid(alpha=0.3)
    handles = _reward_accuracy(ax, records)
    ax.legend(handles=ax.get_legend_handles_labels()[0] + handles)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    write_atomic(Path(out), buffer.getvalue())


def _reward_accuracy(ax, records: list[dict]) -> list:
    """A DPO run's reward accuracy (train and validation) on a second axis, 0 to 1; the lines drawn."""
    train = [(r["step"], r["reward_accuracy"]) for r in records if "reward_accuracy" in r]
    val = [(r["step"], r["val_reward_accuracy"]) for r in records if "val_reward_accuracy" in r]
    if not (train or val):
        return []
    right = ax.twinx()
    right.set_ylim(0, 1.05)
    right.set_ylabel("reward accuracy")
    lines = []
    if train:
        lines += right.plot(*zip(*train), label="reward accuracy (train)", linewidth=1, alpha=0.5, color="C2")
    if val:
        lines += right.plot(*zip(*val), "s--", label="reward accuracy (validation)", linewidth=1.5, color="C3")
    return lines


class Speed:
    """Tokens per second over the recent steps (an exponential moving average of step rates)."""

    def __init__(self):
        self.rate = 0.0
        self._last = time.perf_counter()

    def restart(self) -> None:
        """Start timing afresh (after an evaluation or a checkpoint, which are not training)."""
        self._last = time.perf_counter()

    def tick(self, tokens: int) -> float:
        now = time.perf_counter()
        current = tokens / max(now - self._last, 1e-9)
        self._last = now
        self.rate = current if self.rate == 0 else 0.8 * self.rate + 0.2 * current
        return self.rate
