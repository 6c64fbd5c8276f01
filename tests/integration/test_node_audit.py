"""What audits and ordinary clients expect of the node, each checked with a real client (curl,
ApacheBench, raw sockets) against a node on loopback.

HSTS on HTTPS; a per-listener redirect to HTTPS; the persistence cookie Secure over HTTPS with
the configured SameSite; HTTP/1.0 keep-alive (`ab -k`); absolute-form targets; Host bytes;
fragments; protocols other than HTTP/1.x; Upgrade requests with bytes before the 101; any
token as a method. Every malformed request: a 4xx, a close, one log line, no back end.

Most tests use `RawBackend`, a back end written here on asyncio streams: it records every
request line and Host it receives, and accepts any method (aiohttp's parser, like llhttp,
knows a fixed list).
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dlba.config import load_config
from dlba.node import NodeRuntime
from tests.integration.loopback import free_port, make_certs, write_config
from tests.integration.test_node_bad_input import exchange_closed, parse, status_of

pytestmark = pytest.mark.timeout(60)


# --- a back end that takes anything and says what it got -----------------------------------------
@dataclass
class RawBackend:
    seen: list[tuple[bytes, bytes]] = field(default_factory=list)  # (request line, Host)
    server: asyncio.Server | None = None
    writers: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def lines(self) -> list[bytes]:
        return [line for line, _ in self.seen]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line, *fields = head[:-4].split(b"\r\n")
                headers = {k.strip().lower(): v.strip()
                           for k, _, v in (f.partition(b":") for f in fields)}
                self.seen.append((line, headers.get(b"host", b"")))
                length = int(headers.get(b"content-length", b"0"))
                if length:
                    await reader.readexactly(length)
                elif headers.get(b"transfer-encoding") == b"chunked":
                    while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
                        await reader.readexactly(size + 2)
                    while await reader.readuntil(b"\r\n") != b"\r\n":
                        pass  # trailer fields
                writer.write(self.answer(line.split(b" ")[1]))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            self.writers.discard(writer)
            writer.close()

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self.writers):
            writer.close()  # its handler sees EOF and ends
        await self.server.wait_closed()
        await asyncio.sleep(0)

    @staticmethod
    def answer(target: bytes) -> bytes:
        if target == b"/sts":
            return (b"HTTP/1.1 200 OK\r\nStrict-Transport-Security: max-age=60\r\n"
                    b"Content-Length: 2\r\n\r\nok")
        if target == b"/login":
            return (b"HTTP/1.1 200 OK\r\nSet-Cookie: JSESSIONID=abc123; Path=/; HttpOnly\r\n"
                    b"Content-Length: 2\r\n\r\nok")
        if target == b"/chunked":
            return (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"5\r\nhello\r\n0\r\n\r\n")
        return b"HTTP/1.1 200 OK\r\nX-Backend: raw\r\nContent-Length: 2\r\n\r\nok"


@dataclass
class Node:
    runtime: NodeRuntime
    backend: RawBackend
    http_port: int
    https_port: int
    ca: Path

    @property
    def url(self) -> str:
        return f"http://localhost:{self.http_port}"

    @property
    def tls_url(self) -> str:
        return f"https://localhost:{self.https_port}"


@asynccontextmanager
async def raw_node(tmp: Path, extra: str = "", tls: str = "") -> AsyncIterator[Node]:
    """`extra`: config text appended (HTTP_PORT stands for the plain listener's port);
    `tls`: lines added to the [tls] table."""
    backend = RawBackend()
    backend.server = await asyncio.start_server(backend.handle, "127.0.0.1", 0)
    port = backend.server.sockets[0].getsockname()[1]
    certs = make_certs(tmp / "certs")
    http_port, https_port, admin_port = free_port(), free_port(), free_port()
    path = write_config(tmp, certs, [(1, f"127.0.0.1:{port}")], http_port=http_port,
                        https_port=https_port, admin_port=admin_port,
                        extra=extra.replace("HTTP_PORT", str(http_port)))
    if tls:
        path.write_text(path.read_text().replace("[tls]\n", f"[tls]\n{tls}\n", 1))
    node = NodeRuntime(load_config(path), "n1")
    await node.start()
    try:
        yield Node(node, backend, http_port, https_port, certs.ca_cert)
    finally:
        await node.stop()
        await backend.close()


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    async with raw_node(tmp_path) as n:
        yield n


async def run(*argv: str, timeout: float = 30) -> str:
    """A real client as its own process (the node runs in this test's event loop)."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return out.decode("latin-1")


def headers_of(curl_out: str) -> list[tuple[str, str]]:
    """Header lines of the last response in `curl -D -` output, names lower-cased."""
    block = curl_out.replace("\r\n", "\n").strip().split("\n\n")[-1]
    return [(n.strip().lower(), v.strip())
            for n, _, v in (line.partition(":") for line in block.split("\n")[1:])]


def values(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [v for n, v in headers if n == name]


CURL = "curl"


# --- HSTS ----------------------------------------------------------------------------------------
async def test_hsts_on_https_responses_only_and_never_doubled(node: Node) -> None:
    ca = str(node.ca)
    out = await run(CURL, "-sS", "--cacert", ca, "-D", "-", "-o", "/dev/null",
                    node.tls_url + "/whoami")
    assert values(headers_of(out), "strict-transport-security") == ["max-age=31536000"], out
    out = await run(CURL, "-sS", "-D", "-", "-o", "/dev/null", node.url + "/whoami")
    assert values(headers_of(out), "strict-transport-security") == [], out
    # The back end's own policy is kept as it is, not doubled.
    out = await run(CURL, "-sS", "--cacert", ca, "-D", "-", "-o", "/dev/null",
                    node.tls_url + "/sts")
    assert values(headers_of(out), "strict-transport-security") == ["max-age=60"], out


@pytest.mark.parametrize(("tls", "want"), [
    ("hsts_max_age_s = 600", ["max-age=600"]), ("hsts = false", []),
])
async def test_hsts_follows_the_config(tmp_path: Path, tls: str, want: list[str]) -> None:
    async with raw_node(tmp_path, tls=tls) as n:
        out = await run(CURL, "-sS", "--cacert", str(n.ca), "-D", "-", "-o", "/dev/null",
                        n.tls_url + "/whoami")
        assert values(headers_of(out), "strict-transport-security") == want, out


# --- HTTP -> HTTPS redirect per plain listener ---------------------------------------------------
@pytest.mark.parametrize("listeners", ['["127.0.0.1:HTTP_PORT"]', '["*"]', "true"])
async def test_plain_listener_redirects_to_https_without_a_backend(
    tmp_path: Path, listeners: str
) -> None:
    async with raw_node(tmp_path, extra=f"[proxy]\nredirect_https = {listeners}\n") as n:
        out = await run(CURL, "-sS", "-D", "-", "-o", "/dev/null", n.url + "/a/b?c=1")
        assert out.startswith("HTTP/1.1 308 "), out
        location = f"https://localhost:{n.https_port}/a/b?c=1"
        assert values(headers_of(out), "location") == [location], out
        assert n.backend.seen == []
        # curl follows it to the TLS listener, which serves it (and verifies the certificate).
        out = await run(CURL, "-sS", "-L", "--cacert", str(n.ca), "-w", " %{url_effective}",
                        n.url + "/a/b?c=1")
        assert out == f"ok {location}", out
        assert n.backend.lines == [b"GET /a/b?c=1 HTTP/1.1"]


async def test_other_plain_listeners_are_not_redirected(tmp_path: Path) -> None:
    async with raw_node(tmp_path, extra='[proxy]\nredirect_https = ["127.0.0.1:1"]\n') as n:
        out = await run(CURL, "-sS", n.url + "/whoami")
        assert out == "ok" and n.backend.lines == [b"GET /whoami HTTP/1.1"]


# --- the persistence cookie ----------------------------------------------------------------------
def injected(curl_out: str) -> str:
    (line,) = [v for v in values(headers_of(curl_out), "set-cookie")
               if v.startswith("DLBASERVER=")]
    return line


async def test_persistence_cookie_is_secure_on_https_with_samesite(node: Node) -> None:
    out = await run(CURL, "-sS", "--cacert", str(node.ca), "-D", "-", "-o", "/dev/null",
                    node.tls_url + "/login")
    attrs = [a.strip() for a in injected(out).split(";")[1:]]
    assert "Secure" in attrs and "SameSite=Lax" in attrs, out
    out = await run(CURL, "-sS", "-D", "-", "-o", "/dev/null", node.url + "/login")
    attrs = [a.strip() for a in injected(out).split(";")[1:]]
    assert "Secure" not in attrs and "SameSite=Lax" in attrs, out


async def test_samesite_none_is_secure_over_https_and_left_out_over_http(tmp_path: Path) -> None:
    async with raw_node(tmp_path, extra='[persistence]\nsame_site = "None"\n') as n:
        jar = tmp_path / "jar.txt"
        out = await run(CURL, "-sS", "--cacert", str(n.ca), "-c", str(jar), "-D", "-",
                        "-o", "/dev/null", n.tls_url + "/login")
        attrs = [a.strip() for a in injected(out).split(";")[1:]]
        assert "Secure" in attrs and "SameSite=None" in attrs, out
        # curl's cookie jar took it as a secure cookie (Netscape format: 4th field).
        (row,) = [r for r in jar.read_text().splitlines() if "\tDLBASERVER\t" in r]
        assert row.split("\t")[3] == "TRUE", row
        out = await run(CURL, "-sS", "-D", "-", "-o", "/dev/null", n.url + "/login")
        attrs = [a.strip() for a in injected(out).split(";")[1:]]
        assert not [a for a in attrs if a.startswith("SameSite") or a == "Secure"], out


# --- HTTP/1.0 keep-alive -------------------------------------------------------------------------
async def test_ab_keepalive_http10_completes_every_request(node: Node) -> None:
    """ApacheBench speaks HTTP/1.0 with `Connection: Keep-Alive`; without the same header in
    the answer it waits for a close that never came (50 of 5000 done, then a timeout)."""
    ab = shutil.which("ab")
    assert ab, "ab (apache2-utils) is needed: make install"
    out = await run(ab, "-k", "-n", "400", "-c", "10", "-s", "5",
                    f"http://127.0.0.1:{node.http_port}/", timeout=40)
    assert re.search(r"Complete requests:\s+400\n", out), out
    assert re.search(r"Failed requests:\s+0\n", out), out
    assert re.search(r"Keep-Alive requests:\s+400\n", out), out


async def test_http10_keepalive_response_without_length_closes(node: Node) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", node.http_port)
    try:
        writer.write(b"GET /whoami HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\nok"), 5)
        assert b"\r\nConnection: keep-alive\r\n" in first, first
        writer.write(b"GET /chunked HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        rest = await asyncio.wait_for(reader.read(), 5)  # until the node closes
    finally:
        writer.close()
    head, _, body = rest.partition(b"\r\n\r\n")
    assert b"\r\nConnection: close" in head and b"Transfer-Encoding" not in head, rest
    assert body == b"hello"


# --- request targets, Host, protocol, methods ----------------------------------------------------
async def test_absolute_form_target_becomes_origin_form_with_its_host(node: Node) -> None:
    # curl as a proxy client sends `GET http://dlba.test/p?q=1 HTTP/1.1` (absolute-form).
    out = await run(CURL, "-sS", "-x", f"http://127.0.0.1:{node.http_port}",
                    "-H", "Host: other.test", "http://dlba.test/p?q=1")
    assert out == "ok", out
    assert node.backend.seen == [(b"GET /p?q=1 HTTP/1.1", b"dlba.test")]


@pytest.mark.parametrize("method", ["PURGE", "MKCOL", "FOO-BAR", "x.Custom_1"])
async def test_any_token_method_reaches_the_backend(node: Node, method: str) -> None:
    out = await run(CURL, "-sS", "-X", method, node.url + "/m")
    assert out == "ok", out
    assert node.backend.lines == [f"{method} /m HTTP/1.1".encode()]


async def test_fragment_in_target_is_refused(node: Node) -> None:
    out = await run(CURL, "-sS", "-D", "-", "-o", "/dev/null", "--request-target", "/p#frag",
                    node.url + "/")
    assert out.startswith("HTTP/1.1 400 "), out
    assert node.backend.seen == []


MALFORMED = {
    "rtsp": (b"GET / RTSP/1.0\r\nCSeq: 1\r\n\r\n", 400),
    "ice": (b"SOURCE / ICE/1.0\r\nHost: x\r\n\r\n", 400),
    "http2-in-http1": (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    "fragment": (b"GET /a?b#c HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "host-with-space": (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
    "host-with-userinfo": (b"GET / HTTP/1.1\r\nHost: u@evil.test\r\n\r\n", 400),
    "host-with-slash": (b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400),
    "host-8bit": (b"GET / HTTP/1.1\r\nHost: \xffx\r\n\r\n", 400),
    "absolute-with-userinfo": (b"GET http://u:p@evil.test/ HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "absolute-empty-authority": (b"GET http:///p HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "non-token-method": (b"GE(T / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "method-with-slash": (b"GE/T / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "connect": (b"CONNECT evil.test:443 HTTP/1.1\r\nHost: evil.test:443\r\n\r\n", 400),
    "asterisk-not-options": (b"GET * HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "upgrade-with-bytes": (
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n", 400),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
async def test_malformed_request_gets_4xx_close_and_one_log_line(
    node: Node, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dlba.event")
    data, want = MALFORMED[case]
    out, _ = await exchange_closed(node.http_port, data)
    assert status_of(out) == want, out[:300]
    (resp,) = parse(out)
    assert resp.header("Connection") == "close"
    assert b"/smuggled" not in b"".join(node.backend.lines)
    if case != "upgrade-with-bytes":  # that one's head is a valid request, sent on
        assert node.backend.seen == []
    lines = [r.getMessage() for r in caplog.records if "event=bad_request" in r.getMessage()]
    assert len(lines) == 1 and f"status={want}" in lines[0], lines


async def test_upgrade_bytes_arriving_before_the_101_are_refused(node: Node) -> None:
    """The same smuggling in two writes: the raw back end refuses the upgrade (200), so bytes
    the node passed on would be read by it as a request of their own."""
    reader, writer = await asyncio.open_connection("127.0.0.1", node.http_port)
    try:
        writer.write(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n")
        out = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    assert b"/smuggled" not in b"".join(node.backend.lines)
    # The back end's refusal (200) may be on its way first; either way one answer, a close.
    assert out.startswith((b"HTTP/1.1 400 ", b"HTTP/1.1 200 ")), out
    assert out.count(b"HTTP/1.1 ") == 1


async def test_pipelined_requests_with_new_methods_and_bodies_stay_in_order(node: Node) -> None:
    """The node reads each request line itself and feeds its parser one message at a time:
    pipelined requests with bodies (a length, chunks) and new methods keep their bounds."""
    body = b"GET /inner HTTP/1.1\r\nHost: x\r\n\r\n"
    data = (b"FOO-BAR /1 HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%b"
            b"PURGE /2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"4\r\n\r\n\r\n\r\n0\r\n\r\n"
            b"\r\nGET http://h.test/3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            ) % (len(body), body)
    for split in (len(data), 7, 1):  # one write, then small pieces
        node.backend.seen.clear()
        reader, writer = await asyncio.open_connection("127.0.0.1", node.http_port)
        try:
            for i in range(0, len(data), split):
                writer.write(data[i : i + split])
                await writer.drain()
            out = await asyncio.wait_for(reader.read(), 10)
        finally:
            writer.close()
        assert [r.status for r in parse(out)] == [200, 200, 200], out
        assert node.backend.seen == [(b"FOO-BAR /1 HTTP/1.1", b"x"), (b"PURGE /2 HTTP/1.1", b"x"),
                                     (b"GET /3 HTTP/1.1", b"h.test")], split
