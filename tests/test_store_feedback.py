"""Reply versions and feedback in the store (migration 2), and opening a database written by the
release before them, against real SQLite files."""

from __future__ import annotations

import sqlite3

import pytest

from parley.store import ConversationNotFound, MessageNotFound, Store
from parley.store_schema import MIGRATIONS

# The schema as Parley 425c8e5 (the release before feedback) wrote it, copied verbatim: a database
# from that release must open, migrate and keep every row.
RELEASED_SCHEMA = """
CREATE TABLE conversations (
    id TEXT PRIMARY KEY,
    title TEXT NOT NULL DEFAULT '',
    model TEXT NOT NULL,
    system TEXT,
    params TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE messages (
    id INTEGER PRIMARY KEY,
    conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    meta TEXT,
    created_at REAL NOT NULL
);
CREATE INDEX messages_by_conversation ON messages(conversation_id, id);
PRAGMA user_version = 1;
"""


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "parley.db")
    yield s
    s.close()


def _chat(store, system=None):
    cid = store.new_conversation(model="smollm2", system=system)
    store.add_message(cid, "user", "What is 2+2?")
    reply = store.add_message(cid, "assistant", "5")
    return cid, reply


def test_a_database_from_the_release_before_feedback_migrates_and_keeps_every_row(tmp_path):
    path = tmp_path / "old.db"
    raw = sqlite3.connect(path)
    raw.executescript(RELEASED_SCHEMA)
    rows = [("c1", "First", "smollm2", "Be brief.", '{"temperature": 0.2}', 1.0, 2.0),
            ("c2", "", "runs/x/final", None, "{}", 3.0, 4.0)]
    raw.executemany("INSERT INTO conversations VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    messages = [(1, "c1", "user", "hi", None, 1.5), (2, "c1", "assistant", "hello", '{"tokens": 2}', 1.6),
                (3, "c2", "user", "bye", None, 3.5)]
    raw.executemany("INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?)", messages)
    raw.commit()
    raw.close()

    s = Store(path)
    assert [(c.id, c.title, c.system, c.params, c.message_count) for c in sorted(s.list(), key=lambda c: c.id)] == [
        ("c1", "First", "Be brief.", {"temperature": 0.2}, 2), ("c2", "", None, {}, 1)]
    assert s.messages("c1") == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    s.rate("c1", 2, True)  # the new tables work on old rows
    assert s.feedback()[0].chosen == "hello"
    s.close()
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) == 2
    assert raw.execute("SELECT id, conversation_id, role, content, meta, created_at FROM messages "
                       "ORDER BY id").fetchall() == messages


def test_regenerating_keeps_every_version_and_a_pick_is_a_preference(store):
    cid, first = _chat(store, system="Be brief.")
    second = store.replace_replies(cid, 1, first, "4")
    third = store.replace_replies(cid, 1, second, "four")
    assert store.versions(cid, third) == ["5", "4", "four"]
    assert store.replies(cid)[-1] == {"id": third, "role": "assistant", "content": "four", "version": 3, "versions": 3}

    assert store.pick_version(cid, third, 2) == "4"
    assert store.messages(cid)[-1] == {"role": "assistant", "content": "4"}  # what a reload shows
    assert store.replies(cid)[-1]["version"] == 2
    pairs = sorted((f.kind, f.chosen, f.rejected) for f in store.feedback())
    assert pairs == [("pick", "4", "5"), ("pick", "4", "four")]
    store.pick_version(cid, third, 1)  # changing one's mind replaces the earlier pick
    assert sorted((f.chosen, f.rejected) for f in store.feedback()) == [("5", "4"), ("5", "four")]
    assert store.feedback()[0].context == [{"role": "system", "content": "Be brief."},
                                           {"role": "user", "content": "What is 2+2?"}]
    with pytest.raises(MessageNotFound, match="no version 4: choose 1 to 3"):
        store.pick_version(cid, third, 4)


def test_an_edit_becomes_the_shown_version_and_is_preferred_to_the_original(store):
    cid, reply = _chat(store)
    store.edit_reply(cid, reply, "4", note="arithmetic")
    assert store.messages(cid)[-1]["content"] == "4"
    assert store.versions(cid, reply) == ["5", "4"]
    (edit,) = store.feedback()
    assert (edit.kind, edit.chosen, edit.rejected, edit.note, edit.model) == ("edit", "4", "5", "arithmetic", "smollm2")


def test_thumbs_replace_each_other_and_can_be_withdrawn(store):
    cid, reply = _chat(store)
    store.rate(cid, reply, False, note="wrong sum")
    assert [(f.kind, f.chosen, f.rejected, f.note) for f in store.feedback()] == [("bad", None, "5", "wrong sum")]
    store.rate(cid, reply, True)
    assert [(f.kind, f.chosen) for f in store.feedback()] == [("good", "5")]
    store.rate(cid, reply, None)
    assert store.feedback() == []


def test_feedback_filters_by_time_and_model_and_survives_later_changes(store):
    cid, reply = _chat(store)
    store.rate(cid, reply, True)
    when = store.feedback()[0].created_at
    other = store.new_conversation(model="runs/dpo/final")
    store.add_message(other, "user", "hi")
    store.rate(other, store.add_message(other, "assistant", "hello"), False)
    assert [f.model for f in store.feedback(model="runs/dpo/final")] == ["runs/dpo/final"]
    assert [f.conversation_id for f in store.feedback(until=when + 1e-6)] == [cid]
    assert store.feedback(since=when + 1e9) == []
    store.edit_reply(cid, reply, "4")  # the thumbs up keeps the text it judged
    assert [f.chosen for f in store.feedback(conversation_id=cid)] == ["5", "4"]
    store.delete(other)  # deleting a conversation deletes what was said about it
    assert {f.conversation_id for f in store.feedback()} == {cid}


def test_feedback_on_what_is_not_a_reply_names_the_problem(store):
    cid, reply = _chat(store)
    user_message = reply - 1
    with pytest.raises(MessageNotFound, match="has no reply .*assistant's messages"):
        store.rate(cid, user_message, True)
    with pytest.raises(MessageNotFound):
        store.edit_reply(cid, 9999, "x")
    with pytest.raises(ConversationNotFound):
        store.rate("nope", reply, True)
    other, _ = _chat(store)
    with pytest.raises(MessageNotFound):  # a reply of another conversation
        store.rate(other, reply, True)
