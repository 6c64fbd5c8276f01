"""dlba/tls/transport.py over real TLS on 127.0.0.1, no mocks: `loop.create_server(tls_server(...))`
around a recording protocol, Python `ssl` clients trusting the project's CA (make_certs).

Covers: a round trip (write, writelines, extra info); connection_made only after the handshake;
pause/resume_reading; a 16 MB write with pause_writing; close() (close_notify, then the socket
closes without waiting); write_eof() (TLS half-close); a refused handshake and a handshake
timeout (logged, never seen by the app); the client's close_notify (eof_received, then close).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import cast

import pytest

from dlba.tls import context as tls
from dlba.tls import transport as tls_transport
from dlba.tls.certs import CertPaths
from dlba.tls.transport import TLSTransport, tls_server
from tests.integration.loopback import make_certs

MB = 1 << 20


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertPaths:
    return make_certs(tmp_path_factory.mktemp("certs"))


class App(asyncio.Protocol):
    """Records what the TLS transport hands it; `on_data` reacts to each chunk."""

    def __init__(self, on_data: Callable[[App, bytes], None] | None) -> None:
        self.on_data = on_data
        self.transport: TLSTransport | None = None
        self.version: str | None = None  # ssl_object.version() inside connection_made
        self.alpn: str | None = None
        self.peer: tuple[str, int] | None = None
        self.received = bytearray()
        self.events: list[str] = []  # made, eof, lost, pause, resume
        self.lost_exc: Exception | None = None

    @property
    def t(self) -> TLSTransport:
        assert self.transport is not None
        return self.transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(TLSTransport, transport)
        sslobj = self.transport.get_extra_info("ssl_object")
        self.version, self.alpn = sslobj.version(), sslobj.selected_alpn_protocol()
        self.peer = self.transport.get_extra_info("peername")
        self.events.append("made")

    def data_received(self, data: bytes) -> None:
        self.received += data
        if self.on_data is not None:
            self.on_data(self, data)

    def eof_received(self) -> None:
        self.events.append("eof")

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append("lost")
        self.lost_exc = exc

    def pause_writing(self) -> None:
        self.events.append("pause")

    def resume_writing(self) -> None:
        self.events.append("resume")


@asynccontextmanager
async def serve(certs: CertPaths, on_data: Callable[[App, bytes], None] | None = None,
                handshake_timeout: float = 5.0) -> AsyncIterator[tuple[int, list[App]]]:
    """Port and the apps made so far (one per accepted connection, handshake done or not)."""
    ctx, apps = tls.server_context(certs.node_cert, certs.node_key), list[App]()

    def factory() -> App:
        apps.append(App(on_data))
        return apps[-1]

    loop = asyncio.get_running_loop()
    server = await loop.create_server(tls_server(ctx, factory, handshake_timeout),
                                      "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], apps
    finally:
        server.close()
        for app in apps:  # (asyncio's transport raises on abort() after a drained close())
            if app.transport is not None and "lost" not in app.events:
                app.transport.abort()
        await server.wait_closed()


async def until(cond: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def connect(port: int, cafile: Path, handshake: bool = True) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    return tls.client_context(cafile).wrap_socket(
        raw, server_hostname="localhost", suppress_ragged_eofs=False,
        do_handshake_on_connect=handshake)


def recv_exactly(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(min(n - len(buf), MB))
        assert chunk, f"EOF after {len(buf)} of {n} bytes"
        buf += chunk
    return bytes(buf)


def recv_to_tls_eof(s: ssl.SSLSocket) -> bytes:
    """Everything up to the peer's close_notify; a ragged EOF (no close_notify) raises
    SSLEOFError since the socket was made with suppress_ragged_eofs=False."""
    data = bytearray()
    with contextlib.suppress(ssl.SSLZeroReturnError):
        while chunk := s.recv(MB):  # SSLSocket.recv turns close_notify into b""
            data += chunk
    return bytes(data)


def tcp_peek(s: socket.socket, timeout: float) -> bytes | None:
    """What the bare TCP stream shows: b"" once the server closed it, None while open."""
    s.settimeout(timeout)
    try:
        return socket.socket.recv(s, 1, socket.MSG_PEEK)
    except TimeoutError:
        return None


def handshake_failures(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "dlba.event" and "event=tls_handshake_failed" in r.getMessage()]


def sha(data: bytes | bytearray) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_round_trip_write_writelines_and_extra_info(certs: CertPaths) -> None:
    request = random.Random(1).randbytes(100_000)

    def on_data(app: App, data: bytes) -> None:
        if len(app.received) == len(request):
            app.t.write(b"one,")
            app.t.writelines([b"two,", b"three"])

    async with serve(certs, on_data) as (port, apps):
        def client() -> tuple[bytes, tuple[str, int]]:
            with connect(port, certs.ca_cert) as s:
                s.sendall(request)
                return recv_exactly(s, 13), s.getsockname()  # then a FIN, no close_notify

        reply, addr = await asyncio.to_thread(client)
        app = apps[0]
        await until(lambda: "lost" in app.events, "connection_lost")
    assert reply == b"one,two,three"
    assert app.received == request
    sslobj = app.t.get_extra_info("ssl_object")
    assert isinstance(sslobj, ssl.SSLObject) and sslobj.version() == "TLSv1.3"
    assert app.peer == addr and app.t.get_extra_info("peername") == addr
    # The client's bare FIN: eof_received, then connection_lost without an error.
    assert app.events == ["made", "eof", "lost"] and app.lost_exc is None


async def test_connection_made_only_after_handshake(certs: CertPaths) -> None:
    go = threading.Event()
    async with serve(certs) as (port, apps):
        def client() -> None:
            with connect(port, certs.ca_cert, handshake=False) as s:
                assert go.wait(5)
                s.do_handshake()
                assert recv_to_tls_eof(s) == b""

        task = asyncio.ensure_future(asyncio.to_thread(client))
        await until(lambda: len(apps) == 1, "the TCP connection")
        await asyncio.sleep(0.2)
        assert apps[0].events == [] and apps[0].transport is None  # TCP only: no app yet
        go.set()
        await until(lambda: apps[0].events == ["made"], "connection_made")
        assert apps[0].version == "TLSv1.3" and apps[0].alpn == "http/1.1"
        apps[0].t.close()
        await asyncio.wait_for(task, 10)


async def test_pause_reading_holds_data_until_resume(certs: CertPaths) -> None:
    first, rest = random.Random(2).randbytes(200_000), random.Random(3).randbytes(4 * MB)
    total, go, paused_at = first + rest, threading.Event(), []

    def on_data(app: App, data: bytes) -> None:
        if len(app.received) == len(data):  # the first chunk (one record); more may be
            app.t.pause_reading()  # decrypted already or waiting in the incoming BIO
            paused_at.append(len(data))

    async with serve(certs, on_data) as (port, apps):
        def client() -> None:
            with connect(port, certs.ca_cert) as s:
                s.sendall(first)
                assert go.wait(5)
                s.sendall(rest)  # blocks while the server does not read
                assert recv_exactly(s, 2) == b"ok"

        task = asyncio.ensure_future(asyncio.to_thread(client))
        await until(lambda: bool(paused_at), "the first chunk")
        app = apps[0]
        await asyncio.sleep(0.3)
        assert len(app.received) == paused_at[0], "data delivered while reading was paused"
        go.set()
        await asyncio.sleep(0.5)
        assert len(app.received) == paused_at[0], "data delivered while reading was paused"
        app.t.resume_reading()
        await until(lambda: len(app.received) >= len(total), "the rest after resume")
        assert len(app.received) == len(total) and sha(app.received) == sha(total)
        app.t.write(b"ok")
        await asyncio.wait_for(task, 10)


async def test_large_write_pauses_writing_and_arrives_whole(certs: CertPaths) -> None:
    body = random.Random(4).randbytes(16 * MB)
    async with serve(certs, lambda app, data: app.t.write(body)) as (port, apps):
        def client() -> bytes:
            with connect(port, certs.ca_cert) as s:
                s.sendall(b"go")
                time.sleep(0.5)  # a slow reader: the server's buffer fills
                return recv_exactly(s, len(body))

        got = await asyncio.wait_for(asyncio.to_thread(client), 30)
        app = apps[0]
        await until(lambda: "resume" in app.events, "resume_writing")
    assert len(got) == len(body) and sha(got) == sha(body)
    assert app.events[:3] == ["made", "pause", "resume"], app.events


async def test_close_sends_close_notify_and_closes_without_waiting(certs: CertPaths) -> None:
    reply = random.Random(5).randbytes(8 * MB)  # more than the socket buffers hold

    def on_data(app: App, data: bytes) -> None:
        app.t.write(reply)
        app.t.close()
        app.t.write(b"after close")  # ignored

    async with serve(certs, on_data) as (port, apps):
        def client() -> tuple[bytes, bytes | None]:
            s = connect(port, certs.ca_cert)
            try:
                s.sendall(b"req")
                time.sleep(0.5)  # the server closes with most of the reply still queued
                data = recv_to_tls_eof(s)  # a ragged EOF would raise SSLEOFError
                return data, tcp_peek(s, 3)  # we never send our close_notify
            finally:
                socket.socket.close(s)

        data, tail = await asyncio.to_thread(client)
        app = apps[0]
        await until(lambda: "lost" in app.events, "connection_lost")
    assert len(data) == len(reply) and sha(data) == sha(reply)
    assert tail == b"", "the server kept the socket open waiting for the client's close_notify"
    assert app.events[0] == "made" and app.events[-1] == "lost" and "eof" not in app.events
    assert app.lost_exc is None and app.t.is_closing()


async def test_write_eof_half_closes_until_the_clients_close_notify(certs: CertPaths) -> None:
    late, sent_late, go = random.Random(6).randbytes(MB), threading.Event(), threading.Event()

    def on_data(app: App, data: bytes) -> None:
        if len(app.received) == 3:
            app.t.write(b"answer")
            app.t.write_eof()

    async with serve(certs, on_data) as (port, apps):
        def client() -> tuple[bytes, bytes | None, bytes | None]:
            with connect(port, certs.ca_cert) as s:
                s.sendall(b"req")
                data = recv_to_tls_eof(s)  # the server's close_notify
                fin = tcp_peek(s, 0.3)  # then its FIN: b"" (a half-close; it still reads)
                s.settimeout(5)
                s.sendall(late)  # the server still reads (and discards) after write_eof
                sent_late.set()
                assert go.wait(5)
                raw = s.unwrap()  # our close_notify: now the server closes the socket
                return data, fin, tcp_peek(raw, 3)

        task = asyncio.ensure_future(asyncio.to_thread(client))
        await asyncio.to_thread(sent_late.wait, 10)
        await asyncio.sleep(0.3)
        app = apps[0]
        assert app.t.can_write_eof()
        assert app.received == b"req", "data after write_eof reached the app"
        assert app.events == ["made"] and not app.t.is_closing()
        go.set()
        data, fin, tail = await asyncio.wait_for(task, 10)
        await until(lambda: "lost" in app.events, "connection_lost after our close_notify")
    assert data == b"answer"
    assert fin == b"", "no FIN after the server's close_notify"
    assert tail == b"" and app.lost_exc is None and app.received == b"req"


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated")
async def test_refused_handshake_closes_and_logs(certs: CertPaths,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dlba.event")
    ctx = ssl.create_default_context(cafile=str(certs.ca_cert))
    ctx.set_ciphers("ALL:@SECLEVEL=0")  # lets OpenSSL 3 offer TLS 1.1 at all
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    async with serve(certs, handshake_timeout=0.3) as (port, apps):
        def client() -> tuple[int, bytes | None]:
            raw = socket.create_connection(("127.0.0.1", port), timeout=5)
            with ctx.wrap_socket(raw, server_hostname="localhost",
                                 do_handshake_on_connect=False) as s:
                with pytest.raises((ssl.SSLError, ConnectionError)):
                    s.do_handshake()
                return s.getsockname()[1], tcp_peek(s, 3)

        cport, tail = await asyncio.to_thread(client)
        await asyncio.sleep(0.5)  # past the handshake timeout: no second report
    assert tail == b"", "the server did not close the connection"
    assert len(apps) == 1 and apps[0].events == [] and apps[0].transport is None
    lines = handshake_failures(caplog)
    assert len(lines) == 1, lines
    assert f"peer=127.0.0.1:{cport}" in lines[0] and "timeout" not in lines[0], lines[0]


async def test_handshake_timeout_closes_and_logs(certs: CertPaths,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dlba.event")
    async with serve(certs, handshake_timeout=0.5) as (port, apps):
        def client() -> tuple[bytes, float]:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(b"\x16\x03\x01\x02\x00")  # a record header, then nothing
                t0 = time.monotonic()
                try:
                    got = s.recv(100)
                except ConnectionResetError:
                    got = b""
                return got, time.monotonic() - t0

        got, elapsed = await asyncio.to_thread(client)
    assert got == b"" and 0.3 < elapsed < 3, (got, elapsed)
    assert len(apps) == 1 and apps[0].events == []
    lines = handshake_failures(caplog)
    assert len(lines) == 1 and "reason=handshake timeout" in lines[0], lines


async def test_client_close_notify_gets_eof_then_close(certs: CertPaths) -> None:
    """Fails on 6a87225: SSLObject.read returns b"" (no SSLZeroReturnError) for a close_notify
    while ours is unsent, and TLSTransport._read takes that b"" for "nothing more yet"."""
    async with serve(certs, lambda app, data: app.t.write(b"pong")) as (port, apps):
        def client() -> tuple[bool, bytes | None, list[str]]:
            with connect(port, certs.ca_cert) as s:
                s.sendall(b"ping")
                assert recv_exactly(s, 4) == b"pong"
                s.settimeout(2)
                try:  # close_notify, then wait for the server's
                    return True, tcp_peek(s.unwrap(), 3), list(apps[0].events)
                except TimeoutError:  # snapshot before our FIN changes anything
                    return False, None, list(apps[0].events)

        answered, tail, events = await asyncio.wait_for(asyncio.to_thread(client), 10)
        app = apps[0]
        await until(lambda: "lost" in app.events, "connection_lost")
    assert answered, ("no close_notify back and the socket still open 2 s after the client's "
                      f"close_notify; the app had seen only {events}")
    assert tail == b""
    assert app.received == b"ping"
    assert app.events == ["made", "eof", "lost"] and app.lost_exc is None


@pytest.mark.parametrize("wrapper", ["c_object", "public_wrapper"])
async def test_answer_then_close_notify_with_either_ssl_object(
        certs: CertPaths, wrapper: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The layer drives `_ssl._SSLSocket` directly (SSLContext._wrap_bio); without that private
    name it falls back to ssl.SSLObject. Both answer, send close_notify and show an SSLObject."""
    if wrapper == "public_wrapper":
        monkeypatch.setattr(tls_transport, "_WRAP_BIO", None)

    def on_data(app: App, data: bytes) -> None:
        app.t.write(b"pong")
        app.t.close()

    async with serve(certs, on_data) as (port, apps):
        def client() -> bytes:
            with connect(port, certs.ca_cert) as s:
                s.sendall(b"ping")
                return recv_to_tls_eof(s)  # a ragged EOF would raise: close_notify came

        reply = await asyncio.to_thread(client)
        app = apps[0]
        await until(lambda: "lost" in app.events, "connection_lost")
    assert reply == b"pong" and app.received == b"ping"
    sslobj = app.t.get_extra_info("ssl_object")
    assert isinstance(sslobj, ssl.SSLObject) and sslobj.version() == "TLSv1.3"
    assert isinstance(app.t.sslobj, ssl.SSLObject) == (wrapper == "public_wrapper")


