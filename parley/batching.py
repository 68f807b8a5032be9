"""Many prompts at once: the one continuous-batching driver that the server and `parley eval` share.

    driver = engine.driver(max_batch=8, max_queue=64)       # any Engine: local or remote
    ticket = driver.submit([(messages, params)], deliver)    # raises Busy, TooLarge, ShuttingDown (or ContextError)
    # deliver(Event) is called from the driver's threads: tokens, then one closing event per choice
    ticket.cancel()                                          # nobody wants the rest: free the slots
    driver.drain(grace_s); driver.close()

The caller decides how events reach it: the server hops onto its asyncio loop
(`loop.call_soon_threadsafe`, serve/streaming.py), evaluation waits on a plain queue
(eval/completions.py). Each engine picks its driver:

`BatchDriver` (local models): one background thread owns the engine's `Batch`. Each loop it admits
waiting sequences up to `max_batch` (each is prefilled as it joins), drops cancelled ones, steps the
batch once, and delivers every Token. Sequences leave as soon as they finish, so a long reply never
holds up a short one. A sequence that fails (`Sequence.error`: its sampling, stop strings or text
raised) leaves with an error event of its own; the others go on, token for token as they would alone.
Prompts are tokenized and checked against the context window in `submit` (the caller's thread), so a
too-long prompt is an error before anything starts, but only after the line has been checked (and
places in it held): under overload a request is turned away without tokenizing it.

`StreamDriver` (remote services, which batch on their side): each sequence streams in a worker
thread of its own, `max_batch` at a time, with the same bounded line and the same tickets.

Both bound the waiting line (`submit` raises `Busy` rather than queueing forever, and `TooLarge` for a
request with more sequences than the whole line, which no wait would help), take a cancelled request
out of the line at once, refuse new work after `drain` (`ShuttingDown`), let running work finish for
the grace period and then end it with finish_reason "length", and turn a failure into one error event
per affected choice.

Limits: a newcomer's prefill runs between two steps, so it delays the others' next token by its own
length; there is no preemption or prefix caching. A remote sequence's finish_reason is "length"
when it used all of max_new_tokens chunks, else "stop" (a chunk may hold several tokens).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from parley.errors import ParleyError

if TYPE_CHECKING:  # types only: engine.py imports this module, not the other way round
    from parley.batch import Batch
    from parley.engine import LocalEngine, Prompt, SamplingParams, Sequence, Token

log = logging.getLogger("parley.batching")


class Busy(Exception):
    """The waiting line is full: try again after `retry_after` seconds (HTTP 429)."""

    def __init__(self, waiting: int, retry_after: int):
        super().__init__(f"the server is busy: {waiting} requests are already waiting; retry in {retry_after}s")
        self.retry_after = retry_after


class TooLarge(ParleyError):
    """A request with more sequences than the whole waiting line holds: it could never be queued (HTTP 400)."""

    def __init__(self, sequences: int, max_queue: int):
        super().__init__(f"the request has {sequences} sequences but at most {max_queue} can wait at once: "
                         "send fewer prompts or choices per request")


class ShuttingDown(Exception):
    """The driver is stopping and takes no new work (HTTP 503)."""

    def __init__(self):
        super().__init__("the server is shutting down; retry against another instance or after restart")


@dataclass
class Event:
    """One thing that happened to one choice of a request."""

    index: int  # which choice (sequence) of the request
    token: Token | None = None  # a new token; None on the closing event
    piece: bytes = b""  # the token's own bytes (for logprobs); b'' unless the request asked for them
    top_pieces: list[bytes] = field(default_factory=list)  # the same for each of token.top; [] where unknown
    finish_reason: str | None = None  # "stop" or "length" on the closing event; None before
    error: BaseException | None = None  # set when this choice failed; it is then closed too


class Ticket:
    """One submitted request: its choices' events go, in order per choice, to `deliver`."""

    def __init__(self, n: int, deliver: Callable[[Event], None], pieces: bool = False):
        self.pieces = pieces
        self.cancelled = False
        self.prompt_tokens: list[int] = [0] * n  # per choice; 0 where unknown (remote)
        self._deliver = deliver
        self._on_cancel: Callable[[], None] = lambda: None

    def post(self, event: Event) -> None:
        """Called from the driver's threads."""
        try:
            self._deliver(event)
        except RuntimeError:  # the listener is gone (its event loop has closed): stop working for it
            self.cancelled = True

    def cancel(self) -> None:
        """Stop generating for this request; its slots are freed before the next step."""
        if not self.cancelled:
            self.cancelled = True
            self._on_cancel()


