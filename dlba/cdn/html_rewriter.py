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
Inside <style> the CSS url() are rewritten too (raw text: no entities there).
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

_WS = rb"[\t\n\f\r ]"
_RAW_START = (rb"(?i:script|style|textarea|title|xmp|iframe|noembed|noframes|plaintext)"
              rb"(?=[\t\n\f\r />])")
_URL_ATTR = rb"(?i:src|href|poster|style|background|data|srcset|imagesrcset)" + _WS + rb"*+="
# Text, end tags and start tags with no quote, no URL attribute and no raw-text name: passed on
# in one slice without a Python step per tag (most of a page). An attribute name follows
# whitespace or / in a tag without quotes, which is where the URL names are looked for.
_BORING = re.compile(
    rb"(?:[^<]++|</[a-zA-Z][^>]*+>|<(?!" + _RAW_START + rb")[a-zA-Z]"
    rb"(?:[^>\"'\t\n\f\r /]|[\t\n\f\r /]++(?!" + _URL_ATTR + rb"))*+>)*+")
_MAYBE_URL = re.compile(rb"(?:src|href|poster|style|background|data|srcset)\s*=", re.I)
_TAG_NAME = re.compile(rb"[^\t\n\f\r />]*")
# An attribute as the tokenizer reads it: a name (an = may start one), then maybe = and a
# double-quoted (2), single-quoted (3) or unquoted (4) value. Possessive: never backtracks. A
# quote left open fails the attribute (the tag is unfinished), never reads as something else.
_ATTR = (rb"(=[^\t\n\f\r />=]*+|[^\t\n\f\r />=]++)(?:" + _WS + rb"*+=" + _WS
         + rb"*+(?:\"([^\"]*+)\"|'([^']*+)'|(?![\"'])([^\t\n\f\r >]*+))|(?!" + _WS
         + rb"*+=))")
_ATTRS = re.compile(_ATTR)
_FULL_TAG = re.compile(rb"<[a-zA-Z][^\t\n\f\r />]*+(?:[\t\n\f\r /]++|" + _ATTR + rb")*+>")
_CSS_URL = re.compile(
    rb"url\(\s*(?:\"([^\"]*)\"|'([^']*)'|&quot;(.*?)&quot;|([^)\s\"']*))\s*\)", re.I)
_SRCSET_URL = re.compile(rb"[\s,]*([^\s,][^\s]*)")
_ENDS = {COMMENT: b"-->", CDATA: b"]]>"}

INCOMPLETE = -1
CSS_HOLD = 4096  # style text held back at most, waiting for a url( to close


class HtmlRewriter:
    __slots__ = ("buf", "css", "mapper", "max_tag", "mode", "raw_end", "rewritten",
                 "tags_too_long")

    def __init__(self, mapper: Mapper, max_tag: int = 64 * 1024) -> None:
        self.mapper = mapper
        self.max_tag = max_tag
        self.buf = b""
        self.mode = TEXT
        self.raw_end: re.Pattern[bytes] | None = None  # </name of the raw-text element we are in
        self.css = False  # that element is <style>: its url() are rewritten too
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
        if self.mode == RAWTEXT and self.css:
            out: list[bytes] = []
            self._raw_text(rest, 0, len(rest), out)
            return b"".join(out)
        return rest

    # --- the modes ------------------------------------------------------------------------
    def _scan(self, data: bytes, out: list[bytes]) -> int:
        pos, n = 0, len(data)
        while pos < n:
            mode = self.mode
            if mode == TEXT:
                lt = _end_of(_BORING, data, pos)
                if lt > pos:
                    out.append(data[pos:lt])
                if lt >= n:
                    return n
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
                self._raw_text(data, pos, m.start(), out)
                self.mode = BOGUS  # the end tag itself, to its >
                return m.start(), False
            keep = max(pos, len(data) - hold)
            if self.css:
                keep = _before_open_url(data, pos, keep)
            self._raw_text(data, pos, keep, out)
            return keep, True
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
        name_end = _end_of(_TAG_NAME, data, lt + 1)
        name = data[lt + 1:name_end].lower()
        m = _FULL_TAG.match(data, lt)
        if m is None:
            if len(data) - lt > self.max_tag:
                self.tags_too_long += 1
                out.append(data[lt:])
                self.mode = BOGUS
                return len(data)
            return INCOMPLETE
        end = m.end()
        if _MAYBE_URL.search(data, name_end, end):
            self._emit_tag(data, lt, name_end, end, out)
        else:
            out.append(data[lt:end])
        if name in RAW_ELEMENTS:
            self.mode = RAWTEXT
            self.css = name == b"style"
            self.raw_end = re.compile(rb"</" + re.escape(name) + rb"(?=[\t\n\f\r />])", re.I)
        elif name == b"plaintext":
            self.mode = PLAINTEXT
        return end

    def _emit_tag(self, data: bytes, lt: int, name_end: int, end: int,
                  out: list[bytes]) -> None:
        pos = lt
        for a in _ATTRS.finditer(data, name_end, end - 1):
            name = a.group(1).lower()
            g = 2 if a.start(2) >= 0 else 3 if a.start(3) >= 0 else 4
            vs, ve = a.start(g), a.end(g)
            if vs < 0:
                continue  # no value
            if name in URL_ATTRS:
                spans = [_trimmed(data, vs, ve)]
            elif name in SRCSET_ATTRS:
                spans = [(m.start(1), _srcset_end(data, m.end(1)))
                         for m in _SRCSET_URL.finditer(data, vs, ve)]
            elif name == b"style":
                spans = [(m.start(k), m.end(k)) for m in _CSS_URL.finditer(data, vs, ve)
                         for k in (1, 2, 3, 4) if m.start(k) >= 0][:64]
            else:
                continue
            quote = 0x22 if g == 2 else 0x27 if g == 3 else 0
            for s, e in spans:
                new = self._map(data[s:e], quote)
                if new is not None:
                    out.append(data[pos:s])
                    out.append(new)
                    pos = e
        out.append(data[pos:end])

    def _raw_text(self, data: bytes, pos: int, end: int, out: list[bytes]) -> None:
        """Raw text as it came; in <style>, its url() rewritten (no entities in raw text)."""
        if self.css:
            for m in _CSS_URL.finditer(data, pos, end):
                for k in (1, 2, 4):
                    s, e = m.start(k), m.end(k)
                    if s < 0 or s == e:
                        continue
                    new = self.mapper(data[s:e].decode("latin-1"))
                    if new is not None:
                        self.rewritten += 1
                        out += (data[pos:s], new.encode("latin-1", "replace"))
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


def _before_open_url(data: bytes, pos: int, keep: int) -> int:
    """Where style text may be cut at or before `keep`: not inside a url( ... ) (a url( more
    than CSS_HOLD bytes back is cut anyway, so memory stays bounded)."""
    start = max(pos, keep - CSS_HOLD)
    j = data[start:keep + 3].lower().rfind(b"url(")
    if j < 0 or start + j >= keep:
        return keep
    close = data.find(b")", start + j)
    return start + j if close < 0 or close >= keep else keep


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
