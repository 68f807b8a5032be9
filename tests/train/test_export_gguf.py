"""`parley export --format gguf`: the file loads back through transformers' own GGUF loader (a reader
written independently of ours) and behaves like the source model; refusals write nothing.

llama.cpp itself runs the exported files in `make check-gguf` (bench/gguf_check.py), outside the suite.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import gguf
import pytest
import torch
from tiny_models import tiny_gpt2, tiny_llama

from parley import models
from parley.templates import DEFAULT_TEMPLATE, encode_chat, render
from parley.train.config import load_config
from parley.train.export import export
from parley.train.loop import start
from parley.train.modelfile import chat_turns, go_template, render_like_ollama

from .train_task import prompt, run_cli, save_model

Q8_0_TOLERANCE = 5e-2  # q8_0 keeps 8 bits per weight: logits of these tiny models move by ~5e-3
CHATML = (  # SmolLM2-Instruct's template: ChatML with a default system prompt
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def sources(tokenizer, tmp_path_factory) -> dict[str, str]:
    """A tiny Llama and a tiny GPT-2 as save_pretrained dirs. GPT-2 keeps its real 1024 positions:
    transformers' GGUF loader reads gpt2.context_length into `n_ctx`, not `n_positions`."""
    root = tmp_path_factory.mktemp("gguf-sources")
    return {"llama": save_model(tiny_llama(tokenizer), tokenizer, root / "llama"),
            "gpt2": save_model(tiny_gpt2(tokenizer, n_positions=1024), tokenizer, root / "gpt2")}


def load_gguf(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def chat_ids(loaded) -> torch.Tensor:
    return torch.tensor([encode_chat(loaded.tokenizer, loaded.template, prompt("Ada", "Oslo"), True)])


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_f16_loads_back_with_the_source_logits_and_greedy_tokens(arch, sources, tmp_path):
    out = export(sources[arch], tmp_path / "m.gguf", format="gguf", quant="f16")
    source = models.load(sources[arch], device="cpu", dtype="float32")
    model, _ = load_gguf(out)
    ids = chat_ids(source)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, source.model(ids).logits, rtol=0, atol=1e-2)
        greedy = dict(max_new_tokens=12, do_sample=False, pad_token_id=source.tokenizer.pad_token_id)
        assert model.generate(ids, **greedy).tolist() == source.model.generate(ids, **greedy).tolist()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_q8_0_stays_within_its_tolerance_and_q4_0_keeps_the_embedding_at_q8_0(arch, sources, tmp_path):
    source = models.load(sources[arch], device="cpu", dtype="float32")
    q8 = export(sources[arch], tmp_path / "q8" / "m.gguf", format="gguf", quant="q8_0")
    ids = chat_ids(source)
    with torch.no_grad():
        gap = (load_gguf(q8)[0](ids).logits - source.model(ids).logits).abs().max().item()
    assert 0 < gap < Q8_0_TOLERANCE  # quantized (not a copy), and close

    q4 = export(sources[arch], tmp_path / "q4" / "m.gguf", format="gguf", quant="q4_0")
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(q4).tensors}
    assert types["token_embd.weight"] == "Q8_0" and types["blk.0.ffn_down.weight"] == "Q4_0"
    assert types["output_norm.weight"] == "F32"
    assert q4.stat().st_size < q8.stat().st_size
    if arch == "gpt2":
        assert types["position_embd.weight"] == "F32" and types["output.weight"] == "Q8_0"
    else:
        assert "output.weight" not in types  # tied: llama.cpp reads the embedding


def test_the_tokenizer_round_trips_a_stdlib_source_file_exactly(sources, tokenizer, tmp_path):
    out = export(sources["gpt2"], tmp_path / "m.gguf", format="gguf")
    _, loaded_back = load_gguf(out)
    text = Path(textwrap.__file__).read_text()
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert loaded_back(text, add_special_tokens=False)["input_ids"] == ids
    assert loaded_back.decode(ids) == text
    fields = gguf.GGUFReader(out).fields
    assert fields["tokenizer.ggml.model"].contents() == "gpt2" and fields["tokenizer.ggml.pre"].contents() == "gpt-2"
    assert fields["tokenizer.ggml.eos_token_id"].contents() == tokenizer.eos_token_id
    assert fields["tokenizer.ggml.add_bos_token"].contents() is False  # the template holds any BOS it wants
    types = fields["tokenizer.ggml.token_type"].contents()
    assert types[tokenizer.convert_tokens_to_ids("<|user|>")] == gguf.TokenType.CONTROL
    assert fields["general.sampling.temp"].contents() == pytest.approx(0.7)  # Parley's default temperature


