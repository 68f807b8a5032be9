"""Load and decode speed of the embedded model: Parley's Engine beside transformers `generate` and llama.cpp.

    .venv/bin/python bench/generate.py [--dtypes float32,bfloat16] [--new-tokens 128] [--repeats 3]
                                       [--threads 2] [--llama-python .venv-bench/bin/python]

Prints one JSON object: cold load (GGUF -> safetensors cache, in a fresh PARLEY_HOME), cached load,
and the time to first token (prefill + first token) and decode tokens/s (batch 1, ~30-token prompt,
greedy, exactly `--new-tokens` tokens: end-of-sequence is ignored everywhere), medians over
`--repeats` runs after one warm-up, of:

- per dtype, Parley's Engine (through its public `stream(prompt, SamplingParams)`) and
  `model.generate` on the same weights, with the ratio engine / transformers;
- llama.cpp (llama-cpp-python, CPU) on the very GGUF file the embedded model is converted from (its
  Q4_1 weights, which Parley dequantizes), fed the prompt token ids Parley's tokenizer and chat
  template produced, in a subprocess with the bench venv's python (bench/llamacpp_worker.py), and
  per dtype `parley_over_llamacpp`: the Engine's decode tok/s and TTFT over llama.cpp's (decode
  above 1 and TTFT below 1 favour Parley), and how many leading greedy tokens the two agree on.

Every side uses `--threads` threads (torch.set_num_threads, llama.cpp n_threads and n_threads_batch).
Without the bench venv (`make bench` builds it) the llama.cpp column is skipped with a note. The
sides run one after another: on a shared machine compare the columns of one run, not runs. No timed
assertions live in the tests; this is where speed is watched.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT = [{"role": "user", "content": "Write a short story about a robot who learns to paint, in three paragraphs."}]
WORKER = Path(__file__).with_name("llamacpp_worker.py")
BENCH_PYTHON = Path(__file__).resolve().parents[1] / ".venv-bench" / "bin" / "python"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for every side")
    parser.add_argument("--compile", action="store_true",
                        help="also time the engine with compiled decode steps (waits ~2 min for the compile)")
    parser.add_argument("--llama-python", type=Path, default=BENCH_PYTHON,
                        help="python of the venv with llama-cpp-python (built by `make bench`)")
    args = parser.parse_args()
    if args.new_tokens < 2:
        parser.error("--new-tokens must be at least 2: the decode rate is timed after the first token")

    import torch

    from parley import embedded, models
    from parley.templates import encode_chat

    torch.set_num_threads(args.threads)
    result = {"model": "smollm2 (SmolLM2-135M-Instruct)", "threads": torch.get_num_threads(),
              "new_tokens": args.new_tokens, "repeats": args.repeats}
    with tempfile.TemporaryDirectory() as home:  # a cold start: nothing cached yet
        os.environ["PARLEY_HOME"] = home
        start = time.perf_counter()
        embedded.ensure_cached(progress=lambda message: None)
        result["cold_convert_s"] = round(time.perf_counter() - start, 2)
        start = time.perf_counter()
        loaded = models.load("smollm2")
        result["cached_load_s"] = round(time.perf_counter() - start, 2)
        # Tokenized once: llama.cpp gets exactly these ids; the Engine renders PROMPT the same way.
        ids = encode_chat(loaded.tokenizer, loaded.template, PROMPT, add_generation_prompt=True)
        result["prompt_tokens"] = len(ids)

        for dtype in args.dtypes.split(","):
            log(f"{dtype}: Parley engine and transformers generate ...")
            result[dtype] = compare(dtype, ids, args.new_tokens, args.repeats, args.compile)
        log("llama.cpp ...")
        result["llama_cpp"] = llamacpp(args.llama_python, embedded.gguf_path(), ids, args)

    llama = result["llama_cpp"]
    for dtype in args.dtypes.split(","):
        for column in ("parley_engine", "parley_engine_compiled"):
            parley = result[dtype].get(column)
            if parley is None:
                continue
            if "decode_tok_s" in llama:
                result[dtype][column.replace("parley_engine", "parley") + "_over_llamacpp"] = {
                    "decode_tok_s": round(parley["decode_tok_s"] / llama["decode_tok_s"], 2),
                    "ttft_ms": round(parley["ttft_ms"] / llama["ttft_ms"], 2),
                    "same_leading_tokens": _common_prefix(parley.pop("ids"), llama["ids"]),
                }
            else:
                parley.pop("ids")
    llama.pop("ids", None)
    json.dump(result, sys.stdout, indent=2)
    print()
    if "failed" in llama:
        sys.exit(1)


def _open_engine(dtype: str, compile: bool = False):
    """The Engine under test on the embedded model in `dtype`, with nothing that ends a reply early.

    The one place to adapt when the engine's construction changes (e.g. `parley.backend.open`); the
    bench otherwise calls only `stream(prompt, SamplingParams)`.
    """
    from parley import models
    from parley.engine import LocalEngine

    loaded = models.load("smollm2", dtype=dtype)
    # No stored prefixes: each repeat prefills the whole prompt, as the llama.cpp worker (reset per
    # run) does; bench/turns.py measures what prefix reuse saves.
    engine = LocalEngine(dataclasses.replace(loaded, stop_ids=[], stop_strings=[]), prefix_cache_mb=0, compile=compile)
    if compile and not engine.compiled.wait():
        raise SystemExit(f"the decode step did not compile: {engine.compiled.error}")
    return engine


def compare(dtype: str, ids: list[int], new_tokens: int, repeats: int, compile: bool = False) -> dict:
    import torch

    from parley import models
    from parley.engine import SamplingParams

    engine = _open_engine(dtype)
    params = SamplingParams(temperature=0, max_new_tokens=new_tokens)

    def ours(engine=engine) -> dict:
        start = time.perf_counter()
        stream = engine.stream(PROMPT, params)
        out = [next(stream).id]
        first = time.perf_counter()
        out += [token.id for token in stream]
        return _run(start, first, time.perf_counter(), out)

    loaded = models.load("smollm2", dtype=dtype)

    def theirs() -> dict:
        inputs = torch.tensor([ids])
        kwargs = dict(do_sample=False, pad_token_id=loaded.tokenizer.pad_token_id)
        start = time.perf_counter()
        loaded.model.generate(inputs, max_new_tokens=1, min_new_tokens=1, **kwargs)
        first = time.perf_counter()
        out = loaded.model.generate(inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kwargs)
        end = time.perf_counter()
        # The second call repeats the prefill: the decode rate excludes it (first - start).
        return _run(start, first, end - (first - start), out[0, len(ids):].tolist())

    report = {"parley_engine": timed(ours, repeats, new_tokens), "transformers_generate": timed(theirs, repeats, new_tokens)}
    report["transformers_generate"].pop("ids")
    if compile:
        compiled = _open_engine(dtype, compile=True)
        report["parley_engine_compiled"] = timed(lambda: ours(compiled), repeats, new_tokens)
        report["parley_engine_compiled"]["same_tokens_as_eager"] = (
            report["parley_engine_compiled"]["ids"] == report["parley_engine"]["ids"])
    report["decode_ratio_engine_over_transformers"] = round(
        report["parley_engine"]["decode_tok_s"] / report["transformers_generate"]["decode_tok_s"], 2
    )
    return report


def llamacpp(python: Path, gguf: Path, ids: list[int], args) -> dict:
    """llama.cpp's column from bench/llamacpp_worker.py in the bench venv; a note when there is none."""
    if not python.exists():
        return {"skipped": f"no llama.cpp venv: {python} does not exist (`make bench` builds it; or --llama-python)"}
    done = subprocess.run(
        [str(python), str(WORKER), str(gguf), ",".join(map(str, ids)), str(args.threads), str(args.new_tokens),
         str(args.repeats)],
        capture_output=True, text=True,
    )
    if done.returncode:  # reported beside Parley's columns; main() then exits non-zero
        return {"failed": f"{WORKER.name} exited {done.returncode}: {done.stderr.strip()[-2000:]}"}
    out = json.loads(done.stdout)
    summary = summarise(out["runs"], args.new_tokens)
    return {"gguf": gguf.name, **summary, "ids": out["ids"], "load_s": out["load_s"],
            "llama_cpp_python": out["llama_cpp_python"], "system_info": out["system_info"]}


def timed(run, repeats: int, new_tokens: int) -> dict:
    run()  # warm-up
    runs = [run() for _ in range(repeats)]
    return {**summarise(runs, new_tokens), "ids": runs[-1]["ids"]}


def summarise(runs: list[dict], new_tokens: int) -> dict:
    """Medians of runs [{"ttft_s", "decode_tok_s", "tokens"}]; every run must have made new_tokens tokens."""
    if any(r["tokens"] != new_tokens for r in runs):
        raise RuntimeError(f"a run made {[r['tokens'] for r in runs]} tokens, not {new_tokens}: the rates are not comparable")
    return {"ttft_ms": round(1000 * statistics.median(r["ttft_s"] for r in runs), 1),
            "decode_tok_s": round(statistics.median(r["decode_tok_s"] for r in runs), 1), "tokens": new_tokens}


def _run(start: float, first: float, end: float, ids: list[int]) -> dict:
    return {"ttft_s": first - start, "decode_tok_s": (len(ids) - 1) / (end - first), "tokens": len(ids), "ids": ids}


def _common_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
