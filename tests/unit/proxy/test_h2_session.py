"""Playbook tests for HTTP/2 clients: streams as exchanges, header translation, flow control
both ways, and the limits against HTTP/2's attacks (rapid reset, CONTINUATION, control-frame
floods, stalls, timeouts, graceful GOAWAY)."""

from __future__ import annotations

from pathlib import Path

import pytest
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
)
from h2.settings import SettingCodes
from hpack import Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from dlba.proxy import h2_session
from tests.unit.proxy.h2_playbook import GET, frames, h2book
from tests.unit.proxy.playbook import (
    Has,
    Starts,
    backend_lost,
    body,
    complete,
    connected,
    flush,
    head,
    tunnel_data,
)


def ONE_OF_TWO(backend_id: object) -> bool:
    return backend_id in (1, 2)


def test_streams_of_one_connection_are_scheduled_each_on_its_own(tmp_path: Path) -> None:
    pb = h2book(tmp_path, backends=2)
    for sid in (1, 3):
        pb.client.send_headers(sid, [*GET, (b"cookie", b"a=1"), (b"cookie", b"b=2")],
                               end_stream=True)
    pb.send()
    # least connections: the second stream goes to the other back end
    pb << ("open", ONE_OF_TWO) << ("open", ONE_OF_TWO)
    pb >> connected("b1") >> connected("b2")
    pb << ("b_write", "b1", Has(b"GET / HTTP/1.1\r\n", b"host: shop.example\r\n",
                                b"cookie: a=1; b=2\r\n", b"X-Forwarded-Proto: https\r\n"))
    pb << ("b_write", "b2", Starts(b"GET / HTTP/1.1\r\n"))
    # answered out of order, each on its own stream; hop-by-hop fields never reach HTTP/2
    pb >> head("b2", 200, ((b"Content-Length", b"2"), (b"Connection", b"keep-alive"),
                           (b"Keep-Alive", b"timeout=5"), (b"X-Backend", b"b2")))
    pb >> body("b2", b"b2") >> complete("b2") << ("b_release", "b2")
    pb >> head("b1", 200, ((b"Transfer-Encoding", b"chunked"), (b"Set-Cookie", b"JSESSIONID=x")))
    pb >> body("b1", b"hello") >> flush("b1") >> complete("b1") << ("b_release", "b1")
    pb.idle()
    heads = {e.stream_id: dict(e.headers) for e in pb.events(ResponseReceived)}
    assert heads[3] == {b":status": b"200", b"content-length": b"2", b"x-backend": b"b2",
                        b"strict-transport-security": b"max-age=31536000"}
    assert b"transfer-encoding" not in heads[1] and b"content-length" not in heads[1]
    assert any(v.startswith(b"DLBASERVER=") for n, v in pb.events(ResponseReceived)[1].headers
               if n == b"set-cookie")
    data = {(e.stream_id, e.data) for e in pb.events(DataReceived) if e.data}
    assert data == {(3, b"b2"), (1, b"hello")}
    assert {e.stream_id for e in pb.events(StreamEnded)} == {1, 3}
    assert pb.ctx.stats.requests == 2 and pb.ctx.stats.connections_open == 2  # + playbook's


def test_request_that_would_smuggle_into_http1_is_refused(tmp_path: Path) -> None:
    pb = h2book(tmp_path)
    pb.client.send_headers(1, [(b":method", b"GET"), (b":scheme", b"https"),
                               (b":authority", b"a"), (b":path", b"/a b")], end_stream=True)
    # CR/LF in a value (h2_headers checks both again behind nghttp2's own check)
    pb.client.send_headers(3, [*GET, (b"x-a", b"1\r\nX-Injected: 2")], end_stream=True)
    pb.send()
    pb.idle()  # no back end opened
    assert {e.stream_id: e.error_code for e in pb.events(StreamReset)} == {
        1: ErrorCodes.PROTOCOL_ERROR, 3: ErrorCodes.PROTOCOL_ERROR}
    assert not pb.events(ResponseReceived)


