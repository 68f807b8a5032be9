"""The one engine interface every front end uses, and the local engine that decodes here.

    engine = backend.open("smollm2")          # an Engine: LocalEngine here, RemoteEngine for openai:NAME
    engine.generate([{"role": "user", "content": "Hi"}], SamplingParams(temperature=0))   # -> str
    for token in engine.stream("def fib(n):", SamplingParams(max_new_tokens=64)): ...    # -> Token
    engine.count(messages); engine.fit(messages, max_new_tokens)                         # -> int, Fitted
    driver = engine.driver(max_batch=8, max_queue=64)       # many prompts at once (batching.py)

`Engine` is a Protocol: `LocalEngine` (below) and `parley.remote.RemoteEngine` implement it, and front
ends hold an `Engine` without asking which. `generate` is `stream` joined, so the two give identical
text. Each local request owns a torch.Generator seeded from `SamplingParams.seed`, so a seed
reproduces its text whatever else shares the batch.

Batching: `Batch` decodes many sequences in one forward pass per token over a shared, left-padded KV
cache. Sequences join (`add`, which prefills them alone and pads them in) and leave (`remove`) between
steps, which is what the continuous-batching driver (batching.py) needs; `stream` is a batch of one.

Limits: decoder-only models (encoder-decoder models train and evaluate, but do not chat here yet);
the KV cache is transformers' DynamicCache, which grows by concatenation.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Iterator, Protocol, runtime_checkable

import torch
from transformers import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers.cache_utils import DynamicCache

from parley.batching import BatchDriver, Driver
from parley.conversation import Fitted, fit_messages, reply_room
from parley.errors import ConfigError, ContextError
from parley.models import Loaded
from parley.templates import encode_chat

Prompt = str | list[dict]  # a raw prompt (used as is) or chat messages (rendered with the template)


@dataclass
class SamplingParams:
    """How to pick each next token. Validated by `check()`; errors name the key and its allowed range."""

    temperature: float = 0.7  # 0 = greedy (always the most likely token)
    top_p: float = 1.0  # nucleus sampling: keep the smallest set of tokens with this much probability
    top_k: int = 0  # keep only the k most likely tokens; 0 = off
    repetition_penalty: float = 1.0  # >1 discourages tokens already in the prompt or reply (CTRL-style)
    max_new_tokens: int = 512  # the reply's length limit, in tokens
    seed: int | None = None  # fixes the sampling; None = fresh randomness each time
    stop: list[str] = field(default_factory=list)  # strings that end the reply (not included in it)
    top_logprobs: int = 0  # how many likely alternatives to report beside each token (0-20)

    def check(self) -> SamplingParams:
        rules = {
            "temperature": (0 <= self.temperature <= 5, "between 0 and 5"),
            "top_p": (0 < self.top_p <= 1, "in (0, 1]"),
            "top_k": (self.top_k >= 0, "0 (off) or more"),
            "repetition_penalty": (0 < self.repetition_penalty <= 10, "in (0, 10]"),
            "max_new_tokens": (self.max_new_tokens >= 1, "at least 1"),
            "top_logprobs": (0 <= self.top_logprobs <= 20, "between 0 and 20"),
        }
        for key, (ok, allowed) in rules.items():
            if not ok:
                raise ConfigError(f"{key}={getattr(self, key)} is out of range: it must be {allowed}")
        return self

    def updated(self, **values: str | float | int | list | None) -> SamplingParams:
        """A copy with some fields replaced; strings (from /params or flags) are converted by field type."""
        known = {f.name: f for f in dataclasses.fields(self)}
        changes = {}
        for key, value in values.items():
            if key not in known:
                raise ConfigError(f"unknown parameter {key!r}: choose from {', '.join(known)}")
            changes[key] = _convert(key, value, getattr(self, key)) if isinstance(value, str) else value
        return dataclasses.replace(self, **changes).check()


def _convert(key: str, text: str, current):
    if key == "stop":
        return [s for s in text.split(",") if s] if text else []
    if key == "seed" and text.lower() in ("none", ""):
        return None
    kind = int if key in ("top_k", "max_new_tokens", "top_logprobs", "seed") else float
    try:
        return kind(text)
    except ValueError:
        raise ConfigError(f"{key}={text!r} is not a valid {kind.__name__}") from None


@dataclass
class Token:
    """One generated token, as the front ends see it."""

    id: int
    text: str  # text this token releases into the reply ('' while held back: a partial character or stop string)
    logprob: float  # natural-log probability under the model, before temperature and top-p/k
    top: list[tuple[str, float]] = field(default_factory=list)  # likely alternatives (text, logprob), best first


class Sequence:
    """One request being decoded: its prompt, sampling state, and the reply text released so far."""

    def __init__(self, engine: Engine, prompt_ids: list[int], params: SamplingParams):
        self.engine, self.params = engine, params
        self.prompt_ids = prompt_ids
        self.ids: list[int] = []  # generated token ids
        self.text = ""  # reply text released to the caller
        self.finish_reason: str | None = None  # "stop" (eos or stop string) or "length"
        self.max_new_tokens = min(params.max_new_tokens, engine.loaded.context_window - len(prompt_ids))
        seed = params.seed if params.seed is not None else int.from_bytes(os.urandom(8), "little") >> 1
        self.generator = torch.Generator(device=engine.loaded.device).manual_seed(seed)
        self.stops = list(params.stop) + engine.loaded.stop_strings
        self.processors = _processors(params)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def pick(self, logits: torch.Tensor) -> Token:
        """Choose the next token from this sequence's logits (V,), record it, and release text."""
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        history = torch.tensor([self.prompt_ids + self.ids], device=logits.device)
        scores = self.processors(history, logits.float()[None])[0]
        if self.params.temperature == 0:
            token_id = int(torch.argmax(scores))
        else:
            probs = torch.softmax(scores, dim=-1)
            token_id = int(torch.multinomial(probs, 1, generator=self.generator))
        top = []
        if self.params.top_logprobs:
            values, ids = torch.topk(logprobs, self.params.top_logprobs)
            decode = self.engine.loaded.tokenizer.decode
            top = [(decode([int(i)]), float(v)) for v, i in zip(values, ids)]
        return Token(token_id, self._release(token_id), float(logprobs[token_id]), top)

    def _release(self, token_id: int) -> str:
        """Append `token_id` and return the text that is now safe to show."""
        if token_id in self.engine.loaded.stop_ids:
            self.finish_reason = "stop"
            return self._flush(self._decoded())
        self.ids.append(token_id)
        full = self._decoded()
        for stop in self.stops:  # a stop string ends the reply and is not part of it
            cut = full.find(stop, max(0, len(self.text) - len(stop)))
            if cut != -1:
                self.finish_reason = "stop"
                return self._flush(full[:cut])
        if len(self.ids) >= self.max_new_tokens:
            self.finish_reason = "length"
            return self._flush(full)
        if full.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
            return ""
        return self._flush(full[: len(full) - _held_back(full, self.stops)])

    def _decoded(self) -> str:
        return self.engine.loaded.tokenizer.decode(self.ids, skip_special_tokens=True)

    def _flush(self, upto: str) -> str:
        if self.done:  # the last of the text, minus any incomplete character
            upto = upto.rstrip("\ufffd")
        new = upto[len(self.text) :] if upto.startswith(self.text) else ""
        self.text += new
        return new


