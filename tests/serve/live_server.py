"""A real server for tests: the app under uvicorn on 127.0.0.1, on a free port, in a thread.

`start_server(app)` binds a socket on port 0 (so tests never collide on ports), runs uvicorn on it in
a background thread, waits until it accepts requests, and returns (base_url, stop).
"""

from __future__ import annotations

import socket
import threading
import time

CONTEXT = 1024  # the tiny test model's context window


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
