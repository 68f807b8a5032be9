"""Write a folder of real prose, offline: the Python Language Reference that ships inside Python.

    python examples/python_reference.py data/python-reference

`pydoc_data.topics` (part of the standard library, PSF licence) holds the text of the reference
manual's topics — statements, expressions, the data model, built-in types — as plain text, the pages
`help("assert")` shows. Each topic becomes one `.txt` file; every 8th (in name order) goes to
`heldout/` to measure perplexity on, the rest to `train/` (about 70 files and 400 KB, 100k tokens).
Used by examples/smollm2-prose-chat.toml: point its `data.sources` at your own folder instead.
"""

from __future__ import annotations

import sys
from pathlib import Path

HELDOUT_EVERY = 8


def write(out: Path) -> dict[str, int]:
    from pydoc_data.topics import topics

    counts = {"train": 0, "heldout": 0}
    for i, name in enumerate(sorted(topics)):
        split = "heldout" if i % HELDOUT_EVERY == 3 else "train"
        target = out / split / f"{name}.txt"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(topics[name], encoding="utf-8")
        counts[split] += 1
    return counts


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__.split("\n\n")[1])
    counts = write(Path(sys.argv[1]))
    print(f"{sys.argv[1]}: train/ {counts['train']} files, heldout/ {counts['heldout']} files")
