"""schemathesis against a live `parley serve`: no answer may be a server error, and every answer must
match /openapi.json (status code, content type, JSON body or event-stream events, headers).

schemathesis is a measuring tool with a venv of its own, `.venv-fuzz` (`make fuzz-deps`), never a
dependency of Parley: it runs as a subprocess against `parley serve` over the tiny test model. `make
test` runs a short pass (FUZZ_EXAMPLES=10 per operation, a fixed seed); `make fuzz` runs this same
test with more examples and a fresh seed. Failures print schemathesis's report, with a curl command
that reproduces each one. Settings: schemathesis.toml beside this file.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx

from parley.engine import LocalEngine
from parley.serve.openapi import ROUTES
from serve.live_server import start_cli, start_server

ST = Path(__file__).resolve().parents[2] / ".venv-fuzz" / "bin" / "st"
CONFIG = Path(__file__).with_name("schemathesis.toml")


def test_openapi_declares_what_the_server_sends(server):
    schema = httpx.get(server[0] + "/openapi.json").json()
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            assert "422" not in operation["responses"], f"{method} {path}"  # validation errors are 400s
    chat = schema["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert set(chat["200"]["content"]) == {"application/json", "text/event-stream"}
    assert chat["200"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ChatCompletion"}
    assert chat["400"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    assert chat["429"]["headers"]["Retry-After"]["required"]
    bad = httpx.post(server[0] + "/v1/chat/completions", json={"messages": []})
    assert bad.status_code == 400 and set(bad.json()["error"]) == set(schema["components"]["schemas"]["ErrorDetail"]["properties"])


def test_405_allows_every_method_of_the_path(server):
    # Starlette answered `Allow: GET` here: only the first route matching the path was asked.
    answer = httpx.request("PUT", server[0] + "/v1/conversations/x")
    assert answer.status_code == 405
    assert {"GET", "PATCH", "DELETE"} <= {m.strip() for m in answer.headers["allow"].split(",")}


def test_a_bug_is_a_500_in_the_error_shape_not_a_plain_text_page(tiny_loaded, tmp_path):
    from parley.serve.app import ServeOptions, create_app

    app = create_app(ServeOptions(model="tiny", db=tmp_path / "db"), engine=LocalEngine(tiny_loaded))

    @app.get("/v1/broken", include_in_schema=False)
    def broken():
        raise OverflowError("Python int too large to convert to SQLite INTEGER")  # as the store once did

    url, stop = start_server(app)
    try:
        answer = httpx.get(url + "/v1/broken")
    finally:
        stop()
    assert answer.status_code == 500
    assert answer.json() == {"error": {"message": "internal server error: the server log has the details",
                                       "type": "server_error", "param": None, "code": None}}


def test_schemathesis_finds_no_server_error_and_no_schema_violation(model_dir, tmp_path):
    assert ST.exists(), "schemathesis is missing: run `make fuzz-deps`"
    log = open(tmp_path / "serve.log", "w")  # a file, not a pipe: a thousand requests' log would fill a pipe
    process, url = start_cli("--model", str(model_dir), "--max-tokens", "8", env={"PARLEY_HOME": str(tmp_path)},
                             log=log)
    try:
        cids = [httpx.post(url + "/v1/conversations", json={"title": "fuzz"}).json()["id"] for _ in range(2)]
        said = httpx.post(f"{url}/v1/conversations/{cids[0]}/messages", timeout=60,
                          json={"content": "hi", "stream": False})  # so that regenerate has a reply to redo
        assert said.status_code == 200, said.text
        seed = os.environ.get("FUZZ_SEED", "0")
        command = [str(ST), "--config-file", str(CONFIG), "run", url + "/openapi.json", "--checks", "all",
                   "--max-examples", os.environ.get("FUZZ_EXAMPLES", "10"), "--workers", "1", "--no-color",
                   "--generation-database", "none", "--request-timeout", "120", *(["--seed", seed] if seed else [])]
        env = {**os.environ, "PARLEY_FUZZ_CID": cids[0], "PARLEY_FUZZ_DELETE_CID": cids[1]}
        done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=3600)
    finally:
        process.kill()
        process.wait()
        log.close()
    report = done.stdout[-20_000:] + done.stderr[-2_000:] + (tmp_path / "serve.log").read_text()[-4_000:]
    assert done.returncode == 0, report
    assert f"Tested: {len(ROUTES)}" in done.stdout, report  # every operation was reached, none skipped
