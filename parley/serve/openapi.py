"""What /openapi.json promises: every status code a route really sends, with the error body's schema,
the 2xx bodies, and `text/event-stream` for replies sent as server-sent events.

FastAPI only knows what the route functions declare, which here is their request bodies: left alone
it documents a 422 the server never sends (validation errors are 400s, api_errors.py), no 2xx body
and no event stream, so a client generator or a fuzzer checking answers against the schema checks
nothing. `document(app)` fills in each operation's responses once, from `ROUTES` below, when the
schema is first built; the route modules stay plain. The statuses that middleware adds (400 for a
Host not allowed, 401 for a missing key, 413 for a large body) follow the middleware's own rules.
`make fuzz` (schemathesis, tests/serve/test_fuzz.py) checks every answer against this schema.

An operation missing from `ROUTES` fails the schema build, so a new route cannot go undocumented.
The response models are documentation only: the routes build their bodies as dicts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fastapi import FastAPI
from pydantic import BaseModel, Field
from pydantic.json_schema import models_json_schema

Finish = Literal["stop", "length"] | None  # None: cut short (a disconnect) or not finished yet


class ErrorDetail(BaseModel):
    message: str = Field(description="One line: what is wrong and how to fix it.")
    type: str = Field(description="invalid_request_error, rate_limit_error or server_error.")
    param: str | None = Field(description="The request field at fault, as the client wrote it.")
    code: str | None = Field(description="A stable name for the error, e.g. queue_full.")


class Error(BaseModel):
    """Every error answer, in OpenAI's shape."""

    error: ErrorDetail


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    max_model_len: int = Field(description="The model's context window in tokens.")


class ModelCardFull(ModelCard):
    embeddings: str = Field(description="Where /v1/embeddings' vectors come from.")


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCardFull]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob]


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None
    finish_reason: Finish


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None] = Field(description="null for an echoed prompt's first token.")
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: Finish


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class EmbeddingItem(BaseModel):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str = Field(description="Floats, or base64 of little-endian float32s.")


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"]
    data: list[EmbeddingItem]
    model: str
    usage: EmbeddingUsage


class OutputText(BaseModel):
    type: Literal["output_text"]
    text: str
    annotations: list


class OutputMessage(BaseModel):
    id: str
    type: Literal["message"]
    role: Literal["assistant"]
    status: Literal["completed", "incomplete"]
    content: list[OutputText]


class ResponseUsage(BaseModel):
    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_tokens_details: dict
    output_tokens_details: dict


class ResponseObject(BaseModel):
    id: str
    object: Literal["response"]
    created_at: float
    status: Literal["completed", "incomplete"]
    model: str
    output: list[OutputMessage]
    usage: ResponseUsage


class Conversation(BaseModel):
    id: str
    title: str
    model: str
    system: str | None
    params: dict
    created_at: float
    updated_at: float
    message_count: int


class ChatMessage(BaseModel):
    role: str
    content: str


class StoredMessage(BaseModel):
    id: int = Field(description="The message's id in the store: what feedback, edits and picks name.")
    role: str
    content: str
    version: int | None = Field(None, description="A reply with several versions: which is shown (1-based).")
    versions: int | None = Field(None, description="A reply with several versions: how many it has.")


class FeedbackItem(BaseModel):
    id: int
    message_id: int | None
    kind: Literal["good", "bad", "edit", "pick"]
    context: list[dict] = Field(description="The messages the reply answered, system prompt first.")
    chosen: str | None = Field(description="The better reply (a thumbs up's, an edit, a picked version).")
    rejected: str | None = Field(description="The worse reply (a thumbs down's, the edited original, a version not picked).")
    note: str | None
    model: str
    created_at: float


class FeedbackList(BaseModel):
    object: Literal["list"]
    data: list[FeedbackItem]


class Rated(BaseModel):
    id: int
    rating: Literal["good", "bad"] | None
    note: str | None


class ReplyVersions(BaseModel):
    id: int
    version: int = Field(description="The version shown (1-based).")
    data: list[str] = Field(description="Every version, oldest first.")
    stopped: bool | None = None  # present (true) on a reply stopped before its end


class ConversationWithMessages(Conversation):
    messages: list[StoredMessage]


class ConversationList(BaseModel):
    object: Literal["list"]
    data: list[Conversation]


