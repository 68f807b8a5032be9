"""The one loader: local directories (full and LoRA), hub ids offline, bad specs, and the embedded cache."""

from __future__ import annotations

import copy
import json
import os
import shutil

import pytest
import torch

from tiny_models import tiny_gpt2, tiny_llama
from parley import embedded, models
from parley.errors import CacheError, ConfigError, ModelLoadError
from parley.templates import DEFAULT_TEMPLATE


def test_local_directory_round_trip(tmp_path, embedded_tokenizer):
    model = tiny_llama(embedded_tokenizer)
    model.save_pretrained(tmp_path)
    embedded_tokenizer.save_pretrained(tmp_path)
    loaded = models.load(str(tmp_path))
    assert loaded.template == embedded_tokenizer.chat_template
    assert loaded.context_window == 256
    assert loaded.stop_ids == [embedded_tokenizer.eos_token_id]
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert torch.equal(loaded.model(ids).logits, model(ids).logits)


def test_a_run_directory_loads_its_final_model(tmp_path, embedded_tokenizer, monkeypatch):
    run = tmp_path / "runs" / "x"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text('{"model": "smollm2", "max_steps": 5}')  # the run's config, not a model's
    with pytest.raises(ModelLoadError, match=r"training run without a final/ model yet: .*parley train --resume"):
        models.load(str(run))
    tiny_llama(embedded_tokenizer).save_pretrained(run / "final")
    embedded_tokenizer.save_pretrained(run / "final")
    monkeypatch.chdir(tmp_path / "runs")  # a relative RUN_DIR, as typed after `parley train` printed it
    loaded = models.load("x")
    assert loaded.path == str(run / "final") or os.path.samefile(loaded.path, run / "final")
    assert loaded.context_window == 256


def test_model_without_template_gets_the_documented_default(tmp_path, embedded_tokenizer):
    tokenizer = copy.deepcopy(embedded_tokenizer)
    tokenizer.chat_template = None
    tiny_gpt2(tokenizer).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    (tmp_path / "chat_template.jinja").unlink(missing_ok=True)
    loaded = models.load(str(tmp_path))
    assert loaded.template == DEFAULT_TEMPLATE
    assert "<|user|>" in loaded.stop_strings
    assert loaded.context_window == 256  # GPT-2 calls it n_positions


def test_lora_adapter_loads_over_its_base(tmp_path, embedded_tokenizer):
    from peft import LoraConfig, get_peft_model

    base_dir, adapter_dir = tmp_path / "base", tmp_path / "adapter"
    base = tiny_llama(embedded_tokenizer)
    base.save_pretrained(base_dir)
    embedded_tokenizer.save_pretrained(base_dir)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(adapter_dir)
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(base_dir)
    (adapter_dir / "adapter_config.json").write_text(json.dumps(config))

    loaded = models.load(str(adapter_dir))
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        expected = peft_model(ids).logits
        assert torch.allclose(loaded.model(ids).logits, expected, atol=1e-6)
        plain = tiny_llama(embedded_tokenizer)(ids).logits
    assert not torch.allclose(plain, expected, atol=1e-3)  # the adapter really changed something
    assert loaded.spec == str(adapter_dir)


def test_uncached_hub_id_offline_is_one_clear_line():
    with pytest.raises(ModelLoadError) as error:
        models.load("someone/not-a-cached-model")
    message = str(error.value)
    assert "not in the local Hugging Face cache" in message and "HF_HUB_OFFLINE" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "spec, match",
    [("./missing-dir", "does not exist"), ("/definitely/not/here", "does not exist")],
)
def test_missing_paths(spec, match):
    with pytest.raises(ModelLoadError, match=match):
        models.load(spec)


def test_directory_that_is_not_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelLoadError, match="not a model directory"):
        models.load(str(tmp_path))


def test_bad_device_and_dtype():
    with pytest.raises(ConfigError, match="--device 'tpu'"):
        models.load("smollm2", device="tpu")
    with pytest.raises(ConfigError, match="--dtype 'int3'"):
        models.load("smollm2", dtype="int3")


def test_cache_problems_are_detected(tmp_path, embedded_dir):
    cache = tmp_path / "cache"
    cache.mkdir()
    for f in embedded_dir.iterdir():  # the big weights by link, the small files by copy
        (cache / f.name).symlink_to(f) if f.name.endswith(".safetensors") else shutil.copy(f, cache / f.name)
    assert embedded.cache_problem(cache) is None

    with open(cache / "tokenizer.json", "r+b") as f:  # same size, one byte changed
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 1]))
    assert embedded.cache_problem(cache) == "tokenizer.json is corrupt"

    (cache / "tokenizer.json").write_text("{}")
    assert embedded.cache_problem(cache) == "tokenizer.json is missing or truncated"

    (cache / embedded.MANIFEST).unlink()
    assert embedded.cache_problem(cache) == "incomplete: no manifest"
    assert embedded.cache_problem(tmp_path / "nothing") == "missing"


