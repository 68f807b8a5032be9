"""A real server for tests: the app under uvicorn on 127.0.0.1, on a free port, in a thread; or
`parley serve` itself, as a user starts it, in a subprocess.

`start_server(app)` binds a socket on port 0 (so tests never collide on ports), runs uvicorn on it in
a background thread, waits until it accepts requests, and returns (base_url, stop).
`start_cli(*args)` starts `parley serve --port FREE *args` and returns (process, base_url) once
/health answers; the caller kills it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

CONTEXT = 1024  # the tiny test model's context window
PARLEY = str(Path(sys.executable).with_name("parley"))


def start_server(app):
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)

    def stop():
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()

    return f"http://127.0.0.1:{port}", stop


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_cli(*args: str, env: dict | None = None, log=subprocess.PIPE) -> tuple[subprocess.Popen, str]:
    """`parley serve` in a subprocess; `env` adds to this process's environment (e.g. PARLEY_HOME).
    Its log goes to `process.stdout` (a pipe: read it, or the server blocks once it has logged ~64 KiB)
    or to `log`, an open file, for tests that send many requests."""
    port = free_port()
    process = subprocess.Popen([PARLEY, "serve", "--port", str(port), *args], stdin=subprocess.DEVNULL,
                               stdout=log, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        assert process.poll() is None, process.stdout.read() if process.stdout else "parley serve exited"
        assert time.monotonic() < deadline, "parley serve did not start"
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.2)
