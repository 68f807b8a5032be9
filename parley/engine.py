"""The one engine interface every front end uses, and the local engine that decodes here.

    engine = backend.open("smollm2")          # an Engine: LocalEngine here, RemoteEngine for openai:NAME
    engine.generate([{"role": "user", "content": "Hi"}], SamplingParams(temperature=0))   # -> str
    for token in engine.stream("def fib(n):", SamplingParams(max_new_tokens=64)): ...    # -> Token
    engine.count(messages); engine.fit(messages, max_new_tokens)                         # -> int, Fitted
    driver = engine.driver(max_batch=8, max_queue=64)       # many prompts at once (batching.py)

`Engine` is a Protocol: `LocalEngine` (below) and `parley.remote.RemoteEngine` implement it, and front
ends hold an `Engine` without asking which. `generate` is `stream` joined, so the two give identical
text. Each local request owns a torch.Generator seeded from `SamplingParams.seed`, so a seed reproduces
its text whatever else shares the batch (int8 mode: once shared, as a row alone decodes in int8; quant.py).

Batching: sequences decode in a `parley.batch.Batch` (one forward pass per token for all of them, each
in its own row of a KV cache), which is what the continuous-batching driver (batching.py) needs;
`stream` is a batch of one. Finished sequences' keys and values go to the engine's `PrefixStore`, so a
later prompt that starts the same way (the next turn of a chat, an API client resending its history)
prefills only what is new.

Detokenizing is incremental (only the newest tokens are decoded), so a reply costs linear time.

Failures stay with their sequence: sampling is done in fp32 with temperatures below `SAMPLING_EPS`
greedy (as vLLM does) and repetition penalties at least that, so valid parameters never give NaN
probabilities; and whatever one sequence raises while its token is chosen, its stop strings checked or
its text decoded ends that sequence alone (`Sequence.error`, `pick` returns None), never its batch.
When several stop strings appear at once, the reply ends at the earliest in the text.

OpenAI's knobs: `logit_bias` is added to the logits, then `presence_penalty` and `frequency_penalty` are
taken off (OpenAI's formula, over the reply's tokens), before the grammar's mask, the repetition penalty and
temperature and top-p/k; a `logit_bias` id outside the vocabulary is refused when the sequence starts.

Constrained decoding: `SamplingParams.json_schema` gives the sequence a `constraints.Constraint`, whose
mask sets the tokens its grammar forbids to -inf before temperature and top-p/k (that sequence's logits
only, so batch neighbours are untouched); the reply ends ("stop") when the JSON is complete. Logprobs
stay the model's own, before the mask.

Whole-prompt forwards: `score` gives each prompt token's logprob (the first None) and `embed` the
mean-pooled last hidden states, each from one forward without a KV cache, so they may run on another
thread beside the driver's (the server runs one at a time, serve/streaming.py `beside`); `weights`
hands the loaded model to attribution (parley/explain), which runs the same way. A remote engine
refuses all three (ConfigError): it has no forward pass here.

Encoder-decoder models (T5, BART) decode in a `parley.seq2seq.Seq2SeqBatch` instead (`new_batch()` chooses).

Limits: prefix reuse and batched rows are for decoder-only models; an encoder-decoder batch steps its
sequences one forward each (see parley/seq2seq.py).
"""

from __future__ import annotations

import inspect
import os
import re
from dataclasses import dataclass, field
from typing import Iterator, Protocol, runtime_checkable

import torch
from transformers.convert_slow_tokenizer import bytes_to_unicode

from parley.batch import Batch
from parley.batching import BatchDriver, Driver
from parley.constraints import Constraint, grammar_tokenizer, json_grammar
from parley.conversation import Fitted, fit_messages, reply_room
from parley.errors import ConfigError, ContextError
from parley.compiled import CompiledStep
from parley.kvcache import PrefixStore
from parley.models import Loaded
from parley.sampling import SAMPLING_EPS, ParamError, SamplingParams, draw, held_back, processors
from parley.seq2seq import Seq2SeqBatch
from parley.templates import Chat, encode_chat

PREFIX_CACHE_MB = 256  # memory kept for finished sequences' keys and values (automatic prefix caching)
Prompt = str | list[dict] | Chat  # a raw prompt (used as is), or chat messages (rendered with the template), or
# a Chat: messages with tools, tool calls and results (the model's own template if tool-aware, else tools.py's)


