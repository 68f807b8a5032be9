"""Does the model explain its code? How often answers end with an explanation, and how close it is.

    parley eval explanations --model smollm2 --source python-stdlib-pairs --limit 64
    parley eval explanations --model runs/smollm2-explain-code/final --source pairs:~/src/myproject

The requests are code-instruction pairs (`pairs:DIR`, `python-stdlib-pairs`: data/code_pairs.py),
by default only those `parley data prepare` holds out by content hash (the `validation` split), so a
model trained on the same source never saw them. Each request is answered greedily, and then:

    explained        share of answers that contain an explanation: at least `min_words` words of
                     text after the answer's last code block (`code_blocks.after_last_block`, the
                     Markdown parser the chat draws replies with). An answer with no code block,
                     or whose only block the token limit cut open, has none.
    with_code        share of answers with at least one code block
    rouge1/2/L, bleu the answer's explanation (that text; "" when there is none, which scores 0)
                     against the reference answer's, by the dialogue eval's scorer (dialogue.score)
    restated         share of the explanations given that mostly say the request again: at least
                     `RESTATED` of their words, in order, are the request's (ROUGE-L recall)

The pairs' reference explanation is the docstring's detail after the summary the request quotes,
so echoing the request earns little; `echo_rougeL` in the details is what it earns (the request's
text as the explanation), the floor to read ROUGE against.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from parley.code_blocks import after_last_block
from parley.errors import ConfigError
from parley.eval.completions import generate_all
from parley.eval.dialogue import DialogueConfig, conversations, score

RESTATED = 0.8  # share of an explanation's words (in order) found in the request: it says the request again


@dataclass(frozen=True)
class ExplanationsConfig:
    split: str = "validation"  # validation: the pairs `parley data prepare` holds out; all: every pair
    val_ratio: float = 0.05  # the held-out share, as in `parley data prepare` (train's data.val_ratio)
    limit: int = 0  # at most this many requests, over all sources in order (0 = all)
    min_words: int = 5  # words of text after the last code block that count as an explanation
    max_new_tokens: int = 256  # answer length limit: an answer cut inside its code has no explanation
    batch: int = 64  # answers decoded together (local models; as parley.eval.completions)
    examples: int = 5  # side-by-side examples kept in the results

    def __post_init__(self) -> None:
        if self.min_words < 1:
            raise ConfigError(f"--min-words must be at least 1, got {self.min_words}")
        DialogueConfig(split=self.split)  # the same splits, checked once


def explanation(answer: str, min_words: int) -> str:
    """The answer's explanation: its text after the last code block, or "" when that is shorter
    than `min_words` words or the answer has no code block."""
    text = after_last_block(answer) or ""
    return text if len(text.split()) >= min_words else ""


def requests(sources: list[str], config: ExplanationsConfig) -> list[tuple[list[dict], str, str]]:
    """(messages before the answer, reference answer, where) for each pair whose answer explains its code."""
    found = conversations(sources, DialogueConfig(split=config.split, val_ratio=config.val_ratio))
    found = [item for item in found if explanation(item[1], config.min_words)]
    if not found:
        raise ConfigError(f"no code answer with an explanation after its code in {', '.join(sources)} "
                          f"(split={config.split}); use pair sources such as pairs:DIR or python-stdlib-pairs")
    return found[: config.limit] if config.limit else found


def restates(explanation: str, request: str) -> bool:
    """Whether `explanation` mostly repeats `request`: ROUGE-L recall of its words in the request."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return scorer.score(explanation, request)["rougeL"].recall >= RESTATED


def score_answers(found: list[tuple[list[dict], str, str]], answers: list[str], config: ExplanationsConfig) -> dict:
    """A results document (without model and sources) for `answers`, one per `requests()` item."""
    answers = [a.strip() for a in answers]
    mine = [explanation(a, config.min_words) for a in answers]
    references = [explanation(reference, config.min_words) for _, reference, _ in found]
    metrics, details = score(references, mine)
    asked = [history[-1]["content"] for history, _, _ in found]
    echo, _ = score(references, asked)
    given = [(text, request) for text, request in zip(mine, asked) if text]
    replies = [
        {"where": where, "context": history[-1]["content"], "reference": reference, "generated": answer,
         "explanation": text}
        for (history, reference, where), answer, text in zip(found, answers, mine)
    ]
    return {
        "kind": "explanations",
        "settings": asdict(config),
        "metrics": {
            "explained": sum(bool(t) for t in mine) / len(mine),
            "with_code": sum(after_last_block(a) is not None for a in answers) / len(answers),
            **{name: metrics[name] for name in ("rouge1", "rouge2", "rougeL", "bleu")},
            "restated": sum(restates(*pair) for pair in given) / len(given) if given else 0.0,
        },
        "details": {"requests": len(found), "echo_rougeL": echo["rougeL"], **details},
        "examples": replies[: config.examples],
        "replies": replies,
    }


def generate_and_score(engine, found: list[tuple[list[dict], str, str]], config: ExplanationsConfig,
                       on_done: Callable[[int], None] | None = None) -> dict:
    """Answer each `requests()` item greedily and score the answers."""
    from parley.engine import SamplingParams

    params = SamplingParams(temperature=0, max_new_tokens=config.max_new_tokens)
    answers = generate_all(engine, [h for h, _, _ in found], [params] * len(found), config.batch, on_done)
    return score_answers(found, answers, config)


def evaluate(engine, model: str, sources: list[str], config: ExplanationsConfig,
             out: str | Path) -> tuple[dict, Path, Path]:
    """generate_and_score with a progress bar, written to `out` (JSON) and its Markdown summary."""
    from parley.eval.report import progress, write_results

    found = requests(sources, config)
    started = time.monotonic()
    with progress("answers", len(found)) as advance:
        results = generate_and_score(engine, found, config, on_done=advance)
    results = {"kind": "explanations", "model": model, "sources": sources, **results}
    results["details"]["seconds"] = round(time.monotonic() - started, 1)
    return (results, *write_results(results, out))
