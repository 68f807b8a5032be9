"""The cost of constrained decoding: the embedded model's decode speed with and without a JSON Schema.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/constrained.py [--new-tokens 96] [--repeats 3] [--threads 2]

Prints one JSON object: decode tokens/s (batch 1, greedy, through `LocalEngine.stream`, timed after the
first token) unconstrained and under SCHEMA, the ratio, the overhead in percent (goal: at most 15), and
the constraint's own time per token (llguidance's mask plus applying it and advancing the matcher,
timed around `Constraint.mask`/`advance`), which is what the overhead is made of. The two sides
alternate within each repeat, so load on a shared machine falls on both; medians over `--repeats`.
The constrained reply ends when its JSON closes, so it may decode fewer tokens than the free one;
the rate is per token either way.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

PROMPT = [{"role": "user", "content": "Describe three famous scientists as JSON: name, field, born, and a long summary "
                                      "of their work."}]
SCHEMA = {
    "type": "object",
    "properties": {"scientists": {"type": "array", "items": {
        "type": "object",
        "properties": {"name": {"type": "string"}, "field": {"type": "string"}, "born": {"type": "integer"},
                       "summary": {"type": "string"}},
        "required": ["name", "field", "born", "summary"], "additionalProperties": False}}},
    "required": ["scientists"],
    "additionalProperties": False,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import os

    import torch

    from parley import constraints, models
    from parley.engine import LocalEngine, SamplingParams

    torch.set_num_threads(args.threads)
    engine = LocalEngine(models.load("smollm2"), prefix_cache_mb=0)  # no prefix reuse: each run prefills alike
    spent = [0.0]  # seconds inside the constraint, this run

    def timed(method):
        def wrapper(*a, **k):
            start = time.perf_counter()
            try:
                return method(*a, **k)
            finally:
                spent[0] += time.perf_counter() - start
        return wrapper

    constraints.Constraint.mask = timed(constraints.Constraint.mask)
    constraints.Constraint.advance = timed(constraints.Constraint.advance)

    def run(schema: dict | None) -> dict:
        params = SamplingParams(temperature=0, max_new_tokens=args.new_tokens, json_schema=schema)
        spent[0] = 0.0
        stamps, text = [], ""
        for token in engine.stream(PROMPT, params):
            stamps.append(time.perf_counter())
            text += token.text
        decoded = len(stamps) - 1
        return {"tokens": len(stamps), "tok_s": decoded / (stamps[-1] - stamps[0]),
                "constraint_ms_per_token": spent[0] * 1000 / len(stamps), "text": text}

    run(None), run(SCHEMA)  # warm-up: the first constrained run also builds llguidance's tokenizer
    free, bound = [], []
    for _ in range(args.repeats):
        free.append(run(None))
        bound.append(run(SCHEMA))
    median = lambda runs, key: statistics.median(r[key] for r in runs)  # noqa: E731
    free_rate, bound_rate = median(free, "tok_s"), median(bound, "tok_s")
    last = bound[-1]["text"]
    try:
        json.loads(last)
        valid = True
    except json.JSONDecodeError:
        valid = False  # cut by --new-tokens before the JSON closed
    print(json.dumps({
        "model": "smollm2 (SmolLM2-135M-Instruct)", "threads": torch.get_num_threads(),
        "new_tokens": args.new_tokens, "repeats": args.repeats, "load_average": [round(x, 2) for x in os.getloadavg()],
        "unconstrained_tok_s": round(free_rate, 2), "json_schema_tok_s": round(bound_rate, 2),
        "ratio": round(bound_rate / free_rate, 3), "overhead_pct": round((free_rate / bound_rate - 1) * 100, 1),
        "constraint_ms_per_token": round(median(bound, "constraint_ms_per_token"), 3),
        "json_schema_tokens": [r["tokens"] for r in bound], "json_complete": valid,
        "json_schema_reply_start": last[:160],
    }, indent=2))


if __name__ == "__main__":
    main()
