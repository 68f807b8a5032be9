"""`parley export RUN_DIR --merge-lora --out DIR`: a run's model as one standalone directory.

A LoRA run's RUN_DIR/final is an adapter that names its base (`smollm2`, a hub id or a directory),
which Parley loads as it is but plain transformers, vLLM and GGUF converters want as full weights:
`--merge-lora` folds W + (alpha/r)·B·A into every adapted layer (peft's merge_and_unload) and writes
an ordinary save_pretrained directory with the tokenizer and the chat template the run trained with.
A full fine-tune's final/ is already standalone; exporting it copies it.

The merged weights are fp32 (the precision training kept them in). The output is written into a
temporary directory beside `out` and renamed into place.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from parley.errors import ConfigError, ModelLoadError
from parley.files import replace_dir


def export(source: Path, out: Path, merge_lora: bool = False) -> Path:
    """Write the model of `source` (a run dir, its final/, or an adapter dir) to `out`; returns `out`."""
    from parley import models

    model_dir = Path(source).expanduser()
    if (model_dir / "final").is_dir():
        model_dir = model_dir / "final"
    if not (model_dir / "config.json").is_file() and not (model_dir / "adapter_config.json").is_file():
        raise ModelLoadError(f"{source} has no model: expected a run directory with final/, or a model directory")
    is_adapter = (model_dir / "adapter_config.json").is_file()
    if is_adapter and not merge_lora:
        raise ConfigError(f"{model_dir} is a LoRA adapter: pass --merge-lora to fold it into full weights")
    out = Path(out).expanduser()
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
