"""The streaming HTML rewriter against awkward HTML, and the property that it changes nothing
but the URLs it rewrites, however the page is cut into chunks."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dlba.cdn.html_rewriter import HtmlRewriter

CDN = "https://cdn.test"


def mapper(url: str) -> str | None:
    return CDN + url if url.startswith("/s/") else None


def rewrite(page: bytes, cuts: list[int] | None = None, max_tag: int = 64 * 1024) -> bytes:
    rw = HtmlRewriter(mapper, max_tag=max_tag)
    points = sorted({c % (len(page) + 1) for c in cuts or []})
    out, last = [], 0
    for p in [*points, len(page)]:
        out.append(rw.feed(page[last:p]))
        last = p
    out.append(rw.finish())
    return b"".join(out)


def every_split(page: bytes) -> set[bytes]:
    """The output for the page cut in two at every byte, and cut into single bytes."""
    outs = {rewrite(page, [i]) for i in range(len(page) + 1)}
    outs.add(rewrite(page, list(range(len(page)))))
    return outs


CORPUS = [
    # (input, expected)
    (b'<img src="/s/a.png">', b'<img src="https://cdn.test/s/a.png">'),
    (b"<IMG SRC='/s/a.png' ALT=x>", b"<IMG SRC='https://cdn.test/s/a.png' ALT=x>"),
    (b"<img src=/s/a.png>", b"<img src=https://cdn.test/s/a.png>"),
    (b'<img src = " /s/a.png ">', b'<img src = " https://cdn.test/s/a.png ">'),
    (b'<a href="/s/x.css?v=1&amp;w=2">', b'<a href="https://cdn.test/s/x.css?v=1&amp;w=2">'),
    (b'<a href="&#47;s/x.css">', b'<a href="https://cdn.test/s/x.css">'),
    (b'<link rel=preload href="/s/f.woff2" as=font>',
     b'<link rel=preload href="https://cdn.test/s/f.woff2" as=font>'),
    (b'<video poster="/s/p.jpg" src="/other.mp4">',
     b'<video poster="https://cdn.test/s/p.jpg" src="/other.mp4">'),
    (b'<img srcset="/s/a.png 1x, /s/b.png 2x,/n.png 3x">',
     b'<img srcset="https://cdn.test/s/a.png 1x, https://cdn.test/s/b.png 2x,/n.png 3x">'),
    (b'<img srcset="/s/a.png,">', b'<img srcset="https://cdn.test/s/a.png,">'),
    (b"<div style=\"background:url('/s/bg.gif') ; border-image: URL( /s/b.svg )\">",
     b"<div style=\"background:url('https://cdn.test/s/bg.gif') ; "
     b"border-image: URL( https://cdn.test/s/b.svg )\">"),
    (b'<div style="background:url(&quot;/s/bg.gif&quot;)">',
     b'<div style="background:url(&quot;https://cdn.test/s/bg.gif&quot;)">'),
    # Not URLs: comments, scripts, style elements, CDATA, declarations, end tags, text.
    (b'<!-- <img src="/s/a.png"> -->', None),
    (b"<style>p{background:url(/s/a.png)} a{b:URL( '/s/b.png' )}</style><p style=x>",
     b"<style>p{background:url(https://cdn.test/s/a.png)} a{b:URL( 'https://cdn.test/s/b.png' "
     b")}</style><p style=x>"),
    (b'<style>a{b:url("/s/a&amp;.png")}</style>', b'<style>a{b:url("https://cdn.test/s/a&amp;.png")}</style>'),
    (b"<style>a{b:url(/n.png)} /* url(/s/a.png */</style>", None),
    (b'<script>var s = "<img src=\'/s/a.png\'>";</script>', None),
    (b'<SCRIPT type=x>"<img src=/s/a.png>"</SCRIPT >', None),
    (b"<title><img src=/s/a.png></title>", None),
    (b'<![CDATA[ <img src="/s/a.png"> ]]>', None),
    (b'<!DOCTYPE html><?xml x="<img src=/s/a.png>"?>', None),
    (b"</img src=/s/a.png>", None),
    (b"a < b src=/s/a.png > c", None),
    (b"<img data-src=/s/a.png>", None),
    (b'<img src="/s/a.png>', None),  # never closed: left as it came
    (b"<", None),
    (b"<img = src=/s/a.png>", b"<img = src=https://cdn.test/s/a.png>"),  # "=" is a name
    (b"<img ==/s/a.png src==/s/a.png>", b"<img ==/s/a.png src==/s/a.png>"),
    (b"<img/src=/s/a.png>", b"<img/src=https://cdn.test/s/a.png>"),
    (b"<img src=/s/a.png/>", b"<img src=https://cdn.test/s/a.png/>"),  # / is in the value
    (b'<img alt="x"src="/s/a.png">', b'<img alt="x"src="https://cdn.test/s/a.png">'),
    # After a raw-text element ends, tags count again.
    (b"<script>x</script><img src=/s/a.png>", b"<script>x</script><img src=https://cdn.test/s/a.png>"),
    (b'<img alt="a>b" src="/s/a.png">', b'<img alt="a>b" src="https://cdn.test/s/a.png">'),
    (b"<img src='/s/o\"k.png'>", b"<img src='https://cdn.test/s/o\"k.png'>"),
    ("<p>caf\u00e9 <img src=/s/\u00e9.png>".encode("latin-1"),
     "<p>caf\u00e9 <img src=https://cdn.test/s/\u00e9.png>".encode("latin-1")),
]


def test_corpus_whole_and_split_everywhere() -> None:
    for page, expected in CORPUS:
        want = page if expected is None else expected
        assert every_split(page) == {want}, page


def test_counts_rewritten() -> None:
    rw = HtmlRewriter(mapper)
    rw.feed(b'<img src="/s/a.png" srcset="/s/b.png 2x"><a href=/x>')
    rw.finish()
    assert rw.rewritten == 2


def test_utf8_bytes_around_urls_untouched() -> None:
    page = '<p title="\u65e5\u672c">\u65e5\u672c<img src="/s/\u65e5.png">\u65e5</p>'.encode()
    out = rewrite(page, [5, 17, 18, 31])
    assert out == page.replace(b'"/s/', b'"https://cdn.test/s/')


def test_tag_longer_than_the_bound_passes_through() -> None:
    page = b"<img alt='" + b"x" * 5000 + b"' src=/s/a.png><img src=/s/b.png>"
    chunks = [page[i:i + 100] for i in range(0, len(page), 100)]
    rw = HtmlRewriter(mapper, max_tag=1024)
    out = b"".join([rw.feed(c) for c in chunks] + [rw.finish()])
    assert rw.tags_too_long == 1
    assert len(rw.buf) <= 1024 + 100
    assert out == page.replace(b"src=/s/b.png", b"src=https://cdn.test/s/b.png")


def test_style_text_waits_for_a_url_to_close_within_a_bound() -> None:
    rw = HtmlRewriter(mapper)
    out = rw.feed(b"<style>a{b:url(/s/a.png") + rw.feed(b")}") + rw.finish()
    assert out == b"<style>a{b:url(https://cdn.test/s/a.png)}"
    rw = HtmlRewriter(mapper)
    out = rw.feed(b"<style>a{b:url(/s/a.png" + b"x" * 5000)
    assert len(rw.buf) <= 4096 + 16  # an unclosed url( too far back is not waited for
    assert out + rw.feed(b")}") + rw.finish() == b"<style>a{b:url(/s/a.png" + b"x" * 5000 + b")}"


def test_memory_bounded_on_an_endless_comment_and_script() -> None:
    for start in (b"<!--", b"<script>", b"<![CDATA[", b"<style>"):
        rw = HtmlRewriter(mapper)
        out = [rw.feed(start)]
        for _ in range(1000):
            out.append(rw.feed(b"-- ]] </scrip x" * 100))
            assert len(rw.buf) <= 16
        assert b"".join([*out, rw.finish()]) == start + b"-- ]] </scrip x" * 100 * 1000


# --- property: nothing but the rewritten URLs changes --------------------------------------
PIECES = st.sampled_from([
    b"<img src=/s/a.png>", b'<img SRC="/s/b.png" alt=">">', b"<a href='/s/c.css'>", b"<a href=/n>",
    b"<!--", b"-->", b"<script>", b"</script>", b"<style>", b"</style >", b"<![CDATA[", b"]]>",
    b"<!doctype html>", b"<?x ?>", b"</p>", b"<", b">", b'"', b"'", b"=", b" ", b"\n", b"&amp;",
    b'<img srcset="/s/d.png 1x, /s/e.png 2x">', b"<p style=\"x:url('/s/f.gif')\">", b"/s/g.png",
    b"src=/s/h.png", b"<div ", b"<Img\tsrc\n=\n/s/i.png ", b"caf\xc3\xa9", b"\xff\xfe", b"url(",
    b"<title>", b"</title>", b"<textarea>", b"</TEXTAREA>", b"<plaintext>", b"<a = ", b"==",
    b"<img/src=/s/j.png>", b"\t", b'src="/s/k.png"', b"<SCRIPT/>", b"<scripts>", b"/", b")",
    b"url('/s/m.png')", b"url(/s/n.png)", b"{", b"}",
])


@settings(max_examples=300, deadline=None)
@given(st.lists(PIECES, max_size=40), st.lists(st.integers(0, 10_000), max_size=8))
def test_only_urls_change_and_chunking_does_not_matter(
    pieces: list[bytes], cuts: list[int]
) -> None:
    page = b"".join(pieces)
    whole = rewrite(page)
    assert rewrite(page, cuts) == whole
    # Undoing the rewrite (the CDN base before each rewritten URL) gives back the page.
    assert whole.replace(CDN.encode(), b"") == page
    never = HtmlRewriter(lambda _: None)
    assert never.feed(page) + never.finish() == page