@dataclass
class Token:
    """One generated token, as the front ends see it."""

    id: int
    text: str  # text this token releases into the reply ('' while held back: a partial character or stop string)
    logprob: float  # natural-log probability under the model, before temperature and top-p/k
    top: list[tuple[str, float]] = field(default_factory=list)  # likely alternatives (text, logprob), best first
    top_ids: list[int] = field(default_factory=list)  # the alternatives' token ids; [] where unknown (remote)


@dataclass
class Scored:
    """One prompt token as `Engine.score` sees it: its logprob given the tokens before it (None for the
    first, which nothing predicts) and the `top` likeliest tokens in its place (bytes, logprob), best first."""

    id: int
    piece: bytes  # the token's own bytes (LocalEngine.piece)
    logprob: float | None
    top: list[tuple[bytes, float]] = field(default_factory=list)


class Sequence:
    """One request being decoded: its prompt, sampling state, and the reply text released so far."""

    def __init__(self, engine: LocalEngine, prompt_ids: list[int], params: SamplingParams):
        self.engine, self.params = engine, params
        self.prompt_ids = prompt_ids
        self.ids: list[int] = []  # generated token ids
        self.text = ""  # reply text released to the caller
        self.finish_reason: str | None = None  # "stop" (eos or stop string) or "length"
        self.error: Exception | None = None  # why choosing a token failed; the sequence then ends, alone
        self.max_new_tokens = min(params.max_new_tokens, engine.loaded.context_window - len(prompt_ids))
        seed = params.seed if params.seed is not None else int.from_bytes(os.urandom(8), "little") >> 1
        self.generator = torch.Generator(device=engine.loaded.device).manual_seed(seed)
        self.stops = list(params.stop) + engine.loaded.stop_strings
        self.greedy = params.temperature < SAMPLING_EPS
        self.processors = processors(params, self.greedy)
        device = engine.loaded.device
        self.bias = None if not params.logit_bias else (  # (ids, values) for index_add
            torch.tensor(list(params.logit_bias), dtype=torch.long, device=device),
            torch.tensor(list(params.logit_bias.values()), dtype=torch.float32, device=device))
        self.constraint = (None if params.json_schema is None else
                           Constraint(engine.grammar_tokenizer(), json_grammar(params.json_schema)))
        self._full = ""  # all complete text decoded so far (held-back text included)
        self._prefix = self._read = 0  # token offsets of the incremental detokenizer (see _decoded)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None or self.error is not None

    def pick(self, logits: torch.Tensor) -> Token | None:
        """Choose the next token from this sequence's logits (V,), record it, and release text.

        None when that failed (sampling, stop strings or detokenizing raised): the error is kept in
        `self.error` and the sequence is done, so the others in its batch carry on untouched."""
        try:
            return self._pick(logits)
        except Exception as e:
            self.error = e
            return None

    def _pick(self, logits: torch.Tensor) -> Token:
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        scores = self._biased(logits.float())[None]  # fp32 whatever the model's dtype (fp16 overflows at 65504)
        if self.constraint:  # before the warpers, so temperature and top-p share out only what is allowed
            scores = self.constraint.mask(scores[0])[None]
        if self.processors:  # the repetition penalty needs the history; the warpers ignore it
            history = torch.tensor([self.prompt_ids + self.ids], device=logits.device)
            scores = self.processors(history, scores)
        scores = scores[0]
        if self.greedy:
            token_id = int(torch.argmax(scores))
        else:
            probs = torch.softmax(scores, dim=-1)
            token_id = draw(probs, self.generator)
        top, top_ids = [], []
        if self.params.top_logprobs:
            values, ids = torch.topk(logprobs, self.params.top_logprobs)
            top_ids = ids.tolist()
            decode = self.engine.loaded.tokenizer.decode
            top = [(decode([i]), float(v)) for v, i in zip(values, top_ids)]
        if self.constraint:
            self.constraint.advance(token_id)
        return Token(token_id, self._release(token_id), float(logprobs[token_id]), top, top_ids)

    def _biased(self, scores: torch.Tensor) -> torch.Tensor:
        """(V,) scores with logit_bias added and OpenAI's presence and frequency penalties taken off
        (over the reply's tokens, not the prompt's: that is repetition_penalty's job), as OpenAI and vLLM
        apply them: before the grammar's mask and temperature, top-p and top-k."""
        if self.bias is not None:
            scores = scores.index_add(0, *self.bias)
        presence, frequency = self.params.presence_penalty, self.params.frequency_penalty
        if (presence or frequency) and self.ids:
            counts = torch.bincount(torch.tensor(self.ids, device=scores.device), minlength=scores.shape[0])
            scores = scores - frequency * counts - presence * (counts > 0)
        return scores

    def _release(self, token_id: int) -> str:
        """Append `token_id` and return the text that is now safe to show."""
        if token_id in self.engine.loaded.stop_ids:
            self.finish_reason = "stop"
            return self._flush(self._decoded())
        self.ids.append(token_id)
        full = self._decoded()
        # A stop string ends the reply and is not part of it; when several have appeared, the earliest.
        cuts = [full.find(stop, max(0, len(self.text) - len(stop))) for stop in self.stops]
        cut = min((c for c in cuts if c != -1), default=-1)
        if cut != -1:
            self.finish_reason = "stop"
            return self._flush(full[:cut])
        if self.constraint and self.constraint.done:  # the JSON is complete: nothing may follow it
            self.finish_reason = "stop"
            return self._flush(full)
        if len(self.ids) >= self.max_new_tokens:
            self.finish_reason = "length"
            return self._flush(full)
        return self._flush(full[: len(full) - held_back(full, self.stops)])

    def _decoded(self) -> str:
        """The reply's text so far. Decodes only the newest tokens, with the few before them as context
        (as vLLM and TGI do), so a reply costs linear time, not quadratic; text ending in half a
        multi-byte character waits for the rest."""
        decode = self.engine.loaded.tokenizer.decode
        before = decode(self.ids[self._prefix : self._read], skip_special_tokens=True)
        after = decode(self.ids[self._prefix :], skip_special_tokens=True)
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self._full += after[len(before) :]
            self._prefix, self._read = self._read, len(self.ids)
        return self._full

    def _flush(self, upto: str) -> str:
        new = upto[len(self.text) :] if upto.startswith(self.text) else ""
        self.text += new
        return new


