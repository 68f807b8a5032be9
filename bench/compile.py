"""The next speed step, measured: one decode step of the embedded model compiled by torch.compile
(inductor, weights frozen, its C++ GEMM template) beside the same step in eager mode, on the engine's
own RowCache, batch 1, fp32 or bf16 (--dtype).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/compile.py [--capacity 256] [--new-tokens 32] [--backends CPP]

Prints JSON: eager and compiled decode tokens/s, the ratio, the compile time, and whether the greedy
tokens are identical. Why this exists: a profile of the eager decode step (bench/generate.py's
setting) puts ~80% of its time in aten::mm, whose M=1 GEMV runs at ~12 GB/s of weights while the
machine streams ~50 GB/s; inductor's C++ micro-GEMM for frozen weights reaches that. The engine
compiles differently (parley/compiled.py: int8 weights as inputs, not frozen, so the graph is built
on a weightless skeleton in a child process and saved): frozen weights cannot be saved, the compile
takes ~2 minutes on 2 cores, and this graph is specialized to one batch size and one cache capacity
(the attention then spans the whole capacity). See the README's Speed section for the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--capacity", type=int, default=256, help="KV columns the compiled step attends over")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--backends", default="CPP", help="inductor GEMM backends: CPP, or ATEN,CPP to autotune")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="weights and activations")
    args = parser.parse_args()

    import torch
    import torch._inductor.config as inductor

    from parley import kvcache, models
    from parley.templates import encode_chat

    inductor.freezing = True  # weights become constants: what the C++ GEMM template needs to prepack them
    inductor.max_autotune_gemm_backends = args.backends
    kvcache.FIRST_CAPACITY = args.capacity
    loaded = models.load("smollm2", dtype=args.dtype)
    dtype = getattr(torch, args.dtype)
    model = loaded.model
    cache = kvcache.RowCache(loaded.context_window)

    def step(ids, positions, mask):
        out = model(input_ids=ids, position_ids=positions, attention_mask=mask, cache=cache, use_cache=True,
                    logits_to_keep=1)
        return out.logits[:, -1]

    compiled = torch.compile(step, mode="max-autotune-no-cudagraphs", dynamic=False)
    prompt = encode_chat(loaded.tokenizer, loaded.template,
                         [{"role": "user", "content": "Write a short story about a robot who learns to paint."}], True)

    def feed(fn, ids: list[int], start: int) -> torch.Tensor:
        positions = torch.arange(start, start + len(ids))[None]
        cache.plan(0, positions)
        cache._width = args.capacity  # a fixed shape: the compiled step is specialized to it
        return fn(torch.tensor([ids]), positions, cache.mask(dtype))

    def decode(fn) -> tuple[list[int], float]:
        with torch.no_grad():
            token = int(feed(step, prompt, 0).argmax())  # the prefill is eager in both runs
            tokens, start = [token], time.perf_counter()
            for i in range(args.new_tokens):
                token = int(feed(fn, [token], len(prompt) + i).argmax())
                tokens.append(token)
            return tokens, args.new_tokens / (time.perf_counter() - start)

    decode(step)  # warm-up
    eager_tokens, eager_rate = decode(step)
    start = time.perf_counter()
    with torch.no_grad():
        feed(compiled, prompt[-1:], len(prompt) - 1)
    compile_s = time.perf_counter() - start
    compiled_tokens, compiled_rate = decode(compiled)
    json.dump({
        "model": f"smollm2 (SmolLM2-135M-Instruct), {args.dtype}, batch 1", "threads": torch.get_num_threads(),
        "capacity": args.capacity, "gemm_backends": args.backends, "new_tokens": args.new_tokens,
        "eager_tok_s": round(eager_rate, 1), "compiled_tok_s": round(compiled_rate, 1),
        "compiled_over_eager": round(compiled_rate / eager_rate, 2), "compile_s": round(compile_s, 1),
        "same_greedy_tokens": compiled_tokens == eager_tokens,
    }, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
