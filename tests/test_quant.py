"""Int8 weights (quant.py): the kernel computes what the dequantized weights would, the loss against bf16
stays within a stated tolerance, and every path of the engine (batched, gradients, adapters) works on it."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn

from parley import models
from parley.engine import LocalEngine, SamplingParams
from parley.models import assemble
from parley.quant import Int8Linear, quantize_int8
from tests.tiny_models import tiny_llama

CHAT = [{"role": "user", "content": "Write a haiku about tensors."}]
LOGIT_TOLERANCE = 0.05  # max |log p(int8) - log p(bf16)| over the vocabulary, tiny random Llama (README: Speed)


def test_the_int8_kernel_computes_the_dequantized_product():
    torch.manual_seed(0)
    linear = nn.Linear(96, 40, bias=True).to(torch.bfloat16)
    q = Int8Linear(linear, torch.bfloat16)
    # Each weight is within half a step of its original; the scale is per output row.
    error = (q.dequantized(torch.float32) - linear.weight.float()).abs()
    assert (error <= q.scale.float()[:, None] / 2 + 1e-6).all()
    assert q.qweight.dtype == torch.int8 and q.qweight.abs().max() == 127

    x = torch.randn(1, 1, 96, dtype=torch.bfloat16)  # one row (B, q, K): a decode step of one sequence
    with torch.inference_mode():
        ours = q(x)
    reference = x.float() @ q.dequantized(torch.float32).T + linear.bias.detach().float()
    assert ours.shape == (1, 1, 40) and ours.dtype == torch.bfloat16
    torch.testing.assert_close(ours.float(), reference, atol=0.05, rtol=0.02)
    assert not torch.equal(ours, linear(x))  # really the int8 weights

    # More rows than a GEMV pays for (a batch, a prompt's prefill): the original weights, exactly as nn.Linear,
    # and each row the same whatever rows share the forward.
    wide = torch.randn(3, 5, 96, dtype=torch.bfloat16)
    with torch.inference_mode():
        torch.testing.assert_close(q(wide), linear(wide), atol=0, rtol=0)
        torch.testing.assert_close(q(wide[:1, :2]), q(wide)[:1, :2], atol=0, rtol=0)


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="oneDNN has no bf16 kernel on this CPU")
def test_batches_multiply_by_packed_weights_which_copies_leave_behind():
    linear = nn.Linear(64, 32, bias=False).to(torch.bfloat16)
    q = Int8Linear(linear, torch.bfloat16)
    assert q.packed.tensor is not None and q.packed.tensor.is_mkldnn  # oneDNN's layout, made once
    # A copy (the compile skeleton is one) and a pickle leave the packed weights behind and fall back to
    # nn.Linear: the meta device has no such layout, and the copy must not double the memory.
    copied = copy.deepcopy(q)
    assert copied.packed.tensor is None
    x = torch.randn(4, 64, dtype=torch.bfloat16)
    with torch.inference_mode():
        torch.testing.assert_close(copied(x), q(x), atol=0, rtol=0)


def test_quantizing_replaces_every_linear_layer_and_keeps_the_embedding(embedded_tokenizer):
    model = tiny_llama(embedded_tokenizer).to(torch.bfloat16)
    embedding = model.model.embed_tokens.weight.clone()
    quantize_int8(model)
    assert not [name for name, m in model.named_modules() if type(m) is nn.Linear]
    assert isinstance(model.lm_head, Int8Linear)  # the tied head gets its own int8 copy ...
    assert torch.equal(model.model.embed_tokens.weight, embedding)  # ... and the lookup table is untouched


def test_int8_logits_stay_within_the_stated_tolerance_of_bf16(embedded_tokenizer, monkeypatch):
    monkeypatch.setattr("parley.quant.GEMV_ROWS", 10**6)  # the whole text through the int8 kernel, as decoding does
    bf16 = tiny_llama(embedded_tokenizer).to(torch.bfloat16)
    int8 = quantize_int8(copy.deepcopy(bf16))
    ids = torch.tensor([embedded_tokenizer("def fib(n): return n if n < 2 else fib(n - 1) + fib(n - 2)")["input_ids"]])
    with torch.inference_mode():
        theirs = torch.log_softmax(bf16(ids).logits.float(), -1)
        ours = torch.log_softmax(int8(ids).logits.float(), -1)
    assert (ours - theirs).abs().max() < LOGIT_TOLERANCE
    assert not torch.equal(ours, theirs)  # it is really quantized


def test_an_int8_engine_batches_exactly_and_differentiates_for_attribution(tiny_dir):
    loaded = models.load(tiny_dir, dtype="int8")
    assert isinstance(loaded.model.lm_head, Int8Linear)
    engine = LocalEngine(dataclasses.replace(loaded, stop_ids=[], stop_strings=[]), prefix_cache_mb=0)
    params = SamplingParams(temperature=0, max_new_tokens=8)
    prompts = ["Hi", "Tell me about tensors", "def f(x):"]

    def batched(group: list[str]) -> list[str]:
        batch = engine.new_batch()
        seqs = [engine.start(p, params) for p in group]
        batch.add_many(seqs)
        while batch.seqs:
            batch.step()
            for seq in [s for s in batch.seqs if s.done]:
                batch.remove(seq)
        return [s.text for s in seqs]

    # A batch decodes with the bf16 weights: a row's text is the same whatever shares the batch, as in
    # bf16 itself (one row alone takes the int8 GEMV, which rounds otherwise).
    together = batched(prompts)
    assert batched(prompts[:2]) == together[:2] and batched([prompts[2], prompts[0]]) == [together[2], together[0]]
    bf16 = LocalEngine(dataclasses.replace(models.load(tiny_dir, dtype="bfloat16"), stop_ids=[], stop_strings=[]),
                       prefix_cache_mb=0)
    assert together == [bf16.generate(p, params) for p in prompts]

    # With a gradient wanted (attribution), the layer takes the dequantized path: same values, and a gradient.
    embeds = loaded.model.model.embed_tokens(torch.tensor([[5, 6, 7]])).detach().requires_grad_()
    logits = loaded.model(inputs_embeds=embeds).logits
    logits[0, -1].max().backward()
    assert embeds.grad is not None and embeds.grad.abs().sum() > 0
    with torch.inference_mode():
        torch.testing.assert_close(loaded.model(inputs_embeds=embeds.detach()).logits, logits.detach(),
                                   atol=0.05, rtol=0.02)


def test_adapter_matrices_stay_in_full_precision(llama_loaded):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(llama_loaded.model.to(torch.bfloat16), LoraConfig(r=2, target_modules=["q_proj"]))
    quantize_int8(model)
    kinds = {name.rsplit(".", 1)[-1]: type(m) for name, m in model.named_modules() if "q_proj" in name}
    assert kinds["base_layer"] is Int8Linear and kinds["default"] is nn.Linear  # lora_A.default, lora_B.default
    assert assemble(model, llama_loaded.tokenizer, spec="x").model(torch.tensor([[1, 2]])).logits.shape[-1] > 0


def test_int8_is_a_dtype_the_loader_names(tiny_dir):
    with pytest.raises(Exception, match="int8"):
        models.load(tiny_dir, dtype="int4")
