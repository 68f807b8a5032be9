"""The rolling conversation buffer: fit a dialogue into a token budget, and say what was dropped.

One rule, used by the chat, the server and data preparation alike:
- leading system messages always stay;
- the oldest whole turns go first (a turn is a user message and the replies that follow it);
- a turn is never cut in half, except when the newest turn alone is over budget: then the middle of
  its first message is cut out, and a marker put in its place (its start usually holds the
  instruction, "Summarize this:", and its end the question), and the result says so.

Token counts are exact: every candidate is rendered with the chat template and tokenized, since
templates add tokens around each message that a per-message count would miss. The number of turns
to keep is found by galloping and bisecting, so a long history costs O(log turns) renders, not one
per dropped turn; that relies on fewer whole turns never rendering to more tokens, which holds for
templates that render each message in turn. How much room to leave for the reply is `reply_room`
(the engines' `fit` use it; chat and the server alike).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from parley.errors import ContextError
from parley.templates import encode_chat


@dataclass
class Fitted:
    messages: list[dict]  # what goes to the model
    tokens: int  # their exact length, rendered
    dropped: list[dict] = field(default_factory=list)  # whole messages left out, oldest first
    truncated_tokens: int = 0  # tokens cut from the middle of an over-long turn

    @property
    def notice(self) -> str | None:
        """A one-line note for the user, or None when everything fit."""
        parts = []
        if self.dropped:
            turns = sum(1 for m in self.dropped if m["role"] == "user") or 1
            parts.append(f"dropped the {turns} oldest turn{'s' * (turns > 1)} ({len(self.dropped)} messages)")
        if self.truncated_tokens:
            parts.append(f"cut {self.truncated_tokens} tokens from the middle of the last message")
        return ("context full: " + "; ".join(parts)) if parts else None


def reply_room(window: int, max_new_tokens: int) -> int:
    """Tokens kept free for the reply: all it may use, but at most half the window, so that a large
    max_new_tokens shortens the reply's room rather than leaving no room for the conversation."""
    return min(max_new_tokens, window // 2)


def fit_messages(
    messages: list[dict], tokenizer, template: str, budget: int, *, add_generation_prompt: bool = True,
    tools: list[dict] | None = None,
) -> Fitted:
    """Keep as much recent dialogue as fits in `budget` tokens, by the rule in the module docstring.
    `tools` are rendered with every candidate (they cost tokens but are never dropped); a tool result
    belongs to its user message's turn, so it never outlives the call it answers."""
    def count(candidate: list[dict]) -> int:
        return len(encode_chat(tokenizer, template, candidate, add_generation_prompt, tools))

    system, turns = _split(messages)

    def keeping(n: int) -> list[dict]:  # the system messages and the newest n turns
        return system + [m for turn in turns[len(turns) - n:] for m in turn]

    counted: dict[int, int] = {}

    def fits(n: int) -> bool:
        counted[n] = count(keeping(n))
        return counted[n] <= budget

    # Keep the most turns that fit. Fewer turns render to fewer tokens, so rather than dropping one
    # turn and re-rendering everything each time (quadratic in a long history), try all, then gallop
    # from the newest turn (1, 2, 4, ... turns) and bisect: O(log n) renders, each no longer than what
    # is kept (plus one of the whole history).
    if fits(len(turns)) or len(turns) <= 1:
        good = len(turns)
    else:
        good, bad = 0, len(turns)
        n = 1
        while n < bad and fits(n):
            good, n = n, n * 2
        bad = min(bad, n)
        while bad - good > 1:
            mid = (good + bad) // 2
            good, bad = (mid, bad) if fits(mid) else (good, mid)
        good = max(good, 1)  # none fit: the newest turn is cut below
    dropped = [m for turn in turns[: len(turns) - good] for m in turn]
    tokens = counted[good] if good in counted else count(keeping(good))
    if tokens <= budget:
        return Fitted(keeping(good), tokens, dropped)
    turns = turns[len(turns) - good:]

    alone = count(system + [{"role": "user", "content": ""}])
    if alone > budget:
        raise ContextError(
            f"the system prompt alone takes {alone} tokens of a {budget}-token budget: shorten it "
            "or lower max_new_tokens"
        )
    turn = [dict(m) for m in turns[0]]
    ids = tokenizer(turn[0]["content"], add_special_tokens=False)["input_ids"]
    cut = 0
    while tokens > budget:  # re-render after each cut: token boundaries can shift at the seams
        cut = min(len(ids), cut + tokens - budget)
        turn[0]["content"] = _without_middle(tokenizer, ids, cut)
        tokens = count(system + turn)
        if cut == len(ids) and tokens > budget:
            raise ContextError(
                f"the last turn does not fit in {budget} tokens even with its first message emptied: "
                "shorten it or lower max_new_tokens"
            )
    return Fitted(system + turn, tokens, dropped, truncated_tokens=cut)


CUT_MARK = "\n[… {} tokens cut …]\n"  # where the middle of an over-long message was


def _without_middle(tokenizer, ids: list[int], cut: int) -> str:
    """The text of `ids` with `cut` tokens taken from its middle and a marker saying so in their place
    (the marker's own tokens are counted by the caller's re-render); everything cut: empty."""
    if cut >= len(ids):
        return ""
    head = (len(ids) - cut) // 2
    tail = len(ids) - cut - head
    return tokenizer.decode(ids[:head]) + CUT_MARK.format(cut) + tokenizer.decode(ids[len(ids) - tail:])


def _split(messages: list[dict]) -> tuple[list[dict], list[list[dict]]]:
    """Leading system messages, then turns: each starts at a user message."""
    start = 0
    while start < len(messages) and messages[start]["role"] == "system":
        start += 1
    turns: list[list[dict]] = []
    for message in messages[start:]:
        if message["role"] == "user" or not turns:
            turns.append([])
        turns[-1].append(message)
    return messages[:start], turns