class Driver(Protocol):
    """What `Engine.driver()` returns; see the module docstring."""

    @property
    def waiting(self) -> int: ...  # sequences waiting for a slot

    @property
    def active(self) -> int: ...  # sequences being decoded

    def submit(self, requests: list[tuple[Prompt, SamplingParams]], deliver: Callable[[Event], None],
               pieces: bool = False) -> Ticket: ...

    def drain(self, grace_s: float) -> None: ...

    def close(self, grace_s: float = 0.0) -> None: ...


def _admissible(sequences: int, waiting: int, max_queue: int, retry_after: int, deadline: float | None) -> None:
    """Raise why `sequences` more may not join a line of `waiting` (ShuttingDown, TooLarge, Busy)."""
    if deadline is not None:
        raise ShuttingDown()
    if sequences > max_queue:
        raise TooLarge(sequences, max_queue)
    if waiting + sequences > max_queue:
        raise Busy(waiting, retry_after)


@dataclass(eq=False)  # jobs are compared by identity (removed from the line by `is`)
class _Job:
    ticket: Ticket
    index: int
    seq: Sequence | None = None  # BatchDriver
    prompt: Prompt | None = None  # StreamDriver
    params: SamplingParams | None = None  # StreamDriver
    claimed: bool = False  # StreamDriver: started by a worker, or dropped by a cancel


class BatchDriver:
    """One thread, one Batch over a LocalEngine: see the module docstring. Starts at once."""

    def __init__(self, engine: LocalEngine, new_batch: Callable[[], Batch], max_batch: int = 8,
                 max_queue: int = 64, retry_after: int = 1):
        self.engine, self.max_batch, self.max_queue, self.retry_after = engine, max_batch, max_queue, retry_after
        self._new_batch = new_batch
        self._batch = new_batch()
        self._jobs: dict[Sequence, _Job] = {}  # jobs in the batch, by sequence
        self._waiting: deque[_Job] = deque()
        self._held = 0  # places in the line held for requests whose prompts are being tokenized
        self._cond = threading.Condition()
        self._deadline: float | None = None  # set by drain(): finish by then, then cut
        self._thread = threading.Thread(target=self._run, name="parley-batch", daemon=True)
        self._thread.start()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def active(self) -> int:
        return len(self._jobs)

    def submit(self, requests: list[tuple[Prompt, SamplingParams]], deliver: Callable[[Event], None],
               pieces: bool = False) -> Ticket:
        """Queue one request's sequences (all or none). Raises TooLarge, Busy, ShuttingDown or ContextError.

        The line is checked, and places in it held, before the prompts are tokenized: under overload a
        request is turned away cheaply."""
        with self._cond:
            _admissible(len(requests), len(self._waiting) + self._held, self.max_queue, self.retry_after,
                        self._deadline)
            self._held += len(requests)
        try:
            seqs = [self.engine.start(prompt, params) for prompt, params in requests]  # tokenize, check length
        finally:
            with self._cond:
                self._held -= len(requests)
        ticket = Ticket(len(seqs), deliver, pieces)
        ticket.prompt_tokens = [len(seq.prompt_ids) for seq in seqs]
        jobs = [_Job(ticket, i, seq=seq) for i, seq in enumerate(seqs)]
        with self._cond:
            if self._deadline is not None:  # drain() began while the prompts were tokenized
                raise ShuttingDown()
            self._waiting.extend(jobs)
            ticket._on_cancel = lambda: self._forget(jobs)
            self._cond.notify()
        return ticket

    def drain(self, grace_s: float) -> None:
        """Take no new work; let running sequences finish for `grace_s`, then end them ("length")."""
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

    def _forget(self, jobs: list[_Job]) -> None:
        """A cancelled request leaves the line at once, so its place is free for others (and leaves the batch,
        if it got there, before the next step)."""
        with self._cond:
            for job in jobs:
                if job in self._waiting:
                    self._waiting.remove(job)
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
                self._batch = self._new_batch()

    def _cycle(self, admit: list[_Job]) -> None:
        joining = [job for job in admit if not job.ticket.cancelled]
        if joining:  # newcomers are prefilled together: one pass over the weights, not one each
            tokens = self._batch.add_many([job.seq for job in joining])
            for job, token in zip(joining, tokens):
                self._jobs[job.seq] = job
                self._deliver(job, token)
        self._sweep()
        if self._deadline is not None and time.monotonic() > self._deadline:
            for seq, job in list(self._jobs.items()):  # out of grace: end what is left, cleanly
                self._finish(seq, Event(job.index, finish_reason="length"))
            return
        if self._jobs:
            for seq, token in zip(list(self._batch.seqs), self._batch.step()):
                self._deliver(self._jobs[seq], token)
            self._sweep()

    def _deliver(self, job: _Job, token: Token | None) -> None:
        """Post `token`; None (the sequence failed: seq.error) is reported by _sweep."""
        if token is None:
            return
        try:
            event = Event(job.index, token=token)
            if job.ticket.pieces:
                event.piece = self.engine.piece(token.id)
                event.top_pieces = [self.engine.piece(i) for i in token.top_ids]
        except Exception as e:  # this sequence alone ends; the others' tokens are unaffected
            job.seq.error = e
            return
        job.ticket.post(event)

    def _sweep(self) -> None:
        """Remove finished, failed and cancelled sequences from the batch."""
        for seq, job in list(self._jobs.items()):
            if seq.error is not None:
                if not isinstance(seq.error, ParleyError):
                    log.error("generation failed for one sequence; the others go on", exc_info=seq.error)
                self._finish(seq, Event(job.index, error=seq.error))
            elif seq.done:
                self._finish(seq, Event(job.index, finish_reason=seq.finish_reason))
            elif job.ticket.cancelled:
                self._batch.remove(seq)
                del self._jobs[seq]

    def _finish(self, seq: Sequence, closing: Event) -> None:
        job = self._jobs.pop(seq)
        self._batch.remove(seq)
        job.ticket.post(closing)


