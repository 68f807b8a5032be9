"""POST /v1/explain: which parts of the prompt made the model say a reply, and how sure it was (the body
is `parley explain`'s JSON document: parley/explain/export.py). The page's "Why?" button calls it.

    {"messages": [{"role": "user", "content": "..."}], "reply": "...",
     "span": "a piece of the reply" | null, "methods": ["gradient_x_input"], "steps": 64,
     "contrast": "what it might have said instead" | null, "rows": false}

Load: an explanation is whole-prompt forwards and backwards, so it runs in the server's `beside` lane
(serve/streaming.py): off the event loop, one at a time, on its own thread beside the batching
driver, which goes on decoding everyone else's replies meanwhile. It waits in a bounded line: more
than --max-queue explanations waiting is a 429, as for generations. Cost is checked before anything
runs: forward passes x tokens (integrated gradients: `steps` per target, per row when `rows`) over
--explain-budget is a 400 that names the budget and what to lower, rather than minutes of work.

A remote `openai:` model has no weights here: a 400 saying so (Engine.weights).
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from pydantic import Field

from parley.batching import Busy
from parley.explain.config import MAX_STEPS, ExplainConfig
from parley.serve.api_errors import ApiError, translate
from parley.serve.openai_api import _check_model
from parley.serve.openai_tools import Strict
from parley.serve.streaming import beside

router = APIRouter(prefix="/v1", tags=["explain"])
Method = Literal["gradient_x_input", "integrated_gradients", "occlusion", "gxi", "ig"]


class ExplainMessage(Strict):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str = Field(max_length=200_000)


class ExplainRequest(Strict):
    messages: list[ExplainMessage] = Field(min_length=1, description="The prompt: the conversation before the reply.")
    reply: str = Field(min_length=1, max_length=200_000, description="The reply to explain.")
    span: str | None = Field(None, description="Explain only this piece of the reply (exact text); default: all of it.")
    methods: list[Method] = Field(["gradient_x_input"], min_length=1, max_length=3)
    steps: int = Field(64, ge=1, le=MAX_STEPS, description="Integrated gradients' interpolation points.")
    contrast: str | None = Field(None, max_length=2_000, description="Why the span and not this text.")
    rows: bool = Field(False, description="Also one row of scores per reply token (attributions).")
    model: str = Field("", max_length=512)


def cost(config: ExplainConfig, tokens: int, messages: int, span_tokens: int) -> int:
    """Token-passes (forward or backward over one token) an explanation costs, roughly."""
    rows = span_tokens if config.rows else 0
    passes = {"gradient_x_input": 2 + rows, "occlusion": 1 + messages,
              "integrated_gradients": 2 * config.steps * (1 + rows)}
    return tokens * sum(passes[m] for m in config.methods)


@router.post("/explain")
async def explain(body: ExplainRequest, request: Request):
    """Attribution of the reply (or a span of it) to the prompt's tokens, lines and messages, with the
    reply tokens' probabilities and alternatives: the `parley explain` JSON document."""
    _check_model(request, body.model)
    state = request.app.state
    config = ExplainConfig(methods=tuple(body.methods), steps=body.steps, rows=body.rows)
    waiting = getattr(state, "explaining", 0)
    if waiting >= state.options.max_queue:
        raise translate(Busy(waiting, retry_after=5))
    state.explaining = waiting + 1
    try:
        return await beside(request, "messages", _explain, request, body, config)
    finally:
        state.explaining -= 1


def _explain(request: Request, body: ExplainRequest, config: ExplainConfig) -> dict:
    """On a worker thread: lay the case out, check its cost, compute (parley/explain)."""
    from dataclasses import replace

    from parley.errors import ConfigError, ParleyError
    from parley.explain.attribution import contrast, explain
    from parley.explain.export import to_document
    from parley.explain.layout import lay_out

    loaded = request.app.state.engine.weights()
    messages = [m.model_dump() for m in body.messages]
    layout = lay_out(loaded, messages, body.reply)
    if body.span:
        try:
            config = replace(config, span=layout.span_of(body.span))
        except ConfigError as e:
            raise ApiError(400, f"span: {e}", param="span") from None
    first, end = config.span or (0, len(layout.reply_ids))
    budget = request.app.state.options.explain_budget
    needed = cost(config, len(layout.ids), len(messages), end - first)
    if needed > budget:
        raise ApiError(400, f"this explanation would cost {needed:,} token-passes ({len(layout.ids)} tokens, "
                            f"{', '.join(config.methods)}, steps={config.steps}, rows={config.rows}) but the server's "
                            f"limit is --explain-budget {budget:,}: lower steps, drop rows or integrated_gradients, "
                            "or explain a shorter span or conversation", param="steps", code="explain_budget_exceeded")
    explanation = explain(loaded, layout, config)
    extra = None
    if body.contrast is not None:
        try:
            scores, logp_x, logp_y = contrast(loaded, layout, explanation.span, body.contrast)
        except ParleyError as e:
            raise ApiError(400, f"contrast: {e}", param="contrast") from None
        extra = {"alternative": body.contrast, "logprob_span": logp_x, "logprob_alternative": logp_y, "scores": scores}
    return to_document(explanation, model=request.app.state.served_name, template=loaded.template, contrast=extra)
