"""One chat session: history, system prompt, sampling parameters, the fit to the context window, and
its turns in the SQLite store. The terminal (`parley chat`) and the server's conversations API both
use it, so a conversation continues the same way from either.

    session = Session(engine, Store(), model="smollm2", system="Be brief.")   # stored on its first message
    session = Session.resume(engine, store, "3f2a")                            # an id or a unique prefix
    fitted = session.fit(session.turn("Hi!"))      # the history plus the new message, fitted (engine.fit)
    session.commit("Hi!")                          # store the user's message once its reply is underway
    ...engine.stream(fitted.messages, session.params)...
    session.add("assistant", reply)

The fit keeps `conversation.reply_room(window, max_new_tokens)` tokens free for the reply (all of
max_new_tokens, at most half the window) and drops the oldest turns first (conversation.py).
`turn(None)` / `commit(None)` regenerate: the history up to its last user message, and the replies
after it deleted from the store.

Limits: one writer per conversation; two sessions on one conversation interleave their turns.
"""

from __future__ import annotations

import dataclasses

from parley.conversation import Fitted
from parley.engine import Engine, SamplingParams
from parley.errors import ConfigError
from parley.store import Store


class Session:
    """One conversation: its messages, system prompt and sampling parameters, mirrored into the store."""

    def __init__(self, engine: Engine, store: Store, model: str, system: str | None = None,
                 params: SamplingParams | None = None, id: str | None = None, messages: list[dict] | None = None):
        self.engine, self.store, self.model = engine, store, model
        self.system = system or None
        self.params = params or SamplingParams()
        self.id = id  # None until the first message, so an empty session leaves no trace
        self.messages: list[dict] = list(messages or [])

    @classmethod
    def resume(cls, engine: Engine, store: Store, ref: str, system: str | None = None,
               params: dict | None = None) -> Session:
        """A stored conversation (`ref`: its id or a unique prefix); `system`/`params` override what it stored."""
        cid = store.resolve(ref)
        stored = store.get(cid)
        known = {f.name for f in dataclasses.fields(SamplingParams)}
        # Keys another Parley version stored and this one does not know are left out, not fatal.
        merged = {**{k: v for k, v in (stored.params or {}).items() if k in known}, **(params or {})}
        return cls(engine, store, engine.spec, system if system is not None else stored.system,
                   SamplingParams().updated(**merged), id=cid, messages=store.messages(cid))

    def history(self) -> list[dict]:
        return self._system() + self.messages

    def turn(self, text: str | None) -> list[dict]:
        """What the next reply answers: the history plus `text`, or (None: regenerate) the history up
        to its last user message."""
        if text is not None:
            return self.history() + [{"role": "user", "content": text}]
        keep = self._answered()
        if keep == 0:
            raise ConfigError("there is no user message to reply to")
        return self._system() + self.messages[:keep]

    def fit(self, messages: list[dict] | None = None) -> Fitted:
        """`messages` (default: the history) fitted to the context window with room for the reply."""
        return self.engine.fit(self.history() if messages is None else messages, self.params.max_new_tokens)

    def commit(self, text: str | None) -> None:
        """Store the user's `text`, or (None) delete the replies after the last user message."""
        if text is not None:
            self.add("user", text)
            return
        self.messages = self.messages[: self._answered()]
        if self.id:
            self.store.truncate(self.id, len(self.messages))

    def add(self, role: str, content: str, **meta) -> None:
        if self.id is None:
            self.id = self.store.new_conversation(model=self.model, system=self.system, params=self.stored_params())
        self.messages.append({"role": role, "content": content})
        self.store.add_message(self.id, role, content, meta=meta or None)

    def reset(self) -> None:
        self.id, self.messages = None, []

    def set_system(self, text: str | None) -> None:
        self.system = text or None
        if self.id:
            self.store.update(self.id, system=self.system)

    def set_params(self, **values) -> None:
        self.params = self.params.updated(**values)
        if self.id:
            self.store.update(self.id, params=self.stored_params())

    def load(self, messages: list[dict], system: str | None) -> None:
        """Start a new stored conversation holding `messages`."""
        self.reset()
        self.system = system
        for m in messages:
            self.add(m["role"], m["content"])

    def stored_params(self) -> dict:
        """The parameters that differ from the defaults: what the store keeps."""
        return {k: v for k, v in vars(self.params).items() if v != getattr(SamplingParams(), k)}

    def _system(self) -> list[dict]:
        return [{"role": "system", "content": self.system}] if self.system else []

    def _answered(self) -> int:
        """How many messages there are up to and including the last user message."""
        for i in range(len(self.messages), 0, -1):
            if self.messages[i - 1]["role"] == "user":
                return i
        return 0
