"""Training options, each against a reference run: accumulation, gradient checkpointing, bf16, schedules,
early stopping, final = best, raw sources with weights, tokenizer refusal, and the live progress bar."""

from __future__ import annotations

import copy
import json
import math
import os
import re
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from parley.errors import DataError
from parley.train.config import load_config
from parley.train.loop import start

from .train_task import REPO, write_task


def run(tmp_path, name, model, data, *overrides):
    out = tmp_path / name
    start(load_config(None, [f"model={model}", f"data.sources={data}", f"out_dir={out}", "log.progress=false",
                             "optim.lr=3e-3", *overrides]))
    return out


def metrics(out: Path, key: str = "loss") -> list[float]:
    return [r[key] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if key in r]


def test_accumulation_equals_a_bigger_batch(llama_dir, prepared, tmp_path):
    big = run(tmp_path, "big", llama_dir, prepared, "max_steps=6", "batch_size=16", "grad_accum=1")
    small = run(tmp_path, "small", llama_dir, prepared, "max_steps=6", "batch_size=4", "grad_accum=4")
    assert metrics(small) == pytest.approx(metrics(big), rel=1e-5)
    assert metrics(small, "val_loss") == pytest.approx(metrics(big, "val_loss"), rel=1e-5)


@pytest.mark.parametrize("lora", [[], ["lora.r=4"]], ids=["full", "lora"])
def test_gradient_checkpointing_changes_memory_not_maths(lora, llama_dir, prepared, tmp_path):
    plain = run(tmp_path, "plain", llama_dir, prepared, "max_steps=5", "batch_size=8", *lora)
    checkpointed = run(tmp_path, "gc", llama_dir, prepared, "max_steps=5", "batch_size=8", "gradient_checkpointing=true", *lora)
    assert metrics(checkpointed) == pytest.approx(metrics(plain), rel=1e-5)
    assert metrics(plain)[-1] < metrics(plain)[0]


def test_bf16_trains_close_to_fp32(llama_dir, prepared, tmp_path):
    fp32 = run(tmp_path, "fp32", llama_dir, prepared, "max_steps=8", "batch_size=8")
    bf16 = run(tmp_path, "bf16", llama_dir, prepared, "max_steps=8", "batch_size=8", "precision=bf16")
    assert metrics(bf16) != metrics(fp32)  # autocast really ran in bf16
    assert metrics(bf16) == pytest.approx(metrics(fp32), rel=0.05)
    assert load_file(bf16 / "final" / "model.safetensors")["model.norm.weight"].dtype == torch.float32  # fp32 master weights


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_learning_rate_schedules_with_warmup(schedule, llama_dir, prepared, tmp_path):
    out = run(tmp_path, schedule, llama_dir, prepared, "max_steps=10", "batch_size=8", "optim.warmup_steps=4",
              f"optim.schedule={schedule}", "optim.lr=1e-3", "eval.every=0")
    after = {  # warmup is linear from 0 (the first step learns nothing, as in transformers), then the decay
        "cosine": lambda p: 0.5 * (1 + math.cos(math.pi * p)),
        "linear": lambda p: 1 - p,
        "constant": lambda p: 1.0,
    }[schedule]
    expected = [1e-3 * (s / 4 if s < 4 else after((s - 4) / 6)) for s in range(10)]  # steps 1..10 use s = 0..9
    assert metrics(out, "lr") == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("at_start, stop", [(False, 4), (True, 2)])
def test_early_stopping_counts_improvements_beyond_min_delta(at_start, stop, llama_dir, prepared, tmp_path):
    # min_delta is larger than any loss: only the first evaluation (step 0 when at_start) improves.
    out = run(tmp_path, "stopped", llama_dir, prepared, "max_steps=20", "batch_size=8", "eval.every=2",
              "eval.patience=1", "eval.min_delta=100", f"eval.at_start={str(at_start).lower()}")
    assert len(metrics(out, "val_loss")) == 2 and len(metrics(out)) == stop  # stopped early, not at step 20
    assert (out / "final").is_dir()


