"""llama.cpp's side of bench/generate.py: greedy decoding of given prompt token ids, timed, as JSON.

    .venv-bench/bin/python bench/llamacpp_worker.py GGUF IDS THREADS NEW_TOKENS REPEATS

IDS is a comma-separated list of prompt token ids (tokenized by Parley, so both sides see the same
prompt). Runs in the bench venv (`make bench` builds llama-cpp-python there), never in Parley's: it
imports nothing from Parley. Each run starts from an empty KV cache (`reset`, so no prompt prefix is
reused), evaluates the prompt in one batch and samples greedily through `Llama.generate`; end of
sequence is not checked, so every run makes exactly NEW_TOKENS tokens. Token ids only: nothing is
detokenized (Parley's engine also turns each token into text; a small cost beside a forward pass).
One warm-up run, then REPEATS timed runs; prints one JSON object:
{"load_s", "llama_cpp_python", "system_info", "runs": [{"ttft_s", "decode_tok_s", "tokens"}], "ids"}.
"""

from __future__ import annotations

import json
import sys
import time


def main() -> None:
    gguf, ids, threads, new_tokens, repeats = sys.argv[1:]
    prompt = [int(i) for i in ids.split(",")]
    threads, new_tokens, repeats = int(threads), int(new_tokens), int(repeats)
    if new_tokens < 2:
        sys.exit("NEW_TOKENS must be at least 2: the decode rate is timed after the first token")

    import llama_cpp

    start = time.perf_counter()
    llm = llama_cpp.Llama(
        model_path=gguf, n_threads=threads, n_threads_batch=threads, n_gpu_layers=0,
        n_ctx=len(prompt) + new_tokens + 8, n_batch=max(512, len(prompt)),  # the prompt in one batch
        verbose=False,
    )
    load_s = time.perf_counter() - start
    run(llm, prompt, new_tokens)  # warm-up
    runs, out = [], []
    for _ in range(repeats):
        result, out = run(llm, prompt, new_tokens)
        runs.append(result)
    print(json.dumps({
        "load_s": round(load_s, 3), "llama_cpp_python": llama_cpp.__version__,
        "system_info": llama_cpp.llama_print_system_info().decode().strip(), "runs": runs, "ids": out,
    }))


def run(llm, prompt: list[int], new_tokens: int) -> tuple[dict, list[int]]:
    llm.reset()  # n_tokens = 0: generate() then finds no cached prefix and evaluates the whole prompt
    start = time.perf_counter()
    tokens = llm.generate(prompt, temp=0.0, repeat_penalty=1.0, reset=True)
    out = [next(tokens)]  # prefill + the first token
    first = time.perf_counter()
    while len(out) < new_tokens:  # each next() evaluates the last token and samples one more
        out.append(next(tokens))
    end = time.perf_counter()
    tokens.close()
    return {"ttft_s": first - start, "decode_tok_s": (len(out) - 1) / (end - first), "tokens": len(out)}, out


if __name__ == "__main__":
    main()
