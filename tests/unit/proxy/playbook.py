"""Playbook tests for the proxy core, in the manner of mitmproxy's: events in, calls out.

`pb >> event` hands one event to the core (dlba.proxy.core_session / core_exchange) and records
every call it makes on its outbound interface (ClientIO and the BackendLinks); `pb << call`
takes the oldest recorded call not yet checked and asserts it is the one expected. A test ends
with `pb.idle()`: nothing unchecked. No sockets, no event loop: the clock is the playbook's.

Calls are tuples: ("write", bytes), ("pause",), ("resume",), ("close",), ("abort",),
("shut_write",), ("open", backend_id), and for a back-end link named L: ("b_write", L, bytes),
("b_pause", L), ("b_resume", L), ("b_release", L), ("b_abort", L). cork/uncork are recorded
only when the playbook is made with corks=True.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from dlba.config import (
    AdminConfig,
    BackendConfig,
    ClusterConfig,
    Config,
    HostPort,
    NodeConfig,
    PersistenceConfig,
    ProxyConfig,
    SchedulingConfig,
    TlsConfig,
)
from dlba.proxy import http_head
from dlba.proxy.core_exchange import Exchange
from dlba.proxy.core_io import BackendLink, ClientIO
from dlba.proxy.core_session import ClientSession
from dlba.proxy.proxy_context import ProxyContext

Call = tuple[Any, ...]


class Clock:
    """Stands for the event loop: the core only asks it the time."""

    def __init__(self) -> None:
        self.now = 1000.0

    def time(self) -> float:
        return self.now


class Recorder(ClientIO):
    def __init__(self, pb: Playbook) -> None:
        self.pb = pb

    def write(self, data: bytes) -> None:
        self.pb.record("write", data)

    def writelines(self, pieces: list[bytes]) -> None:
        self.pb.record("write", b"".join(pieces))

    def cork(self) -> None:
        if self.pb.corks:
            self.pb.record("cork")

    def uncork(self) -> None:
        if self.pb.corks:
            self.pb.record("uncork")

    def pause_reading(self) -> None:
        self.pb.record("pause")

    def resume_reading(self) -> None:
        self.pb.record("resume")

    def close(self) -> None:
        self.pb.record("close")

    def abort(self) -> None:
        self.pb.record("abort")

    def shut_write(self) -> bool:
        self.pb.record("shut_write")
        return self.pb.can_shut

    def unsent(self) -> int:
        return self.pb.unsent

    def local_host(self) -> bytes:
        return b"10.0.0.1"

    def open_backend(self, ex: Exchange, backend_id: int) -> None:
        self.pb.opening.append((backend_id, ex))
        self.pb.record("open", backend_id)


class Link(BackendLink):
    """A back-end connection: `name` in the recorded calls."""

    def __init__(self, pb: Playbook, name: str, backend_id: int) -> None:
        super().__init__()
        self.pb = pb
        self.name = name
        self.backend_id = backend_id
        self.ex: Exchange | None = None
        self.head_request = False

    def bind(self, ex: Exchange, head_request: bool) -> None:
        self.ex = ex
        self.head_request = head_request

    def write(self, data: bytes) -> None:
        self.pb.record("b_write", self.name, data)

    def pause_reading(self) -> None:
        self.pb.record("b_pause", self.name)

    def resume_reading(self) -> None:
        self.pb.record("b_resume", self.name)

    def release(self) -> None:
        self.ex = None
        self.reused += 1
        self.pb.record("b_release", self.name)

    def abort(self) -> None:
        self.ex = None
        self.pb.record("b_abort", self.name)

    def authority(self) -> bytes:
        return b"127.0.0.%d:8080" % self.backend_id


# --- matching what was called -------------------------------------------------------------------
@dataclass(frozen=True)
class Starts:
    prefix: bytes

    def __call__(self, value: object) -> bool:
        return isinstance(value, bytes) and value.startswith(self.prefix)


@dataclass(frozen=True)
class Has:
    """Bytes holding every one of these pieces."""

    pieces: tuple[bytes, ...]

    def __init__(self, *pieces: bytes) -> None:
        object.__setattr__(self, "pieces", pieces)

    def __call__(self, value: object) -> bool:
        return isinstance(value, bytes) and all(p in value for p in self.pieces)


def _matches(expected: Call, actual: Call) -> bool:
    if len(expected) != len(actual):
        return False
    for e, a in zip(expected, actual, strict=True):
        ok = e(a) if callable(e) and not isinstance(e, (str, bytes, int)) else e == a
        if not ok:
            return False
    return True


# --- the playbook ---------------------------------------------------------------------------------
class Playbook:
    def __init__(self, ctx: ProxyContext, clock: Clock, *, scheme: bytes = b"http",
                 redirect: bool = False, corks: bool = False) -> None:
        self.ctx = ctx
        self.clock = clock
        self.corks = corks
        self.can_shut = True  # what ClientIO.shut_write answers (False: a TLS-less close)
        self.unsent = 0  # what ClientIO.unsent answers (bytes the client has not acknowledged)
        self.calls: list[Call] = []
        self.checked = 0
        self.opening: list[tuple[int, Exchange]] = []
        self.links: dict[str, Link] = {}
        self.io = Recorder(self)
        self.session = ClientSession(ctx, self.io, scheme, "192.0.2.7", "192.0.2.7:5555",
                                     redirect)

    def record(self, *call: Any) -> None:
        self.calls.append(call)

    def __rshift__(self, event: Callable[[Playbook], None]) -> Playbook:
        event(self)
        return self

    def __lshift__(self, expected: Call) -> Playbook:
        assert self.checked < len(self.calls), f"expected {expected!r}, nothing more was called"
        actual = self.calls[self.checked]
        assert _matches(expected, actual), (
            f"call {self.checked}: expected {expected!r}\n      got {actual!r}\n"
            f"all calls: {self.calls!r}")
        self.checked += 1
        return self

    def idle(self) -> None:
        rest = self.calls[self.checked:]
        assert not rest, f"unexpected calls: {rest!r}"

    def link(self, name: str) -> Link:
        return self.links[name]

    def exchange(self, name: str) -> Exchange:
        ex = self.links[name].ex
        assert ex is not None, f"{name} is bound to no exchange"
        return ex


def make_config(tmp: Path, backends: int = 2, **proxy: Any) -> Config:
    secret = tmp / "secret"
    secret.write_text("00" * 32)
    return Config(
        path=tmp / "dlba.toml",
        cluster=ClusterConfig(secret_file=secret),
        ports=(),
        nodes=(NodeConfig("n1", "127.0.0.1"),),
        tls=TlsConfig(),
        persistence=PersistenceConfig(),
        scheduling=SchedulingConfig(),
        backends=tuple(BackendConfig(i, HostPort(f"127.0.0.{i}", 8080))
                       for i in range(1, backends + 1)),
        admin=AdminConfig(),
        proxy=ProxyConfig(**proxy),
    )


def playbook(tmp: Path, *, backends: int = 1, scheme: bytes = b"http", redirect: bool = False,
             corks: bool = False, **proxy: Any) -> Playbook:
    clock = Clock()
    ctx = ProxyContext(make_config(tmp, backends, **proxy), "n1", cast(Any, clock))
    return Playbook(ctx, clock, scheme=scheme, redirect=redirect, corks=corks)


# --- events -------------------------------------------------------------------------------------
Event = Callable[[Playbook], None]


def data(raw: bytes) -> Event:
    return lambda pb: pb.session.client_data(raw)


def client_closed() -> Event:
    return lambda pb: pb.session.client_closed()


def client_writable(writable: bool) -> Event:
    return lambda pb: pb.session.client_writable(writable)


def tick(seconds: float) -> Event:
    """The clock moves on by `seconds`, then the tick."""

    def run(pb: Playbook) -> None:
        pb.clock.now += seconds
        pb.session.tick(pb.clock.now)

    return run


def connected(name: str, *, pooled: str | None = None) -> Event:
    """The oldest back-end connection asked for is made: a fresh link `name`, or the idle
    pooled link of that name (`pooled=name`)."""

    def run(pb: Playbook) -> None:
        backend_id, ex = pb.opening.pop(0)
        link = pb.links.get(pooled) if pooled else None
        if link is None:
            link = pb.links[name] = Link(pb, name, backend_id)
        ex.backend_connected(link, pooled is None)

    return run


def connect_failed(reason: str = "refused") -> Event:
    def run(pb: Playbook) -> None:
        _, ex = pb.opening.pop(0)
        ex.backend_connect_failed(ConnectionRefusedError(reason))

    return run


def head(name: str, status: int = 200, headers: tuple[tuple[bytes, bytes], ...] = (),
         *, keep_alive: bool = True, reason: bytes = b"") -> Event:
    """A response head parsed from back end `name` (framing found as the shell finds it)."""

    def run(pb: Playbook) -> None:
        chunked, has_length, seen = http_head.response_facts(headers)
        pb.exchange(name).on_response_head(status, reason or b"-", list(headers), keep_alive,
                                           chunked, has_length, seen)

    return run


def body(name: str, raw: bytes) -> Event:
    return lambda pb: pb.exchange(name).on_response_body(raw)


def flush(name: str) -> Event:
    """The end of one read from the back end."""
    return lambda pb: pb.exchange(name).flush()


def complete(name: str) -> Event:
    return lambda pb: pb.exchange(name).on_response_complete()


def response(name: str, status: int = 200, payload: bytes = b"ok", *,
             keep_alive: bool = True) -> Event:
    """A whole response with a Content-Length, in one read."""

    def run(pb: Playbook) -> None:
        ex = pb.exchange(name)
        head(name, status, ((b"Content-Length", b"%d" % len(payload)),),
             keep_alive=keep_alive)(pb)
        if payload:
            ex.on_response_body(payload)
        ex.on_response_complete()

    return run


def tunnel_data(name: str, raw: bytes) -> Event:
    return lambda pb: pb.exchange(name).on_tunnel_data(raw)


def backend_lost(name: str, *, got_bytes: bool = False) -> Event:
    def run(pb: Playbook) -> None:
        ex = pb.links[name].ex
        if ex is not None:
            ex.on_backend_lost(ConnectionResetError(), got_bytes)

    return run


def backend_writable(name: str, writable: bool) -> Event:
    return lambda pb: pb.exchange(name).on_backend_writable(writable)
