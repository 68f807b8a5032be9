"""Every HTTP error the server sends, in the OpenAI shape clients already parse:

    {"error": {"message": "...", "type": "invalid_request_error", "param": "temperature", "code": null}}

Library errors (ParleyError) and the batching driver's Busy/ShuttingDown are translated here, once;
anything else is a bug, answered as a 500 in the same shape (the traceback goes to the server log);
FastAPI's 422 validation errors become 400s whose message names the field as the client wrote it
(`messages[0].role: Input should be 'system', 'user', 'assistant' or 'developer'`).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from parley.errors import ContextError, ModelLoadError, ParleyError
from parley.batching import Busy, ShuttingDown
from parley.engine import ParamError
from parley.store import ConversationNotFound, MessageNotFound

log = logging.getLogger("parley.serve")


class ApiError(Exception):
    """An error answer: HTTP status plus the OpenAI error fields."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def translate(error: BaseException) -> ApiError:
    """The ApiError for a library or driver error; anything unexpected is a logged 500."""
    if isinstance(error, ApiError):
        return error
    if isinstance(error, Busy):
        return ApiError(429, str(error), "rate_limit_error", code="queue_full",
                        headers={"Retry-After": str(error.retry_after)})
    if isinstance(error, ShuttingDown):
        return ApiError(503, str(error), "server_error", code="shutting_down")
    if isinstance(error, ConversationNotFound):
        return ApiError(404, str(error), code="conversation_not_found")
    if isinstance(error, MessageNotFound):
        return ApiError(404, str(error), code="message_not_found")
    if isinstance(error, ContextError):
        return ApiError(400, str(error), param="messages", code="context_length_exceeded")
    if isinstance(error, ModelLoadError):  # a remote backend that failed or went away
        return ApiError(502, str(error), "server_error", code="backend_unavailable")
    if isinstance(error, ParamError):  # a limit only SamplingParams.check() knows, e.g. a stop string's length
        return ApiError(400, str(error), param=error.key)
    if isinstance(error, ParleyError):
        return ApiError(400, str(error))
    log.error("internal error", exc_info=error)
    return _internal()


def _internal() -> ApiError:
    return ApiError(500, "internal server error: the server log has the details", "server_error")


def field_name(loc: tuple) -> str:
    """('body', 'messages', 0, 'role') -> 'messages[0].role', leaving out pydantic's union tags."""
    name = ""
    for part in loc[1:] if loc and loc[0] in ("body", "query", "path") else loc:
        if isinstance(part, int):
            name += f"[{part}]"
        elif "[" in part or part in ("str", "int", "float", "bool", "list", "dict") or part.startswith("function-"):
            continue  # e.g. 'list[str]': which branch of a union pydantic tried
        else:
            name += f".{part}" if name else part
    return name


def _allowed_methods(request: Request) -> str:
    """Every method some route takes at this path. Starlette's 405 names only the methods of the first
    route that matched the path, so GET /v1/conversations/{cid} hid PATCH and DELETE from `Allow`."""
    allowed = [method for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
               if any(route.matches({**request.scope, "method": method})[0] == Match.FULL
                      for route in request.app.routes)]
    return ", ".join(allowed)


def install(app: FastAPI) -> None:
    """Route every error the app can raise through `translate`."""

    @app.exception_handler(ApiError)
    async def _api(request: Request, error: ApiError):
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError):
        first = error.errors()[0]
        if first.get("type") == "json_invalid":
            return ApiError(400, f"the request body is not valid JSON ({first.get('msg')})").response()
        param = field_name(tuple(first.get("loc", ())))
        message = str(first.get("msg", "")).removeprefix("Value error, ")
        if not param:
            if first.get("type") == "missing":
                return ApiError(400, "the request body is empty: send a JSON object").response()
            return ApiError(400, f"the request body must be a JSON object ({message})").response()
        return ApiError(400, f"{param}: {message}", param=param).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, error: StarletteHTTPException):
        where = f"{request.method} {request.url.path}"
        message = {404: f"no such route: {where} (the API is described at /docs)",
                   405: f"method not allowed: {where}"}.get(error.status_code, str(error.detail))
        headers = getattr(error, "headers", None)
        if error.status_code == 405:
            headers = {**(headers or {}), "Allow": _allowed_methods(request)}
        return ApiError(error.status_code, message, headers=headers).response()

    @app.exception_handler(ParleyError)
    async def _parley(request: Request, error: ParleyError):
        return translate(error).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception):
        # A bug: still an error body in the documented shape, not Starlette's plain-text page.
        # Not logged here: Starlette re-raises it to uvicorn, which logs the traceback.
        return _internal().response()

    for kind in (Busy, ShuttingDown):
        app.add_exception_handler(kind, lambda request, error: translate(error).response())
