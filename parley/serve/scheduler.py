"""Continuous batching for the server: many requests, one engine, one forward pass per step.

    scheduler = scheduler_for(engine, max_batch=8, max_queue=64)
    scheduler.start()
    ticket = scheduler.submit([(messages, params)], loop)     # raises Busy (-> 429) or ShuttingDown
    async for event in ticket.events(): ...                    # tokens, then one closing event per choice
    ticket.cancel()                                            # the client went away: free the slot
    scheduler.drain(grace_s); scheduler.close()

`BatchScheduler` (local models): one background thread owns the Engine's `Batch`. Each loop it
admits waiting sequences up to `max_batch` (each is prefilled as it joins), drops cancelled ones,
steps the batch once, and hands every Token to its request's asyncio queue through
`loop.call_soon_threadsafe`. Sequences leave as soon as they finish, so a long reply never holds
up a short one. The waiting line is bounded: `submit` raises `Busy` instead of queueing forever.

`RemoteScheduler` (`openai:` models): the remote service batches, so each sequence streams in a
worker thread of its own, `max_batch` at a time, with the same bounded line and the same tickets.

Prompts are tokenized and checked against the context window in `submit` (the caller's thread), so
a too-long prompt is an error before any response starts.

Limits: a newcomer's prefill runs between two steps, so it delays the others' next token by
its own length; there is no preemption or prefix caching. A remote sequence's finish_reason is
"length" when it used all of max_new_tokens chunks, else "stop" (a chunk may hold several tokens).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from parley.engine import Engine, Prompt, SamplingParams, Sequence, Token
from parley.errors import ParleyError
from parley.remote import RemoteEngine

log = logging.getLogger("parley.serve")


class Busy(Exception):
    """The waiting line is full: try again after `retry_after` seconds (HTTP 429)."""

    def __init__(self, waiting: int, retry_after: int):
        super().__init__(f"the server is busy: {waiting} requests are already waiting; retry in {retry_after}s")
        self.retry_after = retry_after


class ShuttingDown(Exception):
    """The server is stopping and takes no new requests (HTTP 503)."""

    def __init__(self):
        super().__init__("the server is shutting down; retry against another instance or after restart")


@dataclass
class Event:
    """One thing that happened to one choice of a request."""

    index: int  # which choice (sequence) of the request
    token: Token | None = None  # a new token; None on the closing event
    piece: str = ""  # the token's own text (for logprobs); '' unless the request asked for it
    finish_reason: str | None = None  # "stop" or "length" on the closing event; None before
    error: BaseException | None = None  # set when this choice failed; it is then closed too


class Ticket:
    """One request: its sequences' events arrive, in order per choice, on one asyncio queue."""

    def __init__(self, loop: asyncio.AbstractEventLoop, n: int, pieces: bool):
        self.loop, self.pieces = loop, pieces
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self.cancelled = False
        self.open = n  # choices not yet closed
        self.prompt_tokens: list[int] = [0] * n  # per choice; 0 where unknown (remote)
        self._on_cancel = lambda: None

    def post(self, event: Event) -> None:
        """Called from the scheduler's thread."""
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)
        except RuntimeError:  # the event loop has closed: nobody is listening any more
            self.cancelled = True

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

    def cancel(self) -> None:
        """Stop generating for this request; its slots are freed before the next step."""
        if not self.cancelled:
            self.cancelled = True
            self._on_cancel()


@dataclass
class _Job:
    ticket: Ticket
    index: int
    seq: Sequence | None = None  # local
    prompt: Prompt | None = None  # remote
    params: SamplingParams | None = None  # remote
    sent: int = field(default=0)


def scheduler_for(engine: Engine | RemoteEngine, max_batch: int = 8, max_queue: int = 64):
    if isinstance(engine, RemoteEngine):
        return RemoteScheduler(engine, max_batch, max_queue)
    return BatchScheduler(engine, max_batch, max_queue)


