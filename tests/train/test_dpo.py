"""Preference tuning (method = "dpo"): the loss against TRL's on the same batch, learning a synthetic
preference it can learn, exact resume after kill -9, and refusals with the fix."""

from __future__ import annotations

import json
import math

import pytest
import torch

from parley.errors import ConfigError, DataError
from parley.train import dpo
from parley.train.config import load_config
from parley.train.loop import start

from .train_task import run_cli, tiny_llama, train_pairs, write_preferences


def test_the_loss_is_trls_on_the_same_batch(tokenizer, tmp_path):
    """TRL's DPOTrainer builds and scores a batch; Parley's objective scores the same tensors."""
    import copy
    from types import SimpleNamespace

    import datasets
    from trl import DPOConfig, DPOTrainer

    from parley.templates import template_for

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = template_for(tok)
    reference = tiny_llama(tok)
    policy = copy.deepcopy(reference)
    with torch.no_grad():  # a policy that has moved away from its reference, so the rewards are not 0
        generator = torch.Generator().manual_seed(1)
        for p in policy.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.02)
    rows = [json.loads(line) for line in write_preferences(tmp_path / "p.jsonl", train_pairs()[:6]).read_text().splitlines()]
    args = DPOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=4, report_to=[], use_cpu=True,
                     max_length=64, beta=0.5)
    from accelerate.state import AcceleratorState

    theirs, ours = {}, {}
    try:
        trainer = DPOTrainer(model=policy, ref_model=reference, args=args,
                             train_dataset=datasets.Dataset.from_list(rows), processing_class=tok)
        batch = next(iter(trainer.get_train_dataloader()))
        policy.eval()
        labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
        tensors = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": labels}
        accelerator = SimpleNamespace(unwrap_model=lambda m: m, mixed_precision="no")
        with torch.no_grad():
            for kind in ("sigmoid", "hinge", "ipo"):
                trainer.loss_types = [kind]  # what DPOConfig(loss_type=[kind]) sets
                theirs[kind] = float(trainer.compute_loss(trainer.model, batch))
                objective = dpo.Objective(SimpleNamespace(beta=0.5, loss=kind), accelerator, reference)
                ours[kind] = objective.loss_sum(policy, tensors)
    finally:  # TRL's accelerator state would bind later runs in this process to its settings
        AcceleratorState._reset_state(reset_partial_state=True)
    pairs = batch["input_ids"].shape[0] // 2
    for kind, (loss_sum, stats) in ours.items():
        assert theirs[kind] > 0.05 and float(loss_sum) / pairs == pytest.approx(theirs[kind], rel=1e-5), kind
        assert float(stats[0]) != 0  # the chosen rewards: the policy did move
    assert len(set(theirs.values())) == 3  # three different losses were compared


