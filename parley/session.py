"""One chat session: history, system prompt, sampling parameters, the fit to the context window, and
its turns in the SQLite store. The terminal (`parley chat`) and the server's conversations API both
use it, so a conversation continues the same way from either.

    session = Session(engine, Store(), model="smollm2", system="Be brief.")   # stored on its first message
    session = Session.resume(engine, store, "3f2a")                            # an id or a unique prefix
    fitted = session.fit(session.turn("Hi!"))      # the history plus the new message, fitted (engine.fit)
    session.commit("Hi!")                          # store the user's message once its reply is queued
    ...engine.stream(fitted.messages, session.params)...
    session.answer(reply)                          # store the reply

The fit keeps `conversation.reply_room(window, max_new_tokens)` tokens free for the reply (all of
max_new_tokens, at most half the window) and drops the oldest turns first (conversation.py).
Regenerating is `turn(None)` (the history up to its last user message) and then `answer(reply)`,
which replaces the replies after that message in one transaction, only if the stored conversation
still ends where this session last saw it (else store.ConversationChanged, and nothing changes):
until a new reply exists, the old one stays, and a message another client added is never deleted.

Feedback: `rate(good, note)`, `edit(text)`, `versions()` and `pick(n)` act on the last reply (or on
the reply with a given store id, as the server's routes do); the store keeps each judgement with its
context, and regenerating keeps the old reply as an earlier version rather than deleting it.

Limits: two sessions on one conversation append their turns interleaved; only regenerating checks.
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
                 params: SamplingParams | None = None, id: str | None = None, messages: list[dict] | None = None,
                 last_id: int | None = None):
        self.engine, self.store, self.model = engine, store, model
        self.system = system or None
        self.params = params or SamplingParams()
        self.id = id  # None until the first message, so an empty session leaves no trace
        self.messages: list[dict] = list(messages or [])
        self.last_id = last_id  # the store's id of the last message: what regenerating checks
        self.regenerating = False  # set by turn(None): the next answer replaces the last replies
        self.editing: int | None = None  # set by turn(text, edit=i): commit() first cuts the history at i

    @classmethod
    def from_store(cls, engine: Engine, store: Store, cid: str, params: SamplingParams) -> Session:
        """The stored conversation `cid` (its model, system prompt and messages) with `params`."""
        stored = store.get(cid)
        messages, last_id = store.thread(cid)
        return cls(engine, store, stored.model, stored.system, params, id=cid, messages=messages, last_id=last_id)

    @classmethod
    def resume(cls, engine: Engine, store: Store, ref: str, system: str | None = None,
               params: dict | None = None) -> Session:
        """A stored conversation (`ref`: its id or a unique prefix); `system`/`params` override what it stored."""
        cid = store.resolve(ref)
        stored = store.get(cid)
        known = {f.name for f in dataclasses.fields(SamplingParams)}
        # Keys another Parley version stored and this one does not know are left out, not fatal.
        merged = {**{k: v for k, v in (stored.params or {}).items() if k in known}, **(params or {})}
        session = cls.from_store(engine, store, cid, SamplingParams().updated(**merged))
        session.model = engine.spec
        if system is not None:
            session.system = system or None
        return session

    def history(self) -> list[dict]:
        return self._system() + self.messages

    def turn(self, text: str | None, edit: int | None = None) -> list[dict]:
        """What the next reply answers: the history plus `text`, or (None: regenerate) the history up
        to its last user message, or (edit=i) the history before user message i plus `text` in its place."""
        self.regenerating = text is None
        self.editing = None
        if edit is not None and text is not None:
            if not (0 <= edit < len(self.messages) and self.messages[edit]["role"] == "user"):
                raise ConfigError(f"message {edit} is not a user message of this conversation "
                                  f"(it has {len(self.messages)} messages)")
            self.editing = edit
            return self._system() + self.messages[:edit] + [{"role": "user", "content": text}]
        if text is not None:
            return self.history() + [{"role": "user", "content": text}]
        keep = self._answered()
        if keep == 0:
            raise ConfigError("there is no user message to reply to")
        return self._system() + self.messages[:keep]

    def fit(self, messages: list[dict] | None = None) -> Fitted:
        """`messages` (default: the history) fitted to the context window with room for the reply."""
        return self.engine.fit(self.history() if messages is None else messages, self.params.max_new_tokens)

    def commit(self, text: str) -> None:
        """Store the user's `text` (once its reply is queued, so a failed request leaves no trace);
        after turn(text, edit=i), in place of message i and all that followed it (store.truncate:
        ConversationChanged if the conversation moved on meanwhile)."""
        if self.editing is not None and self.id:
            self.last_id = self.store.truncate(self.id, self.editing, self.last_id)
            self.messages = self.messages[:self.editing]
            self.editing = None
        self.add("user", text)

    def answer(self, content: str, **meta) -> None:
        """Store the reply: appended, or after turn(None) in place of the replies to the last user
        message (store.replace_replies: ConversationChanged if the conversation moved on meanwhile)."""
        if not (self.regenerating and self.id):
            return self.add("assistant", content, **meta)
        keep = self._answered()
        self.last_id = self.store.replace_replies(self.id, keep, self.last_id, content, meta=meta or None)
        self.messages = self.messages[:keep] + [{"role": "assistant", "content": content}]
        self.regenerating = False

    def add(self, role: str, content: str, **meta) -> None:
        if self.id is None:
            self.id = self.store.new_conversation(model=self.model, system=self.system, params=self.stored_params())
        self.last_id = self.store.add_message(self.id, role, content, meta=meta or None)
        self.messages.append({"role": role, "content": content})

    def reset(self) -> None:
        self.id, self.messages, self.last_id, self.regenerating = None, [], None, False

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

    # Feedback on replies (the store keeps it, with its context, for `parley data prepare --source
    # feedback`). `reply` is a message id; None means the last message, which must be a reply.

    def rate(self, good: bool | None, note: str | None = None, reply: int | None = None) -> None:
        """Thumbs up (True) or down (False) on a reply, with an optional reason; None withdraws it."""
        self.store.rate(self._conversation(), self._reply(reply), good, note)

    def edit(self, content: str, note: str | None = None, reply: int | None = None) -> None:
        """Rewrite a reply: the rewrite is shown from now on and kept as the better answer."""
        if not content.strip():
            raise ConfigError("the edited reply is empty; type the reply as it should have been")
        reply = self._reply(reply)
        self.store.edit_reply(self._conversation(), reply, content, note)
        self._shown(reply, content)

    def versions(self, reply: int | None = None) -> list[str]:
        """Every version of a reply (regenerations and edits), oldest first."""
        return self.store.versions(self._conversation(), self._reply(reply))

    def pick(self, number: int, reply: int | None = None) -> str:
        """Show version `number` (1-based) of a reply, preferred to its other versions; returns its text."""
        reply = self._reply(reply)
        text = self.store.pick_version(self._conversation(), reply, number)
        self._shown(reply, text)
        return text

    def _conversation(self) -> str:
        if self.id is None:
            raise ConfigError("there is no reply yet to give feedback on")
        return self.id

    def _reply(self, reply: int | None) -> int:
        if reply is not None:
            return reply
        if self.last_id is None or not self.messages or self.messages[-1]["role"] != "assistant":
            raise ConfigError("the last message is not a reply: feedback is given on the assistant's replies")
        return self.last_id

    def _shown(self, reply: int, text: str) -> None:
        if reply == self.last_id and self.messages:  # the session mirrors the last message only by id
            self.messages[-1] = {"role": "assistant", "content": text}

    def _system(self) -> list[dict]:
        return [{"role": "system", "content": self.system}] if self.system else []

    def _answered(self) -> int:
        """How many messages there are up to and including the last user message."""
        for i in range(len(self.messages), 0, -1):
            if self.messages[i - 1]["role"] == "user":
                return i
        return 0
