"""How each next token is picked: `SamplingParams` (every knob, its default and its limits, checked in
one place) and the logits processors that apply them.

`SamplingParams.check()` is the one validation every front end goes through (the CLI, /params, the
OpenAI routes, stored conversations), so a value refused in one is refused in all; it raises
`ParamError` naming the field, which the HTTP API reports as the 400's `param`. The processors are
transformers' own, so the knobs mean exactly what they mean in `generate`; the engine (engine.py)
applies logit_bias, OpenAI's penalties and a grammar's mask around them.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

import torch
from transformers import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from parley.constraints import GrammarError, json_grammar
from parley.errors import ConfigError

# Temperatures below this are greedy, as in vLLM (its _SAMPLING_EPS); repetition penalties below it act
# as it. Dividing fp32 logits by less overflows to inf, and softmax of inf is NaN.
SAMPLING_EPS = 1e-5

# Stop strings: each one costs a scan of the reply's tail per token (see held_back), on the thread
# that decodes for everyone, so both their number and length are bounded. 16, not OpenAI's 4 (which
# the OpenAI route keeps at its edge): HumanEval's completion style alone stops on 7 (eval/code.py).
# A stop string marks a boundary (a tag, a line, a delimiter), for which 256 characters is ample.
# Seeds: torch and vLLM take int64.
MAX_STOPS = 16
MAX_STOP_CHARS = 256
MAX_SEED = 2**63 - 1
MAX_LOGIT_BIAS = 300  # OpenAI's limit on logit_bias entries


@dataclass
class SamplingParams:
    """How to pick each next token. Validated by `check()`; errors name the key and its allowed range."""

    temperature: float = 0.7  # 0 (or below SAMPLING_EPS) = greedy (always the most likely token)
    top_p: float = 1.0  # nucleus sampling: keep the smallest set of tokens with this much probability
    top_k: int = 0  # keep only the k most likely tokens; 0 = off
    repetition_penalty: float = 1.0  # >1 discourages tokens already in the prompt or reply (CTRL-style)
    max_new_tokens: int = 512  # the reply's length limit, in tokens
    seed: int | None = None  # fixes the sampling; None = fresh randomness each time
    stop: list[str] = field(default_factory=list)  # strings that end the reply (not included in it)
    top_logprobs: int = 0  # how many likely alternatives to report beside each token (0-20)
    # Constrain the reply to JSON matching this JSON Schema (constraints.py); {"type": "object"} = any
    # JSON object; None = free text. The reply ends ("stop") when the JSON is complete.
    json_schema: dict | None = None
    # OpenAI's penalties, over the reply's own tokens: logit[t] -= frequency_penalty * count[t] +
    # presence_penalty * (count[t] > 0). Negative values encourage repeats. -2 to 2, as OpenAI allows.
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    # Token id -> a number added to its logit before sampling (OpenAI's logit_bias): -100 bans the token,
    # 100 all but forces it. At most MAX_LOGIT_BIAS entries; ids must be in the model's vocabulary.
    logit_bias: dict[int, float] = field(default_factory=dict)

    def check(self) -> SamplingParams:
        """Every limit in one place: the CLI, /params, the OpenAI routes and stored conversations all
        pass through here, so a value refused in one is refused in all. Raises ParamError naming the key."""
        rules = {
            "temperature": (0 <= self.temperature <= 5, "between 0 and 5"),
            "top_p": (0 < self.top_p <= 1, "in (0, 1]"),
            "top_k": (self.top_k >= 0, "0 (off) or more"),
            "repetition_penalty": (0 < self.repetition_penalty <= 10, "in (0, 10]"),
            "max_new_tokens": (self.max_new_tokens >= 1, "at least 1"),
            "top_logprobs": (0 <= self.top_logprobs <= 20, "between 0 and 20"),
            "seed": (self.seed is None or 0 <= self.seed <= MAX_SEED, "None or between 0 and 2**63-1"),
            "presence_penalty": (-2 <= self.presence_penalty <= 2, "between -2 and 2"),
            "frequency_penalty": (-2 <= self.frequency_penalty <= 2, "between -2 and 2"),
        }
        for key, (ok, allowed) in rules.items():
            if not ok:
                raise ParamError(key, f"{key}={getattr(self, key)} is out of range: it must be {allowed}")
        _check_stops(self.stop)
        _check_bias(self.logit_bias)
        if self.json_schema is not None:
            try:
                json_grammar(self.json_schema)
            except GrammarError as e:
                raise ParamError("json_schema", str(e)) from None
        return self

    def updated(self, **values: str | float | int | list | None) -> SamplingParams:
        """A copy with some fields replaced; strings (from /params or flags) are converted by field type."""
        known = {f.name: f for f in dataclasses.fields(self)}
        changes = {}
        for key, value in values.items():
            if key not in known:
                raise ConfigError(f"unknown parameter {key!r}: choose from {', '.join(known)}")
            changes[key] = _convert(key, value, getattr(self, key)) if isinstance(value, str) else value
        if "logit_bias" in changes:  # JSON (a stored conversation, /params) spells the ids as strings
            changes["logit_bias"] = _bias_ids(changes["logit_bias"])
        return dataclasses.replace(self, **changes).check()


class ParamError(ConfigError):
    """A SamplingParams value out of its range; `key` names the field (the HTTP API says params.<key>)."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def _check_stops(stops) -> None:
    """Each stop string is searched for, and its possible start held back, at every token, on the
    thread that decodes for everyone: so a few, short, non-empty ones (an empty one would end every
    reply at once)."""
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise ParamError("stop", "stop must be a list of strings")
    if len(stops) > MAX_STOPS:
        raise ParamError("stop", f"stop has {len(stops)} strings; at most {MAX_STOPS} are allowed")
    for s in stops:
        if not s or len(s) > MAX_STOP_CHARS:
            raise ParamError("stop", f"stop strings must be 1 to {MAX_STOP_CHARS} characters long; "
                                     f"one is {len(s)}")


