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


def tiny_t5(tokenizer, seed: int = 0, **overrides):
    """A random-initialised T5 (encoder-decoder, relative positions) over `tokenizer`'s vocabulary.
    Weights start 5x the usual scale, so greedy decoding says varied tokens instead of one repeated."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    settings = dict(
        vocab_size=len(tokenizer), d_model=32, d_ff=64, d_kv=8, num_layers=2, num_heads=4, dropout_rate=0.0,
        initializer_factor=5.0, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    return T5ForConditionalGeneration(T5Config(**{**settings, **overrides})).eval()


def tiny_bart(tokenizer, seed: int = 0, **overrides):
    """A random-initialised BART (encoder-decoder, learned positions) over `tokenizer`'s vocabulary.
    Weights start at std 1 (not 0.02), so greedy decoding says varied tokens instead of one repeated."""
    import torch
    from transformers import BartConfig, BartForConditionalGeneration

    torch.manual_seed(seed)
    settings = dict(
        vocab_size=len(tokenizer), d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, init_std=1.0,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.eos_token_id, forced_eos_token_id=None,  # no forced last token
    )
    return BartForConditionalGeneration(BartConfig(**{**settings, **overrides})).eval()
