"""Every field of OpenAI's chat and completions requests, and what Parley does with each.

One table, read three ways: the routes refuse every field marked REFUSED with a 400 naming it
(`refuse`, called by openai_api.Sampling.params); tests/serve/test_serve_fields.py walks the official
openai SDK's own `create` signatures and checks each field is honoured, or harmless and without
effect, or refused, as this table says (a field the SDK gains and the table lacks fails that test);
and the README's "Supported fields" table is `markdown()`'s output, checked by the same test.

The rule (issue 12): a field that changes what the reply means is honoured or refused, never dropped
silently. Only fields that change nothing a client can observe in the reply (identifiers, billing,
storage and caching hints) are accepted without effect; so are unknown extras, as OpenAI's are.
"""

from __future__ import annotations

from dataclasses import dataclass

from parley.serve.api_errors import ApiError

HONOURED, ACCEPTED, REFUSED = "honoured", "accepted, no effect", "refused: 400"
BOTH, CHAT, COMPLETIONS = ("chat", "completions"), ("chat",), ("completions",)


@dataclass(frozen=True)
class Rule:
    status: str  # HONOURED, ACCEPTED or REFUSED
    note: str  # what it does here (README), or for REFUSED the 400's message after the field's name
    routes: tuple[str, ...] = BOTH
    harmless: tuple = (None,)  # values of a REFUSED field that ask for nothing (sent by some clients)


FIELDS: dict[str, Rule] = {
    "messages": Rule(HONOURED, "rendered with the model's chat template; text parts only", CHAT),
    "prompt": Rule(HONOURED, "a string or a list of up to 16 strings (n choices each)", COMPLETIONS),
    "model": Rule(HONOURED, "the served model's id (or empty); another id is a 404"),
    "max_tokens": Rule(HONOURED, "capped at `--max-tokens`; more than fits beside the prompt is a 400"),
    "max_completion_tokens": Rule(HONOURED, "as `max_tokens`", CHAT),
    "temperature": Rule(HONOURED, "0 to 2; 0 is greedy"),
    "top_p": Rule(HONOURED, "nucleus sampling"),
    "n": Rule(HONOURED, "1 to 8 choices, seeded seed, seed+1, ..."),
    "best_of": Rule(HONOURED, "must equal `n` (no server-side ranking): another value is a 400", COMPLETIONS),
    "seed": Rule(HONOURED, "the same seed gives the same reply"),
    "stop": Rule(HONOURED, "up to 4 strings; the reply ends before the first"),
    "stream": Rule(HONOURED, "server-sent events, as OpenAI sends them"),
    "stream_options": Rule(HONOURED, "`include_usage`: a last chunk with `usage`"),
    "logprobs": Rule(HONOURED, "each token's logprob (chat: true/false; completions: 0 to 5 alternatives)"),
    "top_logprobs": Rule(HONOURED, "0 to 20 alternatives per token; needs `logprobs: true`", CHAT),
    "presence_penalty": Rule(HONOURED, "-2 to 2, OpenAI's formula over the reply's tokens"),
    "frequency_penalty": Rule(HONOURED, "-2 to 2, OpenAI's formula over the reply's tokens"),
    "logit_bias": Rule(HONOURED, "token id → -100 to 100 added to its logit; at most 300; an id outside the "
                                 "vocabulary is a 400"),
    "response_format": Rule(HONOURED, "`json_object` and `json_schema` by constrained decoding (also on "
                                      "completions, as vLLM does)"),
    "top_k": Rule(HONOURED, "an extension, as in vLLM: the k most likely tokens"),
    "repetition_penalty": Rule(HONOURED, "an extension, as in vLLM: CTRL-style, over prompt and reply"),
    "user": Rule(ACCEPTED, "an end-user id for the caller's own records"),
    "safety_identifier": Rule(ACCEPTED, "as `user`", CHAT),
    "metadata": Rule(ACCEPTED, "tags for stored completions, which this server does not keep", CHAT),
    "store": Rule(ACCEPTED, "OpenAI's stored completions; nothing is stored here", CHAT),
    "service_tier": Rule(ACCEPTED, "a billing and latency tier; there is one here", CHAT),
    "prompt_cache_key": Rule(ACCEPTED, "a caching hint: the prefix cache here is automatic", CHAT),
    "prompt_cache_options": Rule(ACCEPTED, "a caching hint: the prefix cache here is automatic", CHAT),
    "prompt_cache_retention": Rule(ACCEPTED, "a caching hint: the prefix cache here is automatic", CHAT),
    "prediction": Rule(ACCEPTED, "predicted output only speeds OpenAI up; the reply is the same", CHAT),
    "tools": Rule(HONOURED, "function tools, shown by the model's own template when it is tool-aware, else in one documented format (parley/tools.py)", CHAT),
    "tool_choice": Rule(HONOURED, "`none`, `auto`, `required` or a named function; the last two decode under "
                                  "the tools' schemas, so the call is well formed", CHAT),
    "parallel_tool_calls": Rule(HONOURED, "`false`: at most one call per reply", CHAT),
    "functions": Rule(REFUSED, "the legacy functions API is not supported: send `tools` instead", CHAT),
    "function_call": Rule(REFUSED, "the legacy functions API is not supported: send `tool_choice` instead", CHAT),
    "audio": Rule(REFUSED, "audio output is not supported: this server replies with text only", CHAT),
    "modalities": Rule(REFUSED, "only text is supported: send [\"text\"] or leave it out", CHAT,
                       (None, ["text"])),
    "web_search_options": Rule(REFUSED, "web search is not supported by this server", CHAT),
    "moderation": Rule(REFUSED, "moderation is not run by this server", CHAT),
    "reasoning_effort": Rule(REFUSED, "this model has no reasoning setting: leave it out", CHAT),
    "verbosity": Rule(REFUSED, "this model has no verbosity setting: leave it out", CHAT),
    "echo": Rule(HONOURED, "the prompt before the reply; with `logprobs`, the prompt's tokens scored too "
                           "(`max_tokens: 0` scores the prompt alone)", COMPLETIONS),
    "suffix": Rule(REFUSED, "suffix (fill-in-the-middle) is not supported by this server", COMPLETIONS,
                   (None, "")),
}


def refuse(route: str, given: dict) -> None:
    """A 400 naming the first field in `given` (the request's fields as sent) that this table refuses."""
    for name, value in given.items():
        rule = FIELDS.get(name)
        if rule and rule.status == REFUSED and route in rule.routes and value not in rule.harmless:
            raise ApiError(400, f"{name}: {rule.note}", param=name)


def markdown() -> str:
    """The README's table of fields: one row per field, the routes it belongs to, and what happens."""
    rows = ["| field | route | Parley |", "| --- | --- | --- |"]
    for name, rule in FIELDS.items():
        routes = "both" if rule.routes == BOTH else rule.routes[0]
        rows.append(f"| `{name}` | {routes} | {rule.status}: {rule.note} |")
    return "\n".join(rows)
