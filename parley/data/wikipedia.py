"""Wikipedia (MediaWiki) XML dumps → one plain-text document per article, streamed.

    text:enwiki-latest-pages-articles.xml.bz2        (or .xml; detected from the extension without text:)

The dump is read with `xml.etree.ElementTree.iterparse` straight from the (bz2-decompressed) stream and
each <page> is cleared once read, so memory stays flat however large the dump. Kept: pages in the main
(article) namespace, `<ns>0</ns>`, that are not redirects. The wikitext is turned into plain text by
mwparserfromhell's `strip_code` (templates and markup go; links keep their text), after footnotes,
tables, galleries and formulas are removed, and links to files, images, categories and other-language
wikis, so their captions and names do not end up as stray words. Each article becomes one document:
its title, a blank line, and its text (`split=paragraph` gives one document per paragraph instead).

Limits: template expansions (infobox values, {{convert}} figures) are dropped, not rendered — that
would need the wiki's templates. A malformed dump stops with `file:line: not valid XML`.
"""

from __future__ import annotations

import bz2
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from xml.etree import ElementTree

from parley.errors import DataError

ARTICLE_NS = "0"
# Link targets that are not prose: media, categories, and (two or three letter) interlanguage prefixes.
_NON_TEXT_LINK = re.compile(r"^\s*:?\s*(file|image|media|category|[a-z]{2,3}(-[a-z]+)?)\s*:", re.IGNORECASE)
# Tags whose content is not running text: footnotes, tables, galleries, formulas.
DROPPED_TAGS = {"ref", "references", "table", "gallery", "math", "chem", "timeline", "imagemap", "score"}
_REDIRECT = re.compile(r"^\s*#redirect", re.IGNORECASE)


def is_dump(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(".xml") or name.endswith(".xml.bz2")


def articles(path: Path, skipped: Counter, progress=lambda done, total: None) -> Iterator[tuple[str, str]]:
    """(title, plain text) of each article; other namespaces and redirects counted in `skipped`."""
    try:
        raw = open(path, "rb")
    except OSError as e:
        raise DataError(f"{path}: cannot read it ({e.strerror})") from None
    total = path.stat().st_size
    with raw:
        stream = bz2.BZ2File(raw) if path.name.lower().endswith(".bz2") else raw
        try:
            yield from _pages(stream, path, skipped, lambda: progress(raw.tell(), total))
        except ElementTree.ParseError as e:
            line, _ = e.position
            raise DataError(f"{path}:{line}: not valid XML ({_first_words(e)}); is it a complete MediaWiki dump?") from None
        except (OSError, EOFError) as e:  # a corrupt or truncated .bz2
            raise DataError(f"{path}: cannot decompress it ({e}); download it again") from None


def _pages(stream, path: Path, skipped: Counter, advance) -> Iterator[tuple[str, str]]:
    events = ElementTree.iterparse(stream, events=("start", "end"))
    _, root = next(events)
    if _local(root.tag) != "mediawiki":
        raise DataError(f"{path}:1: not a MediaWiki XML dump (the root element is <{_local(root.tag)}>, not <mediawiki>)")
    for event, element in events:
        if event != "end" or _local(element.tag) != "page":
            continue
        fields = {_local(child.tag): child for child in element}
        title = (fields["title"].text or "") if "title" in fields else ""
        ns = (fields["ns"].text or "").strip() if "ns" in fields else ARTICLE_NS
        revision = fields.get("revision")
        node = next((c for c in revision if _local(c.tag) == "text"), None) if revision is not None else None
        wikitext = (node.text or "") if node is not None else ""
        root.clear()  # drop the pages read so far: constant memory
        advance()
        if ns != ARTICLE_NS:
            skipped["not_article"] += 1
        elif "redirect" in fields or _REDIRECT.match(wikitext):
            skipped["redirect"] += 1
        else:
            yield title, plain_text(wikitext)


def plain_text(wikitext: str) -> str:
    """Readable text of an article's wikitext (see the module docstring for what is dropped)."""
    import mwparserfromhell

    code = mwparserfromhell.parse(wikitext)
    doomed = [tag for tag in code.filter_tags(recursive=True) if str(tag.tag).strip().lower() in DROPPED_TAGS]
    doomed += [link for link in code.filter_wikilinks(recursive=True) if _NON_TEXT_LINK.match(str(link.title))]
    for node in doomed:
        try:
            code.remove(node)
        except ValueError:  # already gone with an enclosing node
            pass
    text = code.strip_code(normalize=True, collapse=True)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(line.strip() for line in text.splitlines())).strip()


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _first_words(error: Exception) -> str:
    return str(error).split(":")[0]
