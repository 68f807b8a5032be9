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
