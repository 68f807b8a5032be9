"""How many tokens/s the machine's cores give a batch, against one row decoding alone: the ceiling of
`bench/serve.py`'s 8-clients-over-1 ratio, without a server in the way.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/cores.py [--rows 8] [--steps 120] [--rounds 2]

In fresh processes (one engine each, int8 weights, greedy, the engine's own `Batch.step`), every
round times, one after another:

- `one_row`: one row in its own cache on one math thread, decoded by the compiled step once its graph
  is ready (the engine waits for it: ~3 s when saved under $PARLEY_HOME, minutes the first time).
  This is what one client of `parley serve` gets: the baseline.
- `batch_1_thread`: --rows rows in one batch on one thread (`parley serve`'s setting on 2 CPUs);
- `batch_all_threads`: the same batch on every CPU's thread (one OpenMP team);
- `batch_per_process`: one engine process per CPU, each with --rows / CPUs rows on one thread, started
  together (data parallelism: every process reads all the weights on every step).

Prints JSON: per way, tokens/s over the rounds (median, and each round), and each way's ratio over
`one_row`. 6x at 8 rows (the engine issue's goal 3) needs a way at >= 6.0 here, where no HTTP, event
loop or client takes any of the CPU.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import threading
import time

PROMPT = "Write a Python function number {i} that sorts a list of integers and explain it in detail. " * 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--steps", type=int, default=120, help="decode steps timed per engine")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    cpus = os.cpu_count() or 1
    ways = {
        "one_row": [(1, 1, True)],
        "batch_1_thread": [(args.rows, 1, False)],
        "batch_all_threads": [(args.rows, cpus, False)],
        "batch_per_process": [(max(1, args.rows // cpus), 1, False)] * cpus,
    }
    rates: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.rounds):  # interleaved, so a machine that drifts slows every way alike
        for name, engines in ways.items():
            rates[name].append(round(_run(engines, args.steps), 1))
    base = statistics.median(rates["one_row"])
    print(json.dumps({
        "bench": "cores", "rows": args.rows, "steps": args.steps, "cpus": cpus, "baseline": "one_row",
        "tokens_per_s": {name: {"median": statistics.median(r), "rounds": r} for name, r in rates.items()},
        "over_one_row": {name: round(statistics.median(r) / base, 2) for name, r in rates.items()},
    }, indent=2))


def _run(engines: list[tuple[int, int, bool]], steps: int) -> float:
    """Start one process per (rows, threads, compiled) engine, time `steps` steps in all at once; tokens/s in all."""
    context = multiprocessing.get_context("spawn")
    ready, results = context.Barrier(len(engines) + 1), context.Queue()
    workers = [context.Process(target=_engine, args=(rows, threads, compiled, steps, ready, results))
               for rows, threads, compiled in engines]
    for worker in workers:
        worker.start()
    try:
        ready.wait()  # every engine has prefilled its rows and warmed up
    except threading.BrokenBarrierError:
        raise SystemExit("an engine process failed before decoding: see its traceback above") from None
    start = time.perf_counter()
    tokens = sum(results.get() for _ in workers)
    elapsed = time.perf_counter() - start
    for worker in workers:
        worker.join()
    return tokens / elapsed


def _engine(rows: int, threads: int, compiled: bool, steps: int, ready, results) -> None:
    try:
        _decode(rows, threads, compiled, steps, ready, results)
    except BaseException:
        ready.abort()  # the parent's wait raises instead of waiting for this process forever
        raise


def _decode(rows: int, threads: int, compiled: bool, steps: int, ready, results) -> None:
    import torch

    torch.set_num_threads(threads)
    from parley import models
    from parley.engine import LocalEngine
    from parley.sampling import SamplingParams

    engine = LocalEngine(models.load("smollm2", dtype="int8"), prefix_cache_mb=0, compile=compiled)
    if compiled and not engine.compiled.wait():
        raise SystemExit("the compiled step did not become ready")
    batch = engine.new_batch()
    special = engine.loaded.tokenizer.all_special_ids  # banned, so every row decodes every step
    params = SamplingParams(max_new_tokens=steps + 20, temperature=0, logit_bias={i: -100 for i in special})
    batch.add_many([engine.start(PROMPT.format(i=i), params) for i in range(rows)])
    for _ in range(10):
        batch.step()
    ready.wait()
    for _ in range(steps):
        batch.step()
    results.put(rows * steps)


if __name__ == "__main__":
    main()
