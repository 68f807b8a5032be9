"""POST /v1/embeddings in OpenAI's shape, so `client.embeddings.create(...)` works unchanged.

The vectors are the served model's own: its last hidden states, mean-pooled over the input's tokens
and scaled to unit length (LocalEngine.embed). That works offline with any decoder-only model, but it
is not a trained retrieval model: expect useful similarities only from a model that understands the
text, and none from a remote `openai:` model (a 400: ask its service directly).

Fields: `input` (a string, a list of strings, a list of token ids, or a list of such lists),
`encoding_format` (`float`, or `base64`: little-endian float32 bytes, which the SDK asks for by default
and decodes), `dimensions` (only the model's own width: vectors are not truncated), `model`, `user`.
Limits: at most MAX_INPUTS inputs per request, each within the context window (a 400 naming `input`).
Each input is one forward pass in the server's `beside` lane (streaming.py): one at a time, so a big
request delays other requests' decoding by at most one input's forward at a time.
"""

from __future__ import annotations

import base64
import struct
from typing import Literal

from fastapi import APIRouter, Request
from pydantic import Field

from parley.serve.api_errors import ApiError
from parley.serve.openai_api import _check_model
from parley.serve.openai_tools import Strict
from parley.serve.streaming import beside

router = APIRouter(prefix="/v1", tags=["openai"])
MAX_INPUTS = 64


class EmbeddingRequest(Strict):
    input: str | list[str] | list[int] | list[list[int]]
    model: str = Field("", max_length=512)
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None


@router.post("/embeddings")
async def embeddings(body: EmbeddingRequest, request: Request):
    """One unit-length vector per input: the served model's mean-pooled last hidden states."""
    _check_model(request, body.model)
    inputs = _inputs(body.input)
    engine = request.app.state.engine
    data, tokens = [], 0
    for index, text in enumerate(inputs):
        vector, read = await beside(request, "input", engine.embed, text)
        if body.dimensions not in (None, len(vector)):
            raise ApiError(400, f"dimensions: this model's embeddings have {len(vector)} dimensions and are not "
                                "truncated; leave dimensions out", param="dimensions")
        data.append({"object": "embedding", "index": index, "embedding": _encode(vector, body.encoding_format)})
        tokens += read
    return {"object": "list", "data": data, "model": request.app.state.served_name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def _inputs(value) -> list:
    """The request's inputs as a list of strings or id lists, checked for count and emptiness."""
    if isinstance(value, str) or (value and isinstance(value[0], int)):
        value = [value]
    if not 1 <= len(value) <= MAX_INPUTS or any(len(v) == 0 for v in value):
        raise ApiError(400, f"input: give 1 to {MAX_INPUTS} non-empty strings (or token id lists) per request; "
                            f"this one has {len(value)}", param="input")
    return value


def _encode(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "float":
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
