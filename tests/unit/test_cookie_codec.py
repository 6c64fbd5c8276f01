"""Cookie codec: round trip, tamper/foreign rejection, garbage robustness (hypothesis)."""

from __future__ import annotations

import re

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from dlba.scheduling import cookie_codec

SECRET = bytes.fromhex("00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff")
ids = st.integers(min_value=0, max_value=cookie_codec.MAX_ID)
secrets_ = st.binary(min_size=1, max_size=64)


@given(ids, secrets_)
def test_round_trip(backend_id: int, secret: bytes) -> None:
    assert cookie_codec.decode(cookie_codec.encode(backend_id, secret), secret) == backend_id


@given(ids, secrets_)
def test_value_is_short_and_cookie_safe(backend_id: int, secret: bytes) -> None:
    value = cookie_codec.encode(backend_id, secret)
    # Cookie-safe without quoting; tag is >= 64 bits (16 base64 chars = 96 bits).
    assert re.fullmatch(r"[0-9]+\.[A-Za-z0-9_-]{16}", value)
    assert len(value) <= 18 + 1 + 16


@given(ids, secrets_, secrets_)
def test_foreign_secret_rejected(backend_id: int, secret: bytes, other: bytes) -> None:
    assume(secret != other)
    assert cookie_codec.decode(cookie_codec.encode(backend_id, secret), other) is None


@given(ids, st.data())
def test_any_single_edit_rejected(backend_id: int, data: st.DataObject) -> None:
    value = cookie_codec.encode(backend_id, SECRET)
    pos = data.draw(st.integers(0, len(value) - 1))
    kind = data.draw(st.sampled_from(["replace", "delete", "insert"]))
    ch = data.draw(st.characters())
    if kind == "replace":
        assume(ch != value[pos])
        edited = value[:pos] + ch + value[pos + 1:]
    elif kind == "delete":
        edited = value[:pos] + value[pos + 1:]
    else:
        edited = value[:pos] + ch + value[pos:]
    assert cookie_codec.decode(edited, SECRET) is None


@given(ids, ids)
def test_tag_of_one_id_does_not_validate_another(a: int, b: int) -> None:
    assume(a != b)
    tag = cookie_codec.encode(a, SECRET).split(".")[1]
    assert cookie_codec.decode(f"{b}.{tag}", SECRET) is None


def test_non_canonical_ids_rejected() -> None:
    tag = cookie_codec.encode(7, SECRET).split(".")[1]
    for id_text in ("07", "+7", " 7", "7 ", "-7", "\u0667"):  # Arabic-Indic seven
        assert cookie_codec.decode(f"{id_text}.{tag}", SECRET) is None
    assert cookie_codec.decode(f"7.{tag}", SECRET) == 7


def test_quoted_value_accepted() -> None:
    assert cookie_codec.decode('"' + cookie_codec.encode(5, SECRET) + '"', SECRET) == 5


@given(st.one_of(st.text(), st.binary().map(lambda b: b.decode("latin-1"))), secrets_)
def test_garbage_never_raises(value: str, secret: bytes) -> None:
    # Nothing random forges a 96-bit tag.
    assert cookie_codec.decode(value, secret) is None


def test_garbage_types_and_empty_secret() -> None:
    assert cookie_codec.decode(None, SECRET) is None  # type: ignore[arg-type]
    assert cookie_codec.decode(cookie_codec.encode(1, SECRET), b"") is None


@pytest.mark.parametrize("bad", [-1, cookie_codec.MAX_ID + 1])
def test_encode_range(bad: int) -> None:
    with pytest.raises(ValueError):
        cookie_codec.encode(bad, SECRET)


def test_encode_rejects_empty_secret_and_bool() -> None:
    with pytest.raises(ValueError):
        cookie_codec.encode(1, b"")
    with pytest.raises(TypeError):
        cookie_codec.encode(True, SECRET)
