"""Time to first token across a 10-turn chat through `parley serve`, beside llama.cpp's own server.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/turns.py [--conversations 2] [--max-tokens 48] [--threads 2]
                                                     [--llama-python .venv-bench/bin/python]

Starts `parley serve` on the embedded model (a subprocess on 127.0.0.1, a free port, --threads torch
threads). An API client (the official openai SDK, streaming, greedy) then holds a 10-turn
conversation the way chat clients do: each turn appends a short user message and resends the whole
history, and the reply (at most --max-tokens tokens) is appended to it. The time to first token of
every turn shows what the growing history costs: `turn10_over_turn1` near 1 means earlier turns are
not paid for again. Then the same against llama.cpp's server (`python -m llama_cpp.server` from the
bench venv, on the GGUF file the embedded model comes from, n_threads = n_threads_batch = --threads,
logits_all off as Parley computes only the last position's), with `parley_over_llamacpp` per turn.
Without the bench venv that column is skipped with a note.

Each side holds its own conversation (its own greedy replies, which differ a little: llama.cpp
computes with the Q4_1 weights, Parley with their dequantized copy), so `prompt_tokens` (the
history rendered with Parley's template and tokenizer) is printed beside the times. Each of
--conversations conversations opens with its own system message, so no server can reuse one
conversation's history for the next; per turn the median is reported. One short warm-up request
per server first. Prints one JSON object; timings are wall-clock on whatever else the machine runs.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

USER_TURNS = [
    "Hi! What is your name?",
    "What can you help me with?",
    "Tell me a fun fact about octopuses.",
    "Why is the sky blue?",
    "Give me one tip for learning Python.",
    "What is a list comprehension?",
    "Show me a tiny example.",
    "How do I read a text file in Python?",
    "And how do I write one?",
    "Thanks! Any last advice?",
]
MODEL = "smollm2"
BENCH_PYTHON = Path(__file__).resolve().parents[1] / ".venv-bench" / "bin" / "python"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=2, help="10-turn conversations per server (median per turn)")
    parser.add_argument("--max-tokens", type=int, default=48, help="reply length cap per turn")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for each server")
    parser.add_argument("--llama-python", type=Path, default=BENCH_PYTHON,
                        help="python of the venv with llama-cpp-python[server] (built by `make bench`)")
    args = parser.parse_args()
    if args.conversations < 1:
        parser.error("--conversations must be at least 1")

    from transformers import AutoTokenizer

    from parley import embedded
    from parley.templates import encode_chat, template_for

    model_dir = embedded.ensure_cached(progress=log)  # before the server starts: its load is then ~1 s
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    template = template_for(tokenizer)

    def prompt_tokens(messages: list[dict]) -> int:
        return len(encode_chat(tokenizer, template, messages, add_generation_prompt=True))

    result = {"bench": "turns", "model": "smollm2 (SmolLM2-135M-Instruct)", "turns": len(USER_TURNS),
              "max_tokens": args.max_tokens, "threads": args.threads, "conversations": args.conversations}
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    parley = [str(Path(sys.executable).with_name("parley")), "serve", "--model", MODEL, "--max-batch", "1",
              "--max-tokens", str(args.max_tokens)]
    log("parley serve ...")
    with served(lambda port: parley + ["--port", str(port)], "/health", env) as url:
        result["parley"] = converse(url, args, prompt_tokens)

    if not args.llama_python.exists():
        result["llama_cpp"] = {"skipped": f"no llama.cpp venv: {args.llama_python} does not exist "
                                          "(`make bench` builds it; or --llama-python)"}
    else:
        t = str(args.threads)
        llama = [str(args.llama_python), "-m", "llama_cpp.server", "--model", str(embedded.gguf_path()),
                 "--model_alias", MODEL, "--host", "127.0.0.1", "--n_threads", t, "--n_threads_batch", t,
                 "--n_ctx", "2048", "--logits_all", "false", "--verbose", "false"]
        log("llama_cpp.server ...")
        with served(lambda port: llama + ["--port", str(port)], "/v1/models", env) as url:
            result["llama_cpp"] = converse(url, args, prompt_tokens)
        ours, theirs = result["parley"]["ttft_ms"], result["llama_cpp"]["ttft_ms"]
        result["parley_over_llamacpp"] = {"ttft_per_turn": [round(a / b, 2) for a, b in zip(ours, theirs)],
                                          "turn10_over_turn1": round(result["parley"]["turn10_over_turn1"]
                                                                     / result["llama_cpp"]["turn10_over_turn1"], 2)}
    json.dump(result, sys.stdout, indent=2)
    print()


def converse(url: str, args, prompt_tokens) -> dict:
    """--conversations conversations of len(USER_TURNS) turns; per turn the median TTFT."""
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key="bench", max_retries=0, timeout=600)
    turn(client, [{"role": "system", "content": "Warm-up."}, {"role": "user", "content": "Hello"}], 8)
    ttfts: list[list[float]] = []  # [conversation][turn]
    for k in range(args.conversations):
        messages = [{"role": "system", "content": f"You are a helpful assistant. This is conversation {k + 1}."}]
        times, lengths = [], []
        for text in USER_TURNS:
            messages.append({"role": "user", "content": text})
            lengths.append(prompt_tokens(messages))
            ttft, reply = turn(client, messages, args.max_tokens)
            times.append(ttft)
            messages.append({"role": "assistant", "content": reply})
            log(f"  conversation {k + 1} turn {len(times)}: {lengths[-1]} prompt tokens, ttft {1000 * ttft:.0f} ms")
        ttfts.append(times)
        if k == 0:
            prompt_lengths, last_reply = lengths, messages[-1]["content"]
    per_turn = [1000 * statistics.median(c[i] for c in ttfts) for i in range(len(USER_TURNS))]
    return {"ttft_ms": [round(t, 1) for t in per_turn], "prompt_tokens": prompt_lengths,
            "turn10_over_turn1": round(per_turn[-1] / per_turn[0], 2), "last_reply": last_reply}


def turn(client, messages: list[dict], max_tokens: int) -> tuple[float, str]:
    """One streamed, greedy reply: (seconds to its first text, the whole text)."""
    sent = time.perf_counter()
    first = None
    parts = []
    stream = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=max_tokens,
                                            temperature=0, stream=True)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter()
            parts.append(chunk.choices[0].delta.content)
    if first is None:
        raise RuntimeError(f"an empty reply to {messages[-1]['content']!r}: no time to first token")
    return first - sent, "".join(parts)


@contextmanager
def served(command, ready_path: str, env: dict):
    """Run command(port) on a free port until the block ends; yield its base URL once ready_path answers."""
    port = _free_port()
    with tempfile.TemporaryFile(mode="w+") as errors:  # a file, not a pipe nobody reads while it runs
        server = subprocess.Popen(command(port), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=errors, env=env, text=True)
        try:
            yield _wait(server, f"http://127.0.0.1:{port}", ready_path, errors)
        finally:
            server.terminate()
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def _wait(server: subprocess.Popen, url: str, ready_path: str, errors) -> str:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            errors.seek(0)
            raise SystemExit(f"{server.args[0]} exited {server.returncode}:\n{errors.read()[-2000:]}")
        try:
            with urllib.request.urlopen(url + ready_path, timeout=1) as answer:
                body = answer.read()
        except OSError:
            time.sleep(0.5)
            continue
        if not _compiling(body):  # parley: also done compiling its decode steps, which the turns measure
            return url
        time.sleep(0.5)
    raise SystemExit(f"{' '.join(server.args[:3])} did not answer {ready_path} in 300 s")


def _compiling(body: bytes) -> bool:
    try:
        return bool(json.loads(body).get("compiling"))
    except (ValueError, AttributeError):  # not parley's /health: nothing to wait for
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
