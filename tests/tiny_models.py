"""Tiny random-initialised models over a given tokenizer, for tests that need a real architecture fast."""

from __future__ import annotations


def tiny_llama(tokenizer, seed: int = 0, **overrides):
    """A random-initialised Llama-style model over `tokenizer`'s vocabulary, small enough for tests."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    settings = dict(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    )
    config = LlamaConfig(**{**settings, **overrides})  # overrides may replace any default
    return LlamaForCausalLM(config).eval()


def tiny_gpt2(tokenizer, seed: int = 0, **overrides):
    """A random-initialised GPT-2-architecture model over `tokenizer`'s vocabulary."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    settings = dict(
        vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=4, n_positions=256,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    config = GPT2Config(**{**settings, **overrides})
    return GPT2LMHeadModel(config).eval()
