"""Attribution checked against direct computations on a tiny random Llama: gradient x input against
torch.autograd by hand, integrated gradients' completeness, occlusion against a forward without the
message, and the contrast's sign. The layout's groups (messages, lines) are checked on the same model."""

from __future__ import annotations

import pytest
import torch

from parley.errors import ConfigError
from parley.explain.attribution import contrast, explain, gradient_x_input, integrated_gradients
from parley.explain.config import ExplainConfig
from parley.explain.layout import GENERATION_PROMPT, lay_out
from parley.templates import encode_chat

MESSAGES = [{"role": "system", "content": "You write Python."},
            {"role": "user", "content": "Add two numbers:\ndef add(a, b):"}]
REPLY = "    return a + b"


@pytest.fixture
def layout(llama_loaded):
    return lay_out(llama_loaded, MESSAGES, REPLY)


def direct_logprobs(loaded, embeds, prompt, reply_ids):
    logits = loaded.model(inputs_embeds=embeds[None]).logits[0, prompt - 1: prompt - 1 + len(reply_ids)]
    return torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(reply_ids)[:, None])[:, 0]


def test_gradient_x_input_is_autograd_by_hand(llama_loaded, layout):
    prompt = len(layout.prompt_ids)
    embeds = llama_loaded.model.get_input_embeddings()(torch.tensor(layout.ids)).detach().requires_grad_()
    logprobs = direct_logprobs(llama_loaded, embeds, prompt, layout.reply_ids)
    grad = torch.autograd.grad(logprobs[1:4].sum(), embeds, retain_graph=True)[0]
    row = torch.autograd.grad(logprobs[2], embeds)[0]
    vector, rows = gradient_x_input(llama_loaded, layout, (1, 4), rows=True)
    assert torch.allclose(torch.tensor(vector), (grad * embeds).sum(-1)[:prompt].detach(), atol=1e-5)
    assert torch.allclose(torch.tensor(rows[1]), (row * embeds).sum(-1)[:prompt].detach(), atol=1e-5)
    assert len(rows) == 3 and all(len(r) == prompt for r in rows)
    assert torch.allclose(torch.tensor(rows).sum(0), torch.tensor(vector), atol=1e-5)  # rows add up to the span


def test_integrated_gradients_are_complete_at_64_steps(llama_loaded, layout):
    prompt = len(layout.prompt_ids)
    with torch.no_grad():
        embeds = llama_loaded.model.get_input_embeddings()(torch.tensor(layout.ids))
        baseline = embeds.clone()
        baseline[:prompt] = llama_loaded.model.get_input_embeddings().weight.mean(0)  # the documented baseline
        change = float(direct_logprobs(llama_loaded, embeds, prompt, layout.reply_ids).sum()
                       - direct_logprobs(llama_loaded, baseline, prompt, layout.reply_ids).sum())
    vector, _, reported = integrated_gradients(llama_loaded, layout, (0, len(layout.reply_ids)), steps=64)
    assert abs(change) > 1e-3  # a real change to account for
    assert sum(vector) == pytest.approx(change, rel=0.01)
    assert reported == pytest.approx(change, rel=1e-4)


def test_occlusion_is_the_forward_without_the_message(llama_loaded, layout):
    loaded = llama_loaded
    reply = layout.reply_ids
    found = explain(loaded, layout, ExplainConfig(methods=("occlusion",)))

    def total(ids):
        with torch.no_grad():
            logits = loaded.model(input_ids=torch.tensor([ids])).logits[0, len(ids) - len(reply) - 1: -1]
        return float(torch.log_softmax(logits, -1).gather(-1, torch.tensor(reply)[:, None]).sum())

    full = total(layout.ids)
    for m in range(len(MESSAGES)):
        rest = MESSAGES[:m] + MESSAGES[m + 1:]
        without = total(encode_chat(loaded.tokenizer, loaded.template, rest, True) + reply)
        assert found.message_scores["occlusion"][m] == pytest.approx(full - without, abs=1e-4)
    assert found.message_scores["occlusion"][-1] == 0  # the generation prompt is never left out
    assert found.target_logprob == pytest.approx(full, abs=1e-4)


def test_contrast_flips_sign_when_x_and_y_swap(llama_loaded):
    x_layout = lay_out(llama_loaded, MESSAGES, REPLY)
    y_text = "    return a - b"
    y_layout = lay_out(llama_loaded, MESSAGES, y_text)
    x_vs_y, logp_x, logp_y = contrast(llama_loaded, x_layout, None, y_text)
    y_vs_x, _, _ = contrast(llama_loaded, y_layout, None, REPLY)
    assert torch.allclose(torch.tensor(x_vs_y), -torch.tensor(y_vs_x), atol=1e-5)
    x_only, _ = gradient_x_input(llama_loaded, x_layout, (0, len(x_layout.reply_ids)))
    y_only, _ = gradient_x_input(llama_loaded, y_layout, (0, len(y_layout.reply_ids)))
    assert torch.allclose(torch.tensor(x_vs_y), torch.tensor(x_only) - torch.tensor(y_only), atol=1e-5)
    assert logp_x != logp_y and max(map(abs, x_vs_y)) > 0


def test_scores_add_up_to_messages_and_lines(llama_loaded, layout):
    found = explain(llama_loaded, layout, ExplainConfig(methods=("gxi",), rows=False))
    scores = found.scores["gradient_x_input"]
    assert sum(found.message_scores["gradient_x_input"]) == pytest.approx(sum(scores), abs=1e-5)
    assert sum(s for _, s in found.by_line("gradient_x_input")) == pytest.approx(sum(scores), abs=1e-5)
    assert layout.message_labels == ["0 system", "1 user", GENERATION_PROMPT]
    user = "".join(layout.prompt_text[s:e] for (s, e), g in zip(layout.prompt_offsets, layout.token_message) if g == 1)
    assert "Add two numbers" in user and "You write" not in user
    assert any(line == "def add(a, b):<|im_end|>" for line in layout.lines)
    assert [t.text for t in found.reply_tokens] and all(len(t.top) == 5 for t in found.reply_tokens)
    assert all(t.entropy >= 0 and t.logprob <= 0 for t in found.reply_tokens)


def test_span_of_finds_the_quoted_text_and_refuses_what_is_not_there(layout):
    first, end = layout.span_of("a + b")
    covered = "".join(REPLY[s:e] for s, e in layout.reply_offsets[first:end])
    assert "a + b" in covered and len(covered) < len(REPLY)
    with pytest.raises(ConfigError, match="not in the reply"):
        layout.span_of("a * b")


def test_bad_settings_are_one_line_errors():
    with pytest.raises(ConfigError, match="--method 'lime'"):
        ExplainConfig(methods=("lime",))
    with pytest.raises(ConfigError, match="--steps"):
        ExplainConfig(steps=0)
