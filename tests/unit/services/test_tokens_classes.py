"""Class tokens and class recognition (pure)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dlba.config.services import ClassConfig
from dlba.services.classes import DEFAULT_CLASS, Classifier
from dlba.services.tokens import make_token, token_key, verify_token

SECRET = b"s" * 32
names = st.text(st.characters(min_codepoint=48, max_codepoint=122), min_size=1, max_size=20
                ).filter(lambda s: "." not in s)


@given(names, st.integers(min_value=1000, max_value=2**40))
def test_token_round_trip(name: str, expires: int) -> None:
    tok = make_token(SECRET, name, expires)
    assert verify_token(token_key(SECRET), tok, expires - 1) == name
    assert verify_token(token_key(SECRET), tok, expires + 1) is None  # expired
    assert verify_token(token_key(b"other"), tok, 0) is None  # another array's secret


@given(st.text(max_size=60))
def test_garbage_never_verifies(text: str) -> None:
    assert verify_token(token_key(SECRET), text, 0) is None


def test_tampered_token_is_refused() -> None:
    tok = make_token(SECRET, "gold", 2000)
    name, exp, mac = tok.split(".")
    key = token_key(SECRET)
    assert verify_token(key, f"silver.{exp}.{mac}", 0) is None
    assert verify_token(key, f"{name}.{int(exp) + 1000}.{mac}", 0) is None


CLASSES = [
    ClassConfig("gold", 0, vips=("198.18.0.112/30",), token=True),
    ClassConfig("silver", 1, vips=("198.18.0.116/30",), sources=("10.0.0.0/8",)),
    ClassConfig("partner", 2, sources=("10.1.0.0/16",), pools=("web",), weight=50),
]


def test_vip_dialled_names_the_class() -> None:
    c = Classifier(CLASSES)
    assert c.classify("198.18.0.113", "192.0.2.1").name == "gold"
    assert c.classify("198.18.0.117", "192.0.2.1").name == "silver"
    assert c.classify("198.18.0.100", "192.0.2.1").name == DEFAULT_CLASS
    assert c.default.priority == 3  # below every configured class


def test_highest_priority_match_wins_and_token_beats_address() -> None:
    c = Classifier(CLASSES)
    # 10.1.x is in silver's sources and partner's: silver (priority 1) wins.
    assert c.classify("198.18.0.100", "10.1.2.3").name == "silver"
    assert c.classify("198.18.0.100", "::ffff:10.1.2.3").name == "silver"
    assert c.classify("198.18.0.100", "192.0.2.1", token_class="gold").name == "gold"
    # A token for a class that is not a token class is ignored.
    assert c.classify("198.18.0.100", "192.0.2.1", token_class="silver").name == DEFAULT_CLASS


def test_pool_restriction_and_configured_default() -> None:
    c = Classifier([*CLASSES, ClassConfig("default", 1)])
    partner = c.by_name["partner"]
    assert partner.may_use("web") and not partner.may_use("default")
    assert c.default.priority == 1
    assert [x.name for x in c.classes] == ["gold", "default", "silver", "partner"]
