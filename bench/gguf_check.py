"""`make check-gguf`: exported GGUF files, run by llama.cpp, beside the model Parley exported them from.

    .venv/bin/python bench/gguf_check.py [--llama-python .venv-bench/bin/python] [--threads 2]
                                         [--lora-run RUN_DIR | --lora-steps 5] [--keep DIR]

Exports the embedded SmolLM2 at f16, q8_0 and q4_0 (timed, with file sizes), and a LoRA run trained
for `--lora-steps` steps with the README's recipe (examples/smollm2-lora-chat-code.toml) at f16 and
q8_0 (or an existing `--lora-run`). Each file is loaded by llama.cpp (llama-cpp-python, CPU, in the
bench venv `make bench` builds; never a dependency of Parley), which

- continues three chat prompts greedily for 32 tokens from the prompt ids Parley's tokenizer and
  template produce; Parley's Engine (fp32, greedy, no stops) does the same. f16 must match token
  for token; q8_0 and q4_0 report how many leading tokens agree;
- scores the perplexity of the first 1024 tokens of the standard library's textwrap.py (the same
  ids), next to the perplexity Parley's model gives them;
- tokenizes that text and the rendered prompts itself: the ids must equal Parley's, and detokenizing
  must give the text back; its chat template must be the one Parley trained with.

Prints one JSON object and exits 1 when an f16 file disagrees with Parley. The llama.cpp side runs in
a subprocess of this same file (`worker`), which then imports nothing from Parley. Export times
are wall-clock on whatever else the machine is doing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH_PYTHON = REPO / ".venv-bench" / "bin" / "python"
RECIPE = REPO / "examples" / "smollm2-lora-chat-code.toml"
PROMPTS = ["Hi! Who are you?", "Write a Python function that reverses a string.",
           "Explain in two sentences why the sky is blue."]
NEW_TOKENS = 32
PPL_TOKENS = 1024


def main() -> None:
    if sys.argv[1:2] == ["worker"]:
        return worker()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llama-python", type=Path, default=BENCH_PYTHON,
                        help="python of the venv with llama-cpp-python (built by `make bench`)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lora-run", type=Path, help="an existing LoRA run to export instead of training one")
    parser.add_argument("--lora-steps", type=int, default=5, help="steps of the recipe when training the LoRA run")
    parser.add_argument("--keep", type=Path, help="write the files here (default: a temporary directory)")
    args = parser.parse_args()
    if not args.llama_python.exists():
        sys.exit(f"no llama.cpp venv: {args.llama_python} does not exist (`make bench` builds it; or --llama-python)")

    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        root = args.keep or Path(scratch)
        run = args.lora_run or train_lora(root / "lora-run", args.lora_steps)
        result = {"threads": args.threads, "prompts": PROMPTS, "new_tokens": NEW_TOKENS,
                  "perplexity_text": f"textwrap.py, first {PPL_TOKENS} tokens",
                  "embedded": check("smollm2", ["f16", "q8_0", "q4_0"], root / "embedded", args),
                  "lora_run": {"run": str(run), "steps": args.lora_steps if not args.lora_run else None,
                               **check(str(run), ["f16", "q8_0"], root / "lora", args)}}
    json.dump(result, sys.stdout, indent=2)
    print()
    f16 = [result["embedded"]["f16"], result["lora_run"]["f16"]]
    if not all(r["matches_parley"] and r["tokenizer_matches"] and r["chat_template_matches"] for r in f16):
        sys.exit(1)


def train_lora(out: Path, steps: int) -> Path:
    """The README's recipe, cut to `steps` steps: a real LoRA run directory."""
    from parley.train.config import load_config
    from parley.train.loop import start

    log(f"training the recipe's LoRA for {steps} steps ...")
    config = load_config(RECIPE, [f"max_steps={steps}", "data.val_rows=2", "eval.at_start=false",
                                  "optim.warmup_steps=0", f"out_dir={out}", "log.progress=false"])
    start(config)
    return out