def _held_back(text: str, stops: list[str]) -> int:
    """How many trailing characters might be the start of a stop string, so must not be shown yet."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return longest


def _processors(params: SamplingParams) -> LogitsProcessorList:
    # transformers' own processors, so the knobs mean exactly what they mean in `generate`.
    chain = LogitsProcessorList()
    if params.repetition_penalty != 1.0:
        chain.append(RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
    if params.temperature > 0:
        if params.temperature != 1.0:
            chain.append(TemperatureLogitsWarper(params.temperature))
        if params.top_k > 0:
            chain.append(TopKLogitsWarper(params.top_k))
        if params.top_p < 1.0:
            chain.append(TopPLogitsWarper(params.top_p))
    return chain


class Batch:
    """Sequences decoded together: one forward pass per step over a left-padded shared KV cache."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.seqs: list[Sequence] = []
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None  # (B, T) 1 = real token, 0 = left padding

    def __len__(self) -> int:
        return len(self.seqs)

    @torch.inference_mode()
    def add(self, seq: Sequence) -> Token:
        """Prefill `seq` alone, pick its first token, and pad its cache into the batch."""
        model, device = self.engine.loaded.model, self.engine.loaded.device
        ids = torch.tensor([seq.prompt_ids], device=device)
        out = model(input_ids=ids, use_cache=True, cache=DynamicCache(config=model.config))
        token = seq.pick(out.logits[0, -1])
        mask = torch.ones(1, ids.shape[1], dtype=torch.long, device=device)
        if self.cache is None:
            self.cache, self.mask = out.cache, mask
        else:
            self._merge(out.cache, mask)
        self.seqs.append(seq)
        return token

    @torch.inference_mode()
    def step(self) -> list[Token]:
        """Advance every sequence by one token; tokens come back in `self.seqs` order."""
        device = self.engine.loaded.device
        last = torch.tensor([[s.ids[-1]] for s in self.seqs], device=device)  # (B, 1)
        positions = self.mask.sum(dim=1, keepdim=True)  # (B, 1): each row's own next position
        self.mask = torch.cat([self.mask, torch.ones_like(last)], dim=1)
        out = self.engine.loaded.model(
            input_ids=last, attention_mask=self.mask, position_ids=positions,
            cache=self.cache, use_cache=True,
        )
        self.cache = out.cache
        return [seq.pick(out.logits[i, -1]) for i, seq in enumerate(self.seqs)]

    def remove(self, seq: Sequence) -> None:
        keep = [i for i, s in enumerate(self.seqs) if s is not seq]
        self.seqs = [self.seqs[i] for i in keep]
        if not self.seqs:
            self.cache = self.mask = None
            return
        index = torch.tensor(keep, device=self.mask.device)
        self.mask = self.mask[index]
        pad = int((self.mask.sum(dim=0) == 0).long().cumprod(0).sum())  # columns now padding in every row
        self.mask = self.mask[:, pad:]
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[index, :, pad:], layer.values[index, :, pad:]

    def _merge(self, cache: DynamicCache, mask: torch.Tensor) -> None:
        length, new = self.mask.shape[1], mask.shape[1]
        width = max(length, new)
        self.mask = torch.cat([_left_pad(self.mask, width, dim=1), _left_pad(mask, width, dim=1)])
        for mine, theirs in zip(self.cache.layers, cache.layers):  # (B, heads, T, head_dim)
            mine.keys = torch.cat([_left_pad(mine.keys, width, 2), _left_pad(theirs.keys, width, 2)])
            mine.values = torch.cat([_left_pad(mine.values, width, 2), _left_pad(theirs.values, width, 2)])