@runtime_checkable
class Engine(Protocol):
    """What every front end may ask of a model, local or remote."""

    spec: str  # what the user asked for ("smollm2", a path, a hub id, openai:NAME)
    context_window: int  # the longest sequence (prompt + reply) the model can attend over, in tokens
    compiling: bool  # a background compile is under way (decoding is eager, slower, meanwhile): /health says

    def generate(self, prompt: Prompt, params: SamplingParams | None = None) -> str: ...

    def stream(self, prompt: Prompt, params: SamplingParams | None = None) -> Iterator[Token]: ...

    def count(self, messages: list[dict], add_generation_prompt: bool = True, tools: list[dict] | None = None) -> int: ...

    def fit(self, messages: list[dict], max_new_tokens: int, tools: list[dict] | None = None) -> Fitted:
        """`messages` cut to the context window by the rolling-buffer rule, with room left for the reply."""
        ...

    def driver(self, max_batch: int = 8, max_queue: int = 64) -> Driver:
        """A started continuous-batching driver over this engine (batching.py)."""
        ...

    def score(self, text: str | list[int], top: int = 0) -> list[Scored]:
        """Each token's logprob given the ones before it (the first: None), from one forward pass."""
        ...

    def embed(self, text: str | list[int]) -> tuple[list[float], int]:
        """(a unit-length vector for the text: the mean of the model's last hidden states, tokens read)."""
        ...

    def weights(self) -> Loaded:
        """The loaded model, tokenizer and template, for attribution (parley/explain); remote: ConfigError."""
        ...


