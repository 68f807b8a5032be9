"""`parley export SOURCE --out ...`: a run's model in a form other tools load.

    parley export RUN_DIR --merge-lora --out DIR                        a save_pretrained directory (--format hf)
    parley export RUN_DIR --format gguf --quant q8_0 --out m.gguf       one GGUF file + an Ollama Modelfile

A LoRA run's RUN_DIR/final is an adapter that names its base (`smollm2`, a hub id or a directory),
which Parley loads as it is but plain transformers, vLLM and llama.cpp want as full weights:
`--merge-lora` folds W + (alpha/r)·B·A into every adapted layer (peft's merge_and_unload) and writes
an ordinary save_pretrained directory with the tokenizer and the chat template the run trained with.
A full fine-tune's final/ is already standalone; exporting it copies it. The merged weights are fp32
(the precision training kept them in). The directory is written beside `out` and renamed into place.

`--format gguf` always merges (a GGUF file holds full weights) and also takes any model spec
(`smollm2`, a hub id); train/gguf.py writes the file and says what it supports.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from parley.errors import ConfigError, ModelLoadError
from parley.files import replace_dir

FORMATS = ("hf", "gguf")


def export(source: str | Path, out: Path, merge_lora: bool = False, format: str = "hf",
           quant: str | None = None) -> Path:
    """Write the model of `source` (a run dir, its final/, an adapter or model dir; for gguf also a
    model spec) to `out` in `format`; returns `out`."""
    if format not in FORMATS:
        raise ConfigError(f"--format {format!r} is not one of {', '.join(FORMATS)}")
    if format == "gguf":
        from parley.train.gguf import check_request, export_gguf

        out = check_request(Path(out), quant or "f16")  # before the seconds a model takes to load
        return export_gguf(_load_merged(source), out, quant or "f16")
    if quant is not None:
        raise ConfigError("--quant applies to --format gguf only; --format hf keeps the fp32 weights")
    return _export_hf(source, Path(out), merge_lora)


def _export_hf(source: str | Path, out: Path, merge_lora: bool) -> Path:
    from parley import models

    model_dir = _model_dir(source)
    if model_dir is None:
        raise ModelLoadError(f"{source} has no model: expected a run directory with final/, or a model directory")
    is_adapter = (model_dir / "adapter_config.json").is_file()
    if is_adapter and not merge_lora:
        raise ConfigError(f"{model_dir} is a LoRA adapter: pass --merge-lora to fold it into full weights")
    out = out.expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out} already exists and is not empty; choose another directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".tmp-{out.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    if not is_adapter:  # already full weights: nothing to merge
        shutil.copytree(model_dir, tmp)
    else:
        loaded = models.load(str(model_dir), device="cpu", dtype="float32")
        merged = loaded.model.merge_and_unload()
        merged.save_pretrained(str(tmp), safe_serialization=True)
        loaded.tokenizer.chat_template = loaded.template
        loaded.tokenizer.save_pretrained(str(tmp))
    replace_dir(tmp, out)
    return out


def _model_dir(source: str | Path) -> Path | None:
    """The directory holding the model of a run dir, a final/ or an adapter/model dir; None if it has none."""
    from parley.models import model_dir as found

    model_dir = found(Path(source).expanduser())
    if (model_dir / "config.json").is_file() or (model_dir / "adapter_config.json").is_file():
        return model_dir
    return None


def _load_merged(source: str | Path):
    """`source` loaded in fp32 on the CPU, with any LoRA adapter folded into the weights."""
    from parley import models

    model_dir = _model_dir(source)
    if model_dir is None and Path(source).expanduser().is_dir():
        raise ModelLoadError(f"{source} has no model: expected a run directory with final/, or a model directory")
    loaded = models.load(str(model_dir or source), device="cpu", dtype="float32")
    if hasattr(loaded.model, "merge_and_unload"):  # a peft model over its base
        loaded.model = loaded.model.merge_and_unload()
    return loaded
