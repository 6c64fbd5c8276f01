"""Properties of the core's request framing: however the client's bytes are split into reads,
the back end gets the same requests (a chunked body is re-chunked per read, its content the
same) and the client the same answers."""

from __future__ import annotations

import itertools
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.proxy.playbook import Playbook, connected, data, playbook, response

STREAM = (
    b"\r\nPOST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n"
    b"PUT /b HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
    b"GET /c HTTP/1.1\r\nHost: a\r\nCookie: x=1\r\nX-Long: " + b"v" * 300 + b"\r\n\r\n"
)


def dechunk(sent: bytes) -> bytes:
    """A request as sent with its chunked body decoded (chunk sizes follow the reads)."""
    head, _, rest = sent.partition(b"\r\n\r\n")
    if b"Transfer-Encoding: chunked" not in head:
        return sent
    out = [head, b"\r\n\r\n"]
    while rest:
        size, _, rest = rest.partition(b"\r\n")
        n = int(size, 16)
        out.append(rest[:n])
        rest = rest[n + 2 :]
    return b"".join(out)


def run(tmp: Path, cuts: list[int]) -> tuple[list[bytes], list[bytes]]:
    """(what the back end got, per request; what the client got), reads cut at `cuts`."""
    pb: Playbook = playbook(tmp)
    edges = [0, *sorted(set(cuts)), len(STREAM)]
    for a, b in itertools.pairwise(edges):
        if b > a:
            pb >> data(STREAM[a:b])
    sent: list[bytes] = []
    answers: list[bytes] = []
    for i in range(3):
        assert pb.opening, f"request {i} never asked for a back end: {pb.calls!r}"
        pb >> connected(f"b{i}")
        pb >> response(f"b{i}", 200, b"r%d" % i)
        sent.append(dechunk(b"".join(
            c[2] for c in pb.calls if c[0] == "b_write" and c[1] == f"b{i}")))
    answers = [c[1] for c in pb.calls if c[0] == "write"]
    assert not any(c[0] in ("close", "abort", "shut_write") for c in pb.calls), pb.calls
    return sent, answers


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.integers(min_value=1, max_value=len(STREAM) - 1), max_size=12))
def test_any_split_of_the_stream_is_the_same_to_both_ends(tmp_path: Path,
                                                          cuts: list[int]) -> None:
    assert run(tmp_path, cuts) == run(tmp_path, [])


def test_unsplit_stream_reaches_the_back_end_rechunked_and_in_order(tmp_path: Path) -> None:
    sent, answers = run(tmp_path, [])
    assert sent[0].endswith(b"Transfer-Encoding: chunked\r\n\r\nabc0123456789abcdef")
    assert sent[1].startswith(b"PUT /b HTTP/1.1\r\n") and sent[1].endswith(b"\r\n\r\nhello")
    assert sent[2].startswith(b"GET /c HTTP/1.1\r\n")
    assert [a[-2:] for a in answers] == [b"r0", b"r1", b"r2"]
