"""The conversation store: every chat, from `parley chat` and `parley serve`, in one SQLite file.

Where: `$PARLEY_HOME/parley.db` (default ~/.cache/parley/parley.db), or the path given to `Store`.
The directory is created if missing. Use it as `store = Store(); cid = store.new_conversation(
model="smollm2"); store.add_message(cid, "user", "hi"); store.messages(cid)`.

Concurrency: the file is in WAL mode, so readers never block the writer and several processes
(a terminal chat beside a server) can share it. Each thread gets its own connection
(`threading.local`); every write is one `BEGIN IMMEDIATE` transaction committed before the method
returns, so a crash (even SIGKILL) loses nothing already added. Writers queue behind each other for
up to `BUSY_TIMEOUT_S`, then fail with CacheError.

Feedback: `rate` (thumbs up/down with a note), `edit_reply` (the user's rewrite becomes the shown
version and is preferred to the original), `pick_version` (one version of a regenerated reply is
preferred to the others). Each is a row of `feedback` with its own copy of the context, which
`feedback()` reads back for `parley data prepare --source feedback`. Regenerating keeps every
version (`versions()`); the message row holds the one shown.

Schema: the migrations of store_schema.py; opening an older file runs the missing ones forward.

Limits: `synchronous=NORMAL` means a power cut (not a process crash) may lose the last few
commits. WAL needs a local filesystem (not NFS). A db made by a newer Parley is refused, not
downgraded. Connections of threads that have ended are closed lazily, when a new thread connects.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import EllipsisType
from typing import Any

from parley.config import parley_home
from parley.errors import CacheError, ConfigError, ParleyError
from parley.store_schema import MIGRATIONS

BUSY_TIMEOUT_S = 10.0  # how long a writer waits for another thread or process to commit
TITLE_CHARS = 60


class ConversationNotFound(ParleyError):
    """An id or id prefix that matches no stored conversation."""

    def __init__(self, conversation_id: str):
        super().__init__(f"no conversation '{conversation_id}': `parley history` lists them")


class ConversationChanged(ParleyError):
    """The conversation no longer ends where a regenerated reply expected it to (HTTP 409)."""

    def __init__(self, conversation_id: str):
        super().__init__(f"conversation '{conversation_id}' changed while its reply was regenerated (a "
                         "message was added or the reply replaced elsewhere); the new reply was not stored: "
                         "reload the conversation and try again")


class MessageNotFound(ParleyError):
    """A message id that is not a reply in the given conversation, or a version it does not have."""


class AmbiguousConversation(ParleyError):
    """An id prefix that matches more than one conversation."""


@dataclass
class Feedback:
    """One judgement of a reply, with the context it answered (a copy taken when it was given)."""

    id: int
    conversation_id: str
    message_id: int | None
    kind: str  # good, bad, edit, pick
    context: list[dict]  # the messages before the reply, system prompt first
    chosen: str | None  # the better reply: a thumbs up's reply, an edit, the picked version
    rejected: str | None  # the worse reply: a thumbs down's reply, the edited original, a version not picked
    note: str | None
    model: str
    created_at: float


@dataclass
class Conversation:
    id: str
    title: str  # '' until set by rename() or the first user message
    model: str  # the model spec the conversation was started with
    system: str | None  # system prompt, kept out of messages()
    params: dict  # sampling parameters as a JSON-able dict
    created_at: float  # unix seconds
    updated_at: float  # unix seconds; bumped by every change
    message_count: int


_SELECT = """SELECT c.id, c.title, c.model, c.system, c.params, c.created_at, c.updated_at,
    (SELECT COUNT(*) FROM messages m WHERE m.conversation_id = c.id) FROM conversations c"""


def _statements(script: str) -> Iterator[str]:
    """Split a script into statements; complete_statement keeps `;` inside strings or triggers."""
    buf = ""
    for piece in script.split(";"):
        buf += piece + ";"
        if sqlite3.complete_statement(buf):
            if buf.strip(" \n\t;"):
                yield buf
            buf = ""


def _title_from(content: str) -> str:
    return " ".join(content.split())[:TITLE_CHARS]


class Store:
    """Conversations and their messages in one SQLite file; safe across threads and processes."""

    def __init__(self, path: Path | None = None):
        self.path = (Path(path) if path is not None else parley_home() / "parley.db").absolute()
        self._local = threading.local()
        self._lock = threading.Lock()
        self._conns: list[tuple[threading.Thread, sqlite3.Connection]] = []
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CacheError(f"cannot create {self.path.parent} for the conversation database "
                             f"({e.strerror}): set PARLEY_HOME to a writable directory") from e
        self._migrate()

    @contextmanager
    def _translate(self) -> Iterator[None]:
        """Turn SQLite's environment failures into one-line CacheErrors; bugs keep their type."""
        try:
            yield
        except sqlite3.OperationalError as e:
            if "locked" in str(e):
                raise CacheError(f"the conversation database {self.path} stayed locked by another "
                                 f"writer for {BUSY_TIMEOUT_S:g}s: try again") from e
            raise CacheError(f"cannot use the conversation database {self.path} ({e}): "
                             "set PARLEY_HOME to a writable directory") from e
        except sqlite3.DatabaseError as e:
            if type(e) is not sqlite3.DatabaseError:  # IntegrityError, ProgrammingError: our bugs
                raise
            raise CacheError(f"{self.path} is not a usable SQLite database ({e}); it was left as "
                             "is: move it aside or set PARLEY_HOME to another directory") from e

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # isolation_level=None: we issue BEGIN ourselves; check_same_thread=False only so that
            # close() and the reaping below can close other threads' connections.
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                   check_same_thread=False)
            try:
                conn.execute("PRAGMA journal_mode=WAL")  # reads the header: fails on a non-db
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute("PRAGMA foreign_keys=ON")
                conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
            except sqlite3.Error:
                conn.close()
                raise
            with self._lock:
                dead = [c for t, c in self._conns if not t.is_alive()]
                self._conns = [(t, c) for t, c in self._conns if t.is_alive()]
                self._conns.append((threading.current_thread(), conn))
            for c in dead:
                c.close()
            self._local.conn = conn
        return conn

    def _migrate(self) -> None:
        if self._rows("PRAGMA user_version")[0][0] == len(MIGRATIONS):
            return
        with self._write() as conn:  # re-read under the write lock: another process may race us
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise CacheError(f"{self.path} was written by a newer Parley (schema {version}, "
                                 f"this one knows {len(MIGRATIONS)}): upgrade Parley")
            for number in range(version + 1, len(MIGRATIONS) + 1):
                for statement in _statements(MIGRATIONS[number - 1]):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number}")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._translate():
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")  # take the write lock now: no read-then-upgrade deadlock
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _rows(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._translate():
            return self._conn().execute(sql, args).fetchall()

    def _touch(self, conn: sqlite3.Connection, conversation_id: str, sql: str = "",
               args: tuple = ()) -> None:
        """Bump updated_at (plus any `sql` assignments); unknown id -> ConversationNotFound."""
        cur = conn.execute(f"UPDATE conversations SET {sql}updated_at = ? WHERE id = ?",
                           (*args, time.time(), conversation_id))
        if cur.rowcount == 0:
            raise ConversationNotFound(conversation_id)

    def new_conversation(self, *, model: str, system: str | None = None, title: str | None = None,
                         params: dict | None = None) -> str:
        now = time.time()
        with self._write() as conn:
            while True:
                cid = secrets.token_hex(4)
                if not conn.execute("SELECT 1 FROM conversations WHERE id = ?", (cid,)).fetchone():
                    break
            conn.execute("INSERT INTO conversations VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (cid, title or "", model, system, json.dumps(params or {}), now, now))
        return cid

    def add_message(self, conversation_id: str, role: str, content: str, *,
                    meta: dict | None = None) -> int:
        """Append a message; returns its id."""
        with self._write() as conn:
            return self._insert(conn, conversation_id, role, content, meta)

    def replace_replies(self, conversation_id: str, keep: int, last_id: int | None, content: str, *,
                        meta: dict | None = None) -> int:
        """Regenerating: in one transaction, delete every message after the first `keep` and append
        the new assistant reply, but only while the conversation still ends with message `last_id`
        (None: no messages), as when the reply was asked for; otherwise ConversationChanged and
        nothing is touched. Returns the reply's id."""
        with self._write() as conn:
            ids = [row[0] for row in conn.execute(
                "SELECT id FROM messages WHERE conversation_id = ? ORDER BY id", (conversation_id,))]
            if (ids[-1] if ids else None) != last_id:
                self._touch(conn, conversation_id)  # a deleted conversation is ConversationNotFound
                raise ConversationChanged(conversation_id)
            # Insert before deleting: SQLite reuses the largest rowid once it is deleted, and a reply
            # that took its predecessor's id would let a stale `last_id` pass the check above.
            reply = self._insert(conn, conversation_id, "assistant", content, meta)
            replaced = ids[max(0, keep):]
            old = conn.execute(f"SELECT id FROM messages WHERE role = 'assistant' AND id IN "
                               f"({','.join('?' * len(replaced))}) ORDER BY id LIMIT 1", replaced).fetchone()
            if old is not None:  # the new reply is the newest version of the old one
                self._carry_versions(conn, old[0], reply)
            conn.executemany("DELETE FROM messages WHERE id = ?", [(i,) for i in replaced])
            return reply

    def _carry_versions(self, conn: sqlite3.Connection, old: int, new: int) -> None:
        """Give message `new` every version of `old` (its own text the first, when it had none),
        then its own text as the newest, shown."""
        if not conn.execute("SELECT 1 FROM versions WHERE message_id = ?", (old,)).fetchone():
            conn.execute("INSERT INTO versions (message_id, content, meta, created_at) "
                         "SELECT id, content, meta, created_at FROM messages WHERE id = ?", (old,))
        conn.execute("UPDATE versions SET message_id = ? WHERE message_id = ?", (new, old))
        conn.execute("INSERT INTO versions (message_id, content, meta, created_at) "
                     "SELECT id, content, meta, created_at FROM messages WHERE id = ?", (new,))
        count = conn.execute("SELECT COUNT(*) FROM versions WHERE message_id = ?", (new,)).fetchone()[0]
        conn.execute("UPDATE messages SET version = ? WHERE id = ?", (count, new))

    def truncate(self, conversation_id: str, keep: int, last_id: int | None) -> int | None:
        """Editing a message: in one transaction, delete every message after the first `keep`, only
        while the conversation still ends with message `last_id` (else ConversationChanged and nothing
        is touched). Returns the id of the last message kept (None: none kept)."""
        with self._write() as conn:
            ids = [row[0] for row in conn.execute(
                "SELECT id FROM messages WHERE conversation_id = ? ORDER BY id", (conversation_id,))]
            self._touch(conn, conversation_id)  # a deleted conversation is ConversationNotFound
            if (ids[-1] if ids else None) != last_id:
                raise ConversationChanged(conversation_id)
            conn.executemany("DELETE FROM messages WHERE id = ?", [(i,) for i in ids[max(0, keep):]])
            return ids[keep - 1] if keep > 0 else None

    def _insert(self, conn: sqlite3.Connection, conversation_id: str, role: str, content: str,
                meta: dict | None) -> int:
        self._touch(conn, conversation_id)
        cur = conn.execute(
            "INSERT INTO messages (conversation_id, role, content, meta, created_at) VALUES (?, ?, ?, ?, ?)",
            (conversation_id, role, content, None if meta is None else json.dumps(meta), time.time()))
        if role == "user" and _title_from(content):
            conn.execute("UPDATE conversations SET title = ? WHERE id = ? AND title = ''",
                         (_title_from(content), conversation_id))
        return cur.lastrowid

    def messages(self, conversation_id: str) -> list[dict]:
        return self.thread(conversation_id)[0]

    def thread(self, conversation_id: str) -> tuple[list[dict], int | None]:
        """The messages, and the id of the last one (None if none), read together: what a later
        `replace_replies` checks is still the end of the conversation."""
        self.get(conversation_id)
        rows = self._rows("SELECT id, role, content FROM messages WHERE conversation_id = ? "
                          "ORDER BY id", (conversation_id,))
        return [{"role": role, "content": content} for _, role, content in rows], (rows[-1][0] if rows else None)

    def replies(self, conversation_id: str) -> list[dict]:
        """The messages with their store ids; a reply with several versions also has `version`
        (the one shown, 1-based) and `versions` (how many); one stopped before its end (the page's Stop,
        the chat's Ctrl-C) has `stopped: true`."""
        self.get(conversation_id)
        rows = self._rows("SELECT m.id, m.role, m.content, m.meta, m.version, (SELECT COUNT(*) FROM versions v "
                          "WHERE v.message_id = m.id) FROM messages m WHERE m.conversation_id = ? ORDER BY m.id",
                          (conversation_id,))
        out = []
        for mid, role, content, meta, version, count in rows:
            meta = json.loads(meta) if meta else {}
            stopped = bool(meta.get("stopped")) or meta.get("finish_reason") == "cancelled"
            out.append({"id": mid, "role": role, "content": content}
                       | ({"version": version, "versions": count} if count > 1 else {})
                       | ({"stopped": True} if stopped else {}))
        return out

    def versions(self, conversation_id: str, message_id: int) -> list[str]:
        """Every version of reply `message_id`, oldest first (just its text when it has one)."""
        with self._translate():
            conn = self._conn()
            self._reply(conn, conversation_id, message_id)
            texts = [r[0] for r in conn.execute("SELECT content FROM versions WHERE message_id = ? ORDER BY id",
                                                (message_id,))]
            return texts or [self._reply(conn, conversation_id, message_id)[1]]

    def pick_version(self, conversation_id: str, message_id: int, number: int) -> str:
        """Show version `number` (1-based) of a regenerated reply, and record it as preferred to each
        of the others (one `pick` pair per other version, replacing an earlier pick of this reply)."""
        with self._write() as conn:
            _, shown = self._reply(conn, conversation_id, message_id)
            texts = [r[0] for r in conn.execute("SELECT content FROM versions WHERE message_id = ? ORDER BY id",
                                                (message_id,))] or [shown]
            if not 1 <= number <= len(texts):
                raise MessageNotFound(f"reply {message_id} has no version {number}: choose 1 to {len(texts)}")
            chosen = texts[number - 1]
            conn.execute("UPDATE messages SET content = ?, version = ? WHERE id = ?", (chosen, number, message_id))
            self._touch(conn, conversation_id)
            conn.execute("DELETE FROM feedback WHERE message_id = ? AND kind = 'pick'", (message_id,))
            for other in dict.fromkeys(t for t in texts if t != chosen):  # equal texts are no preference
                self._feedback(conn, conversation_id, message_id, "pick", chosen=chosen, rejected=other)
            return chosen

    def edit_reply(self, conversation_id: str, message_id: int, content: str, note: str | None = None) -> None:
        """Replace a reply's text with the user's rewrite, kept as its newest version (the original
        stays as an older one) and recorded as preferred to the text it replaced."""
        with self._write() as conn:
            _, before = self._reply(conn, conversation_id, message_id)
            if content == before:
                return
            if not conn.execute("SELECT 1 FROM versions WHERE message_id = ?", (message_id,)).fetchone():
                conn.execute("INSERT INTO versions (message_id, content, meta, created_at) "
                             "SELECT id, content, meta, created_at FROM messages WHERE id = ?", (message_id,))
            conn.execute("INSERT INTO versions (message_id, content, meta, created_at) VALUES (?, ?, ?, ?)",
                         (message_id, content, json.dumps({"edited": True}), time.time()))
            count = conn.execute("SELECT COUNT(*) FROM versions WHERE message_id = ?", (message_id,)).fetchone()[0]
            conn.execute("UPDATE messages SET content = ?, version = ? WHERE id = ?", (content, count, message_id))
            self._touch(conn, conversation_id)
            self._feedback(conn, conversation_id, message_id, "edit", chosen=content, rejected=before, note=note)

    def rate(self, conversation_id: str, message_id: int, good: bool | None, note: str | None = None) -> None:
        """Thumbs up (good=True) or down on the reply as now shown; None withdraws the rating. A new
        rating of the same reply replaces the old one."""
        with self._write() as conn:
            _, content = self._reply(conn, conversation_id, message_id)
            conn.execute("DELETE FROM feedback WHERE message_id = ? AND kind IN ('good', 'bad')", (message_id,))
            if good is not None:
                self._feedback(conn, conversation_id, message_id, "good" if good else "bad",
                               chosen=content if good else None, rejected=None if good else content, note=note)
            self._touch(conn, conversation_id)

    def feedback(self, *, since: float | None = None, until: float | None = None, model: str | None = None,
                 conversation_id: str | None = None) -> list[Feedback]:
        """Stored feedback, oldest first; `since`/`until` are unix seconds (until excluded)."""
        where, args = [], []
        for clause, value in (("created_at >= ?", since), ("created_at < ?", until), ("model = ?", model),
                              ("conversation_id = ?", conversation_id)):
            if value is not None:
                where.append(clause)
                args.append(value)
        sql = ("SELECT id, conversation_id, message_id, kind, context, chosen, rejected, note, model, created_at "
               "FROM feedback" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id")
        return [Feedback(*row[:4], json.loads(row[4]), *row[5:]) for row in self._rows(sql, tuple(args))]

    def _reply(self, conn: sqlite3.Connection, conversation_id: str, message_id: int) -> tuple[list[dict], str]:
        """(the context before reply `message_id`, system prompt first; its text), or MessageNotFound."""
        row = conn.execute("SELECT role, content FROM messages WHERE id = ? AND conversation_id = ?",
                           (message_id, conversation_id)).fetchone()
        if row is None or row[0] != "assistant":
            if not conn.execute("SELECT 1 FROM conversations WHERE id = ?", (conversation_id,)).fetchone():
                raise ConversationNotFound(conversation_id)
            raise MessageNotFound(f"conversation '{conversation_id}' has no reply {message_id}: "
                                  "feedback is given on the assistant's messages")
        system = conn.execute("SELECT system FROM conversations WHERE id = ?", (conversation_id,)).fetchone()[0]
        before = conn.execute("SELECT role, content FROM messages WHERE conversation_id = ? AND id < ? ORDER BY id",
                              (conversation_id, message_id)).fetchall()
        context = ([{"role": "system", "content": system}] if system else []) + \
            [{"role": r, "content": c} for r, c in before]
        return context, row[1]

    def _feedback(self, conn: sqlite3.Connection, conversation_id: str, message_id: int, kind: str, *,
                  chosen: str | None, rejected: str | None, note: str | None = None) -> None:
        context, _ = self._reply(conn, conversation_id, message_id)
        model = conn.execute("SELECT model FROM conversations WHERE id = ?", (conversation_id,)).fetchone()[0]
        conn.execute("INSERT INTO feedback (conversation_id, message_id, kind, context, chosen, rejected, note, "
                     "model, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     (conversation_id, message_id, kind, json.dumps(context), chosen, rejected, note or None,
                      model, time.time()))

    def get(self, conversation_id: str) -> Conversation:
        rows = self._rows(f"{_SELECT} WHERE c.id = ?", (conversation_id,))
        if not rows:
            raise ConversationNotFound(conversation_id)
        return _conversation(rows[0])

    def list(self, limit: int = 50, offset: int = 0) -> list[Conversation]:
        rows = self._rows(f"{_SELECT} ORDER BY c.updated_at DESC, c.rowid DESC LIMIT ? OFFSET ?",
                          (limit, offset))
        return [_conversation(r) for r in rows]

    def rename(self, conversation_id: str, title: str) -> None:
        with self._write() as conn:
            self._touch(conn, conversation_id, "title = ?, ", (title,))

    def delete(self, conversation_id: str) -> None:
        with self._write() as conn:
            if conn.execute("DELETE FROM conversations WHERE id = ?",
                            (conversation_id,)).rowcount == 0:
                raise ConversationNotFound(conversation_id)

    def update(self, conversation_id: str, *, system: str | None | EllipsisType = ...,
               params: dict | None | EllipsisType = ...,
               model: str | None | EllipsisType = ...) -> None:
        """Change only the fields given; system=None clears the prompt, params=None empties them."""
        if model is None or model == "":
            raise ConfigError("model: a conversation needs a model spec, e.g. 'smollm2'")
        given = {"system": system, "params": params, "model": model}
        sets: dict[str, Any] = {k: v for k, v in given.items() if v is not ...}
        if "params" in sets:
            sets["params"] = json.dumps(sets["params"] or {})
        with self._write() as conn:
            self._touch(conn, conversation_id, "".join(f"{k} = ?, " for k in sets),
                        tuple(sets.values()))

    def resolve(self, prefix: str) -> str:
        """A unique id prefix (as typed by the user) -> the full id."""
        # Ids all have the same length, so a full id is never the prefix of another.
        rows = self._rows("SELECT id FROM conversations WHERE substr(id, 1, ?) = ? "
                          "ORDER BY id LIMIT 6", (len(prefix), prefix)) if prefix else []
        ids = [r[0] for r in rows]
        if len(ids) == 1:
            return ids[0]
        if not ids:
            raise ConversationNotFound(prefix)
        shown = ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else "")
        raise AmbiguousConversation(f"'{prefix}' matches several conversations ({shown}): "
                                    "type more of the id")

    def close(self) -> None:
        """Close every thread's connection; the Store is unusable afterwards."""
        with self._lock:
            conns, self._conns = self._conns, []
        for _, conn in conns:
            conn.close()


def _conversation(row: tuple) -> Conversation:
    cid, title, model, system, params, created, updated, count = row
    return Conversation(cid, title, model, system, json.loads(params), created, updated, count)
