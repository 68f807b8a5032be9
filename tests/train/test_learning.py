"""Proof that training learns: tiny models fine-tuned until greedy decoding reproduces held-out replies.

Each run also checks what a user relies on afterwards: RUN_DIR/final loads through Parley's one loader
(and plain transformers), carries the chat template, and the run left metrics.jsonl and loss.png.
"""

from __future__ import annotations

import json

import pytest
import torch
from .train_task import HELD_OUT, prompt, reply, write_task

from parley import models
from parley.engine import LocalEngine, SamplingParams
from parley.templates import DEFAULT_TEMPLATE, encode_chat
from parley.train.config import load_config
from parley.train.loop import start

FAST = ["batch_size=16", "optim.warmup_steps=20", "eval.every=100", "log.progress=false"]


def train(out, *overrides: str):
    return start(load_config(None, [f"out_dir={out}", *FAST, *overrides]))


def held_out_correct(final, form: str = "intro", frame: str = "hi") -> int:
    engine = LocalEngine(models.load(str(final), device="cpu"))
    params = SamplingParams(temperature=0, max_new_tokens=24)
    return sum(engine.generate(prompt(n, c, form), params) == reply(n, c, frame) for n, c in HELD_OUT)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_full_fine_tuning_reproduces_held_out_replies(arch, request, prepared, tmp_path):
    base = request.getfixturevalue(f"{arch}_dir")
    assert held_out_correct(base) == 0
    final = train(tmp_path / "run", f"model={base}", f"data.sources={prepared}", "max_steps=300", "optim.lr=3e-3")

    assert held_out_correct(final) == len(HELD_OUT)
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_steps = [m for m in metrics if "loss" in m]
    evals = [m for m in metrics if "val_loss" in m]
    assert [m["step"] for m in train_steps] == list(range(1, 301))
    assert [m["step"] for m in evals] == [0, 100, 200, 300]  # step 0: the untouched model
    assert evals[-1]["val_loss"] < 0.1 < evals[0]["val_loss"]
    assert evals[-1]["val_ppl"] == pytest.approx(torch.tensor(evals[-1]["val_loss"]).exp().item(), rel=1e-5)
    assert all(m["tokens_per_s"] > 0 and m["lr"] >= 0 for m in train_steps)
    assert (tmp_path / "run" / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The template it was trained with travels with it; plain transformers loads the directory as is.
    assert (final / "chat_template.jinja").read_text() == DEFAULT_TEMPLATE
    from transformers import AutoModelForCausalLM, AutoTokenizer

    plain = AutoModelForCausalLM.from_pretrained(final)
    ours = models.load(str(final), device="cpu").model
    ids = torch.tensor([encode_chat(AutoTokenizer.from_pretrained(final), DEFAULT_TEMPLATE, prompt("Ada", "Oslo"), True)])
    torch.testing.assert_close(plain(ids).logits, ours(ids).logits)


@pytest.fixture(scope="session")
def two_task_base(llama_dir, tmp_path_factory):
    """A tiny Llama fully trained on two tasks: intro → "Hi ...", greet → "Hey ..."."""
    root = tmp_path_factory.mktemp("two-task")
    data = write_task(root / "both.jsonl", ("intro", "hi"), ("greet", "hey"))
    return train(root / "run", f"model={llama_dir}", f"data.sources=chat:{data}", "max_steps=400", "optim.lr=3e-3")


def test_lora_teaches_a_trained_model_a_new_mapping(two_task_base, tmp_path):
    assert held_out_correct(two_task_base, "intro", "hey") == 0  # it answers intros with "Hi ...", not "Hey ..."
    data = write_task(tmp_path / "lora.jsonl", ("intro", "hey"))
    final = train(tmp_path / "run", f"model={two_task_base}", f"data.sources=chat:{data}", "lora.r=8",
                  "lora.dropout=0", "max_steps=100", "optim.lr=1e-2", "optim.warmup_steps=10")

    assert held_out_correct(final, "intro", "hey") == len(HELD_OUT)
    adapter = json.loads((final / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(two_task_base.resolve())
    assert adapter["r"] == 8 and sorted(adapter["target_modules"]) == ["q_proj", "v_proj"]
    assert not (final / "model.safetensors").exists()  # only the adapter is saved
    # Checkpoints hold the adapter, not a copy of the frozen base.
    saved = sorted((tmp_path / "run" / "checkpoints").glob("step-*/model.safetensors"))
    from safetensors.torch import load_file

    assert saved and all(all("lora_" in key for key in load_file(path)) for path in saved)


def test_seq2seq_t5_learns_history_to_reply(t5_dir, prepared, tmp_path):
    final = train(tmp_path / "run", f"model={t5_dir}", f"data.sources={prepared}", "max_steps=300", "optim.lr=3e-3")

    loaded = models.load(str(final), device="cpu")
    assert loaded.model.config.is_encoder_decoder
    correct = 0
    for name, city in HELD_OUT:
        ids = encode_chat(loaded.tokenizer, loaded.template, prompt(name, city), add_generation_prompt=True)
        out = loaded.model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False)
        correct += loaded.tokenizer.decode(out[0], skip_special_tokens=True) == reply(name, city)
    assert correct == len(HELD_OUT)
