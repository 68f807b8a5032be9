"""Benchmark: `parley data prepare` throughput and memory, beside a plain `datasets.map` in the same run.

    .venv/bin/python bench/data.py [--copies 8] [--repeat 2] [--no-memory] [--text-mb 100 1000] [--only-text]

With the embedded model's tokenizer (SmolLM2, loaded alone from the model cache):

- code: prepare on the built-in `python-stdlib` source (walk the tree, read, filter, tokenize, chunk
  to 2048, split, write) vs the named baseline: the same kept files' texts, already in memory →
  `Dataset.from_dict` → `.map(tokenizer, batched=True)` → `save_to_disk` (no reading, no filters,
  no chunking, no split).
- chat: prepare on a messages JSONL of the `python-stdlib-pairs` + `chatterbot` conversations
  (parse, check, render each assistant turn's prompt and reply with the template, mask, split,
  write) vs the baseline `.map` over the same conversations in memory that renders each with
  `apply_chat_template` and tokenizes it, with no mask.
Each is timed `--repeat` times, alternating, and the fastest run of each is reported.
- memory: peak RSS of prepare in a fresh process on a corpus of the stdlib copied `--copies` times
  (each file given a unique first line, so none is dropped as a duplicate) beside the same on one
  copy: streaming means the two should be close. The tokenizer alone is in memory, not the model.

- text: peak RSS and time of `prepare` on a web-text JSONL corpus of `--text-mb` megabytes (prose
  documents of 2-8 KB drawn from the stdlib's docstring vocabulary with a fixed seed, so none is a
  duplicate or fails a quality rule; every cleaning rule on, MinHash near-dup included, packed to 2048)
  beside the named baseline in the same run: `datasets.load_dataset("json")` → `.map(tokenizer,
  batched=True)` → `save_to_disk`, each in a fresh process. Reported per size with the ratio
  map/parley of peak RSS; across sizes, the growth of each.

Prints one JSON object; progress goes to stderr. Timings are wall-clock on a shared machine: compare
the two columns of one run, not runs with each other.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from parley.data.prepare import PrepareConfig, prepare
from parley.data.records import Bad
from parley.data.sources import parse

CHILD = """
import json, sys
from pathlib import Path
from transformers import AutoTokenizer
from parley.data.prepare import PrepareConfig, prepare
from parley.templates import template_for
tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
def high_water_mb():  # VmHWM: peak resident memory of this process image (ru_maxrss survives exec)
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024
before = high_water_mb()
manifest = prepare([sys.argv[2]], Path(sys.argv[3]), tokenizer, template_for(tokenizer), PrepareConfig(max_len=2048))
peak = high_water_mb()
print(json.dumps({"rss_before_mb": before, "peak_rss_mb": peak, "records": manifest.records,
                  "tokens": sum(s["tokens"] for s in manifest.splits.values())}))
"""


TEXT_CHILD = """
import json, sys, time
from pathlib import Path
from transformers import AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
def high_water_mb():
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024
before, started = high_water_mb(), time.perf_counter()
if sys.argv[4] == "parley":
    from parley.data.prepare import PrepareConfig, prepare
    from parley.templates import template_for
    manifest = prepare(["text:" + sys.argv[2]], Path(sys.argv[3]), tokenizer, template_for(tokenizer),
                       PrepareConfig(max_len=2048, pack=True))
    records, tokens = manifest.records, sum(s["tokens"] for s in manifest.splits.values())
    skipped = manifest.sources[0]["skipped"]
else:
    import datasets
    datasets.disable_progress_bars()
    data = datasets.load_dataset("json", data_files=sys.argv[2], split="train", cache_dir=sys.argv[3] + "-cache")
    mapped = data.map(lambda b: {"input_ids": tokenizer(b["text"], add_special_tokens=False)["input_ids"]},
                      batched=True, remove_columns=data.column_names)
    mapped.save_to_disk(sys.argv[3])
    records, tokens, skipped = len(mapped), None, {}
print(json.dumps({"rss_before_mb": before, "peak_rss_mb": high_water_mb(), "seconds": time.perf_counter() - started,
                  "records": records, "tokens": tokens, "skipped": skipped}))
