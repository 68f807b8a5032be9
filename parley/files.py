"""Atomic writes: readers see the old file (or directory) or the new one, never half of one.

    write_atomic(path, text_or_bytes)       one file: temp file beside it, fsync, rename, fsync the folder
    with atomic_file(path) as tmp: ...      the same for a writer that needs a file name (e.g. GGUF's)
    with atomic_dir(out) as tmp: ...        a directory built in `tmp`, renamed to `out` only if the block succeeds
    replace_dir(tmp, out)                   the rename step alone, for a `tmp` whose name callers must agree on
                                            (every process of a distributed checkpoint writes into it)

A temporary name always sits in the target's own directory, because a rename is atomic only within
one filesystem. What is replaced is first renamed aside (`.trash-NAME-PID`) and deleted after the new
content is in place. Known limits: a `kill -9` mid-write can leave a `.tmp-…` file or directory
behind (never at the target's name); directory fsync is skipped where the OS does not allow it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TMP_PREFIX = ".tmp-"  # half-written files and directories
TRASH_PREFIX = ".trash-"  # replaced directories on their way out


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write `data` (text as UTF-8) to `path` so that readers see the old content or the new, never a mix."""
    with atomic_file(path) as tmp:
        # O_EXCL with 0o666: a fresh file, with the permissions the umask gives any new file (mkstemp's are 0o600)
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)


@contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """A temporary name beside `path` for a writer that needs a real file (e.g. one that streams
    arrays); when the block succeeds its content is fsynced and renamed to `path`, else deleted."""
    path = Path(path)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}-{secrets.token_hex(4)}")
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """A fresh directory beside `target` to write into; it replaces `target` when the block succeeds
    and is removed when it raises."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{target.name}-", dir=target.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary directory
        yield tmp
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir(tmp: Path, target: Path) -> None:
    """Make the fully written directory `tmp` appear at `target` in one rename (everything fsynced).

    Whatever was at `target` (a directory or a file) is renamed aside first and deleted only after
    `tmp` took its place."""
    tmp, target = Path(tmp), Path(target)
    fsync_tree(tmp)
    old = None
    if target.exists() or target.is_symlink():
        old = target.with_name(f"{TRASH_PREFIX}{target.name}-{os.getpid()}")
        os.replace(target, old)
    os.replace(tmp, target)
    fsync_dir(target.parent)
    if old is not None:
        remove(old)


def discard(path: Path) -> None:
    """Delete the directory `path` so that its name disappears at once (a rename), the bytes after."""
    path = Path(path)
    trash = path.with_name(f"{TRASH_PREFIX}{path.name}-{os.getpid()}")
    os.rename(path, trash)
    remove(trash)


def remove(path: Path) -> None:
    """Delete a file or a directory tree."""
    if Path(path).is_dir() and not Path(path).is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        Path(path).unlink(missing_ok=True)


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under `root`, so a rename of `root` publishes complete content."""
    for folder, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(folder))


def fsync_dir(path: Path) -> None:
    """fsync a directory, so the renames inside it survive a power cut; a no-op where the OS refuses."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open a directory; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems (network, FUSE) do not fsync directories
        pass
    finally:
        os.close(fd)
