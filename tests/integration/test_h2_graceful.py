"""A stopping node says GOAWAY to its HTTP/2 clients and finishes the streams in flight (real
`dlba node` process with workers, a real TLS client speaking h2 frames)."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import time
from pathlib import Path

from h2.config import H2Configuration
from h2.connection import H2Connection
from hpack import Decoder
from hyperframe.frame import DataFrame, Frame, GoAwayFrame, HeadersFrame

from tests.integration.loopback import free_port, make_certs, node_processes, write_config


def open_h2(port: int, cafile: Path) -> tuple[ssl.SSLSocket, H2Connection]:
    ctx = ssl.create_default_context(cafile=str(cafile))
    ctx.set_alpn_protocols(["h2"])
    sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10),
                           server_hostname="localhost")
    assert sock.selected_alpn_protocol() == "h2"
    conn = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    return sock, conn


def parse_frames(raw: bytes) -> list[Frame]:
    out: list[Frame] = []
    while len(raw) >= 9:
        frame, length = Frame.parse_frame_header(memoryview(raw[:9]))
        frame.parse_body(memoryview(raw[9:9 + length]))
        out.append(frame)
        raw = raw[9 + length:]
    return out


def test_stop_sends_goaway_and_the_stream_in_flight_finishes(tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "certs")
    bport, hport, sport = free_port(), free_port(), free_port()
    cfg = write_config(tmp_path, certs, [(1, f"127.0.0.1:{bport}")], http_port=hport,
                       https_port=sport, admin_port=free_port(),
                       extra="[proxy]\nworkers = 2\n")
    with node_processes(cfg, [bport], [hport, sport]) as pid:
        sock, conn = open_h2(sport, certs.ca_cert)
        conn.send_headers(1, [(b":method", b"GET"), (b":scheme", b"https"),
                              (b":authority", b"localhost"), (b":path", b"/slow?ms=1500")],
                          end_stream=True)
        sock.sendall(conn.data_to_send())
        time.sleep(0.5)  # the request is at the back end
        os.kill(pid, signal.SIGTERM)
        raw = b""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and b"slept" not in raw:
            data = sock.recv(65536)
            if not data:
                break
            raw += data
        sock.close()
    # h2's client reads nothing after a GOAWAY, so the frames are read here.
    frames = parse_frames(raw)
    goaway = [f for f in frames if isinstance(f, GoAwayFrame)]
    assert goaway and goaway[0].error_code == 0 and goaway[0].last_stream_id == 1, frames
    decoder = Decoder()
    heads = [dict(decoder.decode(f.data, raw=True)) for f in frames
             if isinstance(f, HeadersFrame)]
    assert [h[b":status"] for h in heads] == [b"200"], frames
    dframes = [f for f in frames if isinstance(f, DataFrame) and f.stream_id == 1]
    assert "END_STREAM" in dframes[-1].flags
    body = b"".join(f.data for f in dframes)
    assert body == b"slept 1500 ms\n"