class Deleted(BaseModel):
    id: str
    object: Literal["conversation.deleted"]
    deleted: bool


class Reply(BaseModel):
    message: AssistantMessage
    finish_reason: Finish
    notice: str | None = Field(description="Which earlier turns were left out to fit the context window.")


class ReplyTokenInfo(BaseModel):
    text: str
    logprob: float
    entropy: float = Field(description="Of the model's distribution at this token, in nats.")
    top: list[tuple[str, float]] = Field(description="The likeliest tokens here, [text, logprob], best first.")


class MessageScore(BaseModel):
    message: str
    score: float


class LineScore(BaseModel):
    line: int
    text: str
    score: float


class ExplanationDocument(BaseModel):
    """`parley explain`'s JSON document (parley/explain/export.py). Positive scores raised the span's log-prob."""

    model: str
    template: dict
    parley_version: str
    messages: list[ChatMessage]
    reply: str
    prompt_tokens: list[str] = Field(description="The rendered prompt's tokens as text; joined, the prompt.")
    token_message: list[int] = Field(description="Per prompt token: its index into message_labels.")
    token_line: list[int] = Field(description="Per prompt token: its line (1-based).")
    message_labels: list[str]
    reply_tokens: list[ReplyTokenInfo]
    span: list[int] = Field(description="[first, end): the reply tokens explained.")
    target_logprob: float
    attributions: dict[str, list[list[float]]] = Field(description="Per method, one row per span token (rows: true).")
    scores: dict[str, list[float]] = Field(description="Per method, one score per prompt token, for the whole span.")
    by_message: dict[str, list[MessageScore]]
    by_line: dict[str, list[LineScore]]
    completeness: dict[str, float] | None = None
    contrast: dict | None = None


class Health(BaseModel):
    status: Literal["ok"]
    model: str | None
    waiting: int
    active: int
    compiling: bool  # decoding is eager (slower) until the background compile is done


# The errors each route can answer with, beyond the middleware's 401 and 413.
ERRORS = {
    400: "The request is malformed or asks for something unsupported; `param` names the field.",
    404: "No such model, conversation, or reply in it.",
    409: "The conversation changed while the reply was written (another client): nothing was stored.",
    429: "The queue is full: retry after Retry-After seconds.",
    502: "The remote model service failed (a server proxying openai:NAME).",
    503: "The server is shutting down.",
}
GENERATE = (400, 404, 429, 502, 503)  # what queueing a generation can answer

OPENAI_STREAM = ("`stream: true`: `data: {chunk}` events in OpenAI's chunk shape, then `data: [DONE]`; "
                 "an error after the stream started is sent as `data: {\"error\": {...}}`.")
RESPONSES_STREAM = ("`stream: true`: `event: TYPE` / `data: {...}` events in the Responses shape "
                    "(response.created ... response.output_text.delta ... response.completed), each with a "
                    "sequence_number; an error after the stream started is a `response.failed` event.")
REPLY_STREAM = ("`stream: true` (the default): `data:` events {\"type\": \"start\", \"notice\"}, "
                "{\"type\": \"delta\", \"text\"}..., then {\"type\": \"done\", \"finish_reason\", \"tokens\"} "
                "or {\"type\": \"error\", \"message\"}.")


@dataclass(frozen=True)
class Answers:
    """What one operation answers: its success body, an event stream if it has one, its errors."""

    body: type[BaseModel] | None  # None: text (the metrics)
    errors: tuple[int, ...] = ()
    status: int = 200
    stream: str | None = None  # the event stream's description, for streamed replies


