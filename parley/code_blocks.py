"""The code blocks of a Markdown reply, as the chat draws them: what `/run` runs and `/copy` copies.

    code_blocks("Try:\n```python\nprint(1)\n```\n")  ->  [Block(language="python", code="print(1)\n")]
    after_last_block("```python\nprint(1)\n```\n\nIt prints 1.")  ->  "It prints 1."

Parsed with markdown-it (the parser Rich draws the reply with), so a block is exactly what the user
sees as one: fenced (```/~~~, with the info string's first word as its language) or indented (no
language). Limit: a fence the model never closed runs to the end of the reply, as Markdown says.
"""

from __future__ import annotations

from dataclasses import dataclass

PYTHON = ("", "python", "py", "python3")  # languages /run takes ("": unlabelled, as models often write)


@dataclass(frozen=True)
class Block:
    language: str  # lower-cased first word of the fence's info string; "" for none
    code: str

    @property
    def python(self) -> bool:
        return self.language in PYTHON


def code_blocks(markdown: str) -> list[Block]:
    """Every code block in `markdown`, in order."""
    from markdown_it import MarkdownIt

    return [Block(token.info.split(" ")[0].lower() if token.info.strip() else "", token.content)
            for token in MarkdownIt().parse(markdown) if token.type in ("fence", "code_block")]


def after_last_block(markdown: str) -> str | None:
    """The text after the last code block, stripped ("" when the reply ends with one); None when
    there is no code block. What a code answer says after its code: its closing explanation."""
    from markdown_it import MarkdownIt

    ends = [token.map[1] for token in MarkdownIt().parse(markdown)
            if token.type in ("fence", "code_block") and token.map]
    if not ends:
        return None
    return "\n".join(markdown.splitlines()[max(ends):]).strip()


def last_blocks(messages: list[dict]) -> list[Block]:
    """The code blocks of the newest assistant reply that has any (none: [])."""
    for message in reversed(messages):
        if message["role"] == "assistant" and (blocks := code_blocks(message["content"])):
            return blocks
    return []
