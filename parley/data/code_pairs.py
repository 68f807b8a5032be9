"""Instruction pairs from documented code: the assistant learns to write *and explain* a function.

    pairs:DIR             every documented Python function under DIR (found with `ast`)
    python-stdlib-pairs   the same over this interpreter's standard library

A function becomes a two-turn conversation: the user asks for a function with its signature and the
docstring's summary (its first sentence); the assistant answers with the function's code (docstring
removed, indentation kept exactly) and then explains it with the rest of the docstring, the detail
the request did not already say. Skipped: private and test functions, docstrings of fewer than
`MIN_WORDS` words, docstrings that are only a summary (`summary_only`: the answer would have nothing
to explain but the request's own words), stubs whose body is only the docstring, and functions
longer than `MAX_LINES` lines. CodeSearchNet rows (already function + docstring) use the same
`pair_messages`.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import re
import warnings
from collections import Counter
from collections.abc import Iterator

from parley.data.records import Record

MIN_WORDS = 4  # a shorter docstring says too little to ask for the function by
MAX_LINES = 80  # longer functions make poor single answers
MAX_EXPLANATION = 800  # characters of docstring detail kept after the summary
# A sentence ends at . ! or ? before a capital or a backquote ("e.g. the" does not end one).
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z`])")

REQUESTS = (
    "Write a {lang} {kind} `{signature}`. It should do this: {summary}",
    "In {lang}, implement `{signature}`. {summary}",
    "I need a {lang} {kind} named `{name}` with the signature `{signature}`. {summary} "
    "Please write it and explain how it works.",
)


def pairs_from_file(record: Record, skipped: Counter) -> Iterator[Record]:
    """Pair records for the documented functions of one Python source-file record."""
    text = record.messages[0]["content"]
    try:
        with warnings.catch_warnings():  # invalid escape sequences in old code are not our business
            warnings.simplefilter("ignore")
            tree = ast.parse(text)
    except (SyntaxError, ValueError):
        skipped["syntax_error"] += 1
        return
    lines = text.splitlines()
    for owner, node in _functions(tree):
        why = _unsuitable(node)
        if why:
            skipped[why] += 1
            continue
        doc = inspect.cleandoc(ast.get_docstring(node, clean=False) or "")
        code = _code_without_docstring(node, lines)
        signature = f"{node.name}({ast.unparse(node.args)})"
        name = f"{owner}.{node.name}" if owner else node.name
        kind = "method" if owner else "function"
        messages = pair_messages("Python", name, signature, doc, code, kind)
        if messages is None:
            skipped["summary_only"] += 1
            continue
        yield Record(messages, record.source, node.lineno, {**record.meta, "function": name})


def pair_messages(lang: str, name: str, signature: str, docstring: str, code: str,
                  kind: str = "function") -> list[dict] | None:
    """The request built from the docstring's summary, the answer from the code and the docstring's
    detail; None when the docstring has no detail beyond its summary."""
    summary, detail = split_docstring(docstring)
    if not detail:
        return None
    # Variety without randomness: the phrasing is chosen by the function's name.
    choice = int(hashlib.blake2b(name.encode(), digest_size=4).hexdigest(), 16) % len(REQUESTS)
    request = REQUESTS[choice].format(lang=lang, kind=kind, signature=signature, name=name, summary=summary)
    explanation = detail[0]
    for paragraph in detail[1:]:
        if len(explanation) + len(paragraph) > MAX_EXPLANATION:
            break
        explanation += "\n\n" + paragraph
    fence = "```" + "`" * _longest_backtick_run(code)  # a fence the code itself cannot close
    answer = f"{fence}{lang.lower()}\n{code.rstrip()}\n{fence}\n\n{explanation}"
    return [{"role": "user", "content": request}, {"role": "assistant", "content": answer}]


def split_docstring(docstring: str) -> tuple[str, list[str]]:
    """(summary, detail paragraphs): the first sentence, and the prose after it, whitespace collapsed.

    Doctest paragraphs (`>>>`) are not prose, and with their layout collapsed not code either: left out.
    """
    paragraphs = [" ".join(p.split()) for p in docstring.strip().split("\n\n") if p.strip()]
    if not paragraphs:
        return "", []
    summary, *rest = SENTENCE_END.split(paragraphs[0], maxsplit=1)
    detail = rest + [p for p in paragraphs[1:] if not p.startswith(">>>")]
    return summary, detail


def _functions(tree: ast.AST, owner: str = "") -> Iterator[tuple[str, ast.FunctionDef]]:
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield owner, node
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node, node.name)


def _unsuitable(node) -> str | None:
    doc = ast.get_docstring(node)
    if node.name.startswith("_") or node.name.startswith("test"):
        return "private_or_test"
    if not doc or len(doc.split()) < MIN_WORDS:
        return "undocumented"
    if len(node.body) < 2:
        return "stub"
    if node.end_lineno - node.lineno + 1 > MAX_LINES:
        return "function_too_long"
    return None


def _code_without_docstring(node, lines: list[str]) -> str:
    """The function's source lines (decorators included) minus its docstring, dedented by its column."""
    first = min([node.lineno] + [d.lineno for d in node.decorator_list])
    doc = node.body[0]
    kept = lines[first - 1 : doc.lineno - 1] + lines[doc.end_lineno : node.end_lineno]
    if doc.lineno == node.lineno:  # `def f(): "doc"; ...` on one line: keep it whole
        kept = lines[first - 1 : node.end_lineno]
    col = node.col_offset
    # A continuation line of a string may sit left of the def: it is kept as it is.
    return "\n".join(line[col:] if not line[:col].strip() else line for line in kept)


def _longest_backtick_run(text: str) -> int:
    longest = run = 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    return max(0, longest - 2)
