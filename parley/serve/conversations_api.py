"""Stored conversations over REST (the web page's backend), in the same SQLite store as `parley chat`.

    GET    /v1/conversations                   newest first (?limit=&offset=)
    POST   /v1/conversations                   {title?, system?, params?} -> the new conversation
    GET    /v1/conversations/{cid}             the conversation with its messages
    PATCH  /v1/conversations/{cid}             {title?, system?, params?}: rename, change settings
    DELETE /v1/conversations/{cid}
    POST   /v1/conversations/{cid}/messages    {content, params?, stream?, edit?}: add a user message, reply
                                               (edit: the index of a user message this one replaces,
                                               with everything after it: the page's edit-and-resend)
    POST   /v1/conversations/{cid}/regenerate  {params?, stream?}: a new version of the last reply
    POST   /v1/conversations/{cid}/messages/{mid}/feedback   {rating: good|bad|null, note?}: thumbs
    PATCH  /v1/conversations/{cid}/messages/{mid}            {content, note?}: the user's rewrite of a reply
    GET    /v1/conversations/{cid}/messages/{mid}/versions   every version of a reply, and the one shown
    POST   /v1/conversations/{cid}/messages/{mid}/versions/{n}  show version n: preferred to the others
    GET    /v1/conversations/{cid}/feedback                  what was said about its replies
    POST   /plain                              the page's no-script fallback (an HTML form)

`params` are SamplingParams fields (temperature, top_p, top_k, max_new_tokens, seed, json_schema, ...);
those sent with a message are saved to the conversation, so continuing it later restores them. Each reply is
a `session.Session` turn, as in `parley chat`: the history goes through the rolling buffer (system
prompt kept, oldest turns dropped first, room kept for the reply); the reply's first event says
what was dropped. Replies stream as server-sent
events: {"type": "start", "notice"}, {"type": "delta", "text", "logprob", "top"}..., {"type": "done",
"finish_reason"} (or {"type": "error", "message"}). Each delta is one token's text with the model's own
log-probability of it and its `ALTERNATIVES` likeliest alternatives as [text, logprob] pairs (what the page's
confidence colouring and hover show; parley/explain/confidence.py; null where unknown). A token that
releases no text (half a character, a possible stop string) sends no delta: the one that releases it does. "done" is sent once the reply is stored, so a reply reported done
survives a crash of the server. A reply cut short by the client (the page's Stop button) is stored as
far as it got; the user's message is stored as soon as its reply has been queued.

`params` are checked by `SamplingParams.check()` wherever they are stored or used (create, PATCH, a
message, regenerate): a 400 names `params.<field>` (e.g. at most 16 non-empty stop strings, a seed in
0..2**63-1). Regenerating keeps the old reply until the new one is stored; it then replaces it in one
transaction, or, if the conversation changed meanwhile (another client added a message or
regenerated), answers 409 `conversation_changed` and stores nothing. An empty new reply (an immediate
end, Stop before any text) leaves the old one in place.

/plain refuses cross-site form posts (403): a browser's Sec-Fetch-Site must be same-origin or none,
or, from browsers that do not send it, Origin must be this server; clients that send neither (curl)
are not browsers, so are not a cross-site request forgery.

Feedback (session.py, store.py): a reply's `id` is in the conversation's messages; a thumbs rating
replaces the previous one, an edit becomes the reply's shown version and is preferred to the text it
replaced, and showing version n of a regenerated reply prefers it to every other version. All of it
is what `parley data prepare --source feedback` reads.

Limits: no per-user ownership: anyone holding an API key sees every conversation.
"""

from __future__ import annotations

import dataclasses
import hmac
from typing import Annotated, Literal
import html
import logging
import math
from urllib.parse import parse_qs, urlsplit

import anyio
from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import HTMLResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from starlette.concurrency import run_in_threadpool

from parley.engine import ParamError, SamplingParams
from parley.errors import ParleyError
from parley.explain.confidence import ALTERNATIVES
from parley.session import Session
from parley.store import ConversationChanged
from parley.serve.api_errors import ApiError, translate
from parley.serve.streaming import first_event, follow, sse, submit

router = APIRouter(tags=["conversations"])
log = logging.getLogger("parley.serve")
MAX_TEXT = 200_000  # characters in one message or system prompt
MAX_NOTE = 2_000  # characters in a feedback note
_PARAMS = TypeAdapter(SamplingParams)  # checks each field's type from the dataclass's own annotations


