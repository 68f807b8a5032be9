"""Real clients against `parley serve`: LangChain's ChatOpenAI and the `llm` CLI, as their users run them.

    make check-clients          # builds .venv-clients (langchain-openai, llm), then runs this with it
    .venv-clients/bin/python bench/clients.py --parley .venv/bin/parley [--model smollm2]

Starts `parley serve` (a subprocess on 127.0.0.1, a free port) over the model and runs each check with
the client library's own public API; prints JSON (one entry per check: ok, and what came back or the
error) and exits 1 if any check failed. The clients live in a venv of their own, never a dependency of
Parley; this is not part of `make test` (it installs from PyPI and loads the real model).

Checks (LangChain): plain `invoke`, `stream`; `with_structured_output(PydanticModel)` in each method
(`json_schema`, `function_calling`, `json_mode`) giving a validated model instance; `bind_tools` with
`tool_choice` "any" and a named tool giving `tool_calls`. (`llm`): a prompt to a model declared in
`extra-openai-models.yaml`, and `llm --schema` whose output must parse and validate.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
from pathlib import Path

QUESTION = "Alice is 31 years old and lives in Paris. Who is she?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parley", default=".venv/bin/parley", help="the parley console script")
    parser.add_argument("--model", default="smollm2")
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([args.parley, "serve", "--model", args.model, "--port", str(port),
                               "--max-tokens", "256"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True, stdin=subprocess.DEVNULL)
    try:
        base = _wait(server, port) + "/v1"
        results = {name: _run(check, base, args.model) for name, check in CHECKS.items()}
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(json.dumps({"model": args.model, "checks": results}, indent=2))
    failed = [name for name, result in results.items() if not result["ok"]]
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


def _run(check, base: str, model: str) -> dict:
    try:
        return {"ok": True, "got": check(base, model)}
    except Exception as e:  # a check's failure is its result: record it and go on to the next
        return {"ok": False, "error": f"{type(e).__name__}: {e}"[:600],
                "where": traceback.format_exc().splitlines()[-3:-1]}


def _chat(base: str, model: str, **extra):
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(base_url=base, api_key="none", model=model, temperature=0, max_tokens=64, max_retries=0,
                      **extra)


def _person():
    from pydantic import BaseModel, Field

    class Person(BaseModel):
        """A person the text mentions."""

        name: str = Field(description="the person's name", max_length=20)
        age: int = Field(description="their age in years", ge=0, le=120)

    return Person


def langchain_invoke(base, model):
    reply = _chat(base, model).invoke("Say hello in one short sentence.")
    assert isinstance(reply.content, str) and reply.content.strip(), f"empty reply: {reply!r}"
    return reply.content


def langchain_stream(base, model):
    chunks = [c.content for c in _chat(base, model).stream("Say hello in one short sentence.")]
    assert len(chunks) > 1 and "".join(chunks).strip(), f"chunks: {chunks!r}"
    return f"{len(chunks)} chunks: {''.join(chunks)!r}"


def _structured(method):
    def check(base, model):
        person = _person()
        prompt = QUESTION + ' Answer with JSON: {"name": <string>, "age": <integer>}.' if method == "json_mode" \
            else QUESTION
        result = _chat(base, model).with_structured_output(person, method=method).invoke(prompt)
        assert isinstance(result, person), f"got {result!r}"
        return result.model_dump()
    return check


def _add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def _tools(choice):
    def check(base, model):
        reply = _chat(base, model).bind_tools([_add], tool_choice=choice).invoke("What is 2 + 3?")
        assert reply.tool_calls and reply.tool_calls[0]["name"] == "_add", f"no call: {reply!r}"
        args = reply.tool_calls[0]["args"]
        assert set(args) == {"a", "b"} and all(isinstance(v, int) for v in args.values()), f"args: {args!r}"
        return reply.tool_calls
    return check


def _llm(base: str, model: str, *argv: str) -> str:
    """Run the `llm` CLI (beside this python) with a user dir declaring the server's model."""
    home = Path(tempfile.mkdtemp(prefix="llm-user-"))
    (home / "extra-openai-models.yaml").write_text(
        f"- model_id: parley\n  model_name: {model}\n  api_base: {base}\n  supports_schema: true\n")
    env = {**os.environ, "LLM_USER_PATH": str(home), "OPENAI_API_KEY": "none"}
    done = subprocess.run([str(Path(sys.executable).with_name("llm")), "-m", "parley", "--no-log", *argv],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr.strip()[-400:]}"
    return done.stdout


def llm_prompt(base, model):
    out = _llm(base, model, "-o", "max_tokens", "40", "Say hello in one short sentence.")
    assert out.strip(), "no output"
    return out.strip()


def llm_schema(base, model):
    out = _llm(base, model, "--schema", "name, age int", "-o", "max_tokens", "80", QUESTION)
    value = json.loads(out)
    # llm's "name, age int" is {name: string, age: integer}, both required, other keys allowed (no
    # additionalProperties: false), so a valid reply may carry more keys.
    assert isinstance(value, dict) and isinstance(value.get("name"), str) and type(value.get("age")) is int, \
        f"does not match the schema: {value!r}"
    return value


CHECKS = {
    "langchain invoke": langchain_invoke,
    "langchain stream": langchain_stream,
    "langchain with_structured_output json_schema": _structured("json_schema"),
    "langchain with_structured_output function_calling": _structured("function_calling"),
    "langchain with_structured_output json_mode": _structured("json_mode"),
    "langchain bind_tools tool_choice=any": _tools("any"),
    "langchain bind_tools tool_choice=<name>": _tools("_add"),
    "llm prompt": llm_prompt,
    "llm --schema": llm_schema,
}


def _wait(server: subprocess.Popen, port: int) -> str:
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"parley serve exited: {server.stderr.read()[-2000:]}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=1):
                return url
        except OSError:
            time.sleep(0.5)
    raise SystemExit("parley serve did not start in 300 s")


if __name__ == "__main__":
    main()