def test_the_chat_template_travels_and_renders_like_the_source(sources, tmp_path):
    out = export(sources["llama"], tmp_path / "m.gguf", format="gguf")
    source = models.load(sources["llama"], device="cpu")
    _, loaded_back = load_gguf(out)
    assert gguf.GGUFReader(out).fields["tokenizer.chat_template"].contents() == source.template
    messages = [{"role": "system", "content": "Be brief."}, *prompt("Ada", "Oslo"),
                {"role": "assistant", "content": "Hi Ada! How is Oslo?"}, *prompt("Ben", "Rome")]
    assert (loaded_back.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            == render(source.tokenizer, source.template, messages, True))

    modelfile = (tmp_path / "Modelfile").read_text()
    assert "FROM ./m.gguf\n" in modelfile and "SYSTEM" not in modelfile  # Parley's default template has none
    for stop in ["<|endoftext|>", "<|user|>", "<|system|>", "<|assistant|>"]:
        assert f'PARAMETER stop "{stop}"\n' in modelfile
    turns = chat_turns(source.tokenizer, source.template)
    assert f'TEMPLATE """{go_template(turns)}"""' in modelfile
    assert render_like_ollama(turns, "Be brief.", messages[1:]) == render(source.tokenizer, source.template, messages, True)


def test_a_chatml_template_becomes_the_go_template_ollama_uses_with_its_default_system(tokenizer):
    turns = chat_turns(tokenizer, CHATML)
    assert turns.default_system == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert go_template(turns) == (
        '{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}{{ range .Messages }}'
        '{{ if eq .Role "user" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n<|im_start|>assistant\n'
        '{{ else if eq .Role "assistant" }}{{ .Content }}<|im_end|>\n{{ end }}{{ end }}')
    no_system = prompt("Ada", "Oslo")
    assert render_like_ollama(turns, turns.default_system, no_system) == render(tokenizer, CHATML, no_system, True)
    # a BOS before the first message, system or not, is no per-message piece: no Go template, no TEMPLATE line
    assert chat_turns(tokenizer, "{{ bos_token }}" + DEFAULT_TEMPLATE) is None
    assert chat_turns(tokenizer, "{% for m in messages %}{{ loop.index }}. {{ m['content'] }}\n{% endfor %}") is None


def test_refusals_name_the_problem_and_leave_nothing_behind(tokenizer, t5_dir, tmp_path):
    narrow = save_model(tiny_llama(tokenizer, hidden_size=48, intermediate_size=96), tokenizer, tmp_path / "narrow")
    out = tmp_path / "out"
    out.mkdir()
    (out / "m.gguf").write_bytes(b"an earlier export")
    refused = run_cli("export", narrow, "--format", "gguf", "--quant", "q8_0", "--out", str(out / "m.gguf"))
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "rows of 48" in refused.stderr and "use --quant f16" in refused.stderr
    t5 = run_cli("export", t5_dir, "--format", "gguf", "--out", str(out / "t5.gguf"))
    assert t5.returncode == 2 and "GGUF export supports llama and gpt2 models; this one is 't5'" in t5.stderr
    assert sorted(p.name for p in out.iterdir()) == ["m.gguf"]  # no Modelfile, no temporary file
    assert (out / "m.gguf").read_bytes() == b"an earlier export"

    assert export(narrow, out / "m.gguf", format="gguf", quant="f16").stat().st_size > 1000  # f16 has no blocks


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(sources, tmp_path, monkeypatch):
    target = tmp_path / "m.gguf"
    target.write_bytes(b"an earlier export")

    def disk_full(writer, **_):
        writer.fout[0].write(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        export(sources["llama"], target, format="gguf")
    assert [p.name for p in tmp_path.iterdir()] == ["m.gguf"] and target.read_bytes() == b"an earlier export"


def test_a_lora_run_exports_merged(llama_dir, prepared, tmp_path):
    run = tmp_path / "run"
    start(load_config(None, [f"model={llama_dir}", f"data.sources={prepared}", f"out_dir={run}", "max_steps=8",
                             "batch_size=8", "lora.r=4", "optim.lr=1e-2", "log.progress=false"]))
    result = run_cli("export", str(run), "--format", "gguf", "--quant", "f16", "--out", str(tmp_path / "m.gguf"))
    assert result.returncode == 0, result.stderr
    adapter = models.load(str(run / "final"), device="cpu", dtype="float32")
    base = models.load(json.loads((run / "final" / "adapter_config.json").read_text())["base_model_name_or_path"],
                       device="cpu", dtype="float32")
    model, _ = load_gguf(tmp_path / "m.gguf")
    ids = chat_ids(adapter)
    with torch.no_grad():
        expected = adapter.model(ids).logits
        torch.testing.assert_close(model(ids).logits, expected, rtol=0, atol=1e-2)
        assert not torch.allclose(base.model(ids).logits, expected, atol=5e-2)  # the adapter did change the model