def _check_bias(bias) -> None:
    """Each entry costs an add per token; ids are checked against the vocabulary in LocalEngine.start."""
    if not isinstance(bias, dict) or not all(isinstance(k, int) and not isinstance(k, bool) for k in bias):
        raise ParamError("logit_bias", 'logit_bias must map token ids to numbers, e.g. {"1234": -100}')
    if len(bias) > MAX_LOGIT_BIAS:
        raise ParamError("logit_bias", f"logit_bias has {len(bias)} entries; at most {MAX_LOGIT_BIAS} are allowed")
    for token_id, value in bias.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not -100 <= value <= 100:
            raise ParamError("logit_bias", f"logit_bias[{token_id}]={value!r}: each bias must be a number "
                                           "between -100 and 100")


def _bias_ids(bias):
    """{"1234": -100} (ids as JSON spells them) -> {1234: -100}; anything else is left for check() to refuse."""
    if not isinstance(bias, dict):
        return bias
    try:
        return {int(k) if isinstance(k, str) else k: v for k, v in bias.items()}
    except ValueError:
        raise ParamError("logit_bias", "logit_bias keys must be token ids (whole numbers), "
                                       f"got {', '.join(repr(k) for k in bias)}") from None


def _convert(key: str, text: str, current):
    if key in ("json_schema", "logit_bias"):  # /params json_schema={"type": "object"} logit_bias={"50256": -100}
        empty = None if key == "json_schema" else {}
        try:
            return json.loads(text) if text.lower() not in ("none", "") else empty
        except json.JSONDecodeError as e:
            raise ConfigError(f"{key} is not valid JSON ({e})") from None
    if key == "stop":
        return [s for s in text.split(",") if s] if text else []
    if key == "seed" and text.lower() in ("none", ""):
        return None
    kind = int if key in ("top_k", "max_new_tokens", "top_logprobs", "seed") else float
    try:
        return kind(text)
    except ValueError:
        raise ConfigError(f"{key}={text!r} is not a valid {kind.__name__}") from None


def processors(params: SamplingParams, greedy: bool) -> LogitsProcessorList:
    # transformers' own processors, so the knobs mean exactly what they mean in `generate`. With both
    # knobs at least SAMPLING_EPS, finite fp32 logits stay finite: |logit| * 1e10 is far below 3e38.
    chain = LogitsProcessorList()
    if params.repetition_penalty != 1.0:
        chain.append(RepetitionPenaltyLogitsProcessor(max(params.repetition_penalty, SAMPLING_EPS)))
    if not greedy:
        if params.temperature != 1.0:
            chain.append(TemperatureLogitsWarper(params.temperature))
        if params.top_k > 0:
            chain.append(TopKLogitsWarper(params.top_k))
        if params.top_p < 1.0:
            chain.append(TopPLogitsWarper(params.top_p))
    return chain


def draw(probs: torch.Tensor, generator: torch.Generator | None) -> int:
    """One token id drawn from `probs` (V,): the first whose cumulative probability passes a uniform draw.

    The same distribution as `torch.multinomial(probs, 1)`, which draws one exponential per vocabulary
    entry: ~1 ms for SmolLM2's 49,152 tokens on a CPU core, a sixth of an 8-row decode step. This draws
    one number and costs ~40 µs. The sums are fp64, so the tail of a large vocabulary keeps its share."""
    cdf = torch.cumsum(probs, 0, dtype=torch.float64)
    if not cdf[-1] > 0:  # NaN, or everything masked: multinomial refuses these too
        raise ValueError("no token has a finite, positive probability to sample from")
    u = torch.rand(1, generator=generator, dtype=torch.float64, device=probs.device) * cdf[-1]
    i = int(torch.searchsorted(cdf, u, right=True))
    # Tokens with no probability add nothing to the sum, so they are never first past u; only the
    # rounding of u up to the very total can step past the end, onto the last token that has some.
    return i if i < len(probs) else int(probs.nonzero()[-1])


def held_back(text: str, stops: list[str]) -> int:
    """How many trailing characters might be the start of a stop string, so must not be shown yet."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return longest
