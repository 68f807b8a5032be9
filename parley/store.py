"""The conversation store: every chat, from `parley chat` and `parley serve`, in one SQLite file.

Where: `$PARLEY_HOME/parley.db` (default ~/.cache/parley/parley.db), or the path given to `Store`.
The directory is created if missing. Use it as `store = Store(); cid = store.new_conversation(
model="smollm2"); store.add_message(cid, "user", "hi"); store.messages(cid)`.

Concurrency: the file is in WAL mode, so readers never block the writer and several processes
(a terminal chat beside a server) can share it. Each thread gets its own connection
(`threading.local`); every write is one `BEGIN IMMEDIATE` transaction committed before the method
returns, so a crash (even SIGKILL) loses nothing already added. Writers queue behind each other for
up to `BUSY_TIMEOUT_S`, then fail with CacheError.

Schema: `MIGRATIONS` is a list of SQL scripts; `PRAGMA user_version` records how many have run.
Opening an older file runs the missing ones forward in one transaction. Never edit a shipped
migration; append a new one.

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

BUSY_TIMEOUT_S = 10.0  # how long a writer waits for another thread or process to commit
TITLE_CHARS = 60

MIGRATIONS: list[str] = [
    # 1: conversations and their messages; messages are read back per conversation in id order.
    """
    CREATE TABLE conversations (
        id TEXT PRIMARY KEY,
        title TEXT NOT NULL DEFAULT '',
        model TEXT NOT NULL,
        system TEXT,
        params TEXT NOT NULL DEFAULT '{}',  -- JSON object
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
        role TEXT NOT NULL,
        content TEXT NOT NULL,
        meta TEXT,  -- JSON object or NULL
        created_at REAL NOT NULL
    );
    CREATE INDEX messages_by_conversation ON messages(conversation_id, id);
    """,
]


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


class AmbiguousConversation(ParleyError):
    """An id prefix that matches more than one conversation."""


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
            conn.executemany("DELETE FROM messages WHERE id = ?", [(i,) for i in ids[max(0, keep):]])
            return reply

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

    def stopped(self, conversation_id: str) -> list[bool]:
        """Per message, in order: whether it is a reply stopped before its end (the page's Stop, the
        chat's Ctrl-C), as its meta records."""
        rows = self._rows("SELECT meta FROM messages WHERE conversation_id = ? ORDER BY id", (conversation_id,))
        metas = [json.loads(meta) if meta else {} for (meta,) in rows]
        return [bool(m.get("stopped")) or m.get("finish_reason") == "cancelled" for m in metas]

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