def test_response_waits_for_the_client_window_and_pauses_the_back_end(tmp_path: Path) -> None:
    pb = h2book(tmp_path, window=10)
    pb.send()
    pb.client.send_headers(1, GET, end_stream=True)
    pb.send()
    pb << ("open", 1) >> connected("b1") << ("b_write", "b1", Starts(b"GET"))
    pb >> head("b1", 200, ((b"Content-Length", b"100"),)) >> body("b1", b"x" * 100)
    pb >> flush("b1") << ("b_pause", "b1")  # 10 bytes went; 90 wait for a window update
    assert sum(len(e.data) for e in pb.events(DataReceived)) == 10
    pb.client.increment_flow_control_window(200, 1)
    pb.client.increment_flow_control_window(200)
    pb.send()
    pb << ("b_resume", "b1")
    pb >> complete("b1") << ("b_release", "b1")
    pb.idle()
    assert sum(len(e.data) for e in pb.events(DataReceived)) == 100
    assert pb.events(StreamEnded)


def test_request_body_window_reopens_only_as_the_back_end_takes_it(tmp_path: Path) -> None:
    pb = h2book(tmp_path)
    pb.client.send_headers(1, [(b":method", b"POST"), *GET[1:]])
    pb.send()
    pb << ("open", 1)
    chunk = b"y" * 16_000
    for _ in range(4):  # 64 000 bytes before the back end is connected: held, window reopened
        pb.client.send_data(1, chunk)
        pb.send()
    assert pb.h2.streams[1].unacked == 0
    pb.client.send_data(1, b"z" * 3_000)  # beyond RETAIN_LIMIT: the client's window stays shut
    pb.send()
    assert pb.h2.streams[1].unacked == 3_000
    pb >> connected("b1")
    pb << ("b_write", "b1", Has(b"Transfer-Encoding: chunked\r\n"))  # no length: chunked
    assert pb.h2.streams[1].unacked == 0
    pb.client.end_stream(1)
    pb.send()
    pb << ("b_write", "b1", b"0\r\n\r\n")
    pb.idle()


def test_rapid_reset_opens_no_back_end_and_a_flood_gets_enhance_your_calm(
        tmp_path: Path) -> None:
    pb = h2book(tmp_path)
    sid = 1
    for _ in range(50):  # HEADERS + RST_STREAM in one read: never scheduled
        pb.client.send_headers(sid, GET, end_stream=True)
        pb.client.reset_stream(sid, ErrorCodes.CANCEL)
        sid += 2
    pb.send()
    pb.idle()
    assert not pb.events(ConnectionTerminated)
    raw = b""
    for _ in range(h2_session.RESET_LIMIT):
        pb.client.send_headers(sid, GET, end_stream=True)
        pb.client.reset_stream(sid, ErrorCodes.CANCEL)
        sid += 2
    raw = pb.client.data_to_send()
    pb.h2.client_data(raw)
    pb << ("close",)
    pb.idle()
    goaway = pb.events(ConnectionTerminated)
    assert goaway and goaway[0].error_code == ErrorCodes.ENHANCE_YOUR_CALM
    assert pb.ctx.stats.h2_connections == 1 and pb.ctx.stats.h2_refused == 1


def test_continuation_flood_is_cut_without_a_back_end(tmp_path: Path) -> None:
    pb = h2book(tmp_path)
    pb.send()
    block = pb.client.encoder.encode(GET)
    frames = [HeadersFrame(1, data=block[:5]).serialize()]
    frames += [ContinuationFrame(1, data=b"\x00" * 16).serialize() for _ in range(200)]
    pb.h2.client_data(b"".join(frames))
    pb << ("close",)
    pb.idle()
    assert pb.events(ConnectionTerminated)


def test_ping_flood_gets_enhance_your_calm(tmp_path: Path) -> None:
    pb = h2book(tmp_path)
    pb.send()
    pings = b"".join(PingFrame(0, opaque_data=b"%08d" % i).serialize()
                     for i in range(h2_session.CONTROL_LIMIT + 1))
    pb.h2.client_data(pings)
    pb << ("close",)
    pb.idle()
    goaway = pb.events(ConnectionTerminated)
    assert goaway and goaway[-1].error_code == ErrorCodes.ENHANCE_YOUR_CALM


