"""`text:` sources: prose files, directories, web-text JSONL / Parquet, Wikipedia dumps, hf: datasets, URLs."""

from __future__ import annotations

import bz2
import gzip
import http.server
import threading
from collections import Counter
from functools import partial

import pytest

from parley.data.cleaning import CleanConfig, Cleaner
from parley.data.records import Bad
from parley.data.sources import parse
from parley.errors import ConfigError, DataError

from .conftest import write_jsonl

BOOK = "It was the best of times, it was the worst of times.\n\nIt was the age of wisdom, it was the age of foolishness.\n"
DUMP = """<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.11/" version="0.11">
  <siteinfo><sitename>Wikipedia</sitename></siteinfo>
  <page>
    <title>Alan Turing</title><ns>0</ns><id>1</id>
    <revision><id>5</id><text xml:space="preserve">'''Alan Turing''' was an [[England|English]] mathematician.{{Infobox person|name=x}}&lt;ref&gt;A book&lt;/ref&gt;
[[File:Turing.jpg|thumb|Turing aged 16]]
== Early life ==
He was born in [[London]] in 1912.[[Category:Mathematicians]] [[fr:Alan Turing]]</text></revision>
  </page>
  <page>
    <title>Turing</title><ns>0</ns><id>2</id><redirect title="Alan Turing" />
    <revision><text>#REDIRECT [[Alan Turing]]</text></revision>
  </page>
  <page>
    <title>Talk:Alan Turing</title><ns>1</ns><id>3</id>
    <revision><text>A talk page is not an article.</text></revision>
  </page>
</mediawiki>
"""


def read(spec, cleaner=None):
    source = parse(spec)
    source.cleaner = cleaner
    items = list(source.read())
    return items, dict(source.skipped)


def texts(items):
    return [r.messages[0]["content"] for r in items]


def test_txt_file_is_one_document_or_paragraphs_and_persona_chat_txt_stays_chat(tmp_path):
    book = tmp_path / "book.txt"
    book.write_text(BOOK, encoding="utf-8")
    items, _ = read(str(book))
    assert texts(items) == [BOOK] and items[0].kind == "text" and items[0].where == str(book)
    items, _ = read(f"text:{book},split=paragraph")
    assert texts(items) == [BOOK.split("\n\n")[0], BOOK.split("\n\n")[1].rstrip()]
    assert [r.line for r in items] == [1, 3]
    persona = tmp_path / "persona.txt"
    persona.write_text("1 your persona: i like cats.\n2 hi there\thello , i like cats .\n", encoding="utf-8")
    items, _ = read(str(persona))
    assert [r.kind for r in items] == ["chat"] and items[0].messages[-1]["content"] == "hello , i like cats ."
    with pytest.raises(ConfigError, match="split='sentence'"):
        read(f"text:{book},split=sentence")


def test_directory_of_prose_is_detected_and_non_utf8_files_are_counted_or_named(tmp_path):
    root = tmp_path / "notes"
    (root / "sub").mkdir(parents=True)
    (root / "a.md").write_text("# Title\n\nSome notes in markdown.\n", encoding="utf-8")
    (root / "sub" / "b.rst").write_text("Heading\n=======\n\nText in rst.\n", encoding="utf-8")
    (root / "sub" / "c.txt").write_bytes(b"line one\ncaf\xe9 au lait\n")
    (root / "image.png").write_bytes(b"\x89PNG")
    items, skipped = read(str(root))  # no code in it: prose
    assert [r.source for r in items] == [str(root / "a.md"), str(root / "sub" / "b.rst")]
    assert skipped == {"not_utf8": 1}
    with pytest.raises(DataError, match=r"sub/c.txt:2: not UTF-8 text \(byte 0xe9\)"):
        with Cleaner(CleanConfig(not_utf8=False, min_chars=0, min_words=0), scratch=tmp_path) as cleaner:
            read(str(root), cleaner)
    (root / "tool.py").write_text("print('hi')\n", encoding="utf-8")
    items, _ = read(str(root))  # code beside the prose: a directory is code unless text: says otherwise
    assert [r.meta.get("lang") for r in items] == ["markdown", "python", "rst"]
    assert len(read(f"text:{root}")[0]) == 2


