"""Caching rules, the page cache's bounds, the codecs, the response filter and the [cdn]
config checks (pure parts of the CDN offload)."""

from __future__ import annotations

import gzip
import time
import zlib
from pathlib import Path

import brotli
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dlba.cdn import http_rules
from dlba.cdn.chooser import Choice
from dlba.cdn.codec import OUT_STEP, CodecError, codec_for
from dlba.cdn.page_cache import CachedPage, PageCache
from dlba.cdn.page_filter import PageFilter
from dlba.cdn.popularity import Figure
from dlba.cdn.runtime import CdnRuntime, ServiceCdn
from dlba.cdn.settings import CdnConfig
from dlba.config import ConfigErrors, parse_config

NOW = 1_800_000_000.0


def test_freshness_and_storability() -> None:
    f = http_rules.freshness_s
    assert f([(b"Cache-Control", b"public, max-age=60")], NOW) == 60
    assert f([(b"Cache-Control", b"max-age=60, s-maxage=5")], NOW) == 5
    assert f([(b"Cache-Control", b"no-cache, max-age=60")], NOW) == 0
    assert f([(b"Expires", b"Thu, 01 Jan 2026 00:01:00 GMT"),
              (b"Date", b"Thu, 01 Jan 2026 00:00:00 GMT")], NOW) == 60
    assert f([(b"Expires", b"0")], NOW) == 0
    assert f([], NOW) == 0
    html = [(b"Content-Type", b"text/html")]
    assert http_rules.page_storable(200, [], html)
    assert not http_rules.page_storable(200, [(b"Authorization", b"x")], html)
    assert not http_rules.page_storable(200, [], [*html, (b"Set-Cookie", b"a=1")])
    assert not http_rules.page_storable(200, [], [*html, (b"cache-control", b"Private")])
    assert not http_rules.page_storable(200, [], [*html, (b"Cache-Control", b"no-store")])
    assert not http_rules.page_storable(200, [], [*html, (b"Vary", b"*")])
    assert not http_rules.page_storable(206, [], html)
    assert http_rules.vary_names([(b"Vary", b"Accept-Encoding, cookie")]) == (
        b"accept-encoding", b"cookie")


def _page(size: int, version: str = "v") -> CachedPage:
    return CachedPage(200, b"OK", [], b"x" * size, NOW + 60, version)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 20), st.integers(0, 3000), st.sampled_from(
    [b"gzip", b"br", b""])), max_size=60))
def test_page_cache_bytes_bounded(puts: list[tuple[int, int, bytes]]) -> None:
    cache = PageCache(20_000)
    vary = [(b"Vary", b"Accept-Encoding")]
    for url, size, enc in puts:
        cache.put(b"/p%d" % url, [(b"Accept-Encoding", enc)], vary, _page(size))
        assert cache.bytes <= cache.max_bytes
        assert cache.pages == sum(len(u.variants) for u in cache.urls.values())


def test_page_cache_vary_lru_and_clear() -> None:
    cache = PageCache(10_000)
    vary = [(b"Vary", b"Accept-Encoding")]
    gz, plain = [(b"Accept-Encoding", b"gzip")], [(b"Accept-Encoding", b"identity")]
    assert cache.put(b"/a", gz, vary, _page(100, "gz"))
    assert cache.get(b"/a", plain) is None
    cache.put(b"/a", plain, vary, _page(100, "plain"))
    got = cache.get(b"/a", gz)
    assert got is not None and got.version == "gz"
    assert not cache.put(b"/big", [], [], _page(5000))  # over a quarter of the cache
    for i in range(20):
        cache.put(b"/n%d" % i, [], [], _page(1000))
    assert cache.get(b"/a", gz) is None  # least recently used: gone
    assert cache.bytes <= 10_000
    cache.clear()
    assert cache.bytes == cache.pages == 0 and cache.get(b"/n19", []) is None


def test_codecs_round_trip_in_pieces() -> None:
    text = b"<p>" + b"hello world " * 50_000 + b"</p>"
    for enc, packed in ((b"gzip", gzip.compress(text)), (b"br", brotli.compress(text))):
        dec, enc_codec = codec_for(enc), codec_for(enc)
        assert dec is not None and enc_codec is not None
        pieces = [p for i in range(0, len(packed), 1000) for p in dec.decode(packed[i:i + 1000])]
        # A small input never makes a big buffer (brotli's limit lets its buffer grow once more).
        assert all(len(p) <= 2 * OUT_STEP for p in pieces)
        assert b"".join(pieces) == text
        again = b"".join(enc_codec.encode(p) for p in pieces) + enc_codec.finish()
        unpacked = gzip.decompress(again) if enc == b"gzip" else brotli.decompress(again)
        assert unpacked == text
    assert codec_for(b"compress") is None and codec_for(b"gzip, br") is None
    bad = codec_for(b"gzip")
    assert bad is not None
    with pytest.raises(CodecError):
        list(bad.decode(b"not gzip at all"))


def _runtime() -> ServiceCdn:
    rt = CdnRuntime(CdnConfig(enabled=True, base="https://cdn.test")).services["default"]
    rt.set_choice(Choice((Figure("/s/a.css", 3000, 3, 0, True),)))
    return rt


def _run(f: PageFilter, headers: list[tuple[bytes, bytes]], body: bytes, status: int = 200
         ) -> tuple[list[tuple[bytes, bytes]], bytes]:
    _, _, out_headers, _, _ = f.head(status, b"OK", headers, False, True)
    out = [f.body(body[i:i + 7]) for i in range(0, len(body), 7)]
    return out_headers, b"".join([*out, f.finish()])


