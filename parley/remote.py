"""A remote OpenAI-compatible service as a Parley engine, and the one way front ends pick an engine.

    loaded = models.load("openai:my-model", base_url="http://gpu-box:8000/v1")   # key: $OPENAI_API_KEY
    engine = engine_for(loaded)          # RemoteEngine here; the local Engine for any other spec
    engine.generate([{"role": "user", "content": "Hi"}], SamplingParams(temperature=0))   # -> str
    for token in engine.stream("def fib(n):", SamplingParams(max_new_tokens=64)): ...    # -> Token

Works with vLLM, llama.cpp's server, Ollama, a hosted API, or another `parley serve`. Chat messages
go to /chat/completions (the remote renders its own chat template); a raw prompt string goes to
/completions. Decoding happens over there, so `RemoteEngine` has the same surface as `Engine`
(`generate`, `stream`, `count`) but no `start`/`Batch`: a server batches remote requests itself.

Limits: a remote token has no id here (`Token.id` is -1) and one streamed chunk becomes one Token
(a chunk may hold several tokens; its logprob is their sum). `logprob` is NaN unless
`top_logprobs` > 0 asked the service for them. `top_k`, `repetition_penalty` are sent as extra body
fields, which vLLM and Parley honour and strict services may reject. `count` is an estimate (about
four characters a token): the remote's tokenizer is not available here.
"""

from __future__ import annotations

import math
import os
from typing import Iterator

from parley.engine import Engine, Prompt, SamplingParams, Token
from parley.errors import ConfigError, ContextError, ModelLoadError

PREFIX = "openai:"
DEFAULT_CONTEXT = 8192  # used when the service does not say (vLLM and Parley report max_model_len)


def engine_for(loaded) -> Engine | RemoteEngine:
    """The engine that drives `loaded`: remote for `openai:NAME` specs, the local Engine otherwise."""
    return RemoteEngine(loaded) if loaded.remote else Engine(loaded)


def load_remote(name: str, base_url: str | None):
    """A `Loaded` for model `name` at `base_url`; checks the service answers and serves that model."""
    import openai

    from parley.models import Loaded

    if not name:
        raise ConfigError("--model openai:NAME needs a model name after 'openai:', e.g. openai:gpt-4o-mini")
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
    import torch

    return Loaded(
        model=None, tokenizer=None, template="", spec=PREFIX + name, path=base_url,
        device=torch.device("cpu"), context_window=window if isinstance(window, int) else DEFAULT_CONTEXT,
        remote=name,
    )


def _client(base_url: str):
    import openai

    # The official client insists on a key; local servers usually want none, so any text will do.
    return openai.OpenAI(base_url=base_url, api_key=os.environ.get("OPENAI_API_KEY") or "none", max_retries=0)


class RemoteEngine:
    """Generation by a remote OpenAI-compatible service; same `generate`/`stream` as `Engine`."""

    def __init__(self, loaded):
        self.loaded = loaded
        self.client = _client(loaded.path)

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
                chunks = self.client.chat.completions.create(messages=prompt, **args)
            with chunks:
                for chunk in chunks:
                    token = _token(chunk)
                    if token is not None:
                        yield token
        except openai.APIConnectionError as e:
            raise ModelLoadError(f"lost the remote model at {self.loaded.path} ({_cause(e)})") from e
        except openai.AuthenticationError as e:
            raise ModelLoadError(f"{self.loaded.path} refused the API key: set OPENAI_API_KEY") from e
        except openai.BadRequestError as e:
            message = _message(e)
            kind = ContextError if "context" in message.lower() else ConfigError
            raise kind(f"the remote model refused the request: {message}") from e
        except openai.APIStatusError as e:
            raise ModelLoadError(f"the remote model at {self.loaded.path} failed "
                                 f"(HTTP {e.status_code}: {_message(e)})") from e

    def generate(self, prompt: Prompt, params: SamplingParams | None = None) -> str:
        return "".join(token.text for token in self.stream(prompt, params))

    def count(self, messages: list[dict], add_generation_prompt: bool = True) -> int:
        """An estimate of the prompt's length in tokens (see the module docstring)."""
        return sum(4 + len(m.get("content") or "") // 4 for m in messages) + 3 * add_generation_prompt

    def _arguments(self, params: SamplingParams) -> dict:
        args = dict(
            model=self.loaded.remote, stream=True, temperature=params.temperature, top_p=params.top_p,
            max_tokens=params.max_new_tokens,
        )
        if params.seed is not None:
            args["seed"] = params.seed
        if params.stop:
            args["stop"] = params.stop[:4]  # the OpenAI API takes at most four
        extra = {}
        if params.top_k:
            extra["top_k"] = params.top_k
        if params.repetition_penalty != 1.0:
            extra["repetition_penalty"] = params.repetition_penalty
        if extra:
            args["extra_body"] = extra
        return args


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