ROUTES: dict[tuple[str, str], Answers] = {
    ("get", "/v1/models"): Answers(ModelList),
    ("get", "/v1/models/{model_id}"): Answers(ModelCardFull, (404,)),
    ("post", "/v1/embeddings"): Answers(EmbeddingList, GENERATE),
    ("post", "/v1/responses"): Answers(ResponseObject, GENERATE, stream=RESPONSES_STREAM),
    ("post", "/v1/chat/completions"): Answers(ChatCompletion, GENERATE, stream=OPENAI_STREAM),
    ("post", "/v1/completions"): Answers(Completion, GENERATE, stream=OPENAI_STREAM),
    ("get", "/v1/conversations"): Answers(ConversationList, (400,)),
    ("post", "/v1/conversations"): Answers(Conversation, (400,), status=201),
    ("get", "/v1/conversations/{cid}"): Answers(ConversationWithMessages, (404,)),
    ("patch", "/v1/conversations/{cid}"): Answers(Conversation, (400, 404)),
    ("delete", "/v1/conversations/{cid}"): Answers(Deleted, (404,)),
    ("post", "/v1/conversations/{cid}/messages"): Answers(Reply, GENERATE + (409,), stream=REPLY_STREAM),
    ("post", "/v1/conversations/{cid}/regenerate"): Answers(Reply, GENERATE + (409,), stream=REPLY_STREAM),
    ("post", "/v1/conversations/{cid}/messages/{mid}/feedback"): Answers(Rated, (400, 404)),
    ("patch", "/v1/conversations/{cid}/messages/{mid}"): Answers(StoredMessage, (400, 404)),
    ("get", "/v1/conversations/{cid}/messages/{mid}/versions"): Answers(ReplyVersions, (400, 404)),
    ("post", "/v1/conversations/{cid}/messages/{mid}/versions/{number}"): Answers(ReplyVersions, (400, 404)),
    ("get", "/v1/conversations/{cid}/feedback"): Answers(FeedbackList, (404,)),
    ("post", "/v1/explain"): Answers(ExplanationDocument, (400, 404, 429, 503)),
    ("get", "/health"): Answers(Health),
    ("get", "/metrics"): Answers(None),
}
MODELS = sorted({a.body for a in ROUTES.values() if a.body} | {Error}, key=lambda m: m.__name__)


def document(app: FastAPI) -> None:
    """Make `app.openapi()` describe the real answers (see the module docstring)."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            _fill(build())  # FastAPI's build caches the dict it returns; filled in place, once
        return app.openapi_schema

    app.openapi = openapi


def _ref(model: type[BaseModel]) -> dict:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _fill(schema: dict) -> None:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):  # only FastAPI's 422 used them
        components.pop(unused, None)
    _, defs = models_json_schema([(m, "serialization") for m in MODELS],
                                 ref_template="#/components/schemas/{model}")
    for name, definition in defs["$defs"].items():
        if name in components:  # a request model of the same name would be silently replaced
            raise RuntimeError(f"openapi: response model {name} clashes with a request model")
        components[name] = definition
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            answers = ROUTES.get((method, path))
            if answers is None:
                raise RuntimeError(f"openapi: {method.upper()} {path} is missing from parley.serve.openapi.ROUTES")
            operation["responses"] = _responses(method, path, answers)


def _responses(method: str, path: str, answers: Answers) -> dict:
    if answers.body is None:
        content = {"text/plain": {"schema": {"type": "string"}}}
    else:
        content = {"application/json": {"schema": _ref(answers.body)}}
    if answers.stream:
        # Before OpenAPI 3.2's itemSchema, an event stream's schema describes each event.
        content["text/event-stream"] = {"schema": {
            "type": "object", "required": ["data"], "description": answers.stream,
            "properties": {"data": {"type": "string", "contentMediaType": "application/json"}}}}
    responses = {str(answers.status): {"description": "Success.", "content": content}}
    errors = {status: ERRORS[status] for status in answers.errors}
    # The middleware's answers (app.py): a Host outside the allow-list is refused everywhere; keys guard
    # /v1 and /metrics; bodies are limited on writes.
    errors.setdefault(400, "A Host header this server does not answer to (see --allowed-host).")
    if path.startswith("/v1/") or path == "/metrics":
        errors[401] = "A missing or wrong API key, when the server has keys."
    if method in ("post", "put", "patch"):
        errors[413] = "The request body is over the server's size limit (2 MiB by default)."
    for status in sorted(errors):
        responses[str(status)] = {"description": errors[status],
                                  "content": {"application/json": {"schema": _ref(Error)}}}
    if "429" in responses:
        responses["429"]["headers"] = {"Retry-After": {
            "description": "Seconds to wait before retrying.", "required": True, "schema": {"type": "integer"}}}
    if "401" in responses:
        responses["401"]["headers"] = {"WWW-Authenticate": {
            "description": "Always `Bearer`.", "required": True, "schema": {"type": "string"}}}
    return responses
