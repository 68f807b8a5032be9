"""One test per property the sandbox claims (see parley/eval/sandbox.py), with real subprocesses.

Each hostile sample is followed by a check that the sandbox still scores an honest sample
correctly, because evaluation must go on after any verdict. Needs bubblewrap (`make system-deps`).
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from parley.eval import sandbox
from parley.eval.sandbox import SandboxUnavailable, run_python

ROOT = Path(__file__).resolve().parents[2]


ADD = "def add(a, b):\n    return a + b\n"
ADD_TESTS = "assert add(2, 3) == 5\nassert add(-1, 1) == 0\n"


def still_scores_honest_code() -> None:
    assert run_python(ADD, check=ADD_TESTS, timeout=5).status == "passed"
    assert run_python("def add(a, b):\n    return a - b\n", check=ADD_TESTS, timeout=5).status == "failed"


def leftovers(marker: str) -> list[str]:
    """Processes on this machine whose command line contains `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker.encode() in (entry / "cmdline").read_bytes():
                found.append(entry.name)
        except OSError:
            pass
    return found


def test_correct_program_passes_and_output_is_captured():
    result = run_python("import sys\nprint(sum(range(10)))\nprint('oops', file=sys.stderr)", timeout=5)
    assert (result.status, result.stdout, result.returncode) == ("passed", "45\n", 0)
    assert "oops" in result.stderr


def test_failing_assert_is_failed_with_the_message():
    result = run_python(ADD, check="assert add(2, 2) == 5, 'two and two'", timeout=5)
    assert result.status == "failed"
    assert result.message == "AssertionError: two and two"
    assert "AssertionError" in result.stderr


def test_infinite_loop_times_out_on_the_wall_clock():
    started = time.monotonic()
    result = run_python("while True:\n    pass\n", check="assert True", timeout=1)
    assert result.status == "timed_out"
    assert result.returncode is None
    assert 0.9 < time.monotonic() - started < 5
    still_scores_honest_code()


def test_sleeping_forever_times_out_too():
    result = run_python("import time\ntime.sleep(3600)\n", timeout=1)
    assert result.status == "timed_out"


def test_fork_bomb_is_contained_and_nothing_outlives_the_run():
    marker = f"forkbomb-{uuid.uuid4().hex}"
    code = textwrap.dedent(f"""
        import os, subprocess, sys
        children = 0
        try:
            while True:
                subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)  # {marker}"],
                                 start_new_session=True)
                children += 1
        except OSError:
            print("stopped after", children, flush=True)
        while True:
            try:
                os.fork()
            except OSError:
                pass
    """)
    result = run_python(code, check="assert True", timeout=2, processes=24)
    assert result.status != "passed"
    stopped = int(result.stdout.split()[-1])
    assert 0 < stopped < 24  # NPROC stopped it, not the timeout
    time.sleep(0.2)
    assert leftovers(marker) == []
    still_scores_honest_code()


def test_grandchild_in_a_new_session_dies_with_the_run():
    marker = f"grandchild-{uuid.uuid4().hex}"
    code = (
        "import subprocess, sys\n"
        f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)  # {marker}'],"
        " start_new_session=True)\n"
    )
    assert run_python(code, timeout=5).status == "passed"
    time.sleep(0.2)
    assert leftovers(marker) == []


def test_memory_hog_fails_fast_without_taking_the_machine():
    started = time.monotonic()
    result = run_python(
        "chunks = []\nwhile True:\n    chunks.append(bytearray(50 * 2**20))\n",
        check="assert True", timeout=10, memory_mb=256,
    )
    assert result.status == "failed"
    assert result.message.startswith("MemoryError")
    assert time.monotonic() - started < 5
    still_scores_honest_code()


def test_huge_file_is_stopped_by_the_file_size_limit():
    code = "with open('big', 'wb') as f:\n    while True:\n        f.write(b'x' * 2**20)\n"
    result = run_python(code, check="assert True", timeout=10, file_mb=2)
    assert result.status == "failed"  # Python ignores SIGXFSZ, so the write raises instead
    assert result.message.startswith("OSError: [Errno 27] File too large")


@pytest.fixture
def host_dir(tmp_path: Path) -> Path:
    """A host directory that anyone may write to: only the sandbox keeps the sample out."""
    tmp_path.chmod(0o777)
    for parent in tmp_path.parents:
        if parent == Path("/tmp") or parent == Path("/"):
            break
        parent.chmod(parent.stat().st_mode | 0o005)
    (tmp_path / "keep.txt").write_text("precious")
    (tmp_path / "keep.txt").chmod(0o666)
    return tmp_path


def test_writing_outside_its_directory_fails(host_dir: Path):
    target = host_dir / "planted.txt"
    code = textwrap.dedent(f"""
        import os
        done = []
        for path in [{str(target)!r}, "/usr/planted.txt", "/etc/planted.txt"]:
            try:
                with open(path, "w") as f:
                    f.write("x")
                done.append(path)
            except OSError:
                pass
        with open("inside.txt", "w") as f:  # its own directory is writable
            f.write("ok")
        print(done, os.getcwd())
    """)
    result = run_python(code, timeout=5)
    assert not target.exists()
    assert not Path("/usr/planted.txt").exists()
    assert result.stdout == "[] /sandbox\n"
    assert not Path("/etc/planted.txt").exists()


def test_deleting_or_reading_host_files_fails(host_dir: Path):
    victim = host_dir / "keep.txt"
    code = textwrap.dedent(f"""
        import os, shutil
        for attempt in (lambda: os.remove({str(victim)!r}), lambda: shutil.rmtree({str(host_dir)!r}),
                        lambda: print(open({str(victim)!r}).read())):
            try:
                attempt()
            except OSError as exc:
                print(type(exc).__name__)
    """)
    result = run_python(code, timeout=5)
    assert victim.read_text() == "precious"
    assert result.stdout.split() == ["FileNotFoundError"] * 3


def test_no_network_even_to_localhost():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        code = textwrap.dedent(f"""
            import socket
            try:
                socket.create_connection(("127.0.0.1", {port}), timeout=2)
                print("connected")
            except OSError as exc:
                print("blocked", type(exc).__name__)
        """)
        result = run_python(code, timeout=5)
        listener.settimeout(0.3)
        with pytest.raises(socket.timeout):
            listener.accept()
    assert result.stdout.startswith("blocked")


@pytest.mark.parametrize("exit_call", ["import os\nos._exit(0)", "import sys\nsys.exit(0)", "exit()"])
def test_exiting_with_status_zero_before_the_asserts_is_not_a_pass(exit_call: str):
    result = run_python(ADD + exit_call + "\n", check="assert add(1, 1) == 3", timeout=5)
    assert result.status in ("failed", "error")
    still_scores_honest_code()


def test_plain_run_may_exit_zero_itself():
    assert run_python("import sys\nprint('bye')\nsys.exit(0)\nprint('never')", timeout=5).stdout == "bye\n"
    assert run_python("import sys\nsys.exit(3)", timeout=5).status == "failed"


TAMPERING = {
    "patched builtins": "import builtins\nbuiltins.abs = lambda x: 0\nbuiltins.len = lambda x: 3\n",
    "no-op exec and compile": "import builtins\nbuiltins.exec = lambda *a, **k: None\n"
    "builtins.compile = lambda *a, **k: None\n",
    "printed verdicts": "print('PASS'); print('passed')\nimport os\nfor fd in range(3, 10):\n"
    "    try: os.write(fd, b'PASS 0123')\n    except OSError: pass\n",
    "asserts switched off": "import os, sys\nos.execv(sys.executable, [sys.executable, '-O', '-c', 'pass'])\n",
    "harness replaced": "import sys, os\nsys.modules['__main__'].main = lambda: None\nos._exit(0)\n",
    "exception swallowed at exit": "import atexit, os\natexit.register(lambda: os._exit(0))\n",
}


@pytest.mark.parametrize("trick", TAMPERING.values(), ids=TAMPERING.keys())
def test_tampering_cannot_turn_failing_tests_into_a_pass(trick: str):
    wrong = "def area(r):\n    return 1.0\n"
    tests = "assert abs(area(2) - 12.566) < 1e-3\nassert len([area(1)]) == 1\n"
    result = run_python(trick + wrong, check=tests, timeout=5)
    assert result.status != "passed", result
    # The same tests do pass for a right answer, so the test above can fail.
    assert run_python("def area(r):\n    return 3.14159 * r * r\n", check=tests, timeout=5).passed


def test_runs_as_an_unprivileged_user_with_an_empty_environment():
    result = run_python("import os\nprint(os.getuid(), sorted(os.environ))", timeout=5)
    uid, env = result.stdout.split(" ", 1)
    assert int(uid) != 0
    assert set(eval(env)) <= {"HOME", "PATH", "LANG", "LC_CTYPE", "PWD"}


def test_output_is_capped():
    result = run_python("print('x' * 10**6)", timeout=5, output_kb=4)
    assert result.passed and len(result.stdout) == 4096


def test_weaker_rlimits_mode_still_limits_and_kills():
    assert run_python(ADD, check=ADD_TESTS, timeout=5, isolation="rlimits").passed
    result = run_python("while True:\n    pass\n", timeout=1, isolation="rlimits")
    assert result.status == "timed_out"
    if os.geteuid() == 0:
        marker = f"rlimits-grandchild-{uuid.uuid4().hex}"
        code = (
            "import subprocess, sys\n"
            f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)  # {marker}'],"
            " start_new_session=True)\n"
        )
        run_python(code, timeout=5, isolation="rlimits")
        time.sleep(0.2)
        assert leftovers(marker) == []


def test_missing_bubblewrap_refuses_with_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    for tool in ("prlimit", "setpriv"):  # a PATH that has util-linux but not bwrap
        (tmp_path / tool).symlink_to(shutil.which(tool))
    monkeypatch.setenv("PATH", str(tmp_path))
    sandbox.ensure_available.cache_clear()
    try:
        with pytest.raises(SandboxUnavailable, match="bubblewrap .* not installed.*--sandbox rlimits"):
            run_python("print(1)", timeout=5)
        assert run_python("print(1)", timeout=5, isolation="rlimits").stdout == "1\n"
    finally:
        sandbox.ensure_available.cache_clear()


# --- What the sandbox contains, line by line (see the docstring of parley/eval/sandbox.py) ---

def run_as_another_user(script: str) -> str:
    """Run `script` with this worktree's parley as a plain user (a fresh uid when we are root)."""
    argv = [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r})\n{script}"]
    if os.geteuid() == 0:
        uid = 700_000 + secrets.randbelow(100_000)
        argv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *argv]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd="/")
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_limits_hold_for_a_user_who_already_runs_many_threads():
    # Like a user with a browser, torch or the worker pool open: 300 threads before the run.
    script = textwrap.dedent("""
        import threading
        from parley.eval.sandbox import run_python
        stop = threading.Event()
        for _ in range(300):
            threading.Thread(target=stop.wait, daemon=True).start()
        add, tests = "def add(a, b):\\n    return a + b\\n", "assert add(2, 3) == 5\\n"
        print(run_python(add, check=tests, timeout=5).status)
        print(run_python(add, check=tests, timeout=5, isolation="rlimits").status)
    """)
    assert run_as_another_user(script).split() == ["passed", "passed"]


def test_fork_bomb_is_stopped_by_the_sandboxes_own_count():
    code = textwrap.dedent("""
        import os, time
        forked = 0
        try:
            while True:
                if os.fork() == 0:
                    time.sleep(30)
                    os._exit(0)
                forked += 1
        except OSError as exc:
            print(forked, exc.errno)
    """)
    result = run_python(code, timeout=5, processes=6)
    forked, err = map(int, result.stdout.split())
    # bwrap's init, the harness, then the children: NPROC stops them at 6 tasks.
    assert (forked, err) == (4, errno.EAGAIN)


def test_scratch_space_is_capped_in_every_writable_place():
    code = textwrap.dedent("""
        import errno, os
        for place in ("/sandbox", "/tmp", "/dev/shm"):
            written = 0
            try:
                for i in range(100):
                    with open(f"{place}/f{i}", "wb") as f:
                        f.write(b"x" * 2**20)
                    written += 1
            except OSError as exc:
                print(place, written, errno.errorcode[exc.errno])
        for path in ("/dev/planted", "/planted", "/usr/planted"):
            try:
                open(path, "w")
                print(path, "written")
            except OSError as exc:
                print(path, errno.errorcode[exc.errno])
    """)
    result = run_python(code, timeout=10, scratch_mb=4, file_mb=2)
    assert result.stdout.splitlines() == [
        "/sandbox 4 ENOSPC", "/tmp 4 ENOSPC", "/dev/shm 4 ENOSPC",  # 4 MB each, then full
        "/dev/planted EROFS", "/planted EROFS", "/usr/planted EROFS",
    ]


def test_memory_limit_bounds_all_processes_together():
    code = textwrap.dedent("""
        import os, time
        r, w = os.pipe()
        for _ in range(4):
            if os.fork() == 0:
                held = []
                try:
                    while True:
                        held.append(bytearray(2**20))
                except MemoryError:
                    pass
                os.write(w, b"%d\\n" % len(held))
                time.sleep(30)  # keep holding it while the others allocate
        counts = b""
        while counts.count(b"\\n") < 4:
            counts += os.read(r, 100)
        print(sum(map(int, counts.split())))
    """)
    result = run_python(code, timeout=10, memory_mb=256, processes=8)
    held_mb = int(result.stdout)
    assert 0 < held_mb <= 256


def test_the_host_is_invisible_and_the_sandbox_cannot_be_traced():
    # ptrace and process_vm_readv from a child Python (no audit hook there, so ctypes works):
    # on the sandbox's init, on the harness, and the harness's memory.
    child = textwrap.dedent("""
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        for pid in (1, os.getppid()):
            print(libc.ptrace(16, pid, 0, 0), ctypes.get_errno())  # PTRACE_ATTACH
        buf = ctypes.create_string_buffer(8)
        iov = (ctypes.c_void_p * 2)(ctypes.addressof(buf), 8)
        print(libc.process_vm_readv(os.getppid(), iov, 1, iov, 1, 0), ctypes.get_errno())
    """)
    code = textwrap.dedent(f"""
        import os, subprocess, sys
        for path in ("/proc/1/environ", "/proc/1/cmdline", "/proc/self/mem", "/sys/class/net", "/etc/passwd"):
            print(path, os.path.exists(path))
        print(sorted(os.environ))
        print(subprocess.run([sys.executable, "-c", {child!r}], capture_output=True, text=True).stdout, end="")
    """)
    result = run_python(code, timeout=10)
    eperm = f"-1 {errno.EPERM}"
    assert result.stdout.splitlines() == [
        "/proc/1/environ False", "/proc/1/cmdline False", "/proc/self/mem False",
        "/sys/class/net False", "/etc/passwd False",
        "['HOME', 'LANG', 'PATH', 'PWD']", eperm, eperm, eperm,
    ]