class RecordingTCP(asyncio.Transport):
    """Stands in for the socket below the layer: what the layer hands it, write by write."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def memory_session(certs: CertPaths) -> tuple[TLSTransport, App, RecordingTCP, ssl.SSLObject,
                                               ssl.MemoryBIO, ssl.MemoryBIO]:
    """The layer over a recording transport, handshaken with a client SSLObject in memory."""
    app = App(None)
    t = TLSTransport(tls.server_context(certs.node_cert, certs.node_key), app)
    tcp = RecordingTCP()
    t.connection_made(tcp)
    c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = tls.client_context(certs.ca_cert).wrap_bio(c_in, c_out,
                                                        server_hostname="localhost")
    for _ in range(10):  # flight by flight
        with contextlib.suppress(ssl.SSLWantReadError):
            client.do_handshake()
        if c_out.pending:
            t.data_received(c_out.read())
        for w in tcp.writes:
            c_in.write(w)
        tcp.writes.clear()
        if app.transport is not None and c_out.pending == 0:
            break
    assert app.events == ["made"]
    client.write(b"GET")
    t.data_received(c_out.read())
    assert app.received == b"GET"
    return t, app, tcp, client, c_in, c_out


def read_all(client: ssl.SSLObject) -> bytes:
    """What has arrived, up to a close_notify (b"" or SSLZeroReturnError) or the end."""
    got = b""
    with contextlib.suppress(ssl.SSLZeroReturnError, ssl.SSLWantReadError):
        while chunk := client.read(100):
            got += chunk
    return got


async def test_cork_sends_the_last_bytes_and_close_notify_in_one_write(
        certs: CertPaths) -> None:
    t, _, tcp, client, c_in, _ = memory_session(certs)
    t.cork()
    t.write(b"head,")
    t.writelines([b"body,", b"end"])
    assert tcp.writes == []  # held while corked
    t.close()  # close_notify: what is held and the alert go in one write
    t.uncork()
    assert len(tcp.writes) == 1 and tcp.closed
    c_in.write(tcp.writes[0])
    assert read_all(client) == b"head,body,end"
    client.unwrap()  # completes (no SSLWantReadError): the server's close_notify came along


async def test_uncork_sends_what_was_held_and_later_writes_go_at_once(
        certs: CertPaths) -> None:
    t, _, tcp, client, c_in, _ = memory_session(certs)
    t.cork()
    t.write(b"one,")
    t.write(b"two,")
    assert tcp.writes == []
    t.uncork()
    assert len(tcp.writes) == 1 and not tcp.closed
    t.write(b"three")
    assert len(tcp.writes) == 2
    for w in tcp.writes:
        c_in.write(w)
    assert read_all(client) == b"one,two,three"