def _settings(model, data, out, *extra):
    return [f"model={model}", f"data.sources={data}", f"out_dir={out}", "method=dpo", "batch_size=8",
            "optim.lr=3e-3", "optim.warmup_steps=2", "log.progress=false", "data.max_len=64", *extra]


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_dpo_with_lora_learns_the_preference_on_held_out_prompts(llama_dir, preferences, tmp_path):
    run = tmp_path / "run"
    final = start(load_config(None, _settings(llama_dir, preferences["train"], run, "max_steps=24", "lora.r=8",
                                              "eval.every=12", "dpo.beta=0.5")))
    records = _metrics(run)
    evals = [r for r in records if "val_loss" in r]
    steps = [r for r in records if "loss" in r]
    # Step 0: the policy is its reference (adapters off = adapters at init), so every reward is 0.
    assert evals[0]["val_loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert evals[0]["val_rewards_chosen"] == 0 and evals[0]["val_reward_accuracy"] == 0
    assert evals[-1]["val_reward_accuracy"] >= 0.9 and evals[-1]["val_reward_margin"] > 0
    assert evals[-1]["val_loss"] < 0.75 * math.log(2)
    assert {"rewards_chosen", "rewards_rejected", "reward_accuracy", "reward_margin"} <= steps[-1].keys()
    assert (final / "adapter_model.safetensors").is_file() and not (final / "model.safetensors").exists()
    saved = json.loads((final / "preference.json").read_text())
    assert saved["adapters_off"] is True and saved["reference"] == llama_dir and saved["beta"] == 0.5
    assert (run / "loss.png").is_file()

    # `parley eval preference` on pairs of names and cities training never saw: the base model is
    # scored by log-likelihood, the tuned one by its implicit reward against the base (adapters off).
    from parley.eval.preference import PreferenceEvalConfig, evaluate
    from parley.models import load

    held_out = [preferences["held_out_file"]]
    before, *_ = evaluate(load(llama_dir, device="cpu"), "base", held_out, PreferenceEvalConfig(), tmp_path / "b.json")
    after, *_ = evaluate(load(str(final), device="cpu"), "dpo", held_out, PreferenceEvalConfig(), tmp_path / "a.json")
    assert before["settings"]["measure"] == "log_likelihood" and after["settings"]["reference"] == "adapters disabled"
    assert after["metrics"]["reward_accuracy"] >= 0.75 and after["metrics"]["reward_accuracy"] > before["metrics"]["reward_accuracy"]
    assert after["metrics"]["loglik_accuracy"] > before["metrics"]["loglik_accuracy"]
    assert after["details"]["pairs"] == 20


def test_kill_9_then_resume_matches_an_uninterrupted_run(gpt2_dir, preferences, tmp_path):
    """Full fine-tuning: the reference is a frozen copy loaded again after each kill."""
    from .test_resume import _kill_after, _popen, _weights

    settings = [s for s in _settings(gpt2_dir, preferences["train"], None, "max_steps=12", "batch_size=4",
                                     "eval.every=6", "checkpoint.every=2", "optim.lr=1e-3") if not s.startswith("out_dir=")]

    def args(out):
        return ["train", "--set", f"out_dir={out}", *[a for s in settings for a in ("--set", s)]]

    reference = run_cli(*args(tmp_path / "ref"))
    assert reference.returncode == 0, reference.stderr
    run = tmp_path / "killed"
    proc = _popen(*args(run))
    assert _kill_after(proc, run / "metrics.jsonl", 5, 0.01)
    proc = _popen("train", "--resume", str(run))
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 0 and "resumed from" in err, err
    ours, theirs = _weights(run / "final"), _weights(tmp_path / "ref" / "final")
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-5, atol=1e-6, msg=key)
    steps = [r for r in _metrics(run) if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 13))
    assert [r["reward_margin"] for r in steps] == pytest.approx(
        [r["reward_margin"] for r in _metrics(tmp_path / "ref") if "loss" in r], rel=1e-5, abs=1e-7)
    assert json.loads((run / "final" / "preference.json").read_text())["adapters_off"] is False


def test_the_wrong_kind_of_data_is_refused_with_the_fix(llama_dir, preferences, prepared, tmp_path):
    with pytest.raises(DataError, match="holds conversations, not preferences: method=dpo needs preference data"):
        start(load_config(None, _settings(llama_dir, prepared, tmp_path / "a", "max_steps=1")))
    sft = [s for s in _settings(llama_dir, preferences["train"], tmp_path / "b", "max_steps=1") if s != "method=dpo"]
    with pytest.raises(DataError, match="holds preferences, not conversations: set method=dpo"):
        start(load_config(None, sft))
    with pytest.raises(ConfigError, match="dpo.beta = 0.0 is not allowed"):
        load_config(None, _settings(llama_dir, prepared, tmp_path / "c", "dpo.beta=0"))
    with pytest.raises(ConfigError, match="dpo.loss = 'kto' is not allowed: choose one of sigmoid, hinge, ipo"):
        load_config(None, _settings(llama_dir, prepared, tmp_path / "d", "dpo.loss=kto"))
