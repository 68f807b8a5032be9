"""Dialogue quality: generate the last assistant turn of held-out conversations, score BLEU/ROUGE.

    parley eval dialogue --model smollm2 --source chatterbot            # the held-out 5%
    parley eval dialogue --model runs/tuned/final --source chat:val.jsonl --split all

For each conversation the history before its last assistant turn (system prompt included) is
rendered with the model's chat template and the reply is generated greedily; that reply is scored
against the real turn:
    bleu                 corpus BLEU by sacrebleu (its signature is stored with the score, so the
                         number can be reproduced and compared: tokenizer, smoothing, version)
    rouge1/rouge2/rougeL mean F1 of Google's rouge-score with the Porter stemmer on
rouge-score keeps only ASCII letters and digits, so a reference that is mostly non-ASCII scores as
empty text: such references are counted and a warning says so. A few examples are kept side by
side for the summary.

Sources are `parley data` source specs (parley/data/sources.py); `split="validation"` keeps the
records `parley data prepare` holds out by content hash, so they were not trained on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from parley.errors import ConfigError
from parley.eval.completions import generate_all

NON_ASCII_WARN = 0.5  # share of non-space characters above which rouge-score sees too little


@dataclass(frozen=True)
class DialogueConfig:
    split: str = "validation"  # validation: the held-out records; all: every record
    val_ratio: float = 0.05  # the held-out share, as in `parley data prepare`
    limit: int = 0  # at most this many conversations (0 = all)
    max_new_tokens: int = 128  # reply length limit
    batch: int = 64  # replies decoded together (local models; as parley.eval.completions)
    examples: int = 5  # side-by-side examples kept in the results

    def __post_init__(self) -> None:
        if self.split not in ("all", "validation"):
            raise ConfigError(f"--split must be all or validation, got {self.split!r}")


def conversations(sources: list[str], config: DialogueConfig) -> list[tuple[list[dict], str, str]]:
    """(history, reference reply, where) for each usable conversation of `sources`."""
    from parley.data.prepare import in_validation
    from parley.data.records import Bad
    from parley.data.sources import parse

    found = []
    for spec in sources:
        for record in parse(spec).read():
            if isinstance(record, Bad) or record.kind != "chat":
                continue
            if config.split == "validation" and not in_validation(record, config.val_ratio):
                continue
            last = max((i for i, m in enumerate(record.messages) if m["role"] == "assistant"), default=None)
            if last is None or not record.messages[last]["content"].strip():
                continue
            history = [{"role": m["role"], "content": m["content"]} for m in record.messages[:last]]
            found.append((history, record.messages[last]["content"], record.where))
            if config.limit and len(found) >= config.limit:
                return found
    if not found:
        raise ConfigError(f"no conversation with an assistant reply in {', '.join(sources)} (split={config.split})")
    return found


def score(references: list[str], generated: list[str]) -> tuple[dict[str, float], dict]:
    """BLEU (sacrebleu) and ROUGE-1/2/L F1 (rouge-score, stemmed): metrics and details."""
    from rouge_score import rouge_scorer
    from sacrebleu.metrics import BLEU

    bleu = BLEU()
    corpus = bleu.corpus_score(generated, [references])
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for reference, hypothesis in zip(references, generated):
        for name, value in scorer.score(reference, hypothesis).items():
            totals[name] += value.fmeasure
    mostly_non_ascii = sum(_non_ascii_share(r) > NON_ASCII_WARN for r in references)
    metrics = {"bleu": corpus.score, **{name: total / len(references) for name, total in totals.items()}}
    details = {"sacrebleu_signature": str(bleu.get_signature()), "references_mostly_non_ascii": mostly_non_ascii}
    if mostly_non_ascii:
        details["warning"] = (
            f"{mostly_non_ascii} of {len(references)} references are mostly non-ASCII: rouge-score drops "
            "non-ASCII text, so ROUGE is not meaningful for them (BLEU is)"
        )
    return metrics, details


def generate_and_score(
    engine, found: list[tuple[list[dict], str, str]], config: DialogueConfig,
    on_done: Callable[[int], None] | None = None,
) -> dict:
    """Generate a reply for each `conversations()` item and score them (a results document)."""
    from parley.engine import SamplingParams

    params = SamplingParams(temperature=0, max_new_tokens=config.max_new_tokens)
    generated = generate_all(engine, [h for h, _, _ in found], [params] * len(found), config.batch, on_done)
    references = [reference for _, reference, _ in found]
    metrics, details = score(references, [g.strip() for g in generated])
    examples = [
        {"where": where, "context": _context(history), "reference": reference, "generated": text.strip()}
        for (history, reference, where), text in zip(found, generated)
    ]
    return {
        "kind": "dialogue",
        "settings": asdict(config),
        "metrics": metrics,
        "details": {"conversations": len(found), **details},
        "examples": examples[: config.examples],
        "replies": examples,
    }


def evaluate(engine, model: str, sources: list[str], config: DialogueConfig, out: str | Path) -> tuple[dict, Path, Path]:
    """generate_and_score with a progress bar, written to `out` (JSON) and its Markdown summary."""
    from parley.eval.report import progress, write_results

    found = conversations(sources, config)
    started = time.monotonic()
    with progress("replies", len(found)) as advance:
        results = generate_and_score(engine, found, config, on_done=advance)
    results = {"kind": "dialogue", "model": model, "sources": sources, **results}
    results["details"]["seconds"] = round(time.monotonic() - started, 1)
    return (results, *write_results(results, out))


def _context(history: list[dict]) -> str:
    return " / ".join(f"{m['role']}: {m['content']}" for m in history[-4:])


def _non_ascii_share(text: str) -> float:
    chars = [c for c in text if not c.isspace()]
    return sum(not c.isascii() for c in chars) / len(chars) if chars else 0.0
