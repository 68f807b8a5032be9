"""How sure the model was of each token of a reply, and what it nearly said: the maths every front end shares.

    from parley.explain.confidence import ReplyToken, bucket, least_certain, why_lines
    tokens = [ReplyToken.of(t, i) for i, t in enumerate(engine.stream(messages, SamplingParams(top_logprobs=5)))]
    bucket(tokens[0].logprob)              # 0 (sure) .. 3 (unsure): the colour a front end paints it
    for line in why_lines(tokens): print(line)   # the least certain tokens, each with its alternatives

The numbers are the engine's own (`engine.Token.logprob` and `.top`: the model's distribution before
temperature, top-p/k and any grammar), so a token forced by a schema can still show as unlikely.

`BUCKETS` are probability thresholds (0.8, 0.5, 0.2): bucket 0 at or above 80%, 1 from 50%, 2 from 20%,
3 below. The terminal (`/confidence`) and the page (the toggle, serve/web/app.js: the same thresholds, kept
equal by a test) colour by them. `entropy` is over the reported alternatives with the rest of the mass as
one more outcome: a lower bound on the full distribution's entropy (exact when the alternatives hold all of
it). A remote model's token is a streamed chunk (its logprob the sum of the chunk's tokens).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

BUCKETS = (0.8, 0.5, 0.2)  # probability thresholds between colour buckets 0 (sure) .. 3 (unsure)
WHY_TOKENS = 5  # how many of the least certain tokens /why and --explain list
ALTERNATIVES = 5  # alternatives asked of the engine per token (SamplingParams.top_logprobs)


@dataclass
class ReplyToken:
    """One reply token as the explanations see it."""

    index: int  # its position in the reply (0 = first token)
    text: str  # the text it released ('' while a character or stop string was held back)
    logprob: float  # natural log of its probability under the model
    top: list[tuple[str, float]] = field(default_factory=list)  # the likeliest tokens there, best first
    piece: str | None = None  # the token itself where it released no text (the end token, half a character)

    @classmethod
    def of(cls, token, index: int) -> ReplyToken:
        """From an `engine.Token`."""
        piece = None
        if not token.text and token.id in token.top_ids:  # e.g. <|im_end|>: named by its alternatives' entry
            piece = token.top[token.top_ids.index(token.id)][0]
        return cls(index, token.text, token.logprob, list(token.top), piece)

    @property
    def probability(self) -> float:
        return probability(self.logprob)

    @property
    def entropy(self) -> float:
        return entropy(self.top)


def probability(logprob: float) -> float:
    """exp(logprob), 0 for an unknown (NaN) one."""
    return 0.0 if math.isnan(logprob) else math.exp(logprob)


def bucket(logprob: float) -> int:
    """The colour bucket of a token: 0 (p >= 0.8) .. 3 (p < 0.2); an unknown (NaN) logprob is 0 (uncoloured)."""
    if math.isnan(logprob):
        return 0
    p = math.exp(logprob)
    return next((i for i, threshold in enumerate(BUCKETS) if p >= threshold), len(BUCKETS))


def entropy(top: list[tuple[str, float]]) -> float:
    """Entropy in nats of the alternatives' distribution, the mass they leave out counted as one outcome
    (a lower bound on the full entropy)."""
    probabilities = [math.exp(lp) for _, lp in top if not math.isnan(lp)]
    rest = max(0.0, 1.0 - sum(probabilities))
    return -sum(p * math.log(p) for p in [*probabilities, rest] if p > 0)


def least_certain(tokens: list[ReplyToken], n: int = WHY_TOKENS) -> list[ReplyToken]:
    """The `n` tokens the model was least sure of (lowest probability; the higher entropy first on a tie),
    in that order; tokens with no known logprob are left out."""
    known = [t for t in tokens if not math.isnan(t.logprob)]
    return sorted(known, key=lambda t: (t.logprob, -t.entropy))[:n]


def why_lines(tokens: list[ReplyToken], n: int = WHY_TOKENS) -> list[str]:
    """The least certain tokens as plain lines: position, token and probability, then its alternatives.
    Token texts are shown as Python reprs (spaces and newlines visible); printing them safely is the caller's."""
    chosen = least_certain(tokens, n)
    if not chosen:
        return ["no token probabilities for this reply"]
    lines = [f"the {len(chosen)} least certain of {len(tokens)} tokens:"]
    for t in chosen:
        lines.append(f"  #{t.index + 1:<4} {_shown(t.piece or t.text):<16} {_percent(t.probability):>6}   "
                     f"entropy {t.entropy:.2f} nats")
        lines.append("        instead: " + " · ".join(f"{_shown(text)} {_percent(probability(lp))}"
                                                   for text, lp in t.top[:ALTERNATIVES]))
    return lines


def _shown(text: str) -> str:
    return repr(text)


def _percent(p: float) -> str:
    return f"{100 * p:.1f}%" if p >= 0.001 else "<0.1%"
