"""Runs that survive: kill -9 at arbitrary moments then --resume, NaN loss, out of memory.

The kill test uses real subprocesses and SIGKILL; the final weights of the killed-and-resumed run
must equal (allclose) those of an uninterrupted run with the same config, which holds only if model,
optimizer, scheduler, RNG states (GPT-2's dropout, LoRA dropout) and data position are all restored.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from parley.train import checkpoint
from parley.train.batches import Plan
from parley.train.config import load_config
from parley.train.loop import resume, start
from parley.train.steps import TrainingDiverged

from .train_task import REPO, run_cli, save_model, tiny_llama, train_pairs, write_task

STEPS = 30


def _args(model: str, data: str, out: Path, *extra: str) -> list[str]:
    settings = [f"model={model}", f"data.sources={data}", f"out_dir={out}", f"max_steps={STEPS}", "batch_size=4",
                "grad_accum=2", "eval.every=10", "checkpoint.every=2", "checkpoint.keep_last=2", "optim.lr=1e-3",
                "optim.warmup_steps=4", "log.progress=false", *extra]
    return [arg for s in settings for arg in ("--set", s)]


def _popen(*args: str) -> subprocess.Popen:
    import os

    command = [sys.executable, str(Path(sys.executable).parent / "parley"), *args]
    return subprocess.Popen(command, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _kill_after(proc: subprocess.Popen, metrics: Path, step: int, jitter: float) -> bool:
    """SIGKILL `proc` `jitter` seconds after it logged `step`; False if it finished first."""
    while proc.poll() is None:
        lines = metrics.read_text().splitlines() if metrics.exists() else []
        if any(json.loads(line).get("step", 0) >= step for line in lines if line.endswith("}")):
            time.sleep(jitter)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return proc.returncode == -signal.SIGKILL
        time.sleep(0.002)
    return False


def _weights(final: Path) -> dict:
    (name,) = [p for p in ("model.safetensors", "adapter_model.safetensors") if (final / p).exists()]
    return load_file(final / name)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_kill_9_then_resume_matches_an_uninterrupted_run(method, gpt2_dir, llama_dir, prepared, tmp_path):
    model, extra = (gpt2_dir, []) if method == "full" else (llama_dir, ["lora.r=4", "lora.dropout=0.1"])
    reference = run_cli("train", *_args(model, prepared, tmp_path / "ref", *extra))
    assert reference.returncode == 0, reference.stderr

    run = tmp_path / "killed"
    rng = random.Random(method)
    kills = 0
    proc = _popen("train", *_args(model, prepared, run, *extra))
    for step in (5, 17):  # two kills, each at a random moment inside a step, an eval or a checkpoint write
        kills += _kill_after(proc, run / "metrics.jsonl", step, rng.uniform(0, 0.05))
        assert all((d / checkpoint.META).is_file() for d in (run / "checkpoints").glob("step-*")), "half a checkpoint is visible"
        proc = _popen("train", "--resume", str(run))
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    assert kills == 2 and "resumed from" in err

    ours, theirs = _weights(run / "final"), _weights(tmp_path / "ref" / "final")
    assert ours.keys() == theirs.keys()
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-5, atol=1e-6, msg=key)
    # The metrics of the resumed run read as one run: every step once, the same losses.
    def losses(path):
        return [(r["step"], r["loss"]) for r in map(json.loads, path.read_text().splitlines()) if "loss" in r]

    resumed, uninterrupted = losses(run / "metrics.jsonl"), losses(tmp_path / "ref" / "metrics.jsonl")
    assert [s for s, _ in resumed] == list(range(1, STEPS + 1))
    assert [l for _, l in resumed] == pytest.approx([l for _, l in uninterrupted], rel=1e-5)


def test_a_run_killed_before_its_first_step_resumes_from_its_saved_config(llama_dir, task_file, tmp_path):
    """kill -9 while the run prepares its raw data (the slow part before step 1; nothing trained yet):
    --resume starts it again from the config it saved, as the README promises for any kill."""
    run = tmp_path / "run"
    settings = [f"model={llama_dir}", f"data.sources=chat:{task_file}", f"out_dir={run}", "max_steps=2",
                "batch_size=8", "log.progress=false"]
    script = textwrap.dedent(f"""
        import os, signal
        from parley.train import dataset
        from parley.train.config import load_config
        from parley.train.loop import start
        dataset._prepare = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)
        start(load_config(None, {settings!r}))
    """)
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240, cwd=REPO)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert run.is_dir() and not checkpoint.complete(run)

    resumed = run_cli("train", "--resume", str(run))
    assert resumed.returncode == 0, resumed.stderr
    assert "no checkpoint yet" in resumed.stderr and "preparing data.sources[0]" in resumed.stderr
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 2 and (run / "final").is_dir()


def test_resume_refuses_a_directory_without_a_run(tmp_path):
    from parley.errors import ConfigError

    with pytest.raises(ConfigError, match="not a run directory"):
        resume(tmp_path)


def test_a_new_run_refuses_a_directory_holding_one(llama_dir, prepared, tmp_path):
    from parley.errors import ConfigError

    settings = [f"model={llama_dir}", f"data.sources={prepared}", f"out_dir={tmp_path}", "max_steps=2", "batch_size=8",
                "log.progress=false"]
    start(load_config(None, settings))
    with pytest.raises(ConfigError, match="--resume"):
        start(load_config(None, settings))


def test_a_run_that_failed_before_its_first_checkpoint_can_be_started_again(llama_dir, prepared, tmp_path):
    """config.json is written first, but a run with nothing trained yet does not block a corrected start."""
    from parley.errors import ConfigError
    from parley.train.loop import CONFIG_FILE

    settings = [f"model={llama_dir}", f"data.sources={prepared}", f"out_dir={tmp_path}", "max_steps=2", "log.progress=false"]
    with pytest.raises(ConfigError, match="lower batch_size"):
        start(load_config(None, [*settings, "batch_size=100000"]))
    assert (tmp_path / CONFIG_FILE).is_file()
    start(load_config(None, [*settings, "batch_size=8"]))
    assert (tmp_path / "final").is_dir()


def test_nan_loss_stops_at_its_step_and_keeps_the_last_good_checkpoint(tokenizer, tmp_path):
    """A token whose embedding is NaN appears in one training row only: the loss is finite until the
    step that reads that row, NaN there — a real numerical failure, no mock."""
    from parley.data.prepare import PrepareConfig, prepare
    from parley.templates import template_for

    data = write_task(tmp_path / "task.jsonl")
    with open(data, "a") as f:  # the only record with a system message, so the only row with <|system|>
        f.write(json.dumps({"messages": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"},
                                         {"role": "assistant", "content": "Hello."}]}) + "\n")
    prepare([f"chat:{data}"], tmp_path / "data", tokenizer, template_for(tokenizer), PrepareConfig(max_len=64, val_ratio=0))
    model = tiny_llama(tokenizer, tie_word_embeddings=False)
    with torch.no_grad():
        model.model.embed_tokens.weight[tokenizer.convert_tokens_to_ids("<|system|>")] = float("nan")
    model_dir = save_model(model, tokenizer, tmp_path / "model")

    rows = len(train_pairs()) + 1
    poisoned = rows - 1  # the record came last, and nothing went to validation
    seed, bad_step = next((s, step + 1) for s in range(100) for step in range(rows // 8)
                          if poisoned in Plan((rows,), (1.0,), s, 8, 8).step_rows(step) and 5 <= step + 1 <= 9)
    settings = [f"model={model_dir}", f"data.sources={tmp_path / 'data'}", f"out_dir={tmp_path / 'run'}", "max_steps=11",
                "batch_size=8", f"seed={seed}", "checkpoint.every=2", "eval.every=0", "log.progress=false"]
    with pytest.raises(TrainingDiverged, match=rf"at step {bad_step}: the loss is nan"):
        start(load_config(None, settings))

    last_good = (bad_step - 1) // 2 * 2
    assert checkpoint.latest(tmp_path / "run").name == f"step-{last_good:08d}"
    assert not (tmp_path / "run" / "final").exists()
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, bad_step))
    with pytest.raises(TrainingDiverged, match=rf"at step {bad_step}:"):  # resuming reaches the same step again
        resume(tmp_path / "run")


def test_out_of_memory_says_what_to_change(llama_dir, prepared, tmp_path):
    """A real allocation failure: the child caps its address space, then asks for a huge batch."""
    script = textwrap.dedent(f"""
        import resource
        from parley.train.config import load_config
        from parley.train.loop import start
        import torch, transformers, accelerate, peft, datasets  # mapped before the cap
        config = load_config(None, ["model={llama_dir}", "data.sources={prepared}", "out_dir={tmp_path / 'run'}",
                                    "max_steps=1", "batch_size=16384", "data.weights=[400]", "log.progress=false"])
        size = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (size + 600 * 2**20, resource.RLIM_INFINITY))
        start(config)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240,
                            env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1",
                                 "PARLEY_HOME": str(tmp_path / "home")})
    assert "OutOfMemory: out of memory at step 1" in result.stderr, result.stderr[-2000:]
    assert "lower batch_size (now 16384) and raise grad_accum" in result.stderr
    assert "gradient_checkpointing=true" in result.stderr and "lora.r=16" in result.stderr
