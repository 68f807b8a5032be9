"""Code datasets published as JSON lines (or Parquet / Hub rows of the same shape).

    stack           The Stack layout: {"content", "lang" or "ext", "path" or "max_stars_repo_path"}; each
                    row is a source file, learned whole, through the same filters as `code:DIR`
    codesearchnet   CodeSearchNet: {"code", "docstring", "func_name", "language"}; each row becomes an
                    instruction pair (request from the docstring, answer with the code), as `pairs:`

`detect(obj)` names the layout of one object.
"""

from __future__ import annotations

from collections import Counter

from parley.data.code_files import LANGUAGES, CodeFilter
from parley.data.code_pairs import pair_messages
from parley.data.records import Bad, Record, text_record

STACK_PATH_KEYS = ("path", "max_stars_repo_path", "max_forks_repo_path", "max_issues_repo_path")


def detect(obj) -> str | None:
    if not isinstance(obj, dict):
        return None
    if "code" in obj and "docstring" in obj:
        return "codesearchnet"
    if "content" in obj and any(k in obj for k in ("lang", "ext", "language", *STACK_PATH_KEYS)):
        return "stack"
    return None


def from_stack(obj, source: str, line: int | None, filt: CodeFilter, skipped: Counter) -> Record | Bad | None:
    """A file record, a Bad row, or None when the filters skip it (counted in `skipped`)."""
    content = obj.get("content") if isinstance(obj, dict) else None
    if not isinstance(content, str):
        return Bad(source, line, 'expected a "content" string (The Stack layout)')
    path = next((obj[k] for k in STACK_PATH_KEYS if isinstance(obj.get(k), str)), "")
    lang = _language(obj, path, filt)
    why = filt.reason(path or "file", content.encode("utf-8", "surrogatepass"), lang)
    if why:
        skipped[why] += 1
        return None
    return text_record(content, source, line, path=path, lang=lang)


def from_codesearchnet(obj, source: str, line: int | None, skipped: Counter) -> Record | Bad | None:
    """A pair record, a Bad row, or None when the docstring is only a summary (counted in `skipped`)."""
    if not isinstance(obj, dict) or not isinstance(obj.get("code"), str):
        return Bad(source, line, 'expected a "code" string (the CodeSearchNet layout)')
    docstring, name = obj.get("docstring") or "", obj.get("func_name") or ""
    if not docstring.strip():
        return Bad(source, line, 'empty "docstring": nothing to build the request from')
    lang = str(obj.get("language") or "code")
    short = name.rsplit(".", 1)[-1] or "function"
    messages = pair_messages(_display(lang), name or short, short, docstring, obj["code"])
    if messages is None:
        skipped["summary_only"] += 1
        return None
    return Record(messages, source, line, {"function": name, "lang": lang})


def _language(obj: dict, path: str, filt: CodeFilter) -> str | None:
    """The row's own language name (lower-cased), else the one its path's extension implies."""
    for key in ("lang", "language"):
        if isinstance(obj.get(key), str) and obj[key]:
            return obj[key].lower()
    if isinstance(obj.get("ext"), str):
        return LANGUAGES.get("." + obj["ext"].lower().lstrip("."))
    return filt.language(path) if path else None


def _display(lang: str) -> str:
    names = {"javascript": "JavaScript", "php": "PHP", "go": "Go", "java": "Java", "ruby": "Ruby", "python": "Python"}
    return names.get(lang.lower(), lang)
