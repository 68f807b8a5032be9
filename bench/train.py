"""Training speed on the embedded model: Parley's loop beside a plain transformers `Trainer`.

    .venv/bin/python bench/train.py [--batch-size 1] [--steps 6] [--warmup 2] [--seq-len 512] [--precision fp32]

For full fine-tuning and for LoRA (r=16 on q/v, peft), each of the two trainers runs in its own child
process (so peak memory is its own) on the same rows: --seq-len-token chunks of the Python standard
library's `email` package, tokenized by `parley.data.prepare` with the embedded tokenizer. Same
settings on both sides: batch size, AdamW lr 2e-4, cosine schedule, gradient clipping at 1.0, no
gradient checkpointing, precision. Parley's step time comes from consecutive `time` stamps in
metrics.jsonl, the Trainer's from a callback around each step; tokens/s is that of the fastest step
after --warmup (other jobs on a shared machine only slow steps down), with the median beside it. Peak memory: the child's max RSS on CPU, torch.cuda.max_memory_allocated on a GPU,
where model FLOPs utilisation is also reported (6N + 12·L·d·T FLOPs per token for full fine-tuning,
4N + 12·L·d·T for LoRA, whose frozen weights get no weight gradients; N excludes the embeddings'
lookup but includes the tied output projection; peak = --peak-tflops).

On a CPU the two runs of a method go at the same time, with half the cores each (`--together`): on a
shared machine they then share the same background load, which sequential runs do not (their tokens/s
then measure the neighbours more than the trainers). Prints one JSON object with the runs and the
ratio parley / Trainer per method.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--methods", default="full,lora")
    parser.add_argument("--together", action=argparse.BooleanOptionalAction, default=None,
                        help="run Parley and the Trainer at the same time, half the cores each (default on CPU: "
                             "on a shared machine both then see the same background load)")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="accelerator peak (H100/H200 dense bf16: 989)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not 1 <= args.warmup < args.steps:
        parser.error("--warmup must be at least 1 (the first step's time is not measurable) and below --steps")
    if args.child:  # the result goes to a file: Trainer prints its own summary on stdout
        Path(args.result).write_text(json.dumps(child(args)))
        return

    import torch

    together = (not torch.cuda.is_available()) if args.together is None else args.together
    threads = max(1, (os.cpu_count() or 2) // 2) if together else torch.get_num_threads()
    result = {"model": "smollm2 (SmolLM2-135M-Instruct)", "device": _device_name(), "threads_per_run": threads,
              "runs_at_the_same_time": together, "batch_size": args.batch_size, "seq_len": args.seq_len,
              "steps": args.steps, "warmup": args.warmup, "precision": args.precision}
    with tempfile.TemporaryDirectory() as tmp:
        data = make_rows(Path(tmp) / "rows", args.seq_len, args.batch_size * args.steps)
        for method in args.methods.split(","):
            runs = {}
            pending = []
            for trainer in ("parley", "trainer"):
                result_file = Path(tmp) / f"{trainer}-{method}.json"
                command = [sys.executable, __file__, "--child", f"{trainer}-{method}", "--data", str(data),
                           "--result", str(result_file),
                           *[f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                             if k not in ("child", "data", "methods", "result", "together")]]
                env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
                log = open(result_file.with_suffix(".log"), "w")
                proc = subprocess.Popen(command, stdout=log, stderr=log, cwd=tmp, env=env)
                pending.append((trainer, proc, result_file))
                if not together:
                    proc.wait()
            for trainer, proc, result_file in pending:
                if proc.wait():
                    sys.exit(f"{trainer}-{method} failed:\n{result_file.with_suffix('.log').read_text()[-3000:]}")
                runs[trainer] = json.loads(result_file.read_text())
                print(f"{trainer}-{method}: {runs[trainer]}", file=sys.stderr, flush=True)
            runs["ratio_tokens_per_s"] = round(runs["parley"]["tokens_per_s"] / runs["trainer"]["tokens_per_s"], 3)
            result[method] = runs
    json.dump(result, sys.stdout, indent=2)
    print()


def make_rows(out: Path, seq_len: int, rows: int) -> Path:
    """A prepared dir whose train split holds `rows` chunks of exactly `seq_len` tokens (all learned)."""
    import datasets

    from parley import models
    from parley.data.code_files import stdlib_root
    from parley.data.prepare import PrepareConfig, prepare

    loaded = models.load("smollm2", device="cpu")
    raw = out.with_name("raw")
    prepare([f"code:{stdlib_root() / 'email'}"], raw, loaded.tokenizer, loaded.template,
            PrepareConfig(max_len=seq_len, val_ratio=0.05))
    splits = datasets.load_from_disk(str(raw))
    full = splits["train"].filter(lambda row: len(row["input_ids"]) == seq_len)
    if len(full) < rows:
        sys.exit(f"only {len(full)} rows of {seq_len} tokens; lower --steps or --batch-size")
    datasets.DatasetDict({"train": full.select(range(rows)), "validation": full.select(range(1))}).save_to_disk(str(out))
    (out / "manifest.json").write_text((raw / "manifest.json").read_text())
    return out


def child(args) -> dict:
    trainer, method = args.child.split("-")
    run = parley_run if trainer == "parley" else trainer_run
    step_times, tokens_per_step, n_params, config = run(args, method)
    import torch

    timed = step_times[args.warmup:]
    # The fastest step: on a shared machine other jobs only ever slow a step down, so the minimum is
    # the least disturbed measurement; the median is reported beside it.
    tokens_per_s = tokens_per_step / min(timed)
    result = {"tokens_per_s": round(tokens_per_s, 1), "tokens_per_s_median": round(tokens_per_step / statistics.median(timed), 1),
              "step_s_min": round(min(timed), 4), "timed_steps": len(timed)}
    if torch.cuda.is_available():
        result["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        flops_per_token = (6 if method == "full" else 4) * n_params + 12 * config.num_hidden_layers * config.hidden_size * args.seq_len
        result["mfu"] = round(flops_per_token * tokens_per_s / (args.peak_tflops * 1e12), 4)
    else:
        result["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    return result


def parley_run(args, method: str):
    from parley.train.config import load_config
    from parley.train.loop import start

    with tempfile.TemporaryDirectory() as tmp:
        settings = [f"data.sources={args.data}", f"out_dir={tmp}/run", f"max_steps={args.steps}", f"batch_size={args.batch_size}",
                    "optim.lr=2e-4", "optim.schedule=cosine", "optim.grad_clip=1.0", f"precision={args.precision}",
                    "eval.every=0", "data.val_rows=1", "checkpoint.keep_last=1", "log.progress=false",
                    f"data.max_len={args.seq_len}", "lora.dropout=0.05", "lora.alpha=32"]
        if method == "lora":
            settings.append("lora.r=16")
        start(load_config(None, settings))
        records = [json.loads(line) for line in open(f"{tmp}/run/metrics.jsonl") if '"loss"' in line]
        stamps = [r["time"] for r in records]
        # Step 1's time includes setup; its duration is not knowable from stamps, so it is never timed.
        step_times = [float("nan")] + [b - a for a, b in zip(stamps, stamps[1:])]
    n_params, config = _model_size()
    return step_times, args.batch_size * args.seq_len, n_params, config


def trainer_run(args, method: str):
    import datasets
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments, default_data_collator

    from parley import models

    loaded = models.load("smollm2", device="cpu", dtype="float32")
    model = loaded.model.train()
    if method == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, task_type=TaskType.CAUSAL_LM))
    rows = datasets.load_from_disk(args.data)["train"].select_columns(["input_ids", "labels"])
    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            _sync()
            self.start = time.perf_counter()

        def on_step_end(self, *a, **k):
            _sync()
            times.append(time.perf_counter() - self.start)

    with tempfile.TemporaryDirectory() as tmp:
        settings = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=args.batch_size, max_steps=args.steps, learning_rate=2e-4,
            lr_scheduler_type="cosine", warmup_steps=0, max_grad_norm=1.0, weight_decay=0.0, bf16=args.precision == "bf16",
            save_strategy="no", eval_strategy="no", report_to=[], logging_steps=10**6, dataloader_num_workers=0,
            use_cpu=not torch.cuda.is_available(), disable_tqdm=True, seed=0,
        )
        Trainer(model=model, args=settings, train_dataset=rows, data_collator=default_data_collator,
                callbacks=[Clock()]).train()
    n_params, config = _model_size()
    # The first steps are not timed either side (--warmup); Trainer's clock starts at its first step.
    return [float("nan")] + times[1:], args.batch_size * args.seq_len, n_params, config


def _model_size():
    from parley import models

    model = models.load("smollm2", device="cpu").model
    # Parameters in matmuls per token: everything but the embedding lookup; the tied output projection counts once.
    n = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
    n += model.get_output_embeddings().weight.numel() if model.config.tie_word_embeddings else 0
    return n, model.config


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _device_name() -> str:
    import platform

    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores"


if __name__ == "__main__":
    main()
