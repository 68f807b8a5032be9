"""The shipped recipe on the real embedded SmolLM2, cut to a step: it trains, and `parley chat` talks with the result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from parley.train.config import load_config
from parley.train.loop import start

from .train_task import REPO, run_cli

RECIPES = sorted((REPO / "examples").glob("*.toml"))


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipe_runs_on_the_embedded_model_and_chat_loads_its_final(recipe: Path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the checkout: a recipe's inputs are found beside it
    overrides = ["max_steps=1", "batch_size=1", "data.val_rows=2", "eval.at_start=false",
                 f"out_dir={tmp_path / 'run'}", "log.progress=false"]
    sources = load_config(recipe).data.sources
    if any(s.endswith("python-reference/train") for s in sources):  # the folder its README step writes: write it here
        import runpy

        runpy.run_path(str(REPO / "examples" / "python_reference.py"))["write"](tmp_path / "prose")
        sources = [f"text:{tmp_path / 'prose' / 'train'}" if s.endswith("python-reference/train") else s for s in sources]
        overrides.append(f"data.sources={json.dumps(sources)}")
    if "python-stdlib-pairs" in sources:  # ~5,400 pairs take minutes to prepare; the checkout's own code is enough here
        sources = [f"pairs:{REPO / 'parley'}" if s == "python-stdlib-pairs" else s for s in sources]
        overrides.append(f"data.sources={json.dumps(sources)}")
    config = load_config(recipe, overrides)
    final = start(config)

    if config.lora.r:
        adapter = json.loads((final / "adapter_config.json").read_text())
        assert adapter["base_model_name_or_path"] == config.model == "smollm2"
    assert (final / "chat_template.jinja").is_file()
    assert [r["step"] for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())] == [1, 1]
    answer = run_cli("chat", "--model", str(final), "-p", "Say hello.", "--temperature", "0", "--max-new-tokens", "8")
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.strip()