def _filter(rt: ServiceCdn, stale: CachedPage | None = None) -> PageFilter:
    return PageFilter(rt, "/p", rt.prefix + b"http://h/p", [], stale, False, True, "h")


PAGE = b'<link href="/s/a.css"><img src="http://h/s/a.css"><img src="//other/s/a.css">'
WANT = (b'<link href="https://cdn.test/s/a.css"><img src="https://cdn.test/s/a.css">'
        b'<img src="//other/s/a.css">')


def test_filter_rewrites_gzip_stores_and_serves_304_from_cache() -> None:
    rt = _runtime()
    headers = [(b"Content-Type", b"text/html"), (b"Content-Encoding", b"gzip"),
               (b"Content-Length", b"99"), (b"ETag", b'"e1"'), (b"Cache-Control", b"max-age=0")]
    out_headers, out = _run(_filter(rt), headers, gzip.compress(PAGE))
    assert zlib.decompress(out, 31) == WANT
    names = {n.lower(): v for n, v in out_headers}
    assert b"content-length" not in names and names[b"etag"] == b'W/"e1"'
    # Two URLs of one object: the browser fetches it once, from the CDN.
    assert rt.rewritten == 1 and rt.urls_rewritten == 2 and rt.bytes_offloaded == 1000
    page = rt.cache.get(rt.prefix + b"http://h/p", [])
    assert page is not None and page.origin_etag == b'"e1"' and page.body == out
    # Stale (max-age=0): the back end's 304 brings the stored page back, fresh from the 304.
    f = _filter(rt, page)
    status, _, h304, chunked, has_length = f.head(304, b"", [(b"Cache-Control", b"max-age=30")],
                                                  False, False)
    assert (status, chunked, has_length) == (200, True, False)
    assert (b"X-Dlba-Cdn", b"revalidated") in h304
    assert f.body(b"") == b"" and f.finish() == out
    assert rt.revalidated == 1 and page.fresh_until > time.time() + 20  # max-age=30


def test_filter_passes_what_it_cannot_rewrite_with_a_reason() -> None:
    rt = _runtime()
    utf16 = [(b"Content-Type", b"text/html; charset=UTF-16")]
    assert _run(_filter(rt), utf16, PAGE)[1] == PAGE
    assert _run(_filter(rt), [(b"Content-Type", b"text/html"),
                              (b"Content-Encoding", b"compress")], PAGE)[1] == PAGE
    assert _run(_filter(rt), [(b"Content-Type", b"text/css")], PAGE)[1] == PAGE
    broken = [(b"Content-Type", b"text/html"), (b"Content-Encoding", b"gzip")]
    assert _run(_filter(rt), broken, b"not gzip")[1] == b"not gzip"
    assert rt.passed == {"charset": 1, "encoding": 1, "decode_error": 1}
    assert rt.cache.pages == 0


def test_new_choice_drops_pages_and_maps_urls() -> None:
    rt = _runtime()
    _run(_filter(rt), [(b"Content-Type", b"text/html"), (b"Cache-Control", b"max-age=60")], PAGE)
    assert rt.cache.pages == 1
    assert not rt.set_choice(Choice((Figure("/s/a.css", 9000, 9, 0, True),)))  # same paths
    assert rt.cache.pages == 1
    assert rt.set_choice(Choice((Figure("/s/b.css", 10, 1, 0, True),)))
    assert rt.cache.pages == 0
    m = rt.map_url
    assert m("/s/b.css?v=2#x", "/dir/page", "h") == ("https://cdn.test/s/b.css?v=2#x", "/s/b.css")
    assert m("../s/b.css", "/dir/page", "h") == ("https://cdn.test/s/b.css", "/s/b.css")
    assert m("https://h/s/b.css", "/", "h") == ("https://cdn.test/s/b.css", "/s/b.css")
    assert m("https://other/s/b.css", "/", "h") is None
    assert m("data:,/s/b.css", "/", "h") is None
    assert m("/s/b.css", "/", "h c10-0-0-7") == ("https://c10-0-0-7.cdn.test/s/b.css", "/s/b.css")


def test_cdn_config_checks_name_the_key(tmp_path: Path) -> None:
    base = '[[nodes]]\nname = "n1"\naddress = "127.0.0.1"\n[[backends]]\nid = 1\n' \
           'address = "127.0.0.1:8080"\n'
    cfg = parse_config(base, tmp_path / "c.toml", check_files=False)
    assert cfg.cdn == CdnConfig() and not cfg.cdn.enabled  # off by default
    ok = parse_config(base + '[cdn]\nenabled = true\nbase = "http://c.test"\ntypes = ["*.css"]\n'
                      'top = 3\nsample = 1\ncache_mb = 0.5\n', tmp_path / "c.toml",
                      check_files=False)
    assert ok.cdn == CdnConfig(True, "http://c.test", ("*.css",), 3, 1.0, 0.5)
    with pytest.raises(ConfigErrors) as e:
        parse_config(base + '[cdn]\nbase = "ftp://x"\nsample = 2.0\ntop = 0\ncache_mb = -1\n'
                     'types = "*.css"\ncolour = 1\n', tmp_path / "c.toml", check_files=False)
    keys = {p.key for p in e.value.problems}
    assert keys == {"cdn.base", "cdn.sample", "cdn.top", "cdn.cache_mb", "cdn.types",
                    "cdn.colour"}
