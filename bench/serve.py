"""Serving throughput and latency under concurrency, against the baseline of one client at a time.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/serve.py [--model smollm2] [--clients 1,4,8] [--tokens 64]

Starts `parley serve` (a subprocess on 127.0.0.1, a free port) with the model, then for each number of
clients N sends N concurrent streaming chat requests (the official openai client, one thread each),
each asking for --tokens tokens, --rounds times (interleaved: 1, 4, 8, 1, 4, 8, ...). Prints JSON: per N the aggregate tokens/s (all tokens
over the wall time of the round), p50/p95 time to first token, p50 inter-token latency; and the
N=max aggregate throughput as a ratio over N=1 (the baseline: what a server without batching gives).

Limits: the clients share the machine with the server (on a 2-core box they take a little CPU);
a reply that ends early at the end-of-sequence token counts only its own tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--clients", default="1,4,8")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, help="the server's math threads (default: parley serve's own)")
    args = parser.parse_args()
    counts = [int(c) for c in args.clients.split(",")]

    port = _free_port()
    parley = str(Path(sys.executable).with_name("parley"))
    server = subprocess.Popen(
        [parley, "serve", "--model", args.model, "--port", str(port), "--max-batch", str(max(counts)),
         "--max-tokens", str(args.tokens)] + (["--threads", str(args.threads)] if args.threads else []),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
    )
    try:
        url = _wait(server, port)
        import openai

        client = openai.OpenAI(base_url=url + "/v1", api_key="bench", max_retries=0, timeout=600)
        _request(client, args.model, args.tokens, seed=0)  # warm-up: first-call allocations
        rounds: dict[int, list[dict]] = {n: [] for n in counts}
        for r in range(args.rounds):  # interleaved, so a busy machine slows every N alike
            for n in counts:
                rounds[n].append(_round(client, args.model, n, args.tokens, r))
        results = {str(n): _summary(rounds[n]) for n in counts}
        base, top = results[str(counts[0])], results[str(counts[-1])]
        print(json.dumps({
            "bench": "serve", "model": args.model, "tokens_per_request": args.tokens, "rounds": args.rounds,
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "threads": args.threads, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "baseline": f"{counts[0]} client",
            "results": results,
            f"throughput_ratio_{counts[-1]}_vs_{counts[0]}": round(top["tokens_per_s"] / base["tokens_per_s"], 2),
        }, indent=2))
    finally:
        server.terminate()
        server.wait(timeout=60)


def _round(client, model: str, n: int, tokens: int, round_index: int) -> dict:
    out: list[dict] = [{} for _ in range(n)]
    threads = [threading.Thread(target=lambda i=i: out.__setitem__(i, _request(client, model, tokens,
                                                                               seed=round_index * 100 + i)))
               for i in range(n)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"wall": time.perf_counter() - start, "requests": out}


def _request(client, model: str, tokens: int, seed: int) -> dict:
    sent = time.perf_counter()
    arrivals = []
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": PROMPT}], max_tokens=tokens, temperature=0.8,
        seed=seed, stream=True, stream_options={"include_usage": True},
    )
    count = 0
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.perf_counter())
        if chunk.usage:
            count = chunk.usage.completion_tokens
    return {"ttft": arrivals[0] - sent if arrivals else None, "arrivals": arrivals, "tokens": count}


def _summary(rounds: list[dict]) -> dict:
    tokens = sum(r["tokens"] for rnd in rounds for r in rnd["requests"])
    wall = sum(rnd["wall"] for rnd in rounds)
    ttfts = sorted(r["ttft"] for rnd in rounds for r in rnd["requests"] if r["ttft"] is not None)
    gaps = [b - a for rnd in rounds for r in rnd["requests"] for a, b in zip(r["arrivals"], r["arrivals"][1:])]
    return {
        "tokens_per_s": round(tokens / wall, 2),
        "ttft_p50_s": round(_quantile(ttfts, 0.5), 3),
        "ttft_p95_s": round(_quantile(ttfts, 0.95), 3),
        "inter_token_p50_s": round(statistics.median(gaps), 4) if gaps else None,
        "tokens": tokens,
        "requests": sum(len(rnd["requests"]) for rnd in rounds),
    }


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(server: subprocess.Popen, port: int) -> str:
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"parley serve exited: {server.stderr.read()[-2000:]}")
        try:  # up, and done compiling its decode steps (timed runs measure the default, compiled decoding)
            with urllib.request.urlopen(url + "/health", timeout=1) as answer:
                if not json.load(answer).get("compiling"):
                    return url
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit("parley serve did not start (and compile) in 300 s")


if __name__ == "__main__":
    main()
