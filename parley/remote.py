"""A remote OpenAI-compatible service as a Parley `Engine`.

    engine = connect("my-model", "http://gpu-box:8000/v1", spec="openai:my-model")   # key: $OPENAI_API_KEY
    engine.generate([{"role": "user", "content": "Hi"}], SamplingParams(temperature=0))   # -> str
    for token in engine.stream("def fib(n):", SamplingParams(max_new_tokens=64)): ...    # -> Token

Front ends get one through `backend.open("openai:NAME", base_url=URL)`, the only place that reads
that prefix. Works with vLLM, llama.cpp's server, Ollama, a hosted API, or another `parley serve`.
Chat messages go to /chat/completions (the remote renders its own chat template); a raw prompt string
goes to /completions. A `templates.Chat` sends its `tools` along (a `json_schema` alongside constrains the reply, which is
then the call as JSON, as a local engine's forced call is); the calls the service streams back become
text in Parley's <tool_call> format (parley/tools.py), which the server reads back as calls, so a
remote model's tool calls reach a client of `parley serve` as tool calls. Decoding happens over there, so many prompts at once are many concurrent
streams (`driver()` is a batching.StreamDriver): the service batches them itself.

Limits: a remote token has no id here (`Token.id` is -1) and one streamed chunk becomes one Token
(a chunk may hold several tokens; its logprob is their sum). `logprob` is NaN unless
`top_logprobs` > 0 asked the service for them. `presence_penalty`, `frequency_penalty` and `logit_bias`
are OpenAI's own fields and sent as such. `top_k`, `repetition_penalty` are sent as extra body
fields, which vLLM and Parley honour and strict services may reject; `json_schema` is sent as
`response_format` (json_schema), which OpenAI, vLLM and Parley honour on chat. `count` is an estimate (about
four characters a token) and `fit` passes messages through unchanged: the remote's tokenizer is not
available here, so the service fits the context or refuses with an error.
"""

from __future__ import annotations

import json
import math
import os
from typing import Iterator

from parley.batching import StreamDriver
from parley.conversation import Fitted
from parley.engine import Prompt, SamplingParams, Token
from parley.errors import ConfigError, ContextError, ModelLoadError
from parley.templates import Chat
from parley.tools import CLOSE, OPEN, call_json

DEFAULT_CONTEXT = 8192  # used when the service does not say (vLLM and Parley report max_model_len)


def connect(name: str, base_url: str | None, spec: str) -> RemoteEngine:
    """A RemoteEngine for model `name` at `base_url`; checks the service answers and serves that model."""
    import openai

    base_url = base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
    client = _client(base_url)
    try:
        served = {m.id: m for m in client.models.list()}
    except openai.APIConnectionError as e:
        raise ModelLoadError(f"cannot reach {base_url} ({_cause(e)}): start the server or fix --base-url") from e
    except openai.AuthenticationError as e:
        raise ModelLoadError(f"{base_url} refused the API key: set OPENAI_API_KEY to a key it accepts") from e
    except (openai.NotFoundError, openai.APIStatusError):
        served = {}  # some services have no /models route; the first request will tell
    if served and name not in served:
        raise ModelLoadError(f"{base_url} does not serve {name!r}; it serves: {', '.join(sorted(served))}")
    window = getattr(served.get(name), "max_model_len", None)
    return RemoteEngine(name, base_url, spec, window if isinstance(window, int) else DEFAULT_CONTEXT)


def _client(base_url: str):
    import openai

    # The official client insists on a key; local servers usually want none, so any text will do.
    return openai.OpenAI(base_url=base_url, api_key=os.environ.get("OPENAI_API_KEY") or "none", max_retries=0)