"""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def embedded_tokenizer():
    from transformers import AutoTokenizer

    from parley import embedded
    from parley.templates import template_for

    path = embedded.ensure_cached(progress=log)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    return path, tokenizer, template_for(tokenizer)


def records_of(specs: list[str]):
    return [r for spec in specs for r in parse(spec).read() if not isinstance(r, Bad)]


def time_prepare(specs, tokenizer, template, tmp: Path) -> dict:
    started = time.perf_counter()
    manifest = prepare(specs, tmp / "parley", tokenizer, template, PrepareConfig(max_len=2048, overwrite=True))
    seconds = time.perf_counter() - started
    tokens = sum(s["tokens"] for s in manifest.splits.values())
    return _rates(seconds, manifest.records, tokens)


def time_map(column: str, values: list, to_ids, tmp: Path) -> dict:
    import datasets

    datasets.disable_progress_bars()
    started = time.perf_counter()
    dataset = datasets.Dataset.from_dict({column: values})
    mapped = dataset.map(lambda batch: {"input_ids": to_ids(batch[column])}, batched=True, remove_columns=[column])
    mapped.save_to_disk(str(tmp / "map"))
    seconds = time.perf_counter() - started
    tokens = sum(len(ids) for ids in mapped["input_ids"])
    shutil.rmtree(tmp / "map")
    return _rates(seconds, len(values), tokens)


def _rates(seconds: float, records: int, tokens: int) -> dict:
    return {"seconds": round(seconds, 2), "records": records, "tokens": tokens,
            "records_per_s": round(records / seconds, 1), "tokens_per_s": round(tokens / seconds)}


def fastest(repeat: int, ours, baseline) -> dict:
    """Alternate the two `repeat` times (the machine's load changes); keep each one's fastest run."""
    runs = {"parley_prepare": [], "datasets_map": []}
    for _ in range(repeat):
        runs["parley_prepare"].append(ours())
        runs["datasets_map"].append(baseline())
    best = {name: min(results, key=lambda r: r["seconds"]) for name, results in runs.items()}
    best["speed_ratio"] = round(best["datasets_map"]["seconds"] / best["parley_prepare"]["seconds"], 2)
    return best


def bench_code(tokenizer, template, tmp: Path, repeat: int) -> dict:
    log("code: python-stdlib ...")
    texts = [r.messages[0]["content"] for r in records_of(["python-stdlib"])]
    return fastest(
        repeat,
        lambda: time_prepare(["python-stdlib"], tokenizer, template, tmp),
        lambda: time_map("text", texts, lambda batch: tokenizer(batch, add_special_tokens=False)["input_ids"], tmp),
    )


def bench_chat(tokenizer, template, tmp: Path, repeat: int) -> dict:
    log("chat: python-stdlib-pairs + chatterbot as messages JSONL ...")
    conversations = [r.messages for r in records_of(["python-stdlib-pairs", "chatterbot"])]
    path = tmp / "chats.jsonl"
    path.write_text("".join(json.dumps({"messages": m}) + "\n" for m in conversations), encoding="utf-8")

    def to_ids(batch):
        texts = [tokenizer.apply_chat_template(m, chat_template=template, tokenize=False) for m in batch]
        return tokenizer(texts, add_special_tokens=False)["input_ids"]

    return fastest(
        repeat,
        lambda: time_prepare([f"messages:{path}"], tokenizer, template, tmp),
        lambda: time_map("messages", conversations, to_ids, tmp),
    )


def build_corpus(root: Path, copies: int) -> int:
    """`copies` copies of the stdlib's .py files, each file's first line made unique; returns bytes."""
    from parley.data.code_files import stdlib_root

    source = stdlib_root()
    files = [p for p in sorted(source.rglob("*.py")) if "site-packages" not in p.parts]
    total = 0
    for k in range(copies):
        for path in files:
            target = root / f"copy{k}" / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            data = f"# copy {k}\n".encode() + path.read_bytes()
            target.write_bytes(data)
            total += len(data)
    return total


def peak_rss(model_dir: Path, corpus: Path, out: Path) -> dict:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, str(model_dir), f"code:{corpus}", str(out)],
                          capture_output=True, text=True, check=True)
    result = json.loads(done.stdout)
    result["seconds"] = round(time.perf_counter() - started, 1)
    shutil.rmtree(out)
    return {k: round(v, 1) if isinstance(v, float) else v for k, v in result.items()}


def bench_memory(model_dir: Path, copies: int, tmp: Path) -> dict:
    small, large = tmp / "one", tmp / "many"
    small_bytes = build_corpus(small, 1)
    large_bytes = build_corpus(large, copies)
    log(f"memory: prepare on {small_bytes / 1e6:.0f} MB ...")
    one = peak_rss(model_dir, small, tmp / "out-one")
    log(f"memory: prepare on {large_bytes / 1e6:.0f} MB ...")
    many = peak_rss(model_dir, large, tmp / "out-many")
    return {"corpus_mb": {"one_copy": round(small_bytes / 1e6), f"{copies}_copies": round(large_bytes / 1e6)},
            "one_copy": one, f"{copies}_copies": many,
            "peak_rss_growth_mb": round(many["peak_rss_mb"] - one["peak_rss_mb"], 1)}


def build_text_corpus(path: Path, megabytes: float, seed: int = 0) -> int:
    """A JSONL file of ~`megabytes` MB of distinct prose-like documents ({"text": ...}); returns bytes."""
    import random
    import re

    from parley.data.code_files import stdlib_root

    words = sorted({w for p in sorted(stdlib_root().glob("*.py"))[:200]
                    for w in re.findall(r"[a-z]{3,12}", p.read_text(encoding="utf-8", errors="replace"))})
    rng = random.Random(seed)
    total, target = 0, int(megabytes * 1e6)
    with open(path, "w", encoding="utf-8") as f:
        while total < target:
            sentences = []
            for _ in range(rng.randint(25, 100)):
                sentence = " ".join(rng.choices(words, k=rng.randint(6, 18)))
                sentences.append(sentence[0].upper() + sentence[1:] + ".")
            line = json.dumps({"text": " ".join(sentences), "url": f"https://example.org/{total}"}) + "\n"
            f.write(line)
            total += len(line.encode())
    return total


def text_child(model_dir: Path, corpus: Path, out: Path, side: str) -> dict:
    done = subprocess.run([sys.executable, "-c", TEXT_CHILD, str(model_dir), str(corpus), str(out), side],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{side} on {corpus} failed:\n{done.stderr[-3000:]}")
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(f"{out}-cache", ignore_errors=True)
    result = json.loads(done.stdout)
    return {k: round(v, 1) if isinstance(v, float) else v for k, v in result.items()}


def bench_text(model_dir: Path, sizes: list[float], tmp: Path) -> dict:
    report = {}
    for mb in sizes:
        corpus = tmp / f"web-{mb:g}mb.jsonl"
        size = build_text_corpus(corpus, mb)
        log(f"text: {size / 1e6:.0f} MB web-text JSONL: parley prepare ...")
        ours = text_child(model_dir, corpus, tmp / "text-parley", "parley")
        log(f"text: {size / 1e6:.0f} MB web-text JSONL: datasets.map ...")
        theirs = text_child(model_dir, corpus, tmp / "text-map", "map")
        corpus.unlink()
        report[f"{mb:g}_mb"] = {"corpus_mb": round(size / 1e6, 1), "parley_prepare": ours, "datasets_map": theirs,
                                "peak_rss_ratio_map_over_parley": round(theirs["peak_rss_mb"] / ours["peak_rss_mb"], 2)}
    if len(sizes) > 1:
        small, large = report[f"{sizes[0]:g}_mb"], report[f"{sizes[-1]:g}_mb"]
        report["peak_rss_growth_mb"] = {side: round(large[side]["peak_rss_mb"] - small[side]["peak_rss_mb"], 1)
                                        for side in ("parley_prepare", "datasets_map")}
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=8, help="stdlib copies in the memory corpus (~30 MB each)")
    parser.add_argument("--repeat", type=int, default=2, help="timed runs of each side (the fastest is kept)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-RSS part (the slow one)")
    parser.add_argument("--text-mb", type=float, nargs="+", default=[100], help="web-text corpus sizes in MB (e.g. 100 1000); 0 skips")
    parser.add_argument("--only-text", action="store_true", help="run only the text case")
    args = parser.parse_args()

    model_dir, tokenizer, template = embedded_tokenizer()
    report = {"tokenizer": "smollm2 (embedded)", "max_len": 2048}
    with tempfile.TemporaryDirectory(prefix="parley-bench-data-") as tmp:
        if not args.only_text:
            report["code"] = bench_code(tokenizer, template, Path(tmp), args.repeat)
            report["chat"] = bench_chat(tokenizer, template, Path(tmp), args.repeat)
            if not args.no_memory:
                report["memory"] = bench_memory(model_dir, args.copies, Path(tmp))
        sizes = [mb for mb in args.text_mb if mb > 0]
        if sizes:
            report["text"] = bench_text(model_dir, sizes, Path(tmp))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
