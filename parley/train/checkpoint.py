"""Checkpoints that survive `kill -9` at any moment, and finding the one to resume from.

    RUN_DIR/checkpoints/step-00000120/   accelerate's save_state (model or adapter weights, optimizer,
                                         RNG states of every process, scheduler, TrainState) + meta.json

A checkpoint is written into `.tmp-step-N`, every file and the directory are fsynced, and only then
is it renamed to `step-N` (and the parent fsynced): a directory named `step-N` is always complete,
so a kill leaves either the previous checkpoints or the new one, never half of one. Old checkpoints
are renamed to `.trash-…` before they are deleted, for the same reason. Leftovers of either kind are
removed when a run starts or resumes.

Kept: the newest `keep_last`, plus the one with the lowest validation loss when `keep_best`.
Multi-machine runs need RUN_DIR on a filesystem every machine sees (the usual cluster setup).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from parley.files import TMP_PREFIX, TRASH_PREFIX, discard, replace_dir

DIRNAME = "checkpoints"
PREFIX = "step-"
META = "meta.json"


def save(accelerator, run_dir: Path, step: int, val_loss: float | None, keep_last: int, keep_best: bool) -> Path:
    """Save the accelerator's state as the checkpoint of `step`; every process must call this."""
    root = Path(run_dir) / DIRNAME
    final = root / f"{PREFIX}{step:08d}"
    tmp = root / f"{TMP_PREFIX}{final.name}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        meta = {"step": step, "val_loss": val_loss, "time": time.time()}
        (tmp / META).write_text(json.dumps(meta) + "\n")
        replace_dir(tmp, final)  # an existing `final`: the same step saved again (a resumed run re-reaching it)
        prune(run_dir, keep_last, keep_best)
    accelerator.wait_for_everyone()
    return final


def load(accelerator, path: Path, strict: bool) -> dict:
    """Restore the state saved in `path`; returns its meta.json. `strict=False` for adapter-only weights."""
    accelerator.load_state(str(path), strict=strict)
    return json.loads((Path(path) / META).read_text())


def complete(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint, oldest first."""
    root = Path(run_dir) / DIRNAME
    found = []
    if root.is_dir():
        for path in root.iterdir():
            if path.name.startswith(PREFIX) and (path / META).is_file():
                found.append((int(path.name.removeprefix(PREFIX)), path))
    return sorted(found)


def latest(run_dir: Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    found = complete(run_dir)
    return found[-1][1] if found else None


def best(run_dir: Path) -> Path | None:
    """The complete checkpoint with the lowest validation loss, or None when none was evaluated."""
    scored = [(meta["val_loss"], path) for _, path in complete(run_dir)
              if (meta := json.loads((path / META).read_text()))["val_loss"] is not None]
    return min(scored)[1] if scored else None


def prune(run_dir: Path, keep_last: int, keep_best: bool) -> None:
    found = complete(run_dir)
    keep = {path for _, path in found[-keep_last:]}
    if keep_best and (best_path := best(run_dir)) is not None:
        keep.add(best_path)
    for _, path in found:
        if path not in keep:
            discard(path)


def clean_leftovers(run_dir: Path) -> None:
    """Remove half-written (`.tmp-…`) and half-deleted (`.trash-…`) checkpoints of a killed run."""
    root = Path(run_dir) / DIRNAME
    if root.is_dir():
        for path in root.iterdir():
            if path.name.startswith((TMP_PREFIX, TRASH_PREFIX)):
                shutil.rmtree(path, ignore_errors=True)
