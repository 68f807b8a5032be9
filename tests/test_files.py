"""Atomic writes (files.py): the target holds the old content or the new, never part of one, and an
error leaves no temporary file behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from parley import files


def test_write_atomic_replaces_whole_files_bytes_and_text(tmp_path):
    target = tmp_path / "config.json"
    files.write_atomic(target, b"old")
    files.write_atomic(target, "nouveau ✓")
    assert target.read_text(encoding="utf-8") == "nouveau ✓" and os.listdir(tmp_path) == ["config.json"]


def test_write_atomic_gives_new_files_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        files.write_atomic(tmp_path / "chat.json", "{}")
    finally:
        os.umask(old)
    assert (tmp_path / "chat.json").stat().st_mode & 0o777 == 0o644  # not mkstemp's private 0o600


def test_an_error_mid_write_keeps_the_old_content_and_no_temp_file(tmp_path, monkeypatch):
    target = tmp_path / "chat.json"
    target.write_text("old")

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)  # after the bytes went to the temp file, before the rename
    with pytest.raises(OSError, match="No space"):
        files.write_atomic(target, "new" * 1000)
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["chat.json"]


KILLED_WRITER = """
import sys
from parley.files import write_atomic
target = sys.argv[1]
print("ready", flush=True)
while True:
    for fill in (b"a", b"b"):
        write_atomic(target, fill * (1 << 21))
"""


def test_a_kill_at_any_moment_leaves_a_whole_file(tmp_path):
    target = tmp_path / "big.bin"
    target.write_bytes(b"o" * (1 << 21))
    for delay in (0.05, 0.13, 0.29):
        child = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(target)], stdout=subprocess.PIPE)
        child.stdout.readline()
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
        data = target.read_bytes()
        assert len(data) == 1 << 21 and data in (b"o" * len(data), b"a" * len(data), b"b" * len(data))
    for leftover in tmp_path.glob(f"{files.TMP_PREFIX}*"):  # a kill may leave one beside it, never at its name
        leftover.unlink()
    assert os.listdir(tmp_path) == ["big.bin"]


def test_atomic_dir_replaces_the_directory_only_when_the_block_succeeds(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with files.atomic_dir(out) as tmp:
            (tmp / "new.txt").write_text("half")
            raise RuntimeError("stopped midway")
    assert os.listdir(tmp_path) == ["out"] and os.listdir(out) == ["old.txt"]

    with files.atomic_dir(out) as tmp:
        (tmp / "new.txt").write_text("new")
    assert os.listdir(tmp_path) == ["out"] and os.listdir(out) == ["new.txt"]
    assert out.stat().st_mode & 0o777 == 0o755  # an ordinary directory, not mkdtemp's private one


def test_replace_dir_takes_the_place_of_a_file_or_nothing(tmp_path):
    for existing in (None, "file"):
        target = tmp_path / f"t-{existing}"
        if existing:
            target.write_text("a file was here")
        tmp = tmp_path / ".tmp-x"
        tmp.mkdir()
        (tmp / "model.bin").write_bytes(b"w")
        files.replace_dir(tmp, target)
        assert os.listdir(target) == ["model.bin"]
    assert sorted(os.listdir(tmp_path)) == ["t-None", "t-file"]
