"""What the `parley` commands share: config defaults read from the library's dataclasses, and the
options every model-loading verb takes (cli.py and cli_eval.py).

An option that sets a field of a library config dataclass takes its default from that field
(`default(Config, "field")`), so the default is declared once.
"""

from __future__ import annotations

import dataclasses

import typer


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
