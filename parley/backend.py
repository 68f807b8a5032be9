"""The one place that decides local or remote: a model spec in, an `Engine` out.

    engine = open("smollm2")                                  # LocalEngine over models.load
    engine = open("runs/x/final", device="cuda")              # a directory, a hub id: the same
    engine = open("openai:NAME", base_url="http://gpu-box:8000/v1")   # RemoteEngine (parley.remote)
    loaded = local("smollm2", purpose="perplexity")           # weights themselves, for verbs that need them

Front ends call `open` and then use the `Engine` protocol (engine.py) without asking which they got.
Verbs that need the weights or the tokenizer (perplexity, data preparation) call `local`, which
refuses a remote spec in one line before anything loads.
"""

from __future__ import annotations

from parley import compiled, embedded, models
from parley.engine import Engine, LocalEngine
from parley.errors import ConfigError
from parley.models import Loaded

REMOTE = "openai:"  # the prefix of a remote OpenAI-compatible model: openai:NAME


def open(spec: str = embedded.NAME, device: str = "auto", dtype: str = "auto", base_url: str | None = None,
         compile: bool | None = None) -> Engine:
    """The engine for `spec`: see the module docstring. `base_url` is for remote specs only; `compile`
    (local models on CPU) compiles decode steps in the background (compiled.py); None: `compiled.wanted()`,
    which is on unless PARLEY_COMPILE=0."""
    if spec.startswith(REMOTE):
        if compile:  # asked for by name; by default it simply does not apply
            raise ConfigError(f"--compile speeds up local models; {spec} decodes on its own server: leave it out")
        from parley import remote  # imports the openai client: only when asked for

        name = spec.removeprefix(REMOTE)
        if not name:
            raise ConfigError("--model openai:NAME needs a model name after 'openai:', e.g. openai:gpt-4o-mini")
        return remote.connect(name, base_url, spec=spec)
    loaded = models.load(spec, device=device, dtype=_generation_dtype(dtype, device))
    return LocalEngine(loaded, compile=compiled.wanted() if compile is None else compile)


def _generation_dtype(dtype: str, device: str) -> str:
    """What `auto` means for generation. On a CPU with native bf16 (AVX512-BF16 or AMX): int8 weights with
    bf16 activations (quant.py), which decode the embedded model ~1.8x faster than bf16 and held its
    quality (README, Speed). Elsewhere, and for training and perplexity (which load through
    models.load): models.load's choice."""
    import torch

    if dtype != "auto" or device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        return dtype
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return "int8" if native else "float32"


def local(spec: str = embedded.NAME, device: str = "auto", dtype: str = "auto", purpose: str = "this") -> Loaded:
    """`models.load(spec)`, or a ConfigError naming `purpose` when `spec` is a remote service."""
    if spec.startswith(REMOTE):
        raise ConfigError(f"{purpose} needs a local model: a remote API ({spec}) has no weights or tokenizer "
                          "here; name a model directory, a hub id or smollm2")
    return models.load(spec, device=device, dtype=dtype)
