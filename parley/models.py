"""The one place that turns a model spec into a model, a tokenizer and a chat template.

    load("smollm2")              the embedded SmolLM2-135M-Instruct (default; cached under $PARLEY_HOME)
    load("runs/x/final")         a local save_pretrained directory: a full model or a LoRA adapter
    load("runs/x")               a training run's directory: its final/ model (as `parley export` takes it)
    load("gpt2")                 a hub id, from the local Hugging Face cache or, when online, the hub

Local weights only: a remote service (`openai:NAME`) is backend.open's business, not a Loaded.

Offline is the default stance: a hub id is first looked up in the local cache only; the hub is asked
only when that misses and HF_HUB_OFFLINE is not set. Every failure is a one-line ModelLoadError that
says how to fix it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from parley import embedded
from parley.errors import ConfigError, ModelLoadError
from parley.templates import extra_stops, template_for

FINAL = "final"  # a training run's finished model, inside RUN_DIR (train/loop.py writes it)
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16", "float16", "int8")  # int8: int8 weights, bf16 activations (quant.py)


@dataclass
class Loaded:
    """A ready model: everything the engine and the front ends need to know about it."""

    model: object  # a transformers PreTrainedModel (or a peft PeftModel over one), in eval mode
    tokenizer: object  # a transformers fast tokenizer, with a pad token
    template: str  # the jinja chat template every front end renders with
    spec: str  # what the user asked for ("smollm2", a path, a hub id)
    path: str  # where the weights were read from
    device: object  # torch.device
    context_window: int  # the longest sequence (prompt + reply) attended over; encoder-decoder: the longest prompt
    stop_ids: list[int] = field(default_factory=list)  # token ids that end a reply
    stop_strings: list[str] = field(default_factory=list)  # strings that end a reply (template markers)


def load(spec: str = embedded.NAME, device: str = "auto", dtype: str = "auto") -> Loaded:
    """Load `spec` onto `device` in `dtype`; see the module docstring for the specs understood."""
    if device not in DEVICES:
        raise ConfigError(f"--device {device!r} is not one of {', '.join(DEVICES)}")
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    torch_device = _resolve_device(device)
    torch_dtype = _resolve_dtype(dtype, torch_device)
    _quiet_transformers()
    loaded = _load(spec, torch_device, torch_dtype)
    if dtype == "int8":
        from parley.quant import quantize_int8

        quantize_int8(loaded.model)
    return loaded


def _load(spec: str, torch_device, torch_dtype) -> Loaded:
    if spec == embedded.NAME:
        path = embedded.ensure_cached(progress=_stderr)
    else:
        path = Path(spec).expanduser()
        if not path.exists() and (spec.startswith((".", "/", "~")) or os.sep + os.sep in spec):
            raise ModelLoadError(f"model directory {spec} does not exist")
    if path.is_dir():
        return _load_dir(spec, model_dir(path), torch_device, torch_dtype)
    if path.exists():
        raise ModelLoadError(f"{spec} is a file; --model takes a model directory, a hub id or '{embedded.NAME}'")
    return _load_hub(spec, torch_device, torch_dtype)


def model_dir(path: Path) -> Path:
    """Where the model of directory `path` is: a run directory's final/, else `path` itself."""
    return path / FINAL if (path / FINAL).is_dir() else path