MessageId = Annotated[int, Path(ge=1, le=2**63 - 1, description="A message's id (from the conversation's messages).")]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


class NewConversation(_Strict):
    title: str | None = Field(None, max_length=200)
    system: str | None = Field(None, max_length=MAX_TEXT)
    params: dict | None = None


class ConversationPatch(NewConversation):
    pass


class Say(_Strict):
    content: str = Field(min_length=1, max_length=MAX_TEXT)
    params: dict | None = None
    stream: bool = True
    edit: int | None = Field(None, ge=0, le=2**31)


class Regenerate(_Strict):
    params: dict | None = None
    stream: bool = True


class Rating(_Strict):
    rating: Literal["good", "bad"] | None = Field(description="Thumbs up, thumbs down, or null to withdraw.")
    note: str | None = Field(None, max_length=MAX_NOTE, description="Why, in the user's words.")


class ReplyEdit(_Strict):
    content: str = Field(min_length=1, max_length=MAX_TEXT, description="The reply as it should have been.")
    note: str | None = Field(None, max_length=MAX_NOTE)


def _store(request: Request):
    return request.app.state.store


def _json(conversation) -> dict:
    return dataclasses.asdict(conversation)


def _checked_params(request: Request, stored: dict, given: dict | None) -> SamplingParams:
    """Stored params, overridden by the request's; validated; max_new_tokens capped by the server."""
    known = {f.name for f in dataclasses.fields(SamplingParams)}
    for key, value in (given or {}).items():
        if key not in known:
            raise ApiError(400, f"params.{key}: unknown parameter; choose from {', '.join(sorted(known))}",
                           param=f"params.{key}")
        if isinstance(value, bool):
            raise ApiError(400, f"params.{key}: {value!r} is not a number", param=f"params.{key}")
    # Keys another Parley version stored and this one does not know are left out, not fatal.
    merged = {**{k: v for k, v in (stored or {}).items() if k in known}, **(given or {})}
    try:
        params = _PARAMS.validate_python(merged).check()
    except ValidationError as e:
        first = e.errors()[0]
        name = "params." + ".".join(str(part) for part in first["loc"] if part != "[key]")  # [key]: a dict key
        raise ApiError(400, f"{name}: {first['msg']}", param=name) from None
    except ParamError as e:
        raise ApiError(400, f"params.{e.key}: {e}", param=f"params.{e.key}") from None
    cap = request.app.state.options.max_tokens
    return dataclasses.replace(params, max_new_tokens=min(params.max_new_tokens, cap))


@router.get("/v1/conversations")
def list_conversations(request: Request, limit: int = Query(50, ge=1, le=500),
                       offset: int = Query(0, ge=0, le=2**63 - 1)):  # SQLite's integers are 64-bit
    return {"object": "list", "data": [_json(c) for c in _store(request).list(limit, offset)]}


@router.post("/v1/conversations", status_code=201)
def create_conversation(body: NewConversation, request: Request):
    if body.params:
        _checked_params(request, {}, body.params)
    store = _store(request)
    cid = store.new_conversation(model=request.app.state.served_name, system=body.system,
                                 title=body.title, params=body.params)
    return _json(store.get(cid))


@router.get("/v1/conversations/{cid}")
def get_conversation(cid: str, request: Request):
    store = _store(request)
    return {**_json(store.get(cid)), "messages": store.replies(cid)}


@router.patch("/v1/conversations/{cid}")
def update_conversation(cid: str, body: ConversationPatch, request: Request):
    store = _store(request)
    store.get(cid)
    given = body.model_fields_set
    if "params" in given and body.params:
        _checked_params(request, {}, body.params)
    if "title" in given:
        store.rename(cid, body.title or "")
    changes = {k: getattr(body, k) for k in ("system", "params") if k in given}
    if changes:
        store.update(cid, **changes)
    return _json(store.get(cid))


@router.delete("/v1/conversations/{cid}")
def delete_conversation(cid: str, request: Request):
    _store(request).delete(cid)
    return {"id": cid, "object": "conversation.deleted", "deleted": True}


@router.post("/v1/conversations/{cid}/messages")
async def say(cid: str, body: Say, request: Request):
    """Add the user's message and reply to the conversation so far."""
    return await _reply(request, cid, body.params, body.stream, new_message=body.content, edit=body.edit)


@router.post("/v1/conversations/{cid}/regenerate")
async def regenerate(cid: str, body: Regenerate, request: Request):
    """Reply again to the last user message (seeded anew unless a seed is set); the new reply replaces
    the old one once stored, or 409 if the conversation changed meanwhile."""
    return await _reply(request, cid, body.params, body.stream, new_message=None)