def test_idle_connection_gets_goaway_and_is_closed(tmp_path: Path) -> None:
    pb = h2book(tmp_path, keepalive_timeout_s=5.0)
    pb.client.send_headers(1, GET, end_stream=True)
    pb.send()
    pb << ("open", 1) >> connected("b1") << ("b_write", "b1", Starts(b"GET"))
    pb >> head("b1", 204) >> complete("b1") << ("b_release", "b1")
    pb.tick(4.0)
    pb.idle()
    pb.tick(1.5)
    pb << ("close",)
    pb.idle()
    assert pb.events(ConnectionTerminated)[0].error_code == ErrorCodes.NO_ERROR


def test_silent_connection_is_closed_after_the_header_timeout(tmp_path: Path) -> None:
    pb = h2book(tmp_path, header_timeout_s=3.0)
    pb.tick(3.5)
    pb << ("close",)
    pb.idle()


def test_zero_window_stall_is_reset(tmp_path: Path) -> None:
    pb = h2book(tmp_path, window=0, backend_timeout_s=20.0)
    pb.send()
    pb.client.send_headers(1, GET, end_stream=True)
    pb.send()
    pb << ("open", 1) >> connected("b1") << ("b_write", "b1", Starts(b"GET"))
    pb >> head("b1", 200, ((b"Content-Length", b"5"),)) >> body("b1", b"hello")
    pb >> complete("b1") << ("b_pause", "b1") << ("b_release", "b1")  # the client reads nothing
    pb.tick(21.0)
    pb.idle()
    resets = pb.events(StreamReset)
    assert resets and resets[0].error_code == ErrorCodes.CANCEL
    assert not pb.h2.streams


def test_graceful_stop_lets_streams_in_flight_finish(tmp_path: Path) -> None:
    pb = h2book(tmp_path)
    pb.client.send_headers(1, GET, end_stream=True)
    pb.send()
    pb << ("open", 1) >> connected("b1") << ("b_write", "b1", Starts(b"GET"))
    pb.h2.drain()
    goaway = pb.events(ConnectionTerminated)
    assert goaway and goaway[0].last_stream_id == 1 and goaway[0].error_code == 0
    # after the GOAWAY: refused, not served
    pb.h2.client_data(HeadersFrame(3, data=pb.client.encoder.encode(GET),
                                   flags=["END_HEADERS", "END_STREAM"]).serialize())
    pb >> head("b1", 200, ((b"Content-Length", b"2"),)) >> body("b1", b"ok")
    pb >> complete("b1") << ("close",) << ("b_release", "b1")
    pb.idle()
    sent = frames(pb.unparsed)
    assert any(isinstance(f, RstStreamFrame) and f.stream_id == 3
               and f.error_code == ErrorCodes.REFUSED_STREAM for f in sent)
    assert [f.data for f in sent if isinstance(f, DataFrame) and f.stream_id == 1] == [b"ok"]
    assert any(isinstance(f, DataFrame) and "END_STREAM" in f.flags for f in sent)


def test_client_reset_of_a_stream_in_flight_aborts_its_back_end(tmp_path: Path) -> None:
    pb = h2book(tmp_path)
    pb.client.send_headers(1, GET, end_stream=True)
    pb.send()
    pb << ("open", 1) >> connected("b1") << ("b_write", "b1", Starts(b"GET"))
    pb.h2.client_data(RstStreamFrame(1, error_code=ErrorCodes.CANCEL).serialize())
    pb << ("b_abort", "b1")
    pb.idle()
    assert not pb.h2.streams


def test_more_streams_than_advertised_is_a_protocol_error(tmp_path: Path) -> None:
    pb = h2book(tmp_path)
    pb.send()
    assert pb.client.remote_settings.max_concurrent_streams == h2_session.MAX_STREAMS
    assert pb.client.remote_settings.max_header_list_size == 65536
    frames = [HeadersFrame(sid, data=pb.client.encoder.encode(GET),
                           flags=["END_HEADERS"]).serialize()
              for sid in range(1, 2 * h2_session.MAX_STREAMS + 4, 2)]
    pb.h2.client_data(b"".join(frames))
    assert pb.events(ConnectionTerminated)
    assert ("close",) in pb.calls
    assert sum(1 for c in pb.calls if c[0] == "open") <= h2_session.MAX_STREAMS


