"""The conversation store against real SQLite files in tmp_path, real threads and processes."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from parley.errors import CacheError, ParleyError
from parley.store import AmbiguousConversation, ConversationChanged, ConversationNotFound, Store
from parley.store_schema import MIGRATIONS


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "parley.db")
    yield s
    s.close()


def test_round_trip_of_conversations_and_messages(tmp_path):
    s = Store(tmp_path / "a.db")
    cid = s.new_conversation(model="smollm2", system="Be brief.", params={"temperature": 0.2})
    assert len(cid) == 8 and int(cid, 16) >= 0
    first = s.add_message(cid, "user", "hello")
    second = s.add_message(cid, "assistant", "hi there", meta={"tokens": 3})
    assert second > first
    s.close()

    again = Store(tmp_path / "a.db")
    assert again.messages(cid) == [{"role": "user", "content": "hello"},
                                   {"role": "assistant", "content": "hi there"}]
    conv = again.get(cid)
    assert (conv.id, conv.model, conv.system, conv.params) == (
        cid, "smollm2", "Be brief.", {"temperature": 0.2})
    assert conv.message_count == 2 and conv.updated_at >= conv.created_at
    meta = sqlite3.connect(tmp_path / "a.db").execute("SELECT meta FROM messages WHERE id=?",
                                                      (second,)).fetchone()[0]
    assert meta == '{"tokens": 3}'
    again.close()


def test_default_location_is_under_parley_home(tmp_path, monkeypatch):
    monkeypatch.setenv("PARLEY_HOME", str(tmp_path / "home" / "deeper"))
    s = Store()
    s.new_conversation(model="m")
    assert s.path == tmp_path / "home" / "deeper" / "parley.db" and s.path.is_file()
    s.close()


def test_list_is_newest_updated_first_with_paging(store):
    a = store.new_conversation(model="m")
    b = store.new_conversation(model="m")
    c = store.new_conversation(model="m")
    assert [x.id for x in store.list()] == [c, b, a]
    store.add_message(a, "user", "bump")
    assert [x.id for x in store.list()] == [a, c, b]
    assert [x.id for x in store.list(limit=1, offset=1)] == [c]
    many = [store.add_message(b, "user", str(i)) for i in range(20)]
    assert [m["content"] for m in store.messages(b)] == [str(i) for i in range(20)]
    assert many == sorted(many)


def test_title_comes_from_the_first_user_message(store):
    cid = store.new_conversation(model="m", system="sys")
    store.add_message(cid, "assistant", "greeting first")
    assert store.get(cid).title == ""
    store.add_message(cid, "user", "  How do I\nreverse a list in Python " + "x" * 100)
    title = store.get(cid).title
    assert title.startswith("How do I reverse a list in Python") and "\n" not in title
    assert len(title) == 60
    store.add_message(cid, "user", "a later question")
    assert store.get(cid).title == title
    named = store.new_conversation(model="m", title="Chosen")
    store.add_message(named, "user", "not the title")
    assert store.get(named).title == "Chosen"


def test_rename_and_delete_cascades_to_messages(store, tmp_path):
    cid = store.new_conversation(model="m")
    store.add_message(cid, "user", "one")
    store.rename(cid, "Renamed")
    assert store.get(cid).title == "Renamed"
    other = store.new_conversation(model="m")
    store.add_message(other, "user", "keep")
    store.delete(cid)
    with pytest.raises(ConversationNotFound):
        store.get(cid)
    raw = sqlite3.connect(tmp_path / "parley.db")
    assert raw.execute("SELECT conversation_id FROM messages").fetchall() == [(other,)]


def test_unknown_ids_raise_conversation_not_found_everywhere(store):
    calls = [lambda: store.get("nope"), lambda: store.messages("nope"),
             lambda: store.add_message("nope", "user", "x"), lambda: store.rename("nope", "t"),
             lambda: store.delete("nope"), lambda: store.update("nope", system="s"),
             lambda: store.resolve("nope")]
    for call in calls:
        with pytest.raises(ConversationNotFound, match="no conversation 'nope': `parley history`"):
            call()


def test_update_changes_only_the_given_fields(store):
    cid = store.new_conversation(model="m1", system="old", params={"top_p": 0.9})
    before = store.get(cid)
    store.update(cid, params={"top_k": 5})
    after = store.get(cid)
    assert (after.system, after.params, after.model) == ("old", {"top_k": 5}, "m1")
    assert after.updated_at > before.updated_at
    store.update(cid, system=None, model="m2")
    after = store.get(cid)
    assert (after.system, after.params, after.model) == (None, {"top_k": 5}, "m2")
    with pytest.raises(ParleyError, match="model"):
        store.update(cid, model=None)


def test_replace_replies_only_while_the_conversation_ends_where_it_did(store):
    cid = store.new_conversation(model="m")
    store.add_message(cid, "user", "q")
    last = store.add_message(cid, "assistant", "old reply")
    messages, seen = store.thread(cid)
    assert seen == last and messages[-1]["content"] == "old reply"
    new = store.replace_replies(cid, 1, seen, "new reply", meta={"tokens": 2})
    assert [m["content"] for m in store.messages(cid)] == ["q", "new reply"]
    with pytest.raises(ConversationChanged, match="reload the conversation"):  # `seen` was replaced
        store.replace_replies(cid, 1, seen, "a reply to a stale view")
    store.add_message(cid, "user", "another client's question")
    with pytest.raises(ConversationChanged):
        store.replace_replies(cid, 1, new, "would delete that question")
    assert [m["content"] for m in store.messages(cid)] == ["q", "new reply", "another client's question"]
    store.delete(cid)
    with pytest.raises(ConversationNotFound):
        store.replace_replies(cid, 1, None, "too late")


def test_resolve_unique_ambiguous_and_unknown(store, tmp_path):
    cid = store.new_conversation(model="m")
    assert store.resolve(cid) == cid
    assert store.resolve(cid[:3]) == cid
    # Two ids sharing a prefix, written directly: random ids rarely collide on their own.
    raw = sqlite3.connect(tmp_path / "parley.db")
    raw.executemany("INSERT INTO conversations (id, model, created_at, updated_at) "
                    "VALUES (?, 'm', 0, 0)", [("zz12aaaa",), ("zz12bbbb",)])
    raw.commit()
    with pytest.raises(AmbiguousConversation, match="zz12aaaa, zz12bbbb"):
        store.resolve("zz12")
    assert store.resolve("zz12b") == "zz12bbbb"
    with pytest.raises(ConversationNotFound):
        store.resolve("qq")
    with pytest.raises(ConversationNotFound):
        store.resolve("")


def test_migrates_a_hand_made_version_0_database(tmp_path):
    path = tmp_path / "old.db"
    raw = sqlite3.connect(path)
    raw.execute("CREATE TABLE notes (body TEXT)")
    raw.execute("INSERT INTO notes VALUES ('keep me')")
    raw.commit()
    assert raw.execute("PRAGMA user_version").fetchone()[0] == 0
    raw.close()

    s = Store(path)
    cid = s.new_conversation(model="m")
    s.add_message(cid, "user", "hi")
    s.close()
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) >= 1
    assert raw.execute("SELECT body FROM notes").fetchall() == [("keep me",)]
    indexes = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert "messages_by_conversation" in indexes
    Store(path).close()  # reopening a current db runs nothing again (would fail: table exists)


def test_refuses_a_database_from_a_newer_parley(tmp_path):
    path = tmp_path / "new.db"
    raw = sqlite3.connect(path)
    raw.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    raw.close()
    with pytest.raises(CacheError, match="newer Parley"):
        Store(path)


def test_wal_mode_and_pragmas_are_on(store, tmp_path):
    conn = store._conn()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] > 0
    # journal_mode is persistent: a plain connection sees it too.
    assert sqlite3.connect(tmp_path / "parley.db").execute(
        "PRAGMA journal_mode").fetchone()[0] == "wal"


def test_writes_from_many_threads_all_land(store):
    cid = store.new_conversation(model="m")
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            own = store.new_conversation(model=f"m{n}")
            for i in range(25):
                store.add_message(cid, "user", f"{n}-{i}")
                store.add_message(own, "assistant", str(i))
        except BaseException as e:  # collected so the main thread can fail the test
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    contents = [m["content"] for m in store.messages(cid)]
    assert sorted(contents) == sorted(f"{n}-{i}" for n in range(8) for i in range(25))
    for n in range(8):  # each thread's own messages stayed in its order
        assert [c for c in contents if c.startswith(f"{n}-")] == [f"{n}-{i}" for i in range(25)]
    counts = sorted(c.message_count for c in store.list())
    assert counts == [25] * 8 + [200]


def test_a_writer_held_too_long_gives_a_one_line_busy_error(tmp_path, monkeypatch):
    monkeypatch.setattr("parley.store.BUSY_TIMEOUT_S", 0.2)
    s = Store(tmp_path / "parley.db")
    cid = s.new_conversation(model="m")
    other = sqlite3.connect(tmp_path / "parley.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process in the middle of a write
    with pytest.raises(CacheError, match="locked by another writer for 0.2s: try again"):
        s.add_message(cid, "user", "waits, then gives up")
    other.execute("ROLLBACK")
    s.add_message(cid, "user", "goes through once the lock is free")
    assert s.get(cid).message_count == 1
    s.close()


CHILD = """
import os, signal, sys
from pathlib import Path
from parley.store import Store
s = Store(Path(sys.argv[1]))
cid = s.new_conversation(model="child")
s.add_message(cid, "user", "written before the crash")
print(cid, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_another_process_sees_writes_and_sigkill_loses_nothing(store, tmp_path):
    path = tmp_path / "parley.db"
    mine = store.new_conversation(model="parent")
    store.add_message(mine, "user", "from the parent")
    proc = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True,
                          text=True, timeout=60, cwd=Path(__file__).parents[1])
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    child_id = proc.stdout.strip()
    # The parent's open Store sees the child's commit, and a fresh Store does too.
    assert store.messages(child_id) == [{"role": "user", "content": "written before the crash"}]
    fresh = Store(path)
    assert fresh.get(child_id).model == "child"
    assert fresh.messages(mine) == [{"role": "user", "content": "from the parent"}]
    fresh.close()


def test_unwritable_location_raises_cache_error_naming_the_fix(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("PARLEY_HOME", str(blocker / "home"))
    with pytest.raises(CacheError) as err:
        Store()
    message = str(err.value)
    assert "\n" not in message and str(blocker) in message and "PARLEY_HOME" in message
    # A directory where the db file should be: SQLite cannot open it.
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(CacheError, match="PARLEY_HOME"):
        Store(tmp_path / "dir.db")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through directory permissions")
def test_read_only_directory_raises_cache_error(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(CacheError, match="PARLEY_HOME"):
        Store(locked / "parley.db")


def test_corrupt_file_gives_one_line_error_and_is_left_untouched(tmp_path):
    path = tmp_path / "parley.db"
    junk = b"this is not sqlite at all\n" * 200
    path.write_bytes(junk)
    with pytest.raises(ParleyError) as err:
        Store(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    assert path.read_bytes() == junk
    assert sorted(p.name for p in tmp_path.iterdir()) == ["parley.db"]
