"""Build the small preference set of the feedback recipe (smollm2-dpo-feedback.toml) from real conversations.

    python examples/feedback_pairs.py          # writes examples/feedback/{train,heldout}.jsonl

Each pair is a question from the built-in chatterbot corpus, its own answer (chosen) and the answer to
a question from another part of the corpus (rejected: fluent, but not an answer to what was asked) —
the judgement a person makes with /edit or /pick when a reply misses the point. Every fifth
question is held out for `parley eval preference`. The files are TRL's prompt/chosen/rejected JSONL,
so `parley data prepare` and `parley train --set method=dpo` read them as they read the store's
feedback (`--source feedback`).
"""

from __future__ import annotations

import json
from pathlib import Path

from parley.data.records import Bad
from parley.data.sources import parse

OUT = Path(__file__).resolve().parent / "feedback"
PAIRS = 300  # 240 to train on, 60 held out


def main() -> None:
    dialogues = [r.messages for r in parse("chatterbot").read() if not isinstance(r, Bad) and len(r.messages) == 2]
    step = len(dialogues) // PAIRS
    chosen = dialogues[::step][:PAIRS]
    OUT.mkdir(exist_ok=True)
    with open(OUT / "train.jsonl", "w") as train, open(OUT / "heldout.jsonl", "w") as held:
        for i, (question, answer) in enumerate(chosen):
            # Half the corpus away: another topic (the corpus repeats some answers: skip an equal one).
            other = next(c[1]["content"] for k in range(PAIRS) if (c := chosen[(i + PAIRS // 2 + k) % PAIRS])
                         and c[1]["content"] != answer["content"])
            row = {"prompt": [question], "chosen": [answer], "rejected": [{"role": "assistant", "content": other}]}
            (held if i % 5 == 4 else train).write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {OUT}/train.jsonl and heldout.jsonl from {len(dialogues)} chatterbot dialogues")


if __name__ == "__main__":
    main()
