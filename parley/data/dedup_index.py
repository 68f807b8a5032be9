"""The duplicate indexes of one cleaning run, on disk: exact digests and MinHash LSH band keys in SQLite.

    index = DedupIndex(scratch_dir)      # a temporary database under scratch_dir (None: the system's temp dir)
    index.add_exact(digest)              # False when the digest was added before; True (and remembered) if new
    index.seen_band(keys)                # whether any band key was added before (keys[i] is band i's)
    index.add_bands(keys)                # remember a kept document's band keys
    index.close()                        # deletes the database (also done when the object is collected)

Why on disk: held in Python, the indexes cost ~100 bytes per kept document for exact digests and
~3 KB for datasketch's in-memory LSH, so they were the one thing in preparation that grew with the
corpus (1 GB of web text: +500 MB). Here they are B-trees in a temporary SQLite file whose page cache
is capped at `CACHE_MB`, so peak memory stays flat whatever the corpus; the file grows by ~20 bytes per
band key (9 bands at the default threshold: ~200 bytes per kept document). The database is scratch:
no journal, no fsync, one connection, and a commit every `COMMIT_EVERY` writes so that the dirty pages
held in memory stay bounded too.

The semantics are datasketch's `MinHashLSH.query`: a document is a candidate when any one band's key
equals the same band's key of an indexed document, with no Jaccard check after (`Cleaner` computes the
band keys exactly as its `MinHashLSH` would). The keys are looked up per document, so the decision for
each document sees every document kept before it: the same answers as the in-memory index, in one pass.

Limits: lookups of random keys in a B-tree larger than the cache go to the operating system's file
cache, and then to disk: fine for corpora of millions of documents; for billions deduplicate
beforehand with a distributed tool (datatrove's MinHash pipeline).
"""

from __future__ import annotations

import sqlite3
import struct
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from parley.errors import DataError

CACHE_MB = 16  # SQLite page cache: the whole of the indexes' memory, however many documents
COMMIT_EVERY = 20_000  # writes between commits: bounds the dirty pages a transaction holds
SCHEMA = """
CREATE TABLE exact (digest BLOB PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE band (key BLOB PRIMARY KEY) WITHOUT ROWID;  -- band number (2 bytes) + that band's hash
"""


class DedupIndex:
    """Exact digests and LSH band keys of the documents kept so far, in a temporary SQLite database."""

    def __init__(self, scratch: Path | None = None):
        # TemporaryDirectory removes itself on close() or, failing that, when collected or at exit.
        self._dir = tempfile.TemporaryDirectory(prefix="parley-dedup-", dir=scratch)
        self.path = Path(self._dir.name) / "dedup.sqlite"
        self._db = sqlite3.connect(self.path, isolation_level=None)  # transactions are begun and committed below
        self._writes = 0
        self._lookups: dict[int, str] = {}  # number of keys → its SELECT (statements are cached by their text)
        with self._errors():
            for pragma in ("journal_mode=OFF", "synchronous=OFF", "locking_mode=EXCLUSIVE", "temp_store=FILE",
                           f"cache_size={-CACHE_MB * 1024}"):
                self._db.execute(f"PRAGMA {pragma}")
            self._db.executescript(SCHEMA)
            self._db.execute("BEGIN")

    def add_exact(self, digest: bytes) -> bool:
        """Remember `digest`; False if it was already there."""
        with self._errors():
            added = self._db.execute("INSERT OR IGNORE INTO exact VALUES (?)", (digest,)).rowcount == 1
        self._wrote(added)
        return added

    def seen_band(self, keys: list[bytes]) -> bool:
        """Whether any of `keys` (band i's key at index i) was added before, in the same band."""
        sql = self._lookups.get(len(keys))
        if sql is None:
            sql = self._lookups[len(keys)] = f"SELECT 1 FROM band WHERE key IN ({','.join('?' * len(keys))}) LIMIT 1"
        with self._errors():
            return self._db.execute(sql, _banded(keys)).fetchone() is not None

    def add_bands(self, keys: list[bytes]) -> None:
        with self._errors():
            self._db.executemany("INSERT OR IGNORE INTO band VALUES (?)", [(k,) for k in _banded(keys)])
        self._wrote(len(keys))

    def close(self) -> None:
        """Delete the database; the index is empty and unusable after."""
        self._db.close()
        self._dir.cleanup()

    def _wrote(self, count: int) -> None:
        self._writes += count
        if self._writes >= COMMIT_EVERY:
            with self._errors():
                self._db.execute("COMMIT")
                self._db.execute("BEGIN")
            self._writes = 0

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """SQLite's errors (a full disk, most likely) as one DataError naming the file and a way out."""
        try:
            yield
        except sqlite3.Error as e:
            raise DataError(f"{self.path}: the duplicate index failed ({e}); free space in {self.path.parent.parent} "
                            "or turn deduplication off with --clean dedup=false --clean near_dup=false") from e


def _banded(keys: list[bytes]) -> list[bytes]:
    """Each key prefixed with its band number: the same hash in two bands is not a match."""
    return [struct.pack(">H", band) + key for band, key in enumerate(keys)]
