"""The conversation store's schema, as the migrations that build it (store.py runs them).

`MIGRATIONS` is a list of SQL scripts; `PRAGMA user_version` records how many have run, and opening an
older file runs the missing ones forward in one transaction. Never edit a shipped migration; append a
new one.
"""

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
    # 2: versions of regenerated (or edited) replies, and what people thought of replies. A message
    # row is the reply shown; `version` is which of its versions (1-based; NULL: it has only one).
    # Feedback keeps its own copy of the context, so a later edit, regeneration or deletion of the
    # message does not change what was judged.
    """
    ALTER TABLE messages ADD COLUMN version INTEGER;
    CREATE TABLE versions (
        id INTEGER PRIMARY KEY,
        message_id INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
        content TEXT NOT NULL,
        meta TEXT,  -- JSON object or NULL
        created_at REAL NOT NULL
    );
    CREATE INDEX versions_by_message ON versions(message_id, id);
    CREATE TABLE feedback (
        id INTEGER PRIMARY KEY,
        conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
        message_id INTEGER,  -- the reply judged (no foreign key: it may be replaced later)
        kind TEXT NOT NULL,  -- good, bad (thumbs), edit (chosen: the edit), pick (chosen: the version picked)
        context TEXT NOT NULL,  -- JSON list of the messages before the reply, system prompt first
        chosen TEXT,  -- the better reply (NULL for a thumbs down)
        rejected TEXT,  -- the worse reply (NULL for a thumbs up)
        note TEXT,  -- why, in the user's words
        model TEXT NOT NULL,  -- the conversation's model spec when the feedback was given
        created_at REAL NOT NULL
    );
    CREATE INDEX feedback_by_time ON feedback(created_at);
    """,
]