def test_unwritable_cache_location_is_one_line(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("PARLEY_HOME", str(blocker / "home"))  # a directory under a file: even root can't
    with pytest.raises(CacheError, match="set PARLEY_HOME to a writable directory"):
        embedded.ensure_cached()


@pytest.mark.slow
def test_partial_cache_is_rebuilt_bit_identical_to_the_gguf(tmp_path, monkeypatch):
    """A half-written cache is rebuilt; the rebuilt weights equal the GGUF-dequantized ones exactly."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("PARLEY_HOME", str(tmp_path))
    partial = embedded.cache_dir()
    partial.mkdir(parents=True)
    (partial / "model.safetensors").write_bytes(b"\0" * 1000)
    messages = []
    path = embedded.ensure_cached(progress=messages.append)
    assert any("rebuilding" in m for m in messages)
    assert embedded.cache_problem(path) is None

    source = embedded.gguf_path()
    reference = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    cached = load_file(path / "model.safetensors")
    expected = reference.state_dict()
    assert set(cached) <= set(expected)
    for name, tensor in cached.items():
        assert torch.equal(tensor, expected[name]), name
    assert os.access(path, os.R_OK)


def fake_hub_cache(root, model, tokenizer, repo="org/tiny"):
    """A Hugging Face cache holding `repo`, laid out as huggingface_hub writes it (blobs + snapshot links)."""
    revision = "0" * 40
    folder = root / f"models--{repo.replace('/', '--')}"
    staging = root / "staging"
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (folder / "blobs").mkdir(parents=True)
    (folder / "snapshots" / revision).mkdir(parents=True)
    for i, file in enumerate(sorted(p for p in staging.iterdir() if p.is_file())):
        blob = folder / "blobs" / f"{i:040d}"
        shutil.move(file, blob)
        (folder / "snapshots" / revision / file.name).symlink_to(blob)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(revision)
    shutil.rmtree(staging)


def test_parley_models_lists_removes_and_tells_the_version(tmp_path, embedded_tokenizer, embedded_dir):
    import subprocess
    import sys

    from parley import __version__ as parley_version

    parley = [sys.executable, "-c", "from parley.cli import main; main()"]
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "hub"), COLUMNS="200")
    fake_hub_cache(tmp_path / "hub", tiny_llama(embedded_tokenizer), embedded_tokenizer)
    plain_tokenizer = copy.deepcopy(embedded_tokenizer)
    plain_tokenizer.chat_template = None
    fake_hub_cache(tmp_path / "hub", tiny_gpt2(plain_tokenizer), plain_tokenizer, repo="org/plain")
    (tmp_path / "hub" / "models--org--plain" / "snapshots" / ("0" * 40) / "chat_template.jinja").unlink(missing_ok=True)
    final = tmp_path / "elsewhere" / "runs" / "mine" / "final"
    final.mkdir(parents=True)
    (final / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "smollm2"}))
    (final / "chat_template.jinja").write_text(embedded_tokenizer.chat_template)
    (final / "adapter_model.safetensors").write_bytes(b"\0" * 2_000_000)

    listed = subprocess.run([*parley, "models"], capture_output=True, text=True, env=env, cwd=final.parents[2])
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line.split() for line in listed.stdout.splitlines()[1:]}
    assert rows["smollm2"][1:] == ["built-in", *rows["smollm2"][2:4], "8,192", "chatml"]
    assert rows["org/tiny"][1:3] == ["hub", "cache"] and rows["org/tiny"][5:] == ["256", "chatml"]
    assert rows["org/plain"][5:] == [f"{tiny_gpt2(plain_tokenizer).config.n_positions:,}", "parley", "default"]
    assert rows["runs/mine"][1:] == ["run", "2.0", "MB", "8,192", "chatml", "LoRA", "on", "smollm2"]

    removed = subprocess.run([*parley, "models", "rm", "org/tiny"], capture_output=True, text=True, env=env)
    assert removed.returncode == 0 and "removed org/tiny" in removed.stdout, removed.stderr
    assert not (tmp_path / "hub" / "models--org--tiny").exists() and (tmp_path / "hub" / "models--org--plain").is_dir()
    missing = subprocess.run([*parley, "models", "rm", "runs/mine"], capture_output=True, text=True, env=env)
    assert missing.returncode == 2 and "not in the Hugging Face cache" in missing.stderr
    assert final.is_dir()  # a run is never removed

    version = subprocess.run([*parley, "--version"], capture_output=True, text=True, env=env)
    assert version.stdout.strip() == f"parley {parley_version}"