class RemoteEngine:
    """Generation by a remote OpenAI-compatible service: an `Engine` (see the module docstring)."""

    def __init__(self, name: str, base_url: str, spec: str, context_window: int = DEFAULT_CONTEXT):
        self.name, self.base_url = name, base_url  # the model as the service calls it; its API root
        self.spec, self.context_window = spec, context_window
        self.compiling = False  # the service decodes as it does: nothing to wait for here
        self.client = _client(base_url)

    def stream(self, prompt: Prompt, params: SamplingParams | None = None) -> Iterator[Token]:
        """Yield tokens (one per streamed chunk) as they arrive. Closing the generator ends the request."""
        import openai

        params = (params or SamplingParams()).check()
        args = self._arguments(params)
        try:
            if isinstance(prompt, str):
                if params.top_logprobs:
                    args["logprobs"] = params.top_logprobs
                chunks = self.client.completions.create(prompt=prompt, **args)
            else:
                if params.top_logprobs:
                    args.update(logprobs=True, top_logprobs=params.top_logprobs)
                if isinstance(prompt, Chat):
                    if prompt.tools:
                        args["tools"] = prompt.tools
                    prompt = prompt.messages
                chunks = self.client.chat.completions.create(messages=prompt, **args)
            calls: dict[int, dict] = {}  # streamed tool calls by index, assembled
            with chunks:
                for chunk in chunks:
                    _add_calls(chunk, calls)
                    token = _token(chunk)
                    if token is not None:
                        yield token
            if calls:
                blocks = [f"{OPEN}\n{call_json(calls[i])}\n{CLOSE}" for i in sorted(calls)]
                yield Token(id=-1, text="\n".join(blocks), logprob=math.nan)
        except openai.APIConnectionError as e:
            raise ModelLoadError(f"lost the remote model at {self.base_url} ({_cause(e)})") from e
        except openai.AuthenticationError as e:
            raise ModelLoadError(f"{self.base_url} refused the API key: set OPENAI_API_KEY") from e
        except openai.BadRequestError as e:
            message = _message(e)
            kind = ContextError if "context" in message.lower() else ConfigError
            raise kind(f"the remote model refused the request: {message}") from e
        except openai.APIStatusError as e:
            raise ModelLoadError(f"the remote model at {self.base_url} failed "
                                 f"(HTTP {e.status_code}: {_message(e)})") from e

    def generate(self, prompt: Prompt, params: SamplingParams | None = None) -> str:
        return "".join(token.text for token in self.stream(prompt, params))

    def count(self, messages: list[dict], add_generation_prompt: bool = True, tools: list[dict] | None = None) -> int:
        """An estimate of the prompt's length in tokens (see the module docstring)."""
        listed = len(json.dumps(tools)) // 4 if tools else 0
        return sum(4 + len(m.get("content") or "") // 4 for m in messages) + 3 * add_generation_prompt + listed

    def fit(self, messages: list[dict], max_new_tokens: int, tools: list[dict] | None = None) -> Fitted:
        """The messages unchanged, with `count`'s estimate: the service fits its own window, or refuses."""
        return Fitted(list(messages), self.count(messages, tools=tools))

    def score(self, text: str | list[int], top: int = 0):
        raise ConfigError("prompt logprobs (echo with logprobs) need the model's own forward pass: "
                          "a remote openai: model cannot give them here; ask its service directly")

    def embed(self, text: str | list[int]):
        raise ConfigError("embeddings come from the served model's hidden states: a remote openai: model "
                          "has none here; ask its service's /v1/embeddings directly")

    def weights(self):
        raise ConfigError("attribution needs the model's weights: a remote openai: model has none here; "
                          "explain with a local model (smollm2, a directory or a hub id)")

    def driver(self, max_batch: int = 8, max_queue: int = 64) -> StreamDriver:
        """Up to `max_batch` concurrent streams (batching.StreamDriver); the service batches them."""
        return StreamDriver(self.stream, max_batch, max_queue)

    def _arguments(self, params: SamplingParams) -> dict:
        args = dict(
            model=self.name, stream=True, temperature=params.temperature, top_p=params.top_p,
            max_tokens=params.max_new_tokens,
        )
        if params.seed is not None:
            args["seed"] = params.seed
        if params.stop:
            args["stop"] = params.stop[:4]  # the OpenAI API takes at most four
        if params.presence_penalty:
            args["presence_penalty"] = params.presence_penalty
        if params.frequency_penalty:
            args["frequency_penalty"] = params.frequency_penalty
        if params.logit_bias:  # ids are the remote model's own: the caller knows its tokenizer
            args["logit_bias"] = {str(k): v for k, v in params.logit_bias.items()}
        extra = {}
        if params.top_k:
            extra["top_k"] = params.top_k
        if params.repetition_penalty != 1.0:
            extra["repetition_penalty"] = params.repetition_penalty
        if params.json_schema is not None:  # OpenAI's shape; vLLM takes it on /v1/completions too
            extra["response_format"] = {"type": "json_schema",
                                        "json_schema": {"name": "reply", "schema": params.json_schema}}
        if extra:
            args["extra_body"] = extra
        return args


def _add_calls(chunk, calls: dict[int, dict]) -> None:
    """Gather a chunk's tool-call deltas (id and name first, then argument fragments) into `calls`."""
    delta = getattr(chunk.choices[0], "delta", None) if chunk.choices else None
    for part in getattr(delta, "tool_calls", None) or []:
        call = calls.setdefault(part.index, {"function": {"name": "", "arguments": ""}})
        if part.function is not None:
            call["function"]["name"] += part.function.name or ""
            call["function"]["arguments"] += part.function.arguments or ""


def _token(chunk) -> Token | None:
    """One streamed chunk (chat or completion) as a Token; None for chunks that carry no choice."""
    if not chunk.choices:
        return None  # e.g. the trailing usage chunk
    choice = chunk.choices[0]
    delta = getattr(choice, "delta", None)
    text = (delta.content if delta is not None else choice.text) or ""
    logprob, top = math.nan, []
    logprobs = getattr(choice, "logprobs", None)
    entries = getattr(logprobs, "content", None) if logprobs is not None else None
    if entries:  # chat: a list of {token, logprob, top_logprobs}
        logprob = sum(e.logprob for e in entries)
        top = [(t.token, t.logprob) for t in entries[-1].top_logprobs or []]
    elif logprobs is not None and getattr(logprobs, "token_logprobs", None):  # legacy completions
        logprob = sum(v for v in logprobs.token_logprobs if v is not None)
        alternatives = (logprobs.top_logprobs or [None])[-1] or {}
        top = sorted(alternatives.items(), key=lambda kv: -kv[1])
    if not text and math.isnan(logprob):
        return None  # the role-only opening chunk, the closing one with only a finish_reason
    return Token(id=-1, text=text, logprob=logprob, top=top)


def _message(error) -> str:
    body = getattr(error, "body", None)
    if isinstance(body, dict):
        body = body.get("error", body)
        if isinstance(body, dict) and body.get("message"):
            return str(body["message"])
    return str(getattr(error, "message", error))


def _cause(error: Exception) -> str:
    cause = error.__cause__ or error
    return str(cause).splitlines()[0] if str(cause) else type(cause).__name__