def test_a_file_or_web_text_line_named_directly_with_bad_utf8_stops_at_its_line(tmp_path):
    bad = tmp_path / "book.txt"
    bad.write_bytes(b"fine\nfine too\n\xff broken\n")
    with pytest.raises(DataError, match=r"book.txt:3: not UTF-8 text \(byte 0xff\)") as e:
        read(str(bad))
    assert "\n" not in str(e.value)
    # Web text: a line that is not UTF-8 means the file is in another encoding (a latin-1 export), so
    # skipping lines would quietly drop every document with an accent: stop and name it, as code JSONL does.
    rows = b'{"text": "A first page about gardens and boats."}\n{"text": "caf\xe9 au lait, a page about coffee."}\n'
    (tmp_path / "web.jsonl").write_bytes(rows)
    (tmp_path / "web.jsonl.gz").write_bytes(gzip.compress(rows))
    for name in ("web.jsonl", "web.jsonl.gz"):
        with pytest.raises(DataError, match=rf"{name}:2: not UTF-8 text \(byte 0xe9\); convert it first, e.g. `iconv"):
            with Cleaner(CleanConfig(not_utf8=True), scratch=tmp_path) as cleaner:
                read(f"text:{tmp_path / name}", cleaner)


def test_web_text_jsonl_gz_and_parquet_with_detected_or_named_text_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"text": "A page about gardens.", "url": "https://a"}, {"text": "A page about boats.", "url": "https://b"}]
    c4 = write_jsonl(tmp_path / "c4.jsonl", rows)
    items, _ = read(str(c4))  # no text: the keys say prose
    assert texts(items) == ["A page about gardens.", "A page about boats."] and items[1].where == f"{c4}:2"
    packed = tmp_path / "c4-train.00000.json.gz"
    packed.write_bytes(gzip.compress(c4.read_bytes()))
    assert texts(read(str(packed))[0]) == texts(items)
    assert texts(read(f"text:{c4},text=url")[0]) == ["https://a", "https://b"]
    redpajama = write_jsonl(tmp_path / "rp.jsonl", [{"raw_content": "Raw web text.", "meta": {}}, {"meta": {}}])
    items, _ = read(str(redpajama))
    assert texts(items[:1]) == ["Raw web text."] and str(items[1]) == f"{redpajama}:2: expected a 'raw_content' string (the text column)"
    fineweb = tmp_path / "fineweb.parquet"
    pq.write_table(pa.table({"id": ["x", "y"], "content": ["First parquet document.", "Second one."]}), fineweb)
    items, _ = read(str(fineweb))
    assert texts(items) == ["First parquet document.", "Second one."] and [r.line for r in items] == [1, 2]
    with pytest.raises(DataError, match=r"no body column for the text \(columns: text, url\); name it with ,text=COLUMN"):
        read(f"text:{c4},text=body")


@pytest.mark.parametrize("compress", [False, True])
def test_wikipedia_dump_streams_articles_as_plain_text(tmp_path, compress):
    dump = tmp_path / ("wiki.xml.bz2" if compress else "wiki.xml")
    dump.write_bytes(bz2.compress(DUMP.encode()) if compress else DUMP.encode())
    items, skipped = read(str(dump))
    assert skipped == {"redirect": 1, "not_article": 1}
    assert texts(items) == ["Alan Turing\n\nAlan Turing was an English mathematician.\n\nEarly life\nHe was born in London in 1912."]
    assert items[0].meta["title"] == "Alan Turing"
    items, _ = read(f"text:{dump},split=paragraph")
    assert texts(items)[1] == "Alan Turing was an English mathematician."


def test_broken_wikipedia_dump_names_its_line(tmp_path):
    dump = tmp_path / "cut.xml"
    dump.write_text(DUMP[:400], encoding="utf-8")
    with pytest.raises(DataError, match=r"cut.xml:\d+: not valid XML"):
        read(str(dump))
    other = tmp_path / "feed.xml"
    other.write_text("<rss><channel/></rss>", encoding="utf-8")
    with pytest.raises(DataError, match="feed.xml:1: not a MediaWiki XML dump"):
        read(str(other))


