"""What `--model` can load, as `ollama list` shows it: `parley models` and `parley models rm NAME`.

    entries(Path("runs"))   the built-in model, the Hugging Face cache's models, and the finished
                            training runs under runs/, each with its size on disk, context window
                            and the chat template it talks with
    remove("gpt2")          delete a hub model from the cache (or the built-in's unpacked copy)

Read from files only (config.json, tokenizer_config.json, chat_template.jinja, adapter_config.json;
huggingface_hub's cache scan): nothing is loaded, so listing takes a moment, not a model load.
Limits: runs are looked for one level under the runs folder (the default out_dir's parent); runs
are the user's work, so `rm` never deletes them.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from parley import embedded
from parley.errors import ConfigError
from parley.models import CONTEXT_KEYS, FINAL

# A template's family, told by the markers it writes.
FAMILIES = [("<|im_start|>", "chatml"), ("<|start_header_id|>", "llama-3"), ("<start_of_turn>", "gemma"),
            ("[INST]", "mistral"), ("<|user|>", "zephyr")]


@dataclass(frozen=True)
class Entry:
    name: str  # what --model takes
    kind: str  # built-in, hub cache or run
    size: int  # bytes on disk (0: not unpacked yet)
    context: int | None  # tokens; None when the files do not say
    template: str  # the chat template it talks with
    note: str = ""


def entries(runs: Path) -> list[Entry]:
    return [_builtin(), *_hub(), *_runs(runs)]


def remove(name: str) -> str:
    """Delete the cached model `name`; what was freed, as a sentence."""
    if name == embedded.NAME:
        target = embedded.cache_dir()
        if not target.exists():
            raise ConfigError(f"{name} is not unpacked: there is nothing to remove")
        size = _size(target)
        shutil.rmtree(target)
        return f"removed the unpacked {name} ({human(size)}); it is unpacked again on its next use"
    cache = _scan()
    repo = next((r for r in cache.repos if r.repo_type == "model" and r.repo_id == name), None) if cache else None
    if repo is None:
        raise ConfigError(f"{name} is not in the Hugging Face cache (`parley models` lists it); a training run "
                          "is your own directory: delete it yourself if you mean to")
    shutil.rmtree(repo.repo_path)  # the whole repo folder (blobs, snapshots, refs), as `hf cache delete` does
    return f"removed {name} ({human(repo.size_on_disk)}) from the Hugging Face cache"


def human(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return ""


def _builtin() -> Entry:
    target = embedded.cache_dir()
    if not (target / "config.json").is_file():
        return Entry(embedded.NAME, "built-in", 0, None, "chatml", "unpacked on first use")
    return Entry(embedded.NAME, "built-in", _size(target), _context(target), _template(target))


def _hub() -> list[Entry]:
    cache = _scan()
    found = []
    for repo in sorted(cache.repos if cache else [], key=lambda r: r.repo_id):
        if repo.repo_type != "model" or not repo.revisions:
            continue
        snapshot = max(repo.revisions, key=lambda r: r.last_modified).snapshot_path
        found.append(Entry(repo.repo_id, "hub cache", repo.size_on_disk, _context(snapshot), _template(snapshot)))
    return found


def _runs(runs: Path) -> list[Entry]:
    if not runs.is_dir():
        return []
    found = []
    for run in sorted(p for p in runs.iterdir() if (p / FINAL).is_dir()):
        final = run / FINAL
        adapter = _json(final / "adapter_config.json")
        base = adapter.get("base_model_name_or_path") if adapter else None
        context = _context(final) or (_base_context(base) if base else None)
        found.append(Entry(str(run), "run", _size(final), context, _template(final),
                           f"LoRA on {base}" if base else "full weights"))
    return found


def _base_context(base: str) -> int | None:
    if base == embedded.NAME:
        return _context(embedded.cache_dir())
    if Path(base).is_dir():
        return _context(Path(base))
    cache = _scan()
    repo = next((r for r in cache.repos if r.repo_id == base), None) if cache else None
    return _context(max(repo.revisions, key=lambda r: r.last_modified).snapshot_path) if repo and repo.revisions else None


def _scan():
    """The Hugging Face cache (huggingface_hub's own scan), or None when there is none yet."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        return scan_cache_dir()
    except CacheNotFound:
        return None


def _context(folder: Path) -> int | None:
    config = _json(folder / "config.json")
    for key in CONTEXT_KEYS:
        if isinstance(config.get(key), int) and config[key] > 0:
            return config[key]
    return None


def _template(folder: Path) -> str:
    text = (folder / "chat_template.jinja").read_text(encoding="utf-8") if (folder / "chat_template.jinja").is_file() \
        else _json(folder / "tokenizer_config.json").get("chat_template")
    if isinstance(text, list):  # several named templates
        text = " ".join(str(t.get("template", "")) for t in text if isinstance(t, dict))
    if not text:
        return "parley default"
    return next((family for marker, family in FAMILIES if marker in text), "its own")


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