def _session(request: Request, cid: str) -> Session:
    return Session.from_store(request.app.state.engine, _store(request), cid, SamplingParams())


@router.post("/v1/conversations/{cid}/messages/{mid}/feedback")
def rate_reply(cid: str, mid: MessageId, body: Rating, request: Request):
    """Thumbs up or down on reply `mid`, with an optional note; a later rating replaces it."""
    _session(request, cid).rate(None if body.rating is None else body.rating == "good", body.note, reply=mid)
    return {"id": mid, "rating": body.rating, "note": body.note}


@router.patch("/v1/conversations/{cid}/messages/{mid}")
def edit_reply(cid: str, mid: MessageId, body: ReplyEdit, request: Request):
    """Rewrite reply `mid`: the rewrite is shown from now on, kept as its newest version, and
    preferred to the text it replaced."""
    _session(request, cid).edit(body.content, body.note, reply=mid)
    return _message(request, cid, mid)


@router.get("/v1/conversations/{cid}/messages/{mid}/versions")
def reply_versions(cid: str, mid: MessageId, request: Request):
    return _versions(request, cid, mid)


@router.post("/v1/conversations/{cid}/messages/{mid}/versions/{number}")
def pick_version(cid: str, mid: MessageId, number: Annotated[int, Path(ge=1, le=10_000)], request: Request):
    """Show version `number` (1-based) of reply `mid`: it is preferred to each other version."""
    _session(request, cid).pick(number, reply=mid)
    return _versions(request, cid, mid)


@router.get("/v1/conversations/{cid}/feedback")
def conversation_feedback(cid: str, request: Request):
    store = _store(request)
    store.get(cid)
    return {"object": "list", "data": [dataclasses.asdict(f) for f in store.feedback(conversation_id=cid)]}


def _message(request: Request, cid: str, mid: int) -> dict:
    return next(m for m in _store(request).replies(cid) if m["id"] == mid)


def _versions(request: Request, cid: str, mid: int) -> dict:
    texts = _store(request).versions(cid, mid)
    return {"id": mid, "version": _message(request, cid, mid).get("version", 1), "data": texts}