def test_hf_dataset_with_a_text_column(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"text": ["One saved document.", "Two saved documents."]}).save_to_disk(str(tmp_path / "saved"))
    items, _ = read(f"hf:{tmp_path / 'saved'}")
    assert texts(items) == ["One saved document.", "Two saved documents."] and items[0].where == f"hf:{tmp_path / 'saved'}:1"
    assert texts(read(f"text:hf:{tmp_path / 'saved'}")[0]) == texts(items)


def test_hf_dataset_directory_is_streamed_with_no_arrow_copy_in_the_cache(tmp_path, monkeypatch):
    import datasets

    cache = tmp_path / "cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)  # where load_dataset would copy it to Arrow
    folder = tmp_path / "web" / "data"
    folder.mkdir(parents=True)
    write_jsonl(folder / "train-00000.jsonl", [{"text": f"Streamed page number {i} about the sea."} for i in range(3)])
    items, _ = read(f"text:hf:{tmp_path / 'web'}")
    assert texts(items) == [f"Streamed page number {i} about the sea." for i in range(3)]
    assert items[2].where == f"hf:{tmp_path / 'web'}:3"
    assert not list(cache.rglob("*.arrow"))  # read in place, as it streams
    with open(folder / "train-00000.jsonl", "a", encoding="utf-8") as f:
        f.write('{"text": \n')
    with pytest.raises(DataError, match=rf"^hf:{tmp_path / 'web'}: reading failed after row \d+ \(JSON parse error"):
        read(f"text:hf:{tmp_path / 'web'}")


def test_url_is_downloaded_then_read_by_its_extension(tmp_path):
    (tmp_path / "book.txt").write_text(BOOK, encoding="utf-8")
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        assert texts(read(f"text:{base}/book.txt")[0]) == [BOOK]
        with pytest.raises(DataError, match=r"/missing.txt: cannot download it \(HTTP 404"):
            read(f"text:{base}/missing.txt")
    finally:
        server.shutdown()


def test_cleaning_counts_each_rule_by_reason(tmp_path):
    prose = "The quick brown fox jumps over the lazy dog near the quiet river bank today."
    docs = [
        prose,
        prose,  # duplicate
        prose.replace("today", "tonight"),  # near_duplicate
        "Too short.",  # too_short
        "one two three four five six",  # too_few_words (min_words 8 below)
        "Prices: 1234 5678 9012 3456 7890 1234 5678 9012 and more",  # digits
        "#### **** ==== |||| <<<< >>>> {{{{ }}}} ~~~~ some words here and there are ok fine",  # symbols
        "same line again\n" * 4 + "and one different line to finish it off",  # repeated_lines
        "buy cheap shoes online now " * 6,  # repeated_ngrams
        "A different sentence about mountains, lakes and the long walk home at dusk.",
    ]
    path = write_jsonl(tmp_path / "web.jsonl", [{"text": d} for d in docs])
    with Cleaner(CleanConfig(min_chars=20, min_words=8, near_dup_threshold=0.5), scratch=tmp_path) as cleaner:
        items, skipped = read(str(path), cleaner)
        assert texts(items) == [docs[0], docs[-1]]
        assert skipped == {"duplicate": 1, "near_duplicate": 1, "too_short": 1, "too_few_words": 1, "digits": 1,
                           "symbols": 1, "repeated_lines": 1, "repeated_ngrams": 1}
        assert cleaner.counts == Counter(skipped)
        with pytest.raises(DataError, match=r"no records found \(skipped: too_few_words 1\)"):
            read(str(write_jsonl(tmp_path / "one.jsonl", [{"text": "just four words here"}])), cleaner)
    off = Cleaner(CleanConfig(min_chars=0, min_words=0, max_symbol_ratio=1, max_digit_ratio=1, max_dup_line_ratio=1,
                              max_dup_ngram_ratio=1, dedup=False, near_dup=False))
    assert len(read(str(path), off)[0]) == len(docs) and not list(tmp_path.glob("parley-dedup-*"))  # none made
    assert not [i for i in items if isinstance(i, Bad)]


