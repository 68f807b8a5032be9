"""Load and decode speed of the embedded model: Parley's Engine beside plain transformers `generate`.

    .venv/bin/python bench/generate.py [--dtypes float32,bfloat16] [--new-tokens 128] [--repeats 3]

Prints one JSON object: cold load (GGUF -> safetensors cache, in a fresh PARLEY_HOME), cached load,
and per dtype the time to first token and decode tokens/s (batch 1, ~30-token prompt, greedy, exactly
`--new-tokens` tokens: end-of-sequence is ignored by both) for the Engine and for `model.generate`
on the same weights and prompt, with the ratio engine / transformers. Medians over `--repeats` runs
after one warm-up. No timed assertions live in the tests; this is where speed is watched.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time

PROMPT = [{"role": "user", "content": "Write a short story about a robot who learns to paint, in three paragraphs."}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch

    from parley import embedded, models

    result = {"model": "smollm2 (SmolLM2-135M-Instruct)", "threads": torch.get_num_threads(),
              "new_tokens": args.new_tokens, "repeats": args.repeats}
    with tempfile.TemporaryDirectory() as home:  # a cold start: nothing cached yet
        os.environ["PARLEY_HOME"] = home
        start = time.perf_counter()
        embedded.ensure_cached(progress=lambda message: None)
        result["cold_convert_s"] = round(time.perf_counter() - start, 2)
        start = time.perf_counter()
        models.load("smollm2")
        result["cached_load_s"] = round(time.perf_counter() - start, 2)

        for dtype in args.dtypes.split(","):
            loaded = models.load("smollm2", dtype=dtype)
            result[dtype] = compare(loaded, args.new_tokens, args.repeats)
    json.dump(result, sys.stdout, indent=2)
    print()


def compare(loaded, new_tokens: int, repeats: int) -> dict:
    import torch

    from parley.engine import LocalEngine, SamplingParams

    engine = LocalEngine(dataclasses.replace(loaded, stop_ids=[]))  # decode exactly new_tokens tokens
    ids = engine.prompt_ids(PROMPT)
    params = SamplingParams(temperature=0, max_new_tokens=new_tokens)

    def ours() -> tuple[float, float, int]:
        start = time.perf_counter()
        stream = engine.stream(PROMPT, params)
        next(stream)
        first = time.perf_counter()
        count = 1 + sum(1 for _ in stream)
        return first - start, (count - 1) / (time.perf_counter() - first), count

    def theirs() -> tuple[float, float, int]:
        inputs = torch.tensor([ids])
        kwargs = dict(do_sample=False, pad_token_id=loaded.tokenizer.pad_token_id)
        start = time.perf_counter()
        loaded.model.generate(inputs, max_new_tokens=1, min_new_tokens=1, **kwargs)
        first = time.perf_counter() - start
        start = time.perf_counter()
        out = loaded.model.generate(inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kwargs)
        total = time.perf_counter() - start
        count = out.shape[1] - len(ids)
        return first, (count - 1) / (total - first), count  # decode rate excludes the prefill

    report = {"prompt_tokens": len(ids)}
    for name, run in (("parley_engine", ours), ("transformers_generate", theirs)):
        run()  # warm-up
        runs = [run() for _ in range(repeats)]
        report[name] = {
            "ttft_ms": round(1000 * statistics.median(r[0] for r in runs), 1),
            "decode_tok_s": round(statistics.median(r[1] for r in runs), 1),
            "tokens": runs[0][2],
        }
    report["decode_ratio_engine_over_transformers"] = round(
        report["parley_engine"]["decode_tok_s"] / report["transformers_generate"]["decode_tok_s"], 2
    )
    return report


if __name__ == "__main__":
    main()