def _left_pad(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - t.shape[dim]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


@runtime_checkable
class Engine(Protocol):
    """What every front end may ask of a model, local or remote."""

    spec: str  # what the user asked for ("smollm2", a path, a hub id, openai:NAME)
    context_window: int  # the longest sequence (prompt + reply) the model can attend over, in tokens

    def generate(self, prompt: Prompt, params: SamplingParams | None = None) -> str: ...

    def stream(self, prompt: Prompt, params: SamplingParams | None = None) -> Iterator[Token]: ...

    def count(self, messages: list[dict], add_generation_prompt: bool = True) -> int: ...

    def fit(self, messages: list[dict], max_new_tokens: int) -> Fitted:
        """`messages` cut to the context window by the rolling-buffer rule, with room left for the reply."""
        ...

    def driver(self, max_batch: int = 8, max_queue: int = 64) -> Driver:
        """A started continuous-batching driver over this engine (batching.py)."""
        ...


class LocalEngine:
    """Generation over one loaded model. Not thread-safe: one caller (or one driver) drives it."""

    def __init__(self, loaded: Loaded):
        self.loaded = loaded

    @property
    def spec(self) -> str:
        return self.loaded.spec

    @property
    def context_window(self) -> int:
        return self.loaded.context_window

    def prompt_ids(self, prompt: Prompt) -> list[int]:
        tokenizer = self.loaded.tokenizer
        if isinstance(prompt, str):
            return tokenizer(prompt)["input_ids"]
        return encode_chat(tokenizer, self.loaded.template, prompt, add_generation_prompt=True)

    def start(self, prompt: Prompt, params: SamplingParams) -> Sequence:
        """A new sequence, checked against the context window; decode it with a Batch."""
        params.check()
        ids = self.prompt_ids(prompt)
        if not ids:
            raise ContextError("the prompt is empty: give some text to continue")
        window = self.loaded.context_window
        if len(ids) >= window:
            raise ContextError(
                f"the prompt is {len(ids)} tokens but the model's context window is {window}: shorten it"
            )
        return Sequence(self, ids, params)

    def stream(self, prompt: Prompt, params: SamplingParams | None = None) -> Iterator[Token]:
        """Yield tokens as they are produced. Closing the generator stops decoding."""
        seq = self.start(prompt, params or SamplingParams())
        batch = Batch(self)
        yield batch.add(seq)
        while not seq.done:
            (token,) = batch.step()
            yield token

    def generate(self, prompt: Prompt, params: SamplingParams | None = None) -> str:
        return "".join(token.text for token in self.stream(prompt, params))

    def count(self, messages: list[dict], add_generation_prompt: bool = True) -> int:
        """Exact prompt length of `messages` in tokens, as the model would see them."""
        return len(encode_chat(self.loaded.tokenizer, self.loaded.template, messages, add_generation_prompt))

    def fit(self, messages: list[dict], max_new_tokens: int) -> Fitted:
        """Exact: rendered and tokenized (conversation.py), leaving `reply_room` tokens for the reply."""
        budget = self.loaded.context_window - reply_room(self.loaded.context_window, max_new_tokens)
        return fit_messages(messages, self.loaded.tokenizer, self.loaded.template, budget)

    def piece(self, token_id: int) -> str:
        """One token's own text (what logprobs report), which may be part of a character."""
        return self.loaded.tokenizer.decode([token_id])

    def driver(self, max_batch: int = 8, max_queue: int = 64) -> BatchDriver:
        """One thread decoding up to `max_batch` sequences together (batching.BatchDriver)."""
        return BatchDriver(self, lambda: Batch(self), max_batch, max_queue)


def perplexity_of(logprobs: list[float]) -> float:
    """exp of the mean negative log-likelihood: how 'surprised' the model was, per token."""
    return math.exp(-sum(logprobs) / len(logprobs)) if logprobs else float("nan")