class LocalEngine:
    """Generation over one loaded model. Not thread-safe: one caller (or one driver) drives it."""

    def __init__(self, loaded: Loaded, prefix_cache_mb: int = PREFIX_CACHE_MB, compile: bool = False):
        self.loaded = loaded
        model = loaded.model
        self.dtype = next(model.parameters()).dtype
        base = model.get_base_model() if hasattr(model, "get_base_model") else model  # under a peft adapter
        self.keeps_logits = "logits_to_keep" in inspect.signature(base.forward).parameters
        self.sliding_window = _sliding_window(base.config)
        self.prefixes = PrefixStore(prefix_cache_mb * 2**20)
        self.compiled: CompiledStep | None = None  # decode steps compiled by inductor (compiled.py)
        if compile and loaded.device.type == "cpu" and not getattr(base.config, "is_encoder_decoder", False):
            self.compiled = CompiledStep(model, self.dtype, loaded.context_window, self.keeps_logits)
        # Byte-level BPE (GPT-2, Llama 3, SmolLM2) spells each byte as one of 256 characters (see piece()).
        decoder = getattr(getattr(loaded.tokenizer, "backend_tokenizer", None), "decoder", None)
        self._byte_level = "ByteLevel" in repr(decoder)
        self._grammar_tokenizer = None  # built on the first constrained request (constraints.py)

    @property
    def spec(self) -> str:
        return self.loaded.spec

    @property
    def context_window(self) -> int:
        return self.loaded.context_window

    @property
    def compiling(self) -> bool:
        return self.compiled is not None and self.compiled.building

    def prompt_ids(self, prompt: Prompt) -> list[int]:
        tokenizer = self.loaded.tokenizer
        if isinstance(prompt, str):
            return tokenizer(prompt)["input_ids"]
        if isinstance(prompt, Chat):
            return encode_chat(tokenizer, self.loaded.template, prompt.messages, True, prompt.tools)
        return encode_chat(tokenizer, self.loaded.template, prompt, add_generation_prompt=True)

    def start(self, prompt: Prompt, params: SamplingParams) -> Sequence:
        """A new sequence, checked against the context window; decode it with a Batch."""
        params.check()
        ids = self.prompt_ids(prompt)
        if not ids:
            raise ContextError("the prompt is empty: give some text to continue")
        vocab = len(self.loaded.tokenizer)
        if outside := [i for i in params.logit_bias if not 0 <= i < vocab]:
            raise ParamError("logit_bias", f"logit_bias names token id {outside[0]}, which is not in this model's "
                                           f"vocabulary (ids 0 to {vocab - 1})")
        window = self.loaded.context_window
        if len(ids) >= window:
            raise ContextError(
                f"the prompt is {len(ids)} tokens but the model's context window is {window}: shorten it"
            )
        return Sequence(self, ids, params)

    def new_batch(self) -> Batch | Seq2SeqBatch:
        """An empty batch of the kind this model decodes in: the one place that chooses."""
        return Seq2SeqBatch(self) if getattr(self.loaded.model.config, "is_encoder_decoder", False) else Batch(self)

    def stream(self, prompt: Prompt, params: SamplingParams | None = None) -> Iterator[Token]:
        """Yield tokens as they are produced. Closing the generator stops decoding."""
        seq = self.start(prompt, params or SamplingParams())
        batch = self.new_batch()
        token = batch.add(seq)
        try:
            while token is not None:
                yield token
                if seq.done:
                    return
                (token,) = batch.step()
            raise seq.error
        finally:  # also when the caller stops early: what was computed goes to the prefix store
            batch.remove(seq)

    def generate(self, prompt: Prompt, params: SamplingParams | None = None) -> str:
        return "".join(token.text for token in self.stream(prompt, params))

    def count(self, messages: list[dict], add_generation_prompt: bool = True, tools: list[dict] | None = None) -> int:
        """Exact prompt length of `messages` (and the `tools` shown) in tokens, as the model would see them."""
        return len(encode_chat(self.loaded.tokenizer, self.loaded.template, messages, add_generation_prompt, tools))

    def fit(self, messages: list[dict], max_new_tokens: int, tools: list[dict] | None = None) -> Fitted:
        """Exact: rendered and tokenized (conversation.py), leaving `reply_room` tokens for the reply."""
        budget = self.loaded.context_window - reply_room(self.loaded.context_window, max_new_tokens)
        return fit_messages(messages, self.loaded.tokenizer, self.loaded.template, budget, tools=tools)

    def piece(self, token_id: int) -> bytes:
        """One token's own bytes (what logprobs report), which may be part of a UTF-8 character: a
        character split over two tokens gives each its own slice, as OpenAI reports them."""
        tokenizer = self.loaded.tokenizer
        name = tokenizer.convert_ids_to_tokens(token_id)
        if self._byte_level and all(c in _BYTE_OF_CHAR for c in name):
            return bytes(_BYTE_OF_CHAR[c] for c in name)
        if match := _BYTE_TOKEN.fullmatch(name):
            return bytes([int(match[1], 16)])
        return tokenizer.decode([token_id]).encode()

    def grammar_tokenizer(self):
        """The tokenizer as the grammar library reads it, built once (~0.3 s) when first needed."""
        if self._grammar_tokenizer is None:
            self._grammar_tokenizer = grammar_tokenizer(self.loaded)
        return self._grammar_tokenizer

    @torch.inference_mode()
    def score(self, text: str | list[int], top: int = 0) -> list[Scored]:
        """Each prompt token's logprob under the model, as OpenAI's `echo` + `logprobs` reports them (what
        log-likelihood evaluation reads). One forward over the whole prompt with no KV cache, so it is safe
        beside the driver's thread, which owns the batch's cache; the caller bounds how many run at once."""
        ids = self._whole_prompt(text)
        logits = self.loaded.model(input_ids=torch.tensor([ids], device=self.loaded.device)).logits[0]
        logprobs = torch.log_softmax(logits.float(), dim=-1)  # (T, V): row t predicts token t+1
        scored = [Scored(ids[0], self.piece(ids[0]), None)]
        for t, token_id in enumerate(ids[1:]):
            alternatives = []
            if top:
                values, best = torch.topk(logprobs[t], top)
                alternatives = [(self.piece(i), v) for i, v in zip(best.tolist(), values.tolist())]
            scored.append(Scored(token_id, self.piece(token_id), float(logprobs[t, token_id]), alternatives))
        return scored

    @torch.inference_mode()
    def embed(self, text: str | list[int]) -> tuple[list[float], int]:
        """(vector, tokens read): the served model's last hidden states, mean-pooled and scaled to unit
        length. A plain embedding, not a trained retrieval model: similarity follows the model's own view
        of the text. Safe beside the driver's thread, as `score` is."""
        ids = self._whole_prompt(text)
        out = self.loaded.model(input_ids=torch.tensor([ids], device=self.loaded.device), output_hidden_states=True)
        pooled = out.hidden_states[-1][0].float().mean(dim=0)  # (T, C) -> (C,)
        return torch.nn.functional.normalize(pooled, dim=0).tolist(), len(ids)

    def weights(self) -> Loaded:
        """The model, tokenizer and template this engine decodes with: attribution (parley/explain)
        runs its own forward and backward passes on them, beside the driver's thread as `score` does."""
        return self.loaded

    def _whole_prompt(self, text: str | list[int]) -> list[int]:
        if getattr(self.loaded.model.config, "is_encoder_decoder", False):
            raise ConfigError("scoring and embedding text need a decoder-only model; this one is encoder-decoder")
        ids = self.prompt_ids(text) if isinstance(text, str) else text
        if not ids or len(ids) > self.loaded.context_window:
            raise ContextError(f"the text is {len(ids)} tokens; it must be 1 to {self.loaded.context_window} "
                               "(the model's context window)")
        if max(ids) >= len(self.loaded.tokenizer) or min(ids) < 0:
            raise ConfigError(f"token ids must be 0 to {len(self.loaded.tokenizer) - 1}")
        return ids

    def driver(self, max_batch: int = 8, max_queue: int = 64) -> BatchDriver:
        """One thread decoding up to `max_batch` sequences together (batching.BatchDriver)."""
        return BatchDriver(self, self.new_batch, max_batch, max_queue)


_BYTE_OF_CHAR = {char: byte for byte, char in bytes_to_unicode().items()}  # byte-level BPE's alphabet, reversed
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # SentencePiece's byte-fallback tokens


def _sliding_window(config) -> int | None:
    """The attention window when every layer slides (Mistral-style); None for full attention."""
    window = getattr(config, "sliding_window", None)
    if not isinstance(window, int) or not getattr(config, "use_sliding_window", True):
        return None
    kinds = set(getattr(config, "layer_types", None) or ["sliding_attention"])
    return window if kinds == {"sliding_attention"} else None