def _load_dir(spec: str, path: Path, device, dtype) -> Loaded:
    if (path / "adapter_config.json").is_file():
        return _load_adapter(spec, path, device, dtype)
    if (path / "checkpoints").is_dir():  # a run's own config.json is not a model's
        raise ModelLoadError(f"{path} is a training run without a final/ model yet: let it finish, or continue "
                             f"it with `parley train --resume {path}`")
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path} is not a model directory: it has no config.json or adapter_config.json")
    try:
        return _from_pretrained(spec, str(path), device, dtype, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot load the model in {path}: {_first_line(e)}") from e


def _load_adapter(spec: str, path: Path, device, dtype) -> Loaded:
    from peft import PeftModel

    config = json.loads((path / "adapter_config.json").read_text())
    base_spec = config.get("base_model_name_or_path")
    if not base_spec:
        raise ModelLoadError(f"{path}/adapter_config.json names no base model (base_model_name_or_path)")
    base = load(base_spec, device=str(device.type), dtype=_dtype_name(dtype))
    base.model = PeftModel.from_pretrained(base.model, str(path)).eval()
    if (path / "tokenizer_config.json").is_file():  # the adapter's run may have changed the template
        base.tokenizer = _tokenizer(str(path), local_files_only=True)
        base.template = template_for(base.tokenizer)
        base.stop_strings = extra_stops(base.template)
    base.spec, base.path = spec, str(path)
    return base


def _load_hub(spec: str, device, dtype) -> Loaded:
    try:  # the local cache first: no network round trip, no waiting on a timeout
        return _from_pretrained(spec, spec, device, dtype, local_files_only=True)
    except OSError:
        pass
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    if offline:
        raise ModelLoadError(
            f"model {spec!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set: "
            f"download it once with network (`hf download {spec}`), pass a local directory, "
            f"or use the embedded model (--model {embedded.NAME})"
        )
    reason = _hub_unreachable()
    if reason:
        raise ModelLoadError(
            f"model {spec!r} is not in the local Hugging Face cache and the hub is unreachable ({reason}): "
            f"connect and retry, pass a local directory, or use the embedded model (--model {embedded.NAME})"
        )
    try:
        return _from_pretrained(spec, spec, device, dtype, local_files_only=False)
    except (OSError, ValueError) as e:
        raise ModelLoadError(
            f"cannot load {spec!r} from the Hugging Face hub ({_first_line(e)}): check the id and your "
            f"network, or use the embedded model (--model {embedded.NAME})"
        ) from e


def _hub_unreachable() -> str | None:
    """A quick connect test, so a machine without network fails in seconds, not after minutes of retries."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=3).close()
    except OSError as e:
        return f"{url.hostname}: {e.strerror or e}"
    return None


def _from_pretrained(spec: str, source: str, device, dtype, local_files_only: bool) -> Loaded:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    config = AutoConfig.from_pretrained(source, local_files_only=local_files_only)
    auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    model = auto.from_pretrained(source, dtype=dtype, local_files_only=local_files_only)
    tokenizer = _tokenizer(source, local_files_only=local_files_only)
    return assemble(model.to(device).eval(), tokenizer, spec=spec, path=source)


def assemble(model, tokenizer, spec: str, path: str = "") -> Loaded:
    """Wrap an in-memory model and tokenizer (tests, training) the way `load` wraps a saved one."""
    if tokenizer.pad_token_id is None:  # batching needs a pad id; it is always masked out
        tokenizer.pad_token = tokenizer.eos_token
    template = template_for(tokenizer)
    return Loaded(
        model=model,
        tokenizer=tokenizer,
        template=template,
        spec=spec,
        path=path,
        device=next(model.parameters()).device,
        context_window=_context_window(model.config, tokenizer),
        stop_ids=_stop_ids(model, tokenizer),
        stop_strings=extra_stops(template),
    )


def _tokenizer(source: str, local_files_only: bool):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source, local_files_only=local_files_only)


CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")  # in config.json


def _context_window(config, tokenizer) -> int:
    for key in CONTEXT_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", 0)
    return limit if 0 < limit < 1_000_000 else 2048


def _stop_ids(model, tokenizer) -> list[int]:
    ids = set()
    generation = getattr(model, "generation_config", None)
    for value in (getattr(generation, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif value:
            ids.update(value)
    return sorted(ids)


def _resolve_device(device: str):
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA GPU is visible to PyTorch; use --device cpu or auto")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def _resolve_dtype(dtype: str, device):
    import torch

    if dtype == "auto":
        # bf16 on GPUs that have it; fp32 on CPU, where it is the reference numerics.
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype == "int8":  # loaded in bf16, then its linear layers' weights are quantized (quant.py)
        return torch.bfloat16
    return getattr(torch, dtype)


def _dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _stderr(message: str) -> None:
    import sys

    print(message, file=sys.stderr, flush=True)


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
