"""The `parley` command: one verb, one call into the library.

    parley chat [-p "question"] [--model smollm2] [--resume ID]
    parley history [ID]
    parley explain [ID | --jsonl FILE | --prompt TEXT] [--out why.json]

Library errors (ParleyError) become one line on stderr and exit status 2; anything else is a bug
and keeps its traceback.

An option that sets a field of a library config dataclass takes its default from that field
(`default(Config, "field")`, cli_options.py), so the default is declared once. The exceptions are
`chat` and `serve`, whose option classes live in modules that import torch and FastAPI (seconds, on
every `parley` command): their defaults are written here and tests/test_cli_defaults.py holds them
equal. The `eval` subcommands are in cli_eval.py.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer

# Light modules (no torch): importing them only for their config dataclasses costs milliseconds.
from parley.cli_eval import eval_app
from parley.cli_options import BaseUrlOption, CompileOption, DeviceOption, DtypeOption, ModelOption, default
from parley.data.prepare import PrepareConfig
from parley.errors import ConfigError, ParleyError
from parley.explain.config import ExplainConfig
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


app.add_typer(eval_app, name="eval")


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