class BatchScheduler:
    """One thread, one Batch: see the module docstring."""

    def __init__(self, engine: Engine, max_batch: int = 8, max_queue: int = 64, retry_after: int = 1):
        self.engine, self.max_batch, self.max_queue, self.retry_after = engine, max_batch, max_queue, retry_after
        self._batch = engine.new_batch()
        self._jobs: dict[Sequence, _Job] = {}  # jobs in the batch, by sequence
        self._waiting: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._deadline: float | None = None  # set by drain(): finish by then, then cut
        self._thread = threading.Thread(target=self._run, name="parley-scheduler", daemon=True)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def active(self) -> int:
        return len(self._jobs)

    def start(self) -> None:
        self._thread.start()

    def submit(self, requests: list[tuple[Prompt, SamplingParams]], loop, pieces: bool = False) -> Ticket:
        """Queue one request's sequences (all or none). Raises ContextError, Busy or ShuttingDown."""
        seqs = [self.engine.start(prompt, params) for prompt, params in requests]  # tokenize, check length
        ticket = Ticket(loop, len(seqs), pieces)
        ticket.prompt_tokens = [len(seq.prompt_ids) for seq in seqs]
        with self._cond:
            if self._deadline is not None:
                raise ShuttingDown()
            if len(self._waiting) + len(seqs) > self.max_queue:
                raise Busy(len(self._waiting), self.retry_after)
            self._waiting.extend(_Job(ticket, i, seq=seq) for i, seq in enumerate(seqs))
            ticket._on_cancel = self._wake
            self._cond.notify()
        return ticket

    def drain(self, grace_s: float) -> None:
        """Take no new requests; let running ones finish for `grace_s`, then end them ("length")."""
        with self._cond:
            if self._deadline is None:
                self._deadline = time.monotonic() + grace_s
            while self._waiting:
                job = self._waiting.popleft()
                job.ticket.post(Event(job.index, error=ShuttingDown()))
            self._cond.notify()

    def close(self, grace_s: float = 0.0) -> None:
        self.drain(grace_s)
        if self._thread.is_alive():
            self._thread.join()

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._waiting or self._jobs or self._deadline is not None):
                    self._cond.wait()
                if self._deadline is not None and not self._jobs:
                    return
                admit = []
                while self._waiting and len(self._jobs) + len(admit) < self.max_batch:
                    admit.append(self._waiting.popleft())
            try:
                self._cycle(admit)
            except Exception as e:  # a bug or out of memory: fail these requests, keep serving
                log.exception("generation failed; ending the %d requests in the batch", len(self._jobs))
                for job in list(self._jobs.values()) + [j for j in admit if j.seq not in self._jobs]:
                    job.ticket.post(Event(job.index, error=e))
                self._jobs.clear()
                self._batch = self.engine.new_batch()

    def _cycle(self, admit: list[_Job]) -> None:
        for job in admit:
            if not job.ticket.cancelled:
                self._jobs[job.seq] = job
                self._deliver(job, self._batch.add(job.seq))
        self._sweep()
        if self._deadline is not None and time.monotonic() > self._deadline:
            for seq in list(self._jobs):  # out of grace: end what is left, cleanly
                self._finish(seq, "length")
            return
        if self._jobs:
            for seq, token in zip(list(self._batch.seqs), self._batch.step()):
                self._deliver(self._jobs[seq], token)
            self._sweep()

    def _deliver(self, job: _Job, token: Token) -> None:
        piece = self.engine.loaded.tokenizer.decode([token.id]) if job.ticket.pieces else ""
        job.ticket.post(Event(job.index, token=token, piece=piece))

    def _sweep(self) -> None:
        """Remove finished and cancelled sequences from the batch."""
        for seq, job in list(self._jobs.items()):
            if seq.done:
                self._finish(seq, seq.finish_reason)
            elif job.ticket.cancelled:
                self._batch.remove(seq)
                del self._jobs[seq]

    def _finish(self, seq: Sequence, reason: str) -> None:
        job = self._jobs.pop(seq)
        self._batch.remove(seq)
        job.ticket.post(Event(job.index, finish_reason=reason))


class RemoteScheduler:
    """Each sequence streams from the remote service in a worker thread; see the module docstring."""

    def __init__(self, engine: RemoteEngine, max_batch: int = 8, max_queue: int = 64, retry_after: int = 1):
        self.engine, self.max_batch, self.max_queue, self.retry_after = engine, max_batch, max_queue, retry_after
        self._pool = ThreadPoolExecutor(max_workers=max_batch, thread_name_prefix="parley-remote")
        self._lock = threading.Lock()
        self._pending = 0  # sequences queued or running
        self._deadline: float | None = None

    @property
    def waiting(self) -> int:
        return max(0, self._pending - self.max_batch)

    @property
    def active(self) -> int:
        return min(self._pending, self.max_batch)

    def start(self) -> None:
        pass

    def submit(self, requests: list[tuple[Prompt, SamplingParams]], loop, pieces: bool = False) -> Ticket:
        for _, params in requests:
            params.check()
        ticket = Ticket(loop, len(requests), pieces=False)  # remote tokens have no ids to decode
        with self._lock:
            if self._deadline is not None:
                raise ShuttingDown()
            if self.waiting + len(requests) > self.max_queue:
                raise Busy(self.waiting, self.retry_after)
            self._pending += len(requests)
        for i, (prompt, params) in enumerate(requests):
            self._pool.submit(self._stream, _Job(ticket, i, prompt=prompt, params=params))
        return ticket

    def _stream(self, job: _Job) -> None:
        ticket, tokens, reason = job.ticket, self.engine.stream(job.prompt, job.params), "stop"
        try:
            if self._deadline is not None:
                raise ShuttingDown()
            for token in tokens:
                if ticket.cancelled:
                    return
                job.sent += 1
                ticket.post(Event(job.index, token=token))
                if self._deadline is not None and time.monotonic() > self._deadline:
                    reason = "length"
                    break
            if job.sent >= job.params.max_new_tokens:
                reason = "length"
            ticket.post(Event(job.index, finish_reason=reason))
        except Exception as e:  # ParleyErrors become HTTP errors; anything else is logged as a bug
            if not isinstance(e, (ParleyError, ShuttingDown)):
                log.exception("remote generation failed")
            ticket.post(Event(job.index, error=e))
        finally:
            tokens.close()
            with self._lock:
                self._pending -= 1

    def drain(self, grace_s: float) -> None:
        with self._lock:
            if self._deadline is None:
                self._deadline = time.monotonic() + grace_s

    def close(self, grace_s: float = 0.0) -> None:
        self.drain(grace_s)
        self._pool.shutdown(wait=True, cancel_futures=False)
