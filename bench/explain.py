"""Benchmark: what an explanation costs beside generating the reply it explains.

    .venv/bin/python bench/explain.py [--model smollm2] [--prompt-tokens 300] [--reply-tokens 200] [--steps 16]

A prompt of exactly --prompt-tokens tokens (Python source from the standard library, as a user
message in the model's template) gets a greedy reply of exactly --reply-tokens tokens (the end-of-text
token is held back with logit_bias so the length is fixed); the generation is timed (the named
baseline), then each attribution method over that reply, one at a time:
    gradient_x_input       the whole reply as the target: one forward, one backward
    gradient_x_input_rows  plus one backward per reply token (the export's matrix)
    occlusion              leave the one message out (a forward over the rest, the prefix reused)
    integrated_gradients   --steps points (opt-in in the product; its cost grows with steps)
    contrast               the reply's first 10 tokens against another text
Peak memory: on CUDA, torch's peak allocation per method; on CPU, the process's resident memory
sampled every 5 ms while the method runs, above what it was when the method started (glibc may keep
freed memory, so a later method can reuse an earlier one's pages and show less). Prints one JSON object; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import inspect
import os
import sys
import threading
import time
from pathlib import Path


def prompt_of(tokenizer, template, tokens: int) -> list[dict]:
    """One user message whose rendered prompt is exactly `tokens` tokens (cut from stdlib source)."""
    from parley.templates import encode_chat

    source = Path(inspect.getsourcefile(json.decoder)).read_text()
    ids = tokenizer(source, add_special_tokens=False)["input_ids"]
    low, high = 1, len(ids)
    while low < high:  # the longest cut whose rendering fits
        mid = (low + high + 1) // 2
        text = tokenizer.decode(ids[:mid])
        if len(encode_chat(tokenizer, template, [{"role": "user", "content": text}], True)) <= tokens:
            low = mid
        else:
            high = mid - 1
    return [{"role": "user", "content": tokenizer.decode(ids[:low])}]


def measure(work) -> dict:
    """{seconds, peak memory} of work() (see the module docstring for what peak means here)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        work()
        torch.cuda.synchronize()
        return {"seconds": round(time.perf_counter() - started, 3),
                "peak_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1)}
    before, peak, done = _rss_mib(), [0.0], threading.Event()

    def watch():  # resident memory sampled every 5 ms while the method runs
        while not done.wait(0.005):
            peak[0] = max(peak[0], _rss_mib())

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    started = time.perf_counter()
    try:
        work()
    finally:
        seconds = time.perf_counter() - started
        done.set()
        watcher.join()
    return {"seconds": round(seconds, 3), "peak_mib_above_start": round(max(peak[0], _rss_mib()) - before, 1)}


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--prompt-tokens", type=int, default=300)
    parser.add_argument("--reply-tokens", type=int, default=200)
    parser.add_argument("--steps", type=int, default=16, help="integrated gradients' points")
    parser.add_argument("--methods", default="gradient_x_input,gradient_x_input_rows,occlusion,integrated_gradients,contrast")
    args = parser.parse_args()

    import torch

    from parley import backend
    from parley.engine import LocalEngine, SamplingParams
    from parley.explain.attribution import contrast, explain, gradient_x_input, integrated_gradients
    from parley.explain.config import ExplainConfig
    from parley.explain.layout import lay_out

    loaded = backend.local(args.model, purpose="the benchmark")
    messages = prompt_of(loaded.tokenizer, loaded.template, args.prompt_tokens)
    engine = LocalEngine(loaded, prefix_cache_mb=0)
    params = SamplingParams(temperature=0, max_new_tokens=args.reply_tokens,
                            logit_bias={i: -100 for i in loaded.stop_ids})
    print("generating the reply…", file=sys.stderr)
    started = time.perf_counter()
    tokens = list(engine.stream(messages, params))
    generate_s = time.perf_counter() - started
    reply = "".join(t.text for t in tokens)
    layout = lay_out(loaded, messages, reply)
    span = (0, len(layout.reply_ids))
    work = {
        "gradient_x_input": lambda: gradient_x_input(loaded, layout, span),
        "gradient_x_input_rows": lambda: gradient_x_input(loaded, layout, span, rows=True),
        "occlusion": lambda: explain(loaded, layout, ExplainConfig(methods=("occlusion",), rows=False)),
        "integrated_gradients": lambda: integrated_gradients(loaded, layout, span, args.steps),
        "contrast": lambda: contrast(loaded, layout, (0, min(10, span[1])), "def main():"),
    }
    results = {}
    for name in args.methods.split(","):
        print(f"{name}…", file=sys.stderr)
        results[name] = measure(work[name])
    print(json.dumps({
        "benchmark": "explain", "model": args.model, "dtype": str(next(loaded.model.parameters()).dtype),
        "device": str(loaded.device), "threads": torch.get_num_threads(),
        "prompt_tokens": len(layout.prompt_ids), "reply_tokens": len(layout.reply_ids),
        "generated_tokens": len(tokens), "generate_s": round(generate_s, 3), "ig_steps": args.steps,
        "methods": results,
    }, indent=1))


if __name__ == "__main__":
    main()