def check(source: str, quants: list[str], out: Path, args) -> dict:
    """Export `source` at each quant and compare llama.cpp on each file with Parley on the source."""
    from parley import models
    from parley.templates import encode_chat, render
    from parley.train.export import export

    parley = models.load(str(Path(source) / "final") if Path(source, "final").is_dir() else source,
                         device="cpu", dtype="float32")
    tok = parley.tokenizer
    prompts = [[{"role": "user", "content": p}] for p in PROMPTS]
    text = Path(textwrap.__file__).read_text()
    ppl_ids = tok(text, add_special_tokens=False)["input_ids"][:PPL_TOKENS]
    job = {"prompts": [encode_chat(tok, parley.template, m, True) for m in prompts],
           "prompt_texts": [render(tok, parley.template, m, True) for m in prompts],
           "text": text, "text_ids": tok(text, add_special_tokens=False)["input_ids"], "ppl_ids": ppl_ids,
           "new_tokens": NEW_TOKENS, "threads": args.threads}
    ours = greedy(parley, prompts)
    report = {"parley_perplexity": round(perplexity(parley.model, ppl_ids), 3),
              "parley_answer": tok.decode(ours[1])}
    for quant in quants:
        log(f"{source}: exporting {quant} and running it in llama.cpp ...")
        start = time.perf_counter()
        path = export(source, out / quant / "model.gguf", format="gguf", quant=quant)
        export_s = time.perf_counter() - start
        theirs = run_worker(args.llama_python, path, job)
        same = [common_prefix(a, b) for a, b in zip(ours, theirs["continuations"])]
        report[quant] = {
            "export_s": round(export_s, 1), "size_mb": round(path.stat().st_size / 2**20, 1),
            "same_leading_tokens": same, "matches_parley": same == [NEW_TOKENS] * len(PROMPTS),
            "perplexity": round(math.exp(theirs["nll"]), 3),
            "tokenizer": theirs["tokenizer"], "tokenizer_matches": all(theirs["tokenizer"].values()),
            "chat_template_matches": theirs["chat_template"] == parley.template,
            "answer": tok.decode(theirs["continuations"][1]), "load_s": theirs["load_s"],
        }
    return report


def greedy(loaded, prompts: list[list[dict]]) -> list[list[int]]:
    """Parley's Engine, fp32, greedy, exactly NEW_TOKENS tokens (no stop ends a reply early)."""
    from parley.engine import LocalEngine, SamplingParams

    engine = LocalEngine(dataclasses.replace(loaded, stop_ids=[], stop_strings=[]), prefix_cache_mb=0)
    params = SamplingParams(temperature=0, max_new_tokens=NEW_TOKENS)
    return [[t.id for t in engine.stream(messages, params)] for messages in prompts]


def perplexity(model, ids: list[int]) -> float:
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1]
        nll = torch.nn.functional.cross_entropy(logits.float(), torch.tensor(ids[1:]))
    return math.exp(nll.item())


def run_worker(python: Path, gguf: Path, job: dict) -> dict:
    done = subprocess.run([str(python), __file__, "worker", str(gguf)], input=json.dumps(job),
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"llama.cpp worker on {gguf} exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout)


def worker() -> None:
    """In the bench venv: load the GGUF file in llama.cpp and do the job read from stdin."""
    import llama_cpp
    import numpy as np

    gguf, job = sys.argv[2], json.loads(sys.stdin.read())
    start = time.perf_counter()
    llm = llama_cpp.Llama(model_path=gguf, n_ctx=len(job["ppl_ids"]) + 64, n_batch=512, logits_all=True,
                          n_threads=job["threads"], n_threads_batch=job["threads"], n_gpu_layers=0, verbose=False)
    load_s = time.perf_counter() - start
    continuations = []
    for ids in job["prompts"]:
        llm.reset()
        tokens = llm.generate(ids, temp=0.0, repeat_penalty=1.0, reset=True)
        continuations.append([next(tokens) for _ in range(job["new_tokens"])])  # end of sequence not checked
        tokens.close()
    llm.reset()
    llm.eval(job["ppl_ids"])
    logits = np.asarray(llm.scores[: len(job["ppl_ids"]) - 1], dtype=np.float64)  # (T-1, vocab)
    logits -= logits.max(axis=1, keepdims=True)
    logprobs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    nll = -logprobs[np.arange(len(logits)), job["ppl_ids"][1:]].mean()
    text_ids = llm.tokenize(job["text"].encode(), add_bos=False, special=False)
    prompt_ids = [llm.tokenize(t.encode(), add_bos=True, special=True) for t in job["prompt_texts"]]
    print(json.dumps({
        "load_s": round(load_s, 2), "continuations": continuations, "nll": float(nll),
        "tokenizer": {"text_ids_match": text_ids == job["text_ids"], "prompt_ids_match": prompt_ids == job["prompts"],
                      "round_trip": detokenize(llm, text_ids) == job["text"]},
        "chat_template": llm.metadata.get("tokenizer.chat_template"),
    }))


def detokenize(llm, ids: list[int]) -> str:
    """llama.cpp's text for `ids`. Llama.detokenize gives each token a 32-byte buffer and silently drops
    longer pieces (SmolLM2 has 33-byte runs of spaces), so the C call is made with room to spare."""
    import ctypes

    import llama_cpp

    buffer, pieces = ctypes.create_string_buffer(1024), []
    for token in ids:
        size = llama_cpp.llama_token_to_piece(llm._model.vocab, token, buffer, len(buffer), 0, False)
        pieces.append(buffer.raw[:size])
    return b"".join(pieces).decode()


def common_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