def test_hpack_table_larger_than_advertised_is_refused(tmp_path: Path) -> None:
    pb = h2book(tmp_path)
    pb.send()
    assert pb.client.remote_settings.header_table_size == 4096
    enc = Encoder()
    enc.header_table_size = 1 << 20  # the next block starts with a table size update to 1 MiB
    pb.h2.client_data(HeadersFrame(1, data=enc.encode(GET),
                                   flags=["END_HEADERS", "END_STREAM"]).serialize())
    pb << ("close",)
    pb.idle()
    assert pb.events(ConnectionTerminated)[0].error_code in (
        ErrorCodes.COMPRESSION_ERROR, ErrorCodes.PROTOCOL_ERROR)  # h2 says the latter
    # the same block without the update is served
    pb = h2book(tmp_path)
    pb.send()
    pb.h2.client_data(HeadersFrame(1, data=Encoder().encode(GET),
                                   flags=["END_HEADERS", "END_STREAM"]).serialize())
    pb << ("open", 1)


def test_header_list_over_the_limit_is_refused_without_a_back_end(tmp_path: Path) -> None:
    pb = h2book(tmp_path)
    pb.send()
    big = [(b"x-%d" % i, b"v" * 1000) for i in range(80)]  # 80 KB of fields
    pb.client.send_headers(1, [*GET, *big], end_stream=True)
    pb.send()
    assert ("open", 1) not in pb.calls
    statuses = [dict(e.headers)[b":status"] for e in pb.events(ResponseReceived)]
    assert statuses == [b"431"] or pb.events(ConnectionTerminated)


def test_settings_and_window_update_floods_get_enhance_your_calm(tmp_path: Path) -> None:
    for frame in (lambda i: SettingsFrame(0, settings={SettingCodes.MAX_FRAME_SIZE: 16384}),
                  lambda i: WindowUpdateFrame(0, window_increment=1)):
        pb = h2book(tmp_path)
        pb.send()
        limit = max(h2_session.CONTROL_LIMIT, h2_session.WINDOW_UPDATE_LIMIT) + 1
        pb.h2.client_data(b"".join(frame(i).serialize() for i in range(limit)))
        pb << ("close",)
        pb.idle()
        assert pb.events(ConnectionTerminated)[-1].error_code == ErrorCodes.ENHANCE_YOUR_CALM


WS_CONNECT = [(b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"https"),
              (b":authority", b"shop.example"), (b":path", b"/chat"),
              (b"sec-websocket-version", b"13"), (b"origin", b"https://shop.example")]


def test_websocket_over_h2_is_a_tunnel_to_an_http1_upgrade(tmp_path: Path) -> None:
    """RFC 8441: an extended CONNECT becomes an HTTP/1.1 Upgrade to the back end; its 101 is the
    client's 200, then DATA frames carry the WebSocket's bytes both ways."""
    pb = h2book(tmp_path)
    pb.send()
    assert pb.client.remote_settings.enable_connect_protocol == 1
    pb.client.send_headers(1, WS_CONNECT)
    pb.send()
    pb << ("open", 1) >> connected("b1")
    pb << ("b_write", "b1", Has(b"GET /chat HTTP/1.1\r\n", b"host: shop.example\r\n",
                                b"Connection: upgrade\r\nUpgrade: websocket\r\n",
                                b"sec-websocket-version: 13\r\n", b"sec-websocket-key: "))
    pb >> head("b1", 101, ((b"Upgrade", b"websocket"), (b"Connection", b"Upgrade"),
                           (b"Sec-WebSocket-Accept", b"x")))
    pb.idle()
    head_fields = dict(pb.take(ResponseReceived)[0].headers)
    assert head_fields[b":status"] == b"200" and b"sec-websocket-accept" not in head_fields
    assert b"upgrade" not in head_fields and not pb.events(StreamEnded)
    pb.client.send_data(1, b"\x81\x02hi")
    pb.send()
    pb << ("b_write", "b1", b"\x81\x02hi")  # as is: no chunked framing in a tunnel
    pb >> tunnel_data("b1", b"\x81\x02yo")
    assert [e.data for e in pb.take(DataReceived)] == [b"\x81\x02yo"]
    pb >> backend_lost("b1")  # the back end closes the WebSocket: END_STREAM
    pb.idle()
    assert pb.events(StreamEnded)
    assert pb.ctx.stats.requests == 1


