"""A Playbook for the HTTP/2 session (dlba.proxy.h2_session): the client is the `h2` library's
client-side connection, so each test speaks real HTTP/2 frames to the core.

What the session writes is fed to the client connection and kept as `pb.got` (h2 events);
every other outbound call is recorded as in playbook.py (("open", id), ("close",), back-end
link calls). The Playbook's back-end events (connected, head, body, flush, complete) apply.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from h2.config import H2Configuration
from h2.connection import ConnectionState, H2Connection
from h2.events import Event as H2Event
from h2.settings import SettingCodes
from hyperframe.frame import Frame

from dlba.proxy.h2_session import H2Session
from dlba.proxy.proxy_context import ProxyContext
from tests.unit.proxy.playbook import Clock, Playbook, make_config

GET = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"shop.example"),
       (b":path", b"/")]


class H2Book(Playbook):
    def __init__(self, ctx: ProxyContext, clock: Clock, window: int | None = None) -> None:
        super().__init__(ctx, clock, scheme=b"https")
        self.got: list[H2Event] = []
        self.unparsed = b""
        self.raw_out = 0  # bytes the session wrote
        self.client = H2Connection(H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=False))
        self.client.initiate_connection()
        if window is not None:
            self.client.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.h2 = H2Session(ctx, self.io, "192.0.2.7", "192.0.2.7:5555")
        self.send()

    def record(self, *call: Any) -> None:
        if call[0] == "write":
            data = cast(bytes, call[1])
            self.raw_out += len(data)
            if self.unparsed or self.client.state_machine.state == ConnectionState.CLOSED:
                self.unparsed += data  # h2's client reads nothing after a GOAWAY: see frames()
            else:
                self.got += self.client.receive_data(data)
        else:
            self.calls.append(call)

    def send(self, raw: bytes = b"") -> None:
        """What the client connection has to send (and `raw` bytes after it) to the session."""
        self.h2.client_data(self.client.data_to_send() + raw)

    def events(self, kind: type[H2Event]) -> list[Any]:
        return [e for e in self.got if isinstance(e, kind)]

    def take(self, kind: type[H2Event]) -> list[Any]:
        """The events of `kind` received so far, removed from `got`."""
        mine = self.events(kind)
        self.got = [e for e in self.got if not isinstance(e, kind)]
        return mine

    def tick(self, seconds: float) -> None:
        self.clock.now += seconds
        self.h2.tick(self.clock.now)


def h2book(tmp: Path, *, backends: int = 1, window: int | None = None, **proxy: Any) -> H2Book:
    clock = Clock()
    ctx = ProxyContext(make_config(tmp, backends, **proxy), "n1", cast(Any, clock))
    return H2Book(ctx, clock, window)


def frames(raw: bytes) -> list[Frame]:
    """The frames in `raw` (what the session wrote after the client's h2 saw a GOAWAY)."""
    out: list[Frame] = []
    while len(raw) >= 9:
        frame, length = Frame.parse_frame_header(memoryview(raw[:9]))
        frame.parse_body(memoryview(raw[9:9 + length]))
        out.append(frame)
        raw = raw[9 + length:]
    return out