async def _reply(request: Request, cid: str, given: dict | None, streaming: bool, new_message: str | None,
                 edit: int | None = None):
    store, state = _store(request), request.app.state
    conversation = await run_in_threadpool(store.get, cid)
    params = _checked_params(request, conversation.params, given)
    session = await run_in_threadpool(Session.from_store, state.engine, store, cid, params)
    try:
        messages = session.turn(new_message, edit)
    except ParleyError as e:
        if edit is not None:
            raise ApiError(400, f"edit: {e}", param="edit") from None
        raise ApiError(400, "there is no user message to reply to", code="nothing_to_regenerate") from None
    fitted = await run_in_threadpool(session.fit, messages)
    ticket = await submit(request, [(fitted.messages, _with_alternatives(params))])
    try:  # queued: now the conversation says so
        if new_message is not None:
            try:
                await run_in_threadpool(session.commit, new_message)
            except ConversationChanged as e:
                raise ApiError(409, str(e), code="conversation_changed") from e
        if given:
            await run_in_threadpool(store.update, cid, params={**conversation.params, **given})
    except BaseException:
        ticket.cancel()
        raise
    events = follow(ticket, request)
    first = await first_event(ticket, events)
    reply = _Reply(session, fitted.notice)
    if streaming:
        return StreamingResponse(reply.stream(first, events), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    try:
        await reply.collect(first, events)
    except Exception as e:
        await reply.save_quietly()  # keep what was generated before the failure
        raise translate(e) from e
    await run_in_threadpool(reply.save)
    return {"message": {"role": "assistant", "content": reply.text}, "finish_reason": reply.finish_reason,
            "notice": fitted.notice}


def _with_alternatives(params: SamplingParams) -> SamplingParams:
    """The reply decoded with each token's alternatives reported (changes no token; the stored params keep
    what the client chose)."""
    return dataclasses.replace(params, top_logprobs=max(params.top_logprobs, ALTERNATIVES))


def _delta(text: str, token) -> dict:
    """One streamed token: its text, logprob and alternatives (None where not finite: JSON has no NaN)."""
    def number(value: float) -> float | None:
        return value if math.isfinite(value) else None
    return {"type": "delta", "text": text, "logprob": number(token.logprob),
            "top": [[alternative, number(lp)] for alternative, lp in token.top]}


class _Reply:
    """The assistant's reply as it arrives; stored once, however the stream ends."""

    def __init__(self, session: Session, notice: str | None):
        self.session, self.notice = session, notice
        self.text, self.finish_reason, self.tokens, self.saved = "", None, 0, False

    def add(self, event) -> str:
        if event.token is None:
            self.finish_reason = event.finish_reason
            return ""
        self.tokens += 1
        self.text += event.token.text
        return event.token.text

    async def collect(self, first, events) -> None:
        if first is not None:
            self.add(first)
        async for event in events:
            self.add(event)

    async def stream(self, first, events):
        try:
            yield sse({"type": "start", "notice": self.notice})
            for event in ([first] if first is not None else []):
                if text := self.add(event):
                    yield sse(_delta(text, event.token))
            async for event in events:
                if text := self.add(event):
                    yield sse(_delta(text, event.token))
            await run_in_threadpool(self.save)  # stored first: "done" promises the reply survives a crash
            yield sse({"type": "done", "finish_reason": self.finish_reason, "tokens": self.tokens})
        except Exception as e:
            yield sse({"type": "error", "message": translate(e).message})
        finally:
            await self.save_quietly()  # an error, or the client went away: keep what it was shown

    def save(self) -> None:
        """Store the reply (nothing if it is empty: a regenerated one then leaves the old reply)."""
        if self.saved or not self.text:
            return
        self.saved = True
        meta = {"finish_reason": self.finish_reason or "cancelled", "tokens": self.tokens}
        try:
            self.session.answer(self.text, **meta)
        except ConversationChanged as e:
            raise ApiError(409, str(e), code="conversation_changed") from e

    async def save_quietly(self) -> None:
        """save() where nobody is left to tell: shielded, since the request may be being cancelled."""
        with anyio.CancelScope(shield=True):
            try:
                await run_in_threadpool(self.save)
            except Exception:  # e.g. deleted meanwhile; the reply was delivered, so only log it
                log.exception("could not store the reply in conversation %s", self.session.id)


@router.post("/plain", include_in_schema=False, response_class=HTMLResponse)
async def plain(request: Request):
    """The page's fallback without JavaScript: one question in a form, the answer as plain text."""
    if _cross_site(request):
        return _plain_page("", "Refused: this form was posted from another site. Open this "
                           "server's own page and ask there.", 403)
    form = {k: v[0] for k, v in parse_qs((await request.body()).decode("utf-8", "replace")).items()}
    keys = request.app.state.options.api_keys
    given = form.get("key", "").encode()
    if keys and not sum(hmac.compare_digest(given, key.encode()) for key in keys):
        return _plain_page("", "Wrong or missing API key.", 401)
    question = form.get("message", "").strip()
    if not question:
        return _plain_page("", "Type a message first.", 400)
    store = _store(request)
    cid = await run_in_threadpool(store.new_conversation, model=request.app.state.served_name)
    try:
        body = await _reply(request, cid, None, False, new_message=question)
    except ApiError as e:
        return _plain_page(question, e.message, e.status)
    return _plain_page(question, body["message"]["content"])


def _cross_site(request: Request) -> bool:
    """Whether a browser sent this from another site's page (the check Go's CrossOriginProtection
    makes): Sec-Fetch-Site where the browser sends it, else Origin against the Host it was sent to."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site not in ("same-origin", "none")  # none: typed, bookmarked; same-site: another port
    origin = request.headers.get("origin")
    if origin is None:
        return False  # not a browser, or one too old to say: a form post alone cannot be told apart
    return urlsplit(origin).netloc.lower() != request.headers.get("host", "").lower()


# The fallback page runs no script at all: only its own inline styles, and its form posts back here.
PLAIN_CSP = ("default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; "
             "base-uri 'none'")


def _plain_page(question: str, answer: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(status_code=status, headers={"Content-Security-Policy": PLAIN_CSP}, content=(
        "<!doctype html><meta charset=utf-8><meta name=viewport content='width=device-width'>"
        "<title>Parley</title><body style='font-family:sans-serif;max-width:50rem;margin:1rem auto;padding:0 1rem'>"
        f"<p><b>You:</b></p><pre style='white-space:pre-wrap'>{html.escape(question)}</pre>"
        f"<p><b>Parley:</b></p><pre style='white-space:pre-wrap'>{html.escape(answer)}</pre>"
        "<p><a href='/'>Back</a></p></body>"
    ))