def test_websocket_refused_by_the_back_end_is_an_ordinary_answer(tmp_path: Path) -> None:
    pb = h2book(tmp_path)
    pb.client.send_headers(1, WS_CONNECT)
    pb.send()
    pb << ("open", 1) >> connected("b1") << ("b_write", "b1", Starts(b"GET /chat"))
    pb >> head("b1", 404, ((b"Content-Length", b"0"),)) >> complete("b1") << ("b_abort", "b1")
    pb.idle()
    assert dict(pb.events(ResponseReceived)[0].headers)[b":status"] == b"404"
    assert pb.events(StreamEnded)


def test_bytes_before_the_websocket_is_open_reset_the_stream(tmp_path: Path) -> None:
    pb = h2book(tmp_path)
    pb.client.send_headers(1, WS_CONNECT)
    pb.client.send_data(1, b"early")
    pb.send()
    pb.idle()  # never reaches a back end: a refusing back end would read it as a request
    assert pb.events(StreamReset)[0].error_code == ErrorCodes.PROTOCOL_ERROR


def test_a_stream_held_by_its_back_end_does_not_stall_the_others_bodies(
        tmp_path: Path) -> None:
    pb = h2book(tmp_path, backends=2)
    pb.send()
    assert pb.client.outbound_flow_control_window == h2_session.CONNECTION_WINDOW
    post = [(b":method", b"POST"), *GET[1:]]
    pb.client.send_headers(1, post)
    pb.client.send_headers(3, post)
    pb.send()
    pb << ("open", ONE_OF_TWO) << ("open", ONE_OF_TWO)
    # Stream 1's back end is not connected: past RETAIN_LIMIT its window is not reopened.
    for _ in range(20):
        room = pb.client.local_flow_control_window(1)
        if not room:
            break
        pb.client.send_data(1, b"a" * min(room, 16_000))
        pb.send()
    assert pb.client.local_flow_control_window(1) == 0 and pb.h2.streams[1].unacked > 0
    # ... the other stream's body still flows: the connection's window is not used up
    assert pb.client.local_flow_control_window(3) == 65_535


def test_a_slow_reader_making_progress_is_not_taken_for_a_stall(tmp_path: Path) -> None:
    pb = h2book(tmp_path, window=10, backend_timeout_s=20.0)
    pb.send()
    pb.client.send_headers(1, GET, end_stream=True)
    pb.send()
    pb << ("open", 1) >> connected("b1") << ("b_write", "b1", Starts(b"GET"))
    pb >> head("b1", 200, ((b"Content-Length", b"100"),)) >> body("b1", b"x" * 100)
    pb >> complete("b1") << ("b_pause", "b1") << ("b_release", "b1")
    for _ in range(8):  # 10 bytes every 15 s: slower than the stall limit in all, never idle
        pb.tick(15.0)
        pb.client.increment_flow_control_window(10, 1)
        pb.client.increment_flow_control_window(10)
        pb.send()
    pb.idle()
    assert not pb.events(StreamReset)
    assert sum(len(e.data) for e in pb.events(DataReceived)) == 90


def test_empty_data_frame_flood_gets_enhance_your_calm(tmp_path: Path) -> None:
    pb = h2book(tmp_path)
    pb.client.send_headers(1, [(b":method", b"POST"), *GET[1:]])
    pb.send()
    pb << ("open", 1)
    pb.h2.client_data(b"".join(DataFrame(1, data=b"").serialize()
                               for _ in range(h2_session.CONTROL_LIMIT + 1)))
    pb << ("close",)
    pb.idle()
    assert pb.events(ConnectionTerminated)[-1].error_code == ErrorCodes.ENHANCE_YOUR_CALM


def test_a_bug_under_a_stream_ends_its_connection_not_the_node(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pb = h2book(tmp_path)

    def broken(*_args: object) -> None:
        raise RuntimeError("bug")

    # (the compiled core's methods cannot be replaced, nor its calls between modules; the
    # Playbook's own ClientIO, which the stream's scheduling calls, can)
    monkeypatch.setattr(type(pb.io), "open_backend", broken)
    pb.client.send_headers(1, GET, end_stream=True)
    pb.send()
    pb << ("close",)
    pb.idle()
    assert pb.events(ConnectionTerminated)[0].error_code == ErrorCodes.INTERNAL_ERROR
