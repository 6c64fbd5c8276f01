"""Issue 2, points 9 and 11: bad input gets a clear error and loses nothing; logs per request.

Raw sockets against a node on loopback in front of real demo back ends. Every malformed or
oversized request must be answered 400/408/431 and closed without reaching a back end; the
forwarding headers a back end sees are the node's own; hop-by-hop headers stop at the node;
WebSocket upgrades tunnel through; pipelined requests come back in order.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from pathlib import Path

import aiohttp
import httptools
import pytest

from dlba.demo_backend import start_demo_backend
from tests.integration.loopback import LoopbackArray, loopback_array, raw_exchange

pytestmark = pytest.mark.timeout(60)


# --- helpers ------------------------------------------------------------------------------------
class Response:
    def __init__(self) -> None:
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.body = b""

    def header(self, name: str) -> str | None:
        for n, v in self.headers:
            if n.lower() == name.lower():
                return v
        return None


class ResponseStream:
    """Parses a byte stream of HTTP/1.1 responses (several, when pipelined)."""

    def __init__(self) -> None:
        self.done: list[Response] = []
        self.current: Response | None = None
        self.parser = httptools.HttpResponseParser(self)

    def feed(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_begin(self) -> None:
        self.current = Response()

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.current is not None
        self.current.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        assert self.current is not None
        self.current.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        assert self.current is not None
        self.current.body += body

    def on_message_complete(self) -> None:
        assert self.current is not None
        self.done.append(self.current)
        self.current = None


def parse(data: bytes) -> list[Response]:
    stream = ResponseStream()
    stream.feed(data)
    return stream.done


def status_of(data: bytes) -> int:
    m = re.match(rb"HTTP/1\.1 (\d{3}) ", data)
    assert m, f"not an HTTP response: {data[:200]!r}"
    return int(m.group(1))


def hits(arr: LoopbackArray) -> int:
    """Requests the node sent to any back end (web server status table, Fig. 7)."""
    table = arr.node.ctx.table
    return sum(row.hits for row in (table.get(i) for i in (1, 2, 3)) if row is not None)


async def exchange_closed(port: int, data: bytes, timeout: float = 5.0) -> tuple[bytes, float]:
    """Send data, read until the node closes; fail if it does not close within `timeout`."""
    t0 = time.monotonic()
    out = await raw_exchange(port, data, timeout=timeout)
    elapsed = time.monotonic() - t0
    assert elapsed < timeout - 0.1, f"the node did not close the connection: {out[:200]!r}"
    return out, elapsed


async def get_headers_seen(
    arr: LoopbackArray, headers: dict[str, str], tls: bool = False
) -> dict[str, str]:
    url = (arr.tls_url if tls else arr.url) + "/headers"
    async with aiohttp.ClientSession() as s, s.get(
        url, headers=headers, ssl=arr.client_ssl() if tls else True,
        timeout=aiohttp.ClientTimeout(total=10),
    ) as r:
        assert r.status == 200
        return dict(json.loads(await r.read()))


def lower(d: dict[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in d.items()}


async def assert_still_serves(arr: LoopbackArray) -> None:
    out = await raw_exchange(
        arr.http_port, b"GET /whoami HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    (resp,) = parse(out)
    assert resp.status == 200 and resp.body in (b"b1", b"b2", b"b3")


@pytest.fixture
async def arr(tmp_path: Path):  # type: ignore[no-untyped-def]
    async with loopback_array(tmp_path) as a:
        yield a


# --- point 9: malformed requests ------------------------------------------------------------------
BAD_REQUESTS = {
    "content-length-with-transfer-encoding": (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "transfer-encoding-with-content-length": (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Length: 5\r\n\r\n0\r\n\r\n", 400),
    "duplicate-different-content-length": (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"
        b"hello!", 400),
    "content-length-not-a-number": (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\nhello", 400),
    "content-length-negative": (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\nhello", 400),
    "content-length-two-numbers": (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5 5\r\n\r\nhello", 400),
    "unsupported-transfer-encoding": (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nhello", 400),
    "header-line-over-8k": (
        b"GET /whoami HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 8300 + b"\r\n\r\n", 431),
    "more-than-100-headers": (
        b"GET /whoami HTTP/1.1\r\nHost: x\r\n"
        + b"".join(b"X-H%d: v\r\n" % i for i in range(100)) + b"\r\n", 431),
    "head-over-64k-in-small-lines": (
        b"GET /whoami HTTP/1.1\r\nHost: x\r\n"
        + b"".join(b"X-H%d: %b\r\n" % (i, b"v" * 7900) for i in range(9)) + b"\r\n", 431),
    "endless-header-line": (b"GET /whoami HTTP/1.1\r\nHost: x\r\nX-Endless: " + b"e" * 100_000,
                            431),
    "request-line-garbage": (b"HELLO THERE\r\n\r\n", 400),
    "request-line-not-http": (b"GET /whoami FTP/1.1\r\nHost: x\r\n\r\n", 400),
    "tls-hello-on-plain-port": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,
                                400),
    "two-host-headers": (b"GET /whoami HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    "no-host-header": (b"GET /whoami HTTP/1.1\r\n\r\n", 400),
    "space-before-colon": (b"GET /whoami HTTP/1.1\r\nHost : x\r\n\r\n", 400),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
async def test_bad_request_is_rejected_closed_and_never_reaches_a_backend(
    arr: LoopbackArray, case: str
) -> None:
    data, want = BAD_REQUESTS[case]
    bad_before = arr.node.ctx.stats.bad_requests
    out, _ = await exchange_closed(arr.http_port, data)
    assert status_of(out) == want, out[:300]
    (resp,) = parse(out)
    assert resp.header("Connection") == "close"
    assert b"X-Backend" not in out  # answered by the node itself
    assert hits(arr) == 0, "the back end saw the request"
    assert arr.node.ctx.stats.bad_requests == bad_before + 1
    await assert_still_serves(arr)


async def test_bad_chunk_size_is_400_and_closes(arr: LoopbackArray) -> None:
    # The head is valid, so the exchange may already have started; the bad chunk must still be
    # answered 400 and the connection closed (nothing after it is parsed).
    data = (b"POST /digest HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"zz\r\nhello\r\n0\r\n\r\nGET /whoami HTTP/1.1\r\nHost: x\r\n\r\n")
    out, _ = await exchange_closed(arr.http_port, data)
    assert status_of(out) == 400, out[:300]
    assert len(parse(out)) == 1  # the pipelined GET after it was not answered
    await assert_still_serves(arr)


async def test_limits_are_inclusive(arr: LoopbackArray) -> None:
    # Exactly 100 header fields and a line just under 8 KB are fine: the limits are not off by one.
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(98))  # + Host + Connection = 100
    line = b"X-Big: " + b"a" * (8192 - 2 - len(b"X-Big") - 100) + b"\r\n"
    for extra in (many, line):
        out = await raw_exchange(
            arr.http_port, b"GET /whoami HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + extra
            + b"\r\n",
        )
        assert status_of(out) == 200, out[:300]


# --- point 9: timeouts --------------------------------------------------------------------------
async def test_slow_headers_are_cut_with_408(tmp_path: Path) -> None:
    async with loopback_array(tmp_path, extra="[proxy]\nheader_timeout_s = 1\n") as arr:
        reader, writer = await asyncio.open_connection("127.0.0.1", arr.http_port)
        request = b"GET /whoami HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * 100 + b"\r\n\r\n"

        async def trickle() -> None:
            for byte in request:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.2)

        sender = asyncio.ensure_future(trickle())
        t0 = time.monotonic()
        try:
            got = await asyncio.wait_for(reader.read(), 6)  # until EOF
        finally:
            sender.cancel()
            writer.close()
        elapsed = time.monotonic() - t0
        assert status_of(got) == 408, got[:300]
        assert 0.8 <= elapsed < 3, elapsed
        assert hits(arr) == 0
        await assert_still_serves(arr)


async def test_silent_connect_is_not_handed_to_the_node_until_it_speaks(
    arr: LoopbackArray,
) -> None:
    """TCP_DEFER_ACCEPT on the listeners: a connect that sends nothing costs the node no
    wake-up and no connection object; its first bytes bring accept and request together."""
    before = arr.node.ctx.stats.connections_total
    reader, writer = await asyncio.open_connection("127.0.0.1", arr.http_port)
    try:
        await asyncio.sleep(0.5)
        assert arr.node.ctx.stats.connections_total == before
        writer.write(b"GET /whoami HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        got = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    assert status_of(got) == 200
    assert arr.node.ctx.stats.connections_total == before + 1


async def test_idle_keepalive_connection_is_closed(tmp_path: Path) -> None:
    async with loopback_array(tmp_path, extra="[proxy]\nkeepalive_timeout_s = 1\n") as arr:
        reader, writer = await asyncio.open_connection("127.0.0.1", arr.http_port)
        try:
            stream = ResponseStream()
            writer.write(b"GET /whoami HTTP/1.1\r\nHost: x\r\n\r\n")
            deadline = time.monotonic() + 5
            while not stream.done:
                stream.feed(await asyncio.wait_for(reader.read(65536), deadline - time.monotonic()))
            assert stream.done[0].status == 200
            t0 = time.monotonic()
            rest = await asyncio.wait_for(reader.read(), 5)  # EOF when the node closes
            elapsed = time.monotonic() - t0
        finally:
            writer.close()
        assert rest == b""
        assert 0.7 <= elapsed < 3, elapsed


async def test_keepalive_connection_serves_several_requests_before_the_timeout(
    arr: LoopbackArray,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", arr.http_port)
    try:
        stream = ResponseStream()
        for i in range(3):
            writer.write(b"GET /whoami HTTP/1.1\r\nHost: x\r\n\r\n")
            deadline = time.monotonic() + 5
            while len(stream.done) <= i:
                data = await asyncio.wait_for(reader.read(65536), deadline - time.monotonic())
                assert data, "closed while keepalive"
                stream.feed(data)
        assert [r.status for r in stream.done] == [200, 200, 200]
    finally:
        writer.close()


# --- point 9: forwarding headers ------------------------------------------------------------------
FORGED = {
    "X-Forwarded-For": "6.6.6.6",
    "X-Forwarded-Proto": "gopher",
    "Forwarded": "for=6.6.6.6;proto=gopher",
}


async def test_forwarding_headers_are_set_and_forged_ones_replaced(arr: LoopbackArray) -> None:
    seen = lower(await get_headers_seen(arr, {}))
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["forwarded"] == "for=127.0.0.1;proto=http"
    seen = lower(await get_headers_seen(arr, FORGED))
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["forwarded"] == "for=127.0.0.1;proto=http"
    assert "6.6.6.6" not in json.dumps(seen) and "gopher" not in json.dumps(seen)


async def test_forwarded_proto_is_https_on_the_tls_listener(arr: LoopbackArray) -> None:
    seen = lower(await get_headers_seen(arr, FORGED, tls=True))
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "https"
    assert seen["forwarded"] == "for=127.0.0.1;proto=https"


async def test_trusted_peer_forwarding_headers_are_appended_to(tmp_path: Path) -> None:
    extra = '[proxy]\ntrusted_proxies = ["127.0.0.0/8"]\n'
    async with loopback_array(tmp_path, extra=extra) as arr:
        seen = lower(await get_headers_seen(arr, {
            "X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https",
            "Forwarded": "for=203.0.113.7;proto=https",
        }))
        assert seen["x-forwarded-for"] == "203.0.113.7, 127.0.0.1"
        assert seen["x-forwarded-proto"] == "https"
        assert seen["forwarded"] == "for=203.0.113.7;proto=https, for=127.0.0.1;proto=http"
        # A trusted peer that sends none still gets the node's own.
        seen = lower(await get_headers_seen(arr, {}))
        assert seen["x-forwarded-for"] == "127.0.0.1"
        assert seen["x-forwarded-proto"] == "http"
        assert seen["forwarded"] == "for=127.0.0.1;proto=http"


async def test_hop_by_hop_headers_do_not_reach_the_backend(arr: LoopbackArray) -> None:
    out = await raw_exchange(arr.http_port, (
        b"GET /headers HTTP/1.1\r\nHost: x\r\n"
        b"Connection: close, X-Secret, x-other-secret\r\n"
        b"X-Secret: 1\r\nX-Other-Secret: 2\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n"
        b"Trailer: X-T\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\n"
        b"Proxy-Connection: keep-alive\r\nUpgrade: h2c\r\nX-Kept: yes\r\n\r\n"
    ))
    (resp,) = parse(out)
    assert resp.status == 200
    seen = lower(json.loads(resp.body))
    assert seen["x-kept"] == "yes"
    for name in ("x-secret", "x-other-secret", "keep-alive", "te", "trailer",
                 "proxy-authorization", "proxy-connection", "upgrade"):
        assert name not in seen, name
    # The node's own Connection to the back end is keepalive, not the client's list.
    assert seen.get("connection", "keep-alive").lower() in ("keep-alive", "")


# --- point 9: WebSocket -----------------------------------------------------------------------
@pytest.mark.parametrize("tls", [False, True], ids=["ws", "wss"])
async def test_websocket_upgrade_tunnels_through(arr: LoopbackArray, tls: bool) -> None:
    url = (arr.tls_url if tls else arr.url).replace("http", "ws", 1) + "/ws"
    async with aiohttp.ClientSession() as s, s.ws_connect(
        url, ssl=arr.client_ssl() if tls else True, timeout=aiohttp.ClientWSTimeout(ws_close=5),
    ) as ws:
        for i in range(5):
            await ws.send_str(f"message {i}")
            msg = await asyncio.wait_for(ws.receive(), 5)
            assert msg.type == aiohttp.WSMsgType.TEXT and msg.data == f"message {i}"
        await ws.send_bytes(b"\x00\x01binary" * 1000)
        msg = await asyncio.wait_for(ws.receive(), 5)
        assert msg.type == aiohttp.WSMsgType.BINARY and msg.data == b"\x00\x01binary" * 1000
    await assert_still_serves(arr)


# --- point 3/9: pipelining --------------------------------------------------------------------
async def test_five_pipelined_requests_answered_in_order(arr: LoopbackArray) -> None:
    body = b"pipelined body 12345"
    requests = (
        b"GET /whoami HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /bytes/1000 HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%b"
        b"GET /bytes/7 HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n"
        b"\r\n5\r\nhello\r\n0\r\n\r\n"
    ) % (len(body), body)
    out, _ = await exchange_closed(arr.http_port, requests)
    responses = parse(out)
    assert [r.status for r in responses] == [200] * 5
    assert responses[0].body in (b"b1", b"b2", b"b3")
    assert len(responses[1].body) == 1000
    assert responses[2].body == body
    assert len(responses[3].body) == 7
    assert responses[4].body == b"hello"


# --- point 11: logs ---------------------------------------------------------------------------
ACCESS = re.compile(
    r"client=127\.0\.0\.1:\d+ node=n1 backend=(\d+) .*status=(\d{3}) bytes=(\d+) ms=[\d.]+"
)


async def test_one_access_line_per_request(
    arr: LoopbackArray, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dlba.access")
    async with aiohttp.ClientSession() as s:
        for path, n in (("/bytes/1234", 1234), ("/bytes/10", 10), ("/status/404", None)):
            async with s.get(arr.url + path) as r:
                await r.read()
                assert r.status == (404 if n is None else 200)
    lines = [r.getMessage() for r in caplog.records if r.name == "dlba.access"]
    assert len(lines) == 3, lines
    parsed = [ACCESS.search(line) for line in lines]
    assert all(parsed), lines
    assert [(m.group(2), m.group(3)) for m in parsed if m][:2] == [("200", "1234"), ("200", "10")]
    assert parsed[2] is not None and parsed[2].group(2) == "404"
    assert all(m is not None and m.group(1) in ("1", "2", "3") for m in parsed)


async def test_event_lines_for_backend_down_and_up_and_bad_request(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dlba.event")
    caplog.set_level(logging.INFO, logger="dlba.access")
    extra = "[proxy]\nfail_threshold = 1\nretry_backoff_s = 0.2\nretry_backoff_max_s = 0.2\n"
    async with loopback_array(tmp_path, extra=extra) as arr:
        b2_port = arr.backend_ports["b2"]
        await arr.stop_backend("b2")

        def events(word: str) -> list[str]:
            return [r.getMessage() for r in caplog.records
                    if r.name == "dlba.event" and f"event={word}" in r.getMessage()]

        async with aiohttp.ClientSession() as s:
            deadline = time.monotonic() + 10
            while not events("backend_down"):
                assert time.monotonic() < deadline, "no backend_down event"
                async with s.get(arr.url + "/whoami") as r:
                    assert r.status == 200  # re-routed, never a client-visible error
                    assert await r.read() in (b"b1", b"b3")
            (down,) = events("backend_down")
            assert "node=n1" in down and "backend=2" in down and f":{b2_port}" in down

            arr.backends["b2"] = await start_demo_backend("b2", "127.0.0.1", b2_port)
            deadline = time.monotonic() + 10
            while not events("backend_up"):
                assert time.monotonic() < deadline, "no backend_up event"
                async with s.get(arr.url + "/whoami") as r:
                    assert r.status == 200
                    await r.read()
                await asyncio.sleep(0.05)
            assert "backend=2" in events("backend_up")[0]

        assert not events("bad_request")
        out, _ = await exchange_closed(arr.http_port, b"NOT HTTP AT ALL\r\n\r\n")
        assert status_of(out) == 400
        (bad,) = events("bad_request")
        assert "status=400" in bad and "peer=127.0.0.1:" in bad


async def test_connection_header_cannot_strip_framing_or_host(arr: LoopbackArray) -> None:
    # `Connection: Content-Length` must not make the node drop the framing of a body it still
    # forwards: the back end would read the body as the start of the next request (desync).
    body = b"GET /whoami HTTP/1.1\r\nHost: x\r\n\r\n"
    requests = (
        b"POST /digest HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Content-Length, Host\r\n"
        b"Content-Length: %d\r\n\r\n%b"
        b"GET /headers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    ) % (len(body), body)
    out, _ = await exchange_closed(arr.http_port, requests)
    responses = parse(out)
    assert [r.status for r in responses] == [200, 200], out[:600]
    assert json.loads(responses[0].body)["length"] == len(body)
    assert lower(json.loads(responses[1].body))["host"] == "x"
    assert arr.node.ctx.stats.requests == 2
