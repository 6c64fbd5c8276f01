"""A streaming rewriter of URLs in HTML: bytes in, bytes out, bounded memory.

Why a hand-written byte scanner and not a library tokenizer (html5lib, lxml, selectolax/lexbor
were measured, see docs/NOTES.md): the libraries decode the page to text and give tokens or a
tree, not the byte offsets of attribute values, so re-serialising changes bytes the page never
asked us to change (quoting, entity forms, whitespace, case); html5lib is also pure Python and
slower than this scanner, and lexbor/lxml need the whole page (no bounded-memory streaming).
This scanner keeps every byte outside a rewritten URL as it came, works on any ASCII-compatible
charset (UTF-8, Latin-1, Windows-125x, Shift_JIS: the bytes it looks for, < > = quotes and
whitespace, never occur inside their multi-byte characters) and holds at most one unfinished tag
(`max_tag` bytes) between chunks. UTF-16 pages are the caller's to pass through.

It follows the HTML tokenizer where that decides which bytes are URLs: comments, CDATA,
<!...> and <?...> declarations, end tags, raw-text elements (script, style, textarea, title, ...),
attribute names in any case, quoted and unquoted values, a tag split across any chunks.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable

# A URL (entities decoded) in, its replacement or None out.
Mapper = Callable[[str], "str | None"]

TEXT, COMMENT, CDATA, BOGUS, RAWTEXT, PLAINTEXT = range(6)
RAW_ELEMENTS = frozenset({b"script", b"style", b"textarea", b"title", b"xmp", b"iframe",
                          b"noembed", b"noframes"})
URL_ATTRS = frozenset({b"src", b"href", b"poster", b"background", b"data"})
SRCSET_ATTRS = frozenset({b"srcset", b"imagesrcset"})

_LT = re.compile(rb"<")
_SIMPLE_TAG = re.compile(rb"<[a-zA-Z][^>\"']*>")  # a tag with no quoted value: ends at its >
_MAYBE_URL = re.compile(rb"(?:src|href|poster|style|background|data|srcset)\s*=", re.I)
_TAG_NAME = re.compile(rb"[^\s/>]*")
_BETWEEN = re.compile(rb"[\s/]*")
_ATTR_NAME = re.compile(rb"=?[^\s/>=]*")
_EQUALS = re.compile(rb"\s*=\s*")
_UNQUOTED = re.compile(rb"[^\s>]*")
_CSS_URL = re.compile(
    rb"url\(\s*(?:\"([^\"]*)\"|'([^']*)'|&quot;(.*?)&quot;|([^)\s\"']*))\s*\)", re.I)
_SRCSET_URL = re.compile(rb"[\s,]*([^\s,][^\s]*)")
_ENDS = {COMMENT: b"-->", CDATA: b"]]>"}

INCOMPLETE = -1


class HtmlRewriter:
    __slots__ = ("buf", "mapper", "max_tag", "mode", "raw_end", "rewritten", "tags_too_long")

    def __init__(self, mapper: Mapper, max_tag: int = 64 * 1024) -> None:
        self.mapper = mapper
        self.max_tag = max_tag
        self.buf = b""
        self.mode = TEXT
        self.raw_end: re.Pattern[bytes] | None = None  # </name of the raw-text element we are in
        self.rewritten = 0  # URLs replaced
        self.tags_too_long = 0  # tags longer than max_tag, passed through untouched

    def feed(self, chunk: bytes) -> bytes:
        data = self.buf + chunk if self.buf else chunk
        out: list[bytes] = []
        pos = self._scan(data, out)
        self.buf = data[pos:]
        return b"".join(out)

    def finish(self) -> bytes:
        """The end of the page: whatever was held (an unfinished tag) leaves as it came."""
        rest, self.buf = self.buf, b""
        return rest

    # --- the modes ------------------------------------------------------------------------
    def _scan(self, data: bytes, out: list[bytes]) -> int:
        pos, n = 0, len(data)
        while pos < n:
            mode = self.mode
            if mode == TEXT:
                m = _LT.search(data, pos)
                if m is None:
                    out.append(data[pos:])
                    return n
                lt = m.start()
                if lt > pos:
                    out.append(data[pos:lt])
                end = self._markup(data, lt, out)
                if end == INCOMPLETE:
                    return lt
                pos = end
            elif mode == PLAINTEXT:
                out.append(data[pos:])
                return n
            elif mode == BOGUS:
                gt = data.find(b">", pos)
                if gt < 0:
                    out.append(data[pos:])
                    return n
                out.append(data[pos:gt + 1])
                pos = gt + 1
                self.mode = TEXT
            else:
                pos, more = self._until_end(data, pos, out)
                if more:
                    return pos
        return pos

    def _until_end(self, data: bytes, pos: int, out: list[bytes]) -> tuple[int, bool]:
        """Comment, CDATA or raw text up to its terminator: where the scan goes on, and whether
        it needs more data first (then a possible partial terminator is held back)."""
        if self.mode == RAWTEXT:
            assert self.raw_end is not None
            m = self.raw_end.search(data, pos)
            hold = 16  # longer than any </name and the byte after it
            if m is not None:
                out.append(data[pos:m.start()])
                self.mode = BOGUS  # the end tag itself, to its >
                return m.start(), False
        else:
            end = _ENDS[self.mode]
            i = data.find(end, pos)
            hold = len(end) - 1
            if i >= 0:
                out.append(data[pos:i + len(end)])
                self.mode = TEXT
                return i + len(end), False
        keep = max(pos, len(data) - hold)
        out.append(data[pos:keep])
        return keep, True

    def _markup(self, data: bytes, lt: int, out: list[bytes]) -> int:
        """What starts at `<`: its end (after emitting it), or INCOMPLETE."""
        n = len(data)
        head = data[lt:lt + 9]
        if len(head) < 9 and (head in (b"<", b"</") or b"<!--".startswith(head)
                              or b"<![CDATA[".startswith(head)):
            return INCOMPLETE  # which markup this is depends on bytes still to come
        c = data[lt + 1] if lt + 1 < n else 0
        if data.startswith(b"<!--", lt):
            out.append(b"<!--")
            self.mode = COMMENT
            return lt + 4
        if data.startswith(b"<![CDATA[", lt):
            out.append(b"<![CDATA[")
            self.mode = CDATA
            return lt + 9
        if c in (0x21, 0x3F) or (c == 0x2F and lt + 2 < n and _is_alpha(data[lt + 2])):
            out.append(data[lt:lt + 2])  # <! <? </x: to the next >
            self.mode = BOGUS
            return lt + 2
        if not _is_alpha(c):
            out.append(b"<")  # text, as the tokenizer reads it
            return lt + 1
        return self._start_tag(data, lt, out)

    def _start_tag(self, data: bytes, lt: int, out: list[bytes]) -> int:
        m = _SIMPLE_TAG.match(data, lt)
        if m is not None and not _MAYBE_URL.search(data, lt, m.end()):
            end = m.end()
            out.append(data[lt:end])
            name = data[lt + 1:_end_of(_TAG_NAME, data, lt + 1)].lower()
        else:
            parsed = _parse_tag(data, lt)
            if parsed is None:
                if len(data) - lt > self.max_tag:
                    self.tags_too_long += 1
                    out.append(data[lt:])
                    self.mode = BOGUS
                    return len(data)
                return INCOMPLETE
            end, name, attrs = parsed
            self._emit_tag(data, lt, end, attrs, out)
        if name in RAW_ELEMENTS:
            self.mode = RAWTEXT
            self.raw_end = re.compile(rb"</" + re.escape(name) + rb"(?=[\s/>])", re.I)
        elif name == b"plaintext":
            self.mode = PLAINTEXT
        return end

    def _emit_tag(self, data: bytes, lt: int, end: int,
                  attrs: list[tuple[bytes, int, int, int]], out: list[bytes]) -> None:
        pos = lt
        for name, vs, ve, quote in attrs:
            if name in URL_ATTRS:
                spans = [_trimmed(data, vs, ve)]
            elif name in SRCSET_ATTRS:
                spans = [(m.start(1), _srcset_end(data, m.end(1)))
                         for m in _SRCSET_URL.finditer(data, vs, ve)]
            elif name == b"style":
                spans = [(m.start(g), m.end(g)) for m in _CSS_URL.finditer(data, vs, ve)
                         for g in (1, 2, 3, 4) if m.start(g) >= 0][:64]
            else:
                continue
            for s, e in spans:
                new = self._map(data[s:e], quote)
                if new is not None:
                    out.append(data[pos:s])
                    out.append(new)
                    pos = e
        out.append(data[pos:end])

    def _map(self, raw: bytes, quote: int) -> bytes | None:
        if not raw:
            return None
        text = raw.decode("latin-1")
        url = html.unescape(text) if "&" in text else text
        new = self.mapper(url)
        if new is None:
            return None
        self.rewritten += 1
        out = new.replace("&", "&amp;")
        if quote == 0x22:
            out = out.replace('"', "&quot;")
        elif quote == 0x27:
            out = out.replace("'", "&#39;")
        try:
            return out.encode("latin-1")  # the bytes of the page's own charset, as they came
        except UnicodeEncodeError:
            return out.encode("ascii", "xmlcharrefreplace")  # from an entity: one again


def _end_of(pattern: re.Pattern[bytes], data: bytes, pos: int) -> int:
    """The end of a pattern that matches the empty string too (so always matches)."""
    m = pattern.match(data, pos)
    return m.end() if m is not None else pos


def _is_alpha(c: int) -> bool:
    return 0x41 <= c <= 0x5A or 0x61 <= c <= 0x7A


def _trimmed(data: bytes, s: int, e: int) -> tuple[int, int]:
    while s < e and data[s] in b" \t\n\r\f":
        s += 1
    while e > s and data[e - 1] in b" \t\n\r\f":
        e -= 1
    return s, e


def _srcset_end(data: bytes, e: int) -> int:
    """A srcset URL's trailing commas are not part of it."""
    while data[e - 1] == 0x2C:
        e -= 1
    return e


