"""The nghttp2 engine's own pieces: the field blocks crossing to and from C, and a session
driven bare (no proxy around it) by the h2 library's client."""

from __future__ import annotations

import resource

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import DataReceived, ResponseReceived, StreamEnded
from hypothesis import given
from hypothesis import strategies as st

from dlba.proxy import nghttp2_engine as ng

names = st.binary(min_size=1, max_size=20).filter(lambda b: b"\0" not in b)
values = st.binary(max_size=40)


@given(st.lists(st.tuples(names, values), max_size=12))
def test_fields_cross_as_one_block_and_a_nul_field_is_dropped(
        fields: list[tuple[bytes, bytes]]) -> None:
    kept = [f for f in fields if b"\0" not in f[1]]
    assert ng.decode_fields(ng.encode_fields(fields)) == kept


def records(evs: bytes) -> list[tuple[int, int, int, bytes]]:
    out, off = [], 0
    while off < len(evs):
        kind, sid, arg, n = ng.RECORD.unpack_from(evs, off)
        out.append((kind, sid, arg, evs[off + 16:off + 16 + n]))
        off += 16 + n
    return out


def test_a_request_is_one_record_and_a_body_waits_for_the_window() -> None:
    client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    client.update_settings({4: 10})  # INITIAL_WINDOW_SIZE: 10 bytes a stream
    client.send_headers(1, [(b":method", b"GET"), (b":scheme", b"https"),
                            (b":authority", b"a"), (b":path", b"/x")], end_stream=True)
    eng = ng.Engine(100, 65536, 1 << 20)
    rc, evs = eng.receive(client.data_to_send())
    assert rc == 0
    got = records(evs)
    assert [(k, s, a) for k, s, a, _ in got] == [(ng.EV_REQUEST, 1, 1), (ng.EV_END, 1, 0)]
    assert (b":path", b"/x") in ng.decode_fields(got[0][3])
    assert eng.head(1, ng.encode_fields([(b":status", b"200")]), True, False) == 0
    assert eng.data(1, b"y" * 25, True) == 25
    data, done, evs = eng.send()
    assert not done and [r[:2] for r in records(evs)] == [(ng.EV_BLOCKED, 1)]
    answer = client.receive_data(data)
    assert [type(e) for e in answer if not isinstance(e, DataReceived)][-1] is ResponseReceived
    assert sum(len(e.data) for e in answer if isinstance(e, DataReceived)) == 10
    assert eng.pending(1) == 15
    client.increment_flow_control_window(100, 1)
    eng.receive(client.data_to_send())
    data, done, evs = eng.send()
    kinds = [r[0] for r in records(evs)]
    assert ng.EV_DRAINED in kinds and ng.EV_CLOSE in kinds
    answer = client.receive_data(data)
    assert sum(len(e.data) for e in answer if isinstance(e, DataReceived)) == 15
    assert any(isinstance(e, StreamEnded) for e in answer)


def test_a_session_freed_with_a_body_still_waiting_frees_the_body() -> None:
    # nghttp2_session_del calls no on_stream_close: the shim frees what streams still hold.
    body = b"y" * 500_000

    def one() -> None:
        client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        client.initiate_connection()
        client.update_settings({4: 10})
        client.send_headers(1, [(b":method", b"GET"), (b":scheme", b"https"),
                                (b":authority", b"a"), (b":path", b"/x")], end_stream=True)
        eng = ng.Engine(100, 65536, 1 << 20)
        eng.receive(client.data_to_send())
        eng.head(1, ng.encode_fields([(b":status", b"200")]), True, False)
        eng.data(1, body, False)
        eng.send()  # 10 bytes go, the rest waits for a window that never opens

    for _ in range(20):
        one()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(200):  # 100 MB if each session's body outlived it
        one()
    grew_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grew_kb < 30_000, grew_kb
