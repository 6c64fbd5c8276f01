"""The application-level ping: codec, authentication and the follower's verdict."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler.failover.heartbeat import (
    Answer,
    HeartbeatError,
    Ping,
    decode,
    encode_answer,
    encode_ping,
    heartbeat_key,
    scheduler_alive,
)

KEY = heartbeat_key(b"cluster secret")
nonces = st.binary(min_size=8, max_size=8)
answers = st.builds(
    Answer, nonce=nonces, name=st.text(min_size=1, max_size=40),
    term=st.integers(0, 2**32 - 1), scheduler=st.booleans(), proxy_ok=st.booleans(),
)


@given(nonces)
def test_ping_round_trips(nonce: bytes) -> None:
    assert decode(KEY, encode_ping(KEY, Ping(nonce))) == Ping(nonce)


@given(answers)
def test_answer_round_trips(answer: Answer) -> None:
    assert decode(KEY, encode_answer(KEY, answer)) == answer


@given(answers, st.integers(min_value=0), st.integers(1, 255))
def test_any_flipped_byte_is_refused(answer: Answer, pos: int, flip: int) -> None:
    data = bytearray(encode_answer(KEY, answer))
    data[pos % len(data)] ^= flip
    with pytest.raises(HeartbeatError):
        decode(KEY, bytes(data))


@given(answers)
def test_another_clusters_key_is_refused(answer: Answer) -> None:
    with pytest.raises(HeartbeatError):
        decode(heartbeat_key(b"another secret"), encode_answer(KEY, answer))


@given(st.binary(max_size=64))
def test_garbage_is_refused_never_crashes(data: bytes) -> None:
    with pytest.raises(HeartbeatError):
        decode(KEY, data)


def test_only_a_serving_scheduler_of_that_name_passes() -> None:
    n = b"12345678"
    assert scheduler_alive(Answer(n, "n3", 1, True, True), "n3")
    assert not scheduler_alive(None, "n3")  # no answer: the process is gone
    assert not scheduler_alive(Answer(n, "n3", 0, False, True), "n3")  # restarted: no role
    assert not scheduler_alive(Answer(n, "n3", 1, True, False), "n3")  # its proxy is dead
    assert not scheduler_alive(Answer(n, "n2", 2, True, True), "n3")  # someone else


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        encode_ping(KEY, Ping(b"short"))
    with pytest.raises(ValueError):
        encode_answer(KEY, Answer(b"12345678", "x" * 300, 1, True, True))