def _parse_tag(data: bytes, lt: int) -> tuple[int, bytes, list[tuple[bytes, int, int, int]]] | None:
    """A start tag from `<`: its end, lower-cased name and attributes (name, value start, value
    end, quote byte or 0; value start -1 without a value); None while the tag is unfinished."""
    n = len(data)
    i = _end_of(_TAG_NAME, data, lt + 1)
    name = data[lt + 1:i].lower()
    attrs: list[tuple[bytes, int, int, int]] = []
    while True:
        i = _end_of(_BETWEEN, data, i)
        if i >= n:
            return None
        if data[i] == 0x3E:
            return i + 1, name, attrs
        j = _end_of(_ATTR_NAME, data, i)
        aname = data[i:j].lower()
        if j >= n:
            return None
        m = _EQUALS.match(data, j)
        if m is None:
            attrs.append((aname, -1, -1, 0))
            i = j
            continue
        k = m.end()
        if k >= n:
            return None
        q = data[k]
        if q in (0x22, 0x27):
            close = data.find(b'"' if q == 0x22 else b"'", k + 1)
            if close < 0:
                return None
            attrs.append((aname, k + 1, close, q))
            i = close + 1
        else:
            e = _end_of(_UNQUOTED, data, k)
            if e >= n:
                return None
            attrs.append((aname, k, e, 0))
            i = e