class StreamDriver:
    """Each sequence streams from `stream` in a worker thread; see the module docstring."""

    def __init__(self, stream: Callable[[Prompt, SamplingParams], Iterator[Token]], max_batch: int = 8,
                 max_queue: int = 64, retry_after: int = 1):
        self.stream, self.max_batch, self.max_queue, self.retry_after = stream, max_batch, max_queue, retry_after
        self._pool = ThreadPoolExecutor(max_workers=max_batch, thread_name_prefix="parley-stream")
        self._lock = threading.Lock()
        self._pending = 0  # sequences queued or running
        self._deadline: float | None = None

    @property
    def waiting(self) -> int:
        return max(0, self._pending - self.max_batch)

    @property
    def active(self) -> int:
        return min(self._pending, self.max_batch)

    def submit(self, requests: list[tuple[Prompt, SamplingParams]], deliver: Callable[[Event], None],
               pieces: bool = False) -> Ticket:
        for _, params in requests:
            params.check()
        ticket = Ticket(len(requests), deliver, pieces=False)  # remote tokens have no ids to decode
        jobs = [_Job(ticket, i, prompt=prompt, params=params) for i, (prompt, params) in enumerate(requests)]
        with self._lock:
            _admissible(len(requests), self.waiting, self.max_queue, self.retry_after, self._deadline)
            self._pending += len(requests)
        ticket._on_cancel = lambda: self._forget(jobs)
        for job in jobs:
            self._pool.submit(self._stream, job)
        return ticket

    def _claim(self, job: _Job) -> bool:
        """True for the first caller only: the worker that starts `job`, or `_forget` that drops it."""
        with self._lock:
            claimed, job.claimed = job.claimed, True
            return not claimed

    def _forget(self, jobs: list[_Job]) -> None:
        """A cancelled request's jobs that have not started leave the line at once."""
        for job in jobs:
            if self._claim(job):
                with self._lock:
                    self._pending -= 1

    def _stream(self, job: _Job) -> None:
        if not self._claim(job):  # cancelled while it waited: _forget has counted it out
            return
        ticket, tokens, reason, sent = job.ticket, self.stream(job.prompt, job.params), "stop", 0
        try:
            if self._deadline is not None:
                raise ShuttingDown()
            for token in tokens:
                if ticket.cancelled:
                    return
                sent += 1
                ticket.post(Event(job.index, token=token))
                if self._deadline is not None and time.monotonic() > self._deadline:
                    reason = "length"
                    break
            if sent >= job.params.max_new_tokens:
                reason = "length"
            ticket.post(Event(job.index, finish_reason=reason))
        except Exception as e:  # ParleyErrors are the caller's to report; anything else is logged as a bug
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
