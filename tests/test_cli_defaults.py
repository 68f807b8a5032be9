"""Every CLI option that mirrors a library config field has that field's default: a drift fails here.

The CLI reads most defaults from the dataclasses (cli.default); `chat` and `serve` write theirs out
(their option classes import torch), so for them this test is the only guard."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click
import pytest
import typer.main

from parley.cli import app, default
from parley.data.prepare import PrepareConfig
from parley.eval.code import CodeEvalConfig
from parley.eval.completions import GenerationConfig
from parley.eval.dialogue import DialogueConfig
from parley.eval.explain import ExplainEvalConfig
from parley.eval.explanations import ExplanationsConfig
from parley.explain.config import ExplainConfig
from parley.eval.perplexity import PerplexityConfig
from parley.eval.preference import PreferenceEvalConfig
from parley.tokenizer_train import TokenizerTrainConfig

# Option names that differ from their field: option -> (field, the field's default as the CLI writes it)
RENAMED = {
    "grace": ("grace_s", None),
    "sandbox": ("isolation", None),
    "k": ("ks", lambda ks: ",".join(map(str, ks))),
    "api_key": ("api_keys", list),
    "method": ("methods", ",".join),
    "bins": ("bins", lambda bins: ",".join(map(str, bins))),
    "cases": ("cases", list),
}


def mirrors():
    """(verb, the dataclasses its options mirror, how many options must match at least)."""
    from parley.serve.app import ServeOptions
    from parley.terminal import ChatOptions

    return [pytest.param(verb, configs, at_least, id=verb) for verb, configs, at_least in [
        ("chat", [ChatOptions], 5),
        ("serve", [ServeOptions], 11),
        ("data prepare", [PrepareConfig], 5),
        ("tokenizer train", [TokenizerTrainConfig], 3),
        ("eval code", [GenerationConfig, CodeEvalConfig], 11),
        ("eval perplexity", [PerplexityConfig], 4),
        ("eval dialogue", [DialogueConfig], 4),
        ("eval explain", [ExplainEvalConfig], 7),
        ("eval explanations", [ExplanationsConfig], 5),
        ("explain", [ExplainConfig], 2),
        ("eval preference", [PreferenceEvalConfig], 4),
    ]]


def command(path: str) -> click.Command:
    found = typer.main.get_command(app)
    for name in path.split():
        found = found.commands[name]
    return found


@pytest.mark.parametrize("verb, configs, at_least", mirrors())
def test_cli_defaults_are_the_dataclass_defaults(verb, configs, at_least):
    compared = {}
    for param in command(verb).params:
        name, convert = RENAMED.get(param.name, (param.name, None))
        for config in configs:
            if name in {f.name for f in dataclasses.fields(config)}:
                want = default(config, name)
                compared[param.name] = (param.default, convert(want) if convert else want)
    assert {k: cli for k, (cli, _) in compared.items()} == {k: lib for k, (_, lib) in compared.items()}
    assert len(compared) >= at_least, f"only {sorted(compared)} of `parley {verb}` matched a field"


def test_eval_code_style_is_the_documented_one():
    # The README's HumanEval numbers say which style is the default; the library and the CLI agree with it.
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    style = next(p for p in command("eval code").params if p.name == "style")
    assert f"`--style {style.default}`, the default" in readme
    assert GenerationConfig().style == style.default == "chat"
