"""The duplicate indexes on disk (dedup_index.py, used by cleaning.Cleaner): same answers as datasketch's
in-memory LSH, flat memory, a database that is deleted, and a full disk named in one line."""

from __future__ import annotations

import hashlib
import random
import tracemalloc

import pytest

from parley.data.cleaning import SHINGLE, CleanConfig, Cleaner, _ngrams, _words
from parley.data.dedup_index import DedupIndex
from parley.errors import DataError

DUPLICATES_ONLY = dict(min_chars=0, min_words=0, max_symbol_ratio=1, max_digit_ratio=1, max_dup_line_ratio=1,
                       max_dup_ngram_ratio=1)


def corpus(n: int, seed: int = 0) -> list[str]:
    """Random documents, half of them edited copies of earlier ones (a few words changed, some cut in
    half, some unchanged): similarities from 1 down to ~0.3, so every threshold has hits and misses."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(2000)]
    docs: list[str] = []
    for _ in range(n):
        if docs and rng.random() < 0.5:
            copy = rng.choice(docs).split()
            for _ in range(rng.randint(0, len(copy) // rng.choice([3, 10, 30]))):
                copy[rng.randrange(len(copy))] = rng.choice(words)
            docs.append(" ".join(copy[: len(copy) // 2] if rng.random() < 0.1 else copy))
        else:
            docs.append(" ".join(rng.choices(words, k=rng.randint(3, 100))))
    return docs


def in_memory_reasons(docs: list[str], threshold: float) -> list[str | None]:
    """What the cleaner decided when its indexes were a Python set and datasketch's in-memory MinHashLSH."""
    from datasketch import MinHash, MinHashLSH

    template = MinHash(num_perm=128, seed=1)
    lsh = MinHashLSH(threshold=threshold, num_perm=128, hashfunc=lambda d: hashlib.blake2b(d, digest_size=8).digest())
    seen, reasons = set(), []
    for i, text in enumerate(docs):
        digest = hashlib.blake2b(text.strip().encode(), digest_size=16).digest()
        if digest in seen:
            reasons.append("duplicate")
            continue
        seen.add(digest)
        shingles = {" ".join(g).encode() for g in _ngrams(_words(text.lower()), SHINGLE)}
        if not shingles:
            reasons.append(None)
            continue
        signature = MinHash(num_perm=128, permutations=template.permutations, scheme=template.scheme)
        signature.update_batch(shingles)
        if lsh.query(signature):
            reasons.append("near_duplicate")
            continue
        lsh.insert(i, signature)
        reasons.append(None)
    return reasons


@pytest.mark.parametrize("threshold", [0.5, 0.8])  # 0.5 and 0.8 make datasketch choose different bands
def test_on_disk_indexes_drop_exactly_what_datasketchs_in_memory_lsh_drops(tmp_path, threshold):
    docs = corpus(600)
    expected = in_memory_reasons(docs, threshold)
    assert expected.count("near_duplicate") > 25 and expected.count("duplicate") > 25  # the corpus tests both
    with Cleaner(CleanConfig(**DUPLICATES_ONLY, near_dup_threshold=threshold), scratch=tmp_path) as cleaner:
        assert [cleaner.reason(d) for d in docs] == expected
    assert cleaner.counts == {r: expected.count(r) for r in ("duplicate", "near_duplicate")}


def test_python_memory_stays_flat_as_documents_are_indexed(tmp_path):
    docs = corpus(1600, seed=1)
    with Cleaner(CleanConfig(**DUPLICATES_ONLY), scratch=tmp_path) as cleaner:
        for text in docs[:100]:
            cleaner.reason(text)
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            kept = sum(cleaner.reason(text) is None for text in docs[100:])
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
    assert kept > 700
    # datasketch's in-memory index held ~3 KB of Python objects per kept document (>2 MB here)
    assert grown < 100_000, f"{grown} bytes for {kept} kept documents"


def test_the_database_sits_in_scratch_and_is_deleted_on_close_and_on_interrupt(tmp_path):
    cleaner = Cleaner(CleanConfig(), scratch=tmp_path)
    assert not list(tmp_path.iterdir())  # nothing until a document reaches the duplicate checks
    text = "A document long enough to pass every quality rule of the cleaner, and then some more words."
    assert cleaner.reason(text) is None and cleaner.reason(text) == "duplicate"
    [database] = tmp_path.glob("parley-dedup-*/dedup.sqlite")
    cleaner.close()
    assert not database.exists() and not list(tmp_path.iterdir())
    with pytest.raises(KeyboardInterrupt):
        with Cleaner(CleanConfig(), scratch=tmp_path) as cleaner:
            cleaner.reason(text)
            assert list(tmp_path.glob("parley-dedup-*/dedup.sqlite"))
            raise KeyboardInterrupt
    assert not list(tmp_path.iterdir())


def test_a_full_disk_is_one_line_naming_the_database_and_the_way_out(tmp_path):
    index = DedupIndex(tmp_path)
    try:
        index._db.execute("PRAGMA max_page_count=4")  # what SQLite reports when the disk fills up
        with pytest.raises(DataError, match=r"dedup.sqlite: the duplicate index failed \(database or disk is full\); "
                                            r"free space in .* or turn deduplication off with --clean dedup=false") as e:
            for i in range(10_000):
                index.add_bands([i.to_bytes(8, "big")] * 9)
        assert "\n" not in str(e.value)
    finally:
        index.close()
