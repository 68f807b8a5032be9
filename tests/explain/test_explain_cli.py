"""`parley explain` end to end on a tiny model saved to a directory: a JSONL record, a stored
conversation and a prompt; the research export (JSON fields, self-contained HTML, PNG); bad input."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from parley.cli import app
from parley.store import Store

DIALOG = {"messages": [{"role": "system", "content": "Answer in code."},
                       {"role": "user", "content": "Add two numbers.\nUse a def."},
                       {"role": "assistant", "content": "def add(a, b):\n    return a + b"}]}



def explain(*args: str, ok: bool = True):
    result = CliRunner().invoke(app, ["explain", *args])
    if ok:
        assert result.exit_code == 0, result.output
    return result


def test_a_jsonl_record_exports_json_html_and_png(tiny_dir, tmp_path):
    data = tmp_path / "dialogs.jsonl"
    data.write_text(json.dumps(DIALOG) + "\n")
    out = tmp_path / "why.json"
    result = explain("--jsonl", str(data), "--model", str(tiny_dir), "--method", "gxi,occlusion,ig", "--steps", "8",
                     "--contrast", "def sub(a, b):", "--out", str(out))
    assert "gradient_x_input" in result.output and "messages:" in result.output
    document = json.loads(out.read_text())
    for key in ("prompt_tokens", "reply_tokens", "attributions", "by_line", "by_message", "model", "template",
                "parley_version", "contrast"):
        assert key in document, key
    assert "".join(document["prompt_tokens"]).endswith("<|im_start|>assistant\n")
    reply = document["reply_tokens"]
    assert "".join(t["text"] for t in reply) == DIALOG["messages"][-1]["content"]
    assert set(reply[0]) == {"text", "logprob", "entropy", "top"} and len(reply[0]["top"]) == 5
    assert set(document["attributions"]) == {"gradient_x_input", "integrated_gradients", "occlusion"}
    matrix = document["attributions"]["gradient_x_input"]
    assert len(matrix) == len(reply) and {len(row) for row in matrix} == {len(document["prompt_tokens"])}
    messages = [m["message"] for m in document["by_message"]["occlusion"]]
    assert messages == ["0 system", "1 user", "(assistant prompt)"]
    assert any(line["text"] == "Use a def.<|im_end|>" for line in document["by_line"]["gradient_x_input"])
    page = out.with_suffix(".html").read_text()
    assert "<script>" in page and "src=" not in page and "href=" not in page  # nothing fetched from anywhere
    assert page.count('class="t"') == 3 * len(document["prompt_tokens"])
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_stored_conversation_and_a_span(tiny_dir, tmp_path):
    store = Store()
    cid = store.new_conversation(model="tiny", system="Answer in code.", params={})
    for m in DIALOG["messages"][1:]:
        store.add_message(cid, m["role"], m["content"])
    out = tmp_path / "stored.json"
    explain(cid[:8], "--model", str(tiny_dir), "--method", "gxi", "--span", "a + b", "--out", str(out))
    document = json.loads(out.read_text())
    first, end = document["span"]
    assert "a + b" in "".join(t["text"] for t in document["reply_tokens"][first:end])
    assert len(document["attributions"]["gradient_x_input"]) == end - first < len(document["reply_tokens"])


def test_a_prompt_is_answered_first_and_an_empty_answer_is_one_line(tiny_dir):
    # The tiny random model's greedy reply is only special tokens: nothing to explain, said in one line.
    result = explain("--prompt", "Say hi.", "--model", str(tiny_dir), "--method", "gxi", "--max-new-tokens", "6",
                     ok=False)
    assert "the model's reply is empty" in str(result.exception)


@pytest.mark.parametrize("args, message", [
    ((), "give one of CONVERSATION"),
    (("--prompt", "x", "--jsonl", "f.jsonl"), "not --jsonl and --prompt"),
    (("--prompt", "x", "--method", "lime"), "--method 'lime' is not one of"),
    (("--prompt", "x", "--model", "openai:gpt"), "attribution needs a local model"),
])
def test_bad_input_is_one_line(args, message):
    result = explain(*args, ok=False)
    assert result.exit_code != 0 and message in str(result.exception)


def test_a_broken_jsonl_line_is_named(tiny_dir, tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps(DIALOG) + "\n{not json\n")
    result = explain("--jsonl", str(data), "--record", "2", "--model", str(tiny_dir), ok=False)
    assert f"{data}:2: not valid JSON" in str(result.exception)
