"""What a run leaves behind, through the CLI: `parley export --merge-lora`, and `parley chat --model RUN/final`."""

from __future__ import annotations

import json

import pytest
import torch

from parley import models
from parley.templates import encode_chat
from parley.train.config import load_config
from parley.train.loop import start

from .train_task import prompt, run_cli


@pytest.fixture(scope="module")
def lora_run(gpt2_dir, prepared, tmp_path_factory):
    """A GPT-2 LoRA run (Conv1D layers: peft's fan-in/fan-out case) long enough to move the adapter."""
    out = tmp_path_factory.mktemp("lora-run")
    start(load_config(None, [f"model={gpt2_dir}", f"data.sources={prepared}", f"out_dir={out}", "max_steps=20",
                             "batch_size=8", "lora.r=4", "optim.lr=1e-2", "log.progress=false"]))
    return out


def test_merge_lora_gives_a_plain_model_with_the_adapters_outputs(lora_run, tmp_path):
    result = run_cli("export", str(lora_run), "--merge-lora", "--out", str(tmp_path / "merged"))
    assert result.returncode == 0, result.stderr
    merged = tmp_path / "merged"
    assert (merged / "model.safetensors").is_file() and not (merged / "adapter_config.json").exists()
    assert (merged / "chat_template.jinja").read_text() == (lora_run / "final" / "chat_template.jinja").read_text()

    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(merged).eval()
    adapter = models.load(str(lora_run / "final"), device="cpu")
    base = models.load(json.loads((lora_run / "final" / "adapter_config.json").read_text())["base_model_name_or_path"],
                       device="cpu")
    ids = torch.tensor([encode_chat(adapter.tokenizer, adapter.template, prompt("Ada", "Oslo"), True)])
    with torch.no_grad():
        expected = adapter.model(ids).logits
        torch.testing.assert_close(plain(ids).logits, expected, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(base.model(ids).logits, expected, atol=1e-3)  # the adapter did change the model


def test_export_errors_are_one_line(lora_run, tmp_path):
    no_flag = run_cli("export", str(lora_run), "--out", str(tmp_path / "x"))
    assert no_flag.returncode == 2 and no_flag.stderr.strip().endswith("is a LoRA adapter: pass --merge-lora to fold it into full weights")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("mine")
    taken = run_cli("export", str(lora_run), "--merge-lora", "--out", str(tmp_path / "taken"))
    assert taken.returncode == 2 and "already exists and is not empty" in taken.stderr
    assert (tmp_path / "taken" / "file").read_text() == "mine"
    nothing = run_cli("export", str(tmp_path), "--merge-lora", "--out", str(tmp_path / "y"))
    assert nothing.returncode == 2 and "has no model" in nothing.stderr and "Traceback" not in nothing.stderr


def test_parley_chat_answers_with_the_run_dir(lora_run):
    result = run_cli("chat", "--model", str(lora_run), "-p", "I am Ada from Oslo.", "--temperature", "0",  # RUN_DIR: its final/
                     "--max-new-tokens", "12")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def test_train_through_the_cli_prints_the_final_dir(llama_dir, prepared, tmp_path):
    config = tmp_path / "train.toml"
    config.write_text(f'model = "{llama_dir}"\nbatch_size = 8\n[data]\nsources = ["{prepared}"]\n[log]\nprogress = false\n')
    result = run_cli("train", "--config", str(config), "--set", "max_steps=3", "--set", f"out_dir={tmp_path / 'run'}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(tmp_path / "run" / "final")
    assert json.loads((tmp_path / "run" / "config.json").read_text())["max_steps"] == 3
    again = run_cli("train", "--resume", str(tmp_path / "run"), "--config", str(config))
    assert again.returncode == 2 and "--resume continues a run with its saved config" in again.stderr
