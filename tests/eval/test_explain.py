"""`parley eval explain`: the ERASER deletion test on a tiny model, checked against its definition, and
end to end from the CLI on a user's JSONL (JSON + Markdown with intervals and verdicts)."""

from __future__ import annotations

import json
import random

import pytest
from typer.testing import CliRunner

from parley.cli import app
from parley.eval.explain import ExplainEvalConfig, bootstrap_ci, deletion_curves, mean_logprob
from parley.explain.layout import lay_out

MESSAGES = [{"role": "user", "content": "Write add(a, b) in Python.\nKeep it short."}]
REPLY = "def add(a, b):\n    return a + b"



def test_deletion_curves_follow_the_definition(llama_loaded):
    layout = lay_out(llama_loaded, MESSAGES, REPLY)
    content = [j for j, inside in enumerate(layout.in_content) if inside]
    text = "".join(layout.prompt_text[s:e] for j, (s, e) in enumerate(layout.prompt_offsets) if layout.in_content[j])
    assert text == MESSAGES[0]["content"]  # content tokens: the message's own text, no template marker
    order = content[::-1]
    full = mean_logprob(llama_loaded, layout.prompt_ids, layout.reply_ids)
    comp, suff = deletion_curves(llama_loaded, layout, order, (0.5,), full)
    k = round(0.5 * len(content))
    top = set(order[:k])
    without = [t for j, t in enumerate(layout.prompt_ids) if j not in top]
    only = [t for j, t in enumerate(layout.prompt_ids) if j in top or j not in content]
    assert comp[0] == pytest.approx(full - mean_logprob(llama_loaded, without, layout.reply_ids))
    assert suff[0] == pytest.approx(full - mean_logprob(llama_loaded, only, layout.reply_ids))
    assert comp[0] != 0 and suff[0] != 0


def test_bootstrap_interval_brackets_the_mean():
    rng = random.Random(1)
    values = [rng.gauss(1.0, 0.5) for _ in range(40)]
    mean, low, high = bootstrap_ci(values, 500, 0)
    assert low < mean < high and low > 0.5 and high < 1.5
    assert bootstrap_ci([2.0] * 5, 100, 0) == (2.0, 2.0, 2.0)


def test_eval_explain_on_a_users_jsonl(tiny_dir, tmp_path):
    cases = tmp_path / "mine.jsonl"
    cases.write_text("".join(json.dumps({"messages": MESSAGES + [{"role": "assistant", "content": r}]}) + "\n"
                             for r in (REPLY, "return a + b", "a + b")))
    out = tmp_path / "faith.json"
    result = CliRunner().invoke(app, ["eval", "explain", "--cases", str(cases), "--model", str(tiny_dir),
                                      "--bins", "0.2,0.5", "--random-draws", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    results = json.loads(out.read_text())
    assert results["kind"] == "explain" and results["details"]["cases"] == 3
    for name in ("gradient_x_input", "occlusion", "random"):
        low, high = results["details"]["ci95"][f"{name}.comprehensiveness_aopc"]
        assert low <= results["metrics"][f"{name}.comprehensiveness_aopc"] <= high
    assert len(results["cases"][0]["curves"]["random"]["sufficiency"]) == 2
    summary = out.with_suffix(".md").read_text()
    assert "| gradient_x_input |" in summary and "random" in summary
    assert any(v in result.output for v in ("beats random", "does not beat random", "worse than random"))


def test_bad_bins_are_refused():
    with pytest.raises(Exception, match="--bins"):
        ExplainEvalConfig(bins=(0.0, 2.0))