def test_prepare_cleans_learns_every_token_and_packs_documents_with_eos_between(tmp_path, chat_tokenizer):
    import datasets
    from rich.console import Console

    from parley.data.prepare import PrepareConfig, prepare
    from parley.data.tokenize import IGNORE
    from parley.data.view import print_stats

    notes = tmp_path / "notes"
    notes.mkdir()
    for i, word in enumerate(["apples", "rivers", "castles", "engines", "gardens", "letters"]):
        (notes / f"{i}.txt").write_text(f"A short note number {i} about {word}, written for the tests here.\n", encoding="utf-8")
    (notes / "copy.txt").write_text((notes / "0.txt").read_text(), encoding="utf-8")
    (notes / "tiny.txt").write_text("Too short.\n", encoding="utf-8")
    out = tmp_path / "out"
    config = PrepareConfig(pack=True, max_len=64, val_ratio=0, clean=CleanConfig(near_dup=False))
    indexes = []  # the duplicate index's database while the source is read: beside the output, not in /tmp
    manifest = prepare([f"text:{notes}"], out, chat_tokenizer, chat_tokenizer.chat_template, config,
                       progress=lambda line: indexes.extend(tmp_path.glob(".tmp-out-*/parley-dedup-*/dedup.sqlite")))
    assert manifest.sources[0]["records"] == 6 and manifest.sources[0]["skipped"] == {"duplicate": 1, "too_short": 1}
    assert indexes and not any(p.exists() for p in indexes) and not list(out.glob("parley-dedup-*"))
    assert manifest.settings["clean"]["min_words"] == 5
    eos = chat_tokenizer.eos_token_id
    rows = datasets.load_from_disk(str(out))["train"]
    assert len(rows) < 6  # packed
    for row in rows:
        ids, labels, positions = row["input_ids"], row["labels"], row["position_ids"]
        starts = [i for i, p in enumerate(positions) if p == 0]
        assert starts[0] == 0 and len(ids) <= 64
        for start in starts[1:]:
            assert ids[start - 1] == eos  # each document ends with the end-of-sequence token
            assert labels[start] == IGNORE  # the next one's first token is not predicted across the boundary
        inside = [i for i in range(len(ids)) if i not in starts]
        assert all(labels[i] == ids[i] for i in inside)  # raw text: every other token carries loss
    console = Console(record=True, width=300)
    print_stats(out, console=console)
    output = console.export_text()
    assert "2 left out (duplicate 1, too_short 1)" in output
    assert "cleaning (text: sources): min_chars 20, min_words 5," in output and "dedup" in output


def test_clean_overrides_from_the_command_line_are_typed_and_name_the_key():
    from parley.data.cleaning import with_overrides

    config = with_overrides(CleanConfig(), ["min_words=20", "near_dup=false", "max_digit_ratio=0.5"])
    assert (config.min_words, config.near_dup, config.max_digit_ratio) == (20, False, 0.5)
    assert with_overrides(CleanConfig(), ["off"]).describe() == "skip not_utf8"
    with pytest.raises(ConfigError, match="--clean 'min_word=3': expected off or KEY=VALUE with KEY one of min_chars"):
        with_overrides(CleanConfig(), ["min_word=3"])
    with pytest.raises(ConfigError, match="near_dup must be true or false"):
        with_overrides(CleanConfig(), ["near_dup=maybe"])
    with pytest.raises(ConfigError, match=r"clean.max_symbol_ratio must be in \[0, 1\]"):
        with_overrides(CleanConfig(), ["max_symbol_ratio=2"])


def test_progress_line_shows_bytes_documents_rate_and_eta():
    from parley.data.prepare import progress_line

    assert progress_line("text:web.jsonl", 3456, 78, 25_000_000, 100_000_000, 10.0) == (
        "text:web.jsonl: 25.0/100.0 MB (25%), 3,456 documents (78 skipped), 2.5 MB/s, ETA 0:00:30")
    assert progress_line("chatterbot", 12, 0, 0, 0, 3.0) == "chatterbot: 12 documents"  # bytes unknown: counts only
