"""Source files from a local directory or git repository, filtered down to code worth learning.

    code:DIR                   every file git would track (in a work tree: `git ls-files`, so
                               .gitignore, .git/info/exclude and global excludes apply), else a walk
                               that honours every .gitignore under DIR
    code:URL                   a repository cloned shallowly into a temp dir (https://..., git@..., file://...,
                               or a path ending in .git); needs network for remote URLs
    python-stdlib              the Python standard library of this interpreter (.py files only)

Skipped, and counted by reason in the manifest: files in vendored or build directories
(`VENDORED_DIRS`, any virtualenv), hidden paths, languages not asked for (language from the
extension, `LANGUAGES`), empty files, files over `max_kb`, binary files (a NUL byte), files that are
not UTF-8, generated files (a marker such as "DO NOT EDIT" or "@generated" near the top, or a lockfile),
minified files (`.min.js`, or any line over `max_line` characters), and exact duplicates.
Each kept file becomes one raw-text record (learned whole), its bytes decoded exactly: CRLF, tabs and
trailing spaces are kept.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sysconfig
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from parley.data.records import Record, text_record
from parley.errors import DataError

LANGUAGES = {
    ".py": "python", ".pyi": "python", ".js": "javascript", ".mjs": "javascript", ".cjs": "javascript",
    ".jsx": "javascript", ".ts": "typescript", ".tsx": "typescript", ".java": "java", ".kt": "kotlin",
    ".scala": "scala", ".c": "c", ".h": "c", ".cc": "cpp", ".cpp": "cpp", ".cxx": "cpp", ".hpp": "cpp",
    ".hh": "cpp", ".cs": "csharp", ".go": "go", ".rs": "rust", ".rb": "ruby", ".php": "php",
    ".swift": "swift", ".m": "objective-c", ".sh": "shell", ".bash": "shell", ".zsh": "shell",
    ".sql": "sql", ".r": "r", ".lua": "lua", ".pl": "perl", ".hs": "haskell", ".ml": "ocaml",
    ".jl": "julia", ".dart": "dart", ".ex": "elixir", ".exs": "elixir", ".erl": "erlang",
    ".clj": "clojure", ".html": "html", ".htm": "html", ".css": "css", ".scss": "css", ".vue": "vue",
    ".md": "markdown", ".rst": "rst", ".tex": "tex", ".toml": "toml", ".yaml": "yaml", ".yml": "yaml",
    ".cmake": "cmake", ".ps1": "powershell", ".bat": "batch", ".f90": "fortran", ".zig": "zig",
}  # fmt: skip
NAMED_FILES = {"Makefile": "make", "makefile": "make", "Dockerfile": "dockerfile", "CMakeLists.txt": "cmake"}
VENDORED_DIRS = {
    "node_modules", "bower_components", "vendor", "vendors", "third_party", "third-party", "thirdparty",
    "_vendor", "_bundled", "site-packages", "dist-packages", "__pycache__", "build", "dist", "target",
    "Pods", "jspm_packages",
}  # fmt: skip
LOCKFILES = {"package-lock.json", "yarn.lock", "pnpm-lock.yaml", "Cargo.lock", "poetry.lock", "Pipfile.lock",
             "composer.lock", "Gemfile.lock", "go.sum", "uv.lock"}  # fmt: skip
GENERATED = re.compile(
    # Strong markers only: "generated" alone also appears in ordinary prose near the top of files.
    rb"@generated|do not edit|auto-?generated|(file|module|code) (is |was )?generated"
    rb"|generated\b[^\n]{0,80}\b\w+\.(py|sh|pl|js|go|rb)\b",
    re.IGNORECASE,
)


@dataclass
class CodeFilter:
    """What counts as code worth learning; `reason()` names why a file is not."""

    langs: frozenset[str] | None = None  # languages to keep (names in LANGUAGES); None keeps all
    max_kb: int = 256  # larger files are skipped (generated tables, data dumps)
    max_line: int = 1000  # a longer line marks a minified or generated file
    seen: set[bytes] = field(default_factory=set)  # digests of kept files, to drop exact duplicates

    def language(self, name: str) -> str | None:
        return NAMED_FILES.get(name) or LANGUAGES.get(os.path.splitext(name)[1].lower())

    def reason(self, name: str, data: bytes, lang: str | None) -> str | None:
        """Why a file with this name, content and language is skipped, or None to keep it."""
        if lang is None or (self.langs is not None and lang not in self.langs):
            return "other_language"
        if not data.strip():
            return "empty"
        if len(data) > self.max_kb * 1024:
            return "too_large"
        if b"\0" in data[:8192]:
            return "binary"
        base = os.path.basename(name)
        if base in LOCKFILES or GENERATED.search(data[:1024]):
            return "generated"
        if ".min." in base or max(map(len, data.splitlines())) > self.max_line:
            return "minified"
        digest = hashlib.blake2b(data, digest_size=16).digest()
        if digest in self.seen:
            return "duplicate"
        self.seen.add(digest)
        return None


def read_code(location: str, filt: CodeFilter, skipped: Counter) -> Iterator[Record]:
    """Records for the kept files of a directory, work tree, or clonable repository URL."""
    if is_url(location):
        with tempfile.TemporaryDirectory(prefix="parley-clone-") as tmp:
            _clone(location, Path(tmp))
            yield from _read_tree(Path(tmp), filt, skipped, shown_as=location)
        return
    root = Path(location).expanduser()
    if not root.is_dir():
        raise DataError(f"{location}: no such directory (code:DIR reads a directory or a git repository)")
    yield from _read_tree(root, filt, skipped, shown_as=str(root))


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _read_tree(root: Path, filt: CodeFilter, skipped: Counter, shown_as: str) -> Iterator[Record]:
    for rel in tree_files(root, skipped):
        path = root / rel
        lang = filt.language(path.name)
        try:
            size = path.stat().st_size
            if lang is not None and size > filt.max_kb * 1024:  # do not read what will be dropped
                skipped["too_large"] += 1
                continue
            data = path.read_bytes() if lang is not None else b""
        except OSError:
            skipped["unreadable"] += 1
            continue
        why = filt.reason(rel, data, lang)
        if why is None:
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                why = "not_utf8"
        if why:
            skipped[why] += 1
            continue
        yield text_record(text, f"{shown_as}/{rel}", None, path=rel, lang=lang)


def tree_files(root: Path, skipped: Counter) -> Iterator[str]:
    """Relative paths of the files under `root` that are not ignored, vendored or hidden, sorted."""
    listed = _git_files(root)
    candidates = listed if listed is not None else _walk(root)
    virtualenv: dict[str, bool] = {}
    for rel in candidates:
        parts = rel.split("/")
        dirs = ["/".join(parts[: i + 1]) for i in range(len(parts) - 1)]
        in_venv = any(virtualenv.setdefault(d, (root / d / "pyvenv.cfg").is_file()) for d in dirs)
        if in_venv or any(p.startswith(".") for p in parts) or any(p in VENDORED_DIRS for p in parts[:-1]):
            skipped["vendored_or_hidden"] += 1
            continue
        if (root / rel).is_file() and not (root / rel).is_symlink():
            yield rel


def _git_files(root: Path) -> list[str] | None:
    """What git tracks or would track under `root`, or None when `root` is not in a work tree."""
    try:
        inside = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--is-inside-work-tree"], capture_output=True, text=True
        )
    except FileNotFoundError:  # no git on this machine: the .gitignore walk still works
        return None
    if inside.returncode != 0 or inside.stdout.strip() != "true":
        return None
    # A directory the enclosing repository ignores (a tool's checkout holding installed files, like
    # ~/.pyenv/versions) is not part of it: walk it instead.
    if subprocess.run(["git", "-C", str(root), "check-ignore", "-q", "."], capture_output=True).returncode == 0:
        return None
    out = subprocess.run(
        ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
    ).stdout
    return sorted(p for p in out.decode("utf-8", "surrogateescape").split("\0") if p)


def _walk(root: Path) -> Iterator[str]:
    """A sorted walk that honours every .gitignore on the way down (each relative to its own dir)."""
    import pathspec

    specs: list[tuple[str, pathspec.PathSpec]] = []  # (dir relative to root, its .gitignore)
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root).replace(os.sep, "/")
        rel_dir = "" if rel_dir == "." else rel_dir
        specs = [(d, s) for d, s in specs if rel_dir == d or rel_dir.startswith(d + "/") or d == ""]
        if ".gitignore" in filenames:
            with open(os.path.join(dirpath, ".gitignore"), encoding="utf-8", errors="replace") as f:
                specs.append((rel_dir, pathspec.GitIgnoreSpec.from_lines(f)))

        kept = []
        for name in sorted(dirnames):
            rel = f"{rel_dir}/{name}" if rel_dir else name
            virtualenv = os.path.exists(os.path.join(dirpath, name, "pyvenv.cfg"))
            if not (name.startswith(".") or name in VENDORED_DIRS or virtualenv or _ignored(specs, rel, True)):
                kept.append(name)
        dirnames[:] = kept
        for name in sorted(filenames):
            rel = f"{rel_dir}/{name}" if rel_dir else name
            if not _ignored(specs, rel, False):
                yield rel


def _ignored(specs, rel: str, is_dir: bool) -> bool:
    """Whether any .gitignore on the way down (each matching paths relative to its own dir) ignores `rel`."""
    for directory, spec in specs:
        sub = rel[len(directory) + 1 :] if directory else rel
        if spec.match_file(sub + "/" if is_dir else sub):
            return True
    return False


def is_url(location: str) -> bool:
    """A remote URL, or a bare repository (`*.git` with a HEAD file) that must be cloned to be read."""
    if location.startswith(("https://", "http://", "git@", "ssh://", "file://")):
        return True
    path = Path(location).expanduser()
    return location.endswith(".git") and (not path.exists() or (path / "HEAD").is_file())


def _clone(url: str, into: Path) -> None:
    result = subprocess.run(
        ["git", "clone", "--quiet", "--depth", "1", url, str(into)], capture_output=True, text=True
    )
    if result.returncode != 0:
        detail = (result.stderr.strip().splitlines() or ["git clone failed"])[-1]
        raise DataError(f"{url}: cannot clone it ({detail}); check the URL, or clone it and pass the directory")
