"""What the OpenAI routes and the conversation routes share: queueing a generation on the engine's
driver (batching.py), following it on the event loop while watching for the client to leave, and
server-sent events; and `beside`, the bounded lane for whole-prompt forwards (scoring, embeddings).

The driver delivers events from its own threads; `AsyncTicket` hops each one onto the request's
event loop (`loop.call_soon_threadsafe`) into an asyncio queue. A client that disconnects is noticed
while its request waits for the next token (the ASGI server delivers `http.disconnect`), and its
ticket is cancelled at once, so the driver frees its slot before the next step.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import AsyncIterator

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from parley.batching import Event, Ticket
from parley.engine import Prompt, SamplingParams
from parley.serve.api_errors import ApiError, translate


class AsyncTicket:
    """A driver's ticket whose events arrive, in order per choice, on an asyncio queue."""

    def __init__(self, loop: asyncio.AbstractEventLoop, n: int):
        self.loop, self.open = loop, n  # open: choices not yet closed
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self.ticket: Ticket | None = None

    def deliver(self, event: Event) -> None:
        """Called from the driver's threads; RuntimeError once the loop has closed (the ticket then stops)."""
        self.loop.call_soon_threadsafe(self.queue.put_nowait, event)

    @property
    def prompt_tokens(self) -> list[int]:
        return self.ticket.prompt_tokens

    @property
    def cancelled(self) -> bool:
        return self.ticket.cancelled

    def cancel(self) -> None:
        self.ticket.cancel()

    async def events(self):
        """Every event until all choices have closed; raises the first error a choice hit."""
        while self.open:
            event = await self.queue.get()
            if event.finish_reason is not None or event.error is not None:
                self.open -= 1
            if event.error is not None:
                self.cancel()
                raise event.error
            yield event


async def submit(request: Request, work: list[tuple[Prompt, SamplingParams]], pieces: bool = False) -> AsyncTicket:
    """Queue `work` (one entry per choice); tokenizing runs off the event loop. Errors become ApiErrors."""
    state = request.app.state
    ticket = AsyncTicket(asyncio.get_running_loop(), len(work))
    try:
        ticket.ticket = await run_in_threadpool(state.driver.submit, work, ticket.deliver, pieces)
    except Exception as e:
        raise translate(e) from e
    return ticket


async def first_event(ticket: AsyncTicket, events: AsyncIterator[Event]) -> Event | None:
    """Wait for the first event, so that a failure is an HTTP error before any response starts."""
    try:
        return await anext(events)
    except StopAsyncIteration:
        return None
    except Exception as e:
        ticket.cancel()
        raise translate(e) from e


async def follow(ticket: AsyncTicket, request: Request) -> AsyncIterator[Event]:
    """The ticket's events; ends early, cancelling the ticket, if the client disconnects."""
    gone = asyncio.ensure_future(_disconnected(request))
    events = ticket.events()
    started = time.perf_counter()
    metrics = request.app.state.metrics
    first = True
    try:
        while True:
            step = asyncio.ensure_future(anext(events))
            await asyncio.wait({step, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not step.done():  # the client left
                step.cancel()
                return
            try:
                event = step.result()
            except StopAsyncIteration:
                return
            if event.token is not None:
                if first:
                    metrics.ttft.observe(time.perf_counter() - started)
                    first = False
                metrics.tokens.inc()
            yield event
    finally:  # reached also when the server cancels the response because the client left
        gone.cancel()
        if ticket.open and not ticket.cancelled:
            metrics.disconnects.inc()
        ticket.cancel()  # no-op once every choice has finished; frees the slots otherwise


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def sse(data: dict | str) -> str:
    """One server-sent event."""
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


def check_room(ticket: AsyncTicket, requested: int | None, window: int) -> None:
    """A client's explicit max_tokens must fit beside its prompt: say both numbers, never cut silently."""
    if requested is None:
        return
    for prompt_tokens in ticket.prompt_tokens:
        if prompt_tokens and prompt_tokens + requested > window:
            ticket.cancel()
            raise ApiError(
                400,
                f"the prompt is {prompt_tokens} tokens and max_tokens asks for {requested} more, but the "
                f"model's context window is {window}: lower max_tokens to at most {window - prompt_tokens} "
                "or shorten the prompt",
                param="max_tokens", code="context_length_exceeded",
            )


async def beside(request: Request, field: str, work, *args):
    """Run `work(*args)` (a whole-prompt forward: Engine.score or embed) off the event loop, one at a time
    per server, so scoring and embedding share the CPU/GPU with decoding without crowding it out.
    Errors become ApiErrors; a 400 names `field`, the request field that held the text."""
    state = request.app.state
    if getattr(state, "beside", None) is None:  # made on the loop that uses it
        state.beside = asyncio.Semaphore(1)
    async with state.beside:
        try:
            return await run_in_threadpool(work, *args)
        except Exception as e:
            error = translate(e)
            if error.status == 400 and not isinstance(e, ApiError):  # a route's own ApiError names its field
                error.param = field
            raise error from e
