"""The same command under `accelerate launch` with 2 CPU processes (DDP over gloo) and on 1 process.

With the same global batch (2 processes x grad_accum 1 = 1 process x grad_accum 2) the loss curve,
the validation losses and the final weights must match to float tolerance: the gradient is the mean
over every learned token of the global batch however it is split.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from .train_task import run_cli

LAUNCH = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
          "--mixed_precision", "no", "--dynamo_backend", "no"]


def _settings(model, data, out, accum):
    settings = [f"model={model}", f"data.sources={data}", f"out_dir={out}", "max_steps=12", "batch_size=4",
                f"grad_accum={accum}", "eval.every=6", "optim.lr=3e-3", "optim.warmup_steps=2", "log.progress=false"]
    return ["train"] + [arg for s in settings for arg in ("--set", s)]


def _metrics(run):
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if "loss" in r], [r for r in records if "val_loss" in r]


def test_two_processes_match_one_process_with_the_same_global_batch(llama_dir, prepared, tmp_path):
    one = run_cli(*_settings(llama_dir, prepared, tmp_path / "one", accum=2))
    assert one.returncode == 0, one.stderr
    bin_dir = os.path.dirname(os.sys.executable)
    launcher = [os.path.join(bin_dir, LAUNCH[0]), *LAUNCH[1:]]
    # A private HF_HOME: no developer's accelerate default_config.yaml changes the launch.
    two = run_cli(*_settings(llama_dir, prepared, tmp_path / "two", accum=1), launcher=launcher,
                  env={"HF_HOME": str(tmp_path / "hf")})
    assert two.returncode == 0, two.stderr

    train_one, val_one = _metrics(tmp_path / "one")
    train_two, val_two = _metrics(tmp_path / "two")
    assert [r["step"] for r in train_two] == list(range(1, 13))
    assert [r["tokens"] for r in train_two] == [r["tokens"] for r in train_one]
    assert [r["loss"] for r in train_two] == pytest.approx([r["loss"] for r in train_one], rel=1e-4)
    assert train_two[-1]["loss"] < 0.7 * train_two[0]["loss"]  # it trained
    assert [r["val_loss"] for r in val_two] == pytest.approx([r["val_loss"] for r in val_one], rel=1e-4)
    a, b = load_file(tmp_path / "one/final/model.safetensors"), load_file(tmp_path / "two/final/model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
    # Only the main process writes: one line per step, one final directory, its path printed once.
    assert len(train_two) == 12 and not list((tmp_path / "two").glob(".tmp-*"))
    assert two.stdout.splitlines()[-1:] == [str(tmp_path / "two" / "final")]
    assert two.stdout.count(str(tmp_path / "two" / "final")) == 1


def test_dpo_on_two_processes_matches_one_process(llama_dir, preferences, tmp_path):
    """DPO with LoRA (the reference: adapters disabled inside DDP's wrapped model)."""
    extra = ["method=dpo", "lora.r=4", "data.max_len=64"]

    def settings(out, accum):
        args = _settings(llama_dir, preferences["train"], out, accum)
        args[args.index("max_steps=12")] = "max_steps=4"
        return args + [a for s in extra for a in ("--set", s)]

    one = run_cli(*settings(tmp_path / "one", accum=2))
    assert one.returncode == 0, one.stderr
    bin_dir = os.path.dirname(os.sys.executable)
    two = run_cli(*settings(tmp_path / "two", accum=1), launcher=[os.path.join(bin_dir, LAUNCH[0]), *LAUNCH[1:]],
                  env={"HF_HOME": str(tmp_path / "hf")})
    assert two.returncode == 0, two.stderr
    train_one, val_one = _metrics(tmp_path / "one")
    train_two, val_two = _metrics(tmp_path / "two")
    for key in ("loss", "reward_accuracy", "reward_margin", "rewards_chosen"):
        assert [r[key] for r in train_two] == pytest.approx([r[key] for r in train_one], rel=1e-4, abs=1e-6), key
    assert [r["val_loss"] for r in val_two] == pytest.approx([r["val_loss"] for r in val_one], rel=1e-4)
    assert train_two[-1]["reward_margin"] > 0