def test_final_can_hold_the_best_checkpoint(llama_dir, prepared, tmp_path):
    # A learning rate far too high: validation loss falls, then climbs; patience ends the run.
    out = run(tmp_path, "run", llama_dir, prepared, "max_steps=30", "batch_size=8", "eval.every=1", "eval.patience=4",
              "optim.lr=0.5", "optim.schedule=constant", "optim.grad_clip=0", "checkpoint.final=best")
    val = metrics(out, "val_loss")[1:]  # steps 1, 2, ... (step 0 is the untouched model)
    best = val.index(min(val)) + 1
    assert best < len(val)  # the last evaluation was not the best
    saved = load_file(out / "checkpoints" / f"step-{best:08d}" / "model.safetensors")
    final = load_file(out / "final" / "model.safetensors")
    assert saved.keys() == final.keys() and all(torch.equal(saved[k], final[k]) for k in saved)


def test_raw_sources_are_prepared_first_and_mixed_by_weight(llama_dir, prepared, tmp_path):
    raw = write_task(tmp_path / "hey.jsonl", ("greet", "hey"))
    out = run(tmp_path, "run", llama_dir, "x", "max_steps=3", "batch_size=8",
              f'data.sources=["chat:{raw}", "{prepared}"]', "data.weights=[1, 0.5]", "data.val_ratio=0.2")
    manifest = json.loads((out / "data" / "00" / "manifest.json").read_text())
    assert [s["spec"] for s in manifest["sources"]] == [f"chat:{raw}"]
    assert manifest["settings"]["val_ratio"] == 0.2
    assert not (out / "data" / "01").exists()  # a prepared dir is read where it is
    assert json.loads((out / "config.json").read_text())["data"]["weights"] == [1.0, 0.5]


def test_data_prepared_for_another_tokenizer_is_refused(llama_dir, tokenizer, task_file, tmp_path):
    from parley.data.prepare import PrepareConfig, prepare
    from parley.templates import template_for

    other = copy.deepcopy(tokenizer)
    other.add_tokens(["<|tool|>"])
    prepare([f"chat:{task_file}"], tmp_path / "other", other, template_for(other), PrepareConfig(max_len=64))
    with pytest.raises(DataError, match="was prepared for another tokenizer"):
        run(tmp_path, "run", llama_dir, tmp_path / "other", "max_steps=2")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_the_progress_bar_shows_loss_lr_speed_and_eta(llama_dir, prepared, tmp_path):
    pexpect = pytest.importorskip("pexpect")
    args = [f"model={llama_dir}", f"data.sources={prepared}", f"out_dir={tmp_path / 'run'}", "max_steps=40", "batch_size=8",
            "optim.warmup_steps=40"]
    child = pexpect.spawn(sys.executable, [str(Path(sys.executable).parent / "parley"), "train",
                                           *[a for s in args for a in ("--set", s)]],
                          cwd=str(REPO), env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1",
                                              "TERM": "xterm", "NO_COLOR": "1", "PARLEY_HOME": str(tmp_path / "home"),
                                              **{k: v for k, v in os.environ.items() if k == "PYTHONPATH"}},
                          encoding="utf-8", timeout=120, dimensions=(40, 160))
    child.expect(r"warning: optim.warmup_steps = 40 is not below the run's 40 steps")
    child.expect(r"validation .* 0/40")  # the evaluation at step 0 is named, not a bar stuck at 0
    child.expect(r"train .*\d+/40 loss \d+\.\d{4} lr \d\.\d\de-\d\d [\d,]+ tok/s .*ETA \d+:\d\d:\d\d")
    child.expect(r"validation .* 40/40")  # and the one at the end
    child.expect(rf"next: parley chat --model {re.escape(str(tmp_path / 'run' / 'final'))}")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_the_loss_plot_smooths_the_train_curve_without_bias_at_the_start():
    from parley.train.monitor import smoothed

    assert smoothed([2.0, 2.0, 2.0]) == pytest.approx([2.0, 2.0, 2.0])  # debiased: no pull towards 0
    noisy = [1.0 + (0.5 if i % 2 else -0.5) for i in range(200)]
    tail = smoothed(noisy)[100:]
    assert max(tail) - min(tail) < 0.1 < max(noisy) - min(noisy)  # the swings are averaged out
