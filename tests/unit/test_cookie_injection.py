"""Cookie injection and session-id lookup: attributes copied exactly, robust to garbage."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dlba.scheduling import cookie_codec
from dlba.scheduling.cookie_injection import (
    find_cookie,
    find_cookies,
    find_session_id,
    inject_for_backend,
    injected_set_cookies,
    parse_set_cookie,
    split_set_cookie,
)

SECRET = b"k" * 32
SESSION = ("JSESSIONID", "PHPSESSID", "sessionid")
NAME = "DLBASERVER"
VALUE = cookie_codec.encode(3, SECRET)


def attrs_of(line: str) -> dict[str, str]:
    parsed = parse_set_cookie(line)
    assert parsed is not None
    return parsed[2]


def test_login_cookie_of_demo_backend() -> None:
    out = injected_set_cookies(["JSESSIONID=abc123; Path=/; Max-Age=3600; HttpOnly"],
                               SESSION, NAME, VALUE)
    assert out == [f"DLBASERVER={VALUE}; Path=/; Max-Age=3600; HttpOnly"]


def test_all_attributes_copied_case_insensitive_with_expires_comma() -> None:
    line = ('PHPSESSID="q1"; path=/shop; DOMAIN=.example.com; '
            'expires=Wed, 21 Oct 2026 07:28:00 GMT; max-age=60; SECURE; httponly; '
            'samesite=None; partitioned; Priority=High; Comment=x')
    (out,) = injected_set_cookies([line], SESSION, NAME, VALUE)
    assert out == (f"DLBASERVER={VALUE}; Path=/shop; Domain=.example.com; "
                   "Expires=Wed, 21 Oct 2026 07:28:00 GMT; Max-Age=60; SameSite=None; Secure; "
                   "HttpOnly; Partitioned")


def test_no_injection_without_session_cookie() -> None:
    assert injected_set_cookies([], SESSION, NAME, VALUE) == []
    assert injected_set_cookies(["theme=dark; Path=/", "jsessionid=lower; Path=/"],
                                SESSION, NAME, VALUE) == []


def test_backend_own_cookie_wins() -> None:
    assert injected_set_cookies(["JSESSIONID=a; Path=/", "DLBASERVER=9; Path=/"],
                                SESSION, NAME, VALUE) == []


def test_one_line_per_distinct_attribute_set() -> None:
    out = injected_set_cookies(["JSESSIONID=a; Path=/", "sessionid=b; Path=/",
                                "JSESSIONID=c; Path=/app"], SESSION, NAME, VALUE)
    assert [attrs_of(o)["Path"] for o in out] == ["/", "/app"]


def test_logout_deletes_persistence_cookie_too() -> None:
    (out,) = injected_set_cookies(["JSESSIONID=; Path=/; Max-Age=0"], SESSION, NAME, VALUE)
    assert attrs_of(out)["Max-Age"] == "0"


def test_folded_set_cookie_split_keeps_expires() -> None:
    folded = "a=1; Expires=Thu, 01 Jan 2037 00:00:00 GMT, JSESSIONID=z; Path=/x; Secure"
    assert split_set_cookie(folded) == ["a=1; Expires=Thu, 01 Jan 2037 00:00:00 GMT",
                                        " JSESSIONID=z; Path=/x; Secure"]
    (out,) = injected_set_cookies([folded], SESSION, NAME, VALUE)
    assert out == f"DLBASERVER={VALUE}; Path=/x; Secure"


def test_quoted_semicolon_and_unsafe_values_not_emitted() -> None:
    (out,) = injected_set_cookies(['JSESSIONID="a;b"; Path="/p"; Domain=ev"il; Max-Age=1x'],
                                  SESSION, NAME, VALUE)
    assert out == f"DLBASERVER={VALUE}; Path=/p"


def test_inject_for_backend_value_decodes() -> None:
    (out,) = inject_for_backend(["sessionid=s; Path=/"], SESSION, NAME, 42, SECRET)
    parsed = parse_set_cookie(out)
    assert parsed is not None and cookie_codec.decode(parsed[1], SECRET) == 42


# --- property tests ---------------------------------------------------------------------------

safe_chars = st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=';"\\,=')
safe_text = st.text(safe_chars, min_size=1, max_size=20)
attr_values = st.fixed_dictionaries(
    {},
    optional={
        "Path": safe_text.map(lambda s: "/" + s),
        "Domain": safe_text,
        "Expires": st.sampled_from(["Wed, 21 Oct 2026 07:28:00 GMT",
                                    "Sun, 06 Nov 1994 08:49:37 GMT"]),
        "Max-Age": st.integers(-10, 10**9).map(str),
        "SameSite": st.sampled_from(["Strict", "Lax", "None"]),
        "Secure": st.just(""), "HttpOnly": st.just(""), "Partitioned": st.just(""),
    },
)


def render(name: str, value: str, attrs: dict[str, str], case: list[bool], data: st.DataObject
           ) -> str:
    parts = [f"{name}={value}"]
    for i, (k, v) in enumerate(attrs.items()):
        key = k.upper() if case[i % len(case)] else k.lower()
        sp = data.draw(st.sampled_from(["", " "]))
        parts.append(f"{key}{sp}={sp}{v}" if v else key)
    return data.draw(st.sampled_from(["; ", ";", " ;  "])).join(parts)


@given(st.sampled_from(SESSION), safe_text, attr_values, st.lists(st.booleans(), min_size=1),
       st.data())
def test_attributes_copied_exactly(name: str, value: str, attrs: dict[str, str], case: list[bool],
                                   data: st.DataObject) -> None:
    line = render(name, value, attrs, case, data)
    (out,) = injected_set_cookies(["other=1; Path=/", line], SESSION, NAME, VALUE)
    parsed = parse_set_cookie(out)
    assert parsed == (NAME, VALUE, attrs)


@given(st.lists(st.text(max_size=200)), st.lists(st.text(max_size=10), max_size=4))
def test_garbage_never_raises_and_never_emits_unsafe(headers: list[str], names: list[str]) -> None:
    out = injected_set_cookies(headers, [*names, *SESSION], NAME, VALUE)
    for line in out:
        assert line.startswith(f"{NAME}={VALUE}")
        assert all(0x20 <= ord(c) < 0x7F for c in line), line
        assert '"' not in line and "\\" not in line


@given(st.text(max_size=300), st.text(max_size=300))
def test_request_side_garbage_never_raises(cookie: str, url: str) -> None:
    find_cookie(cookie, NAME)
    find_session_id(cookie, url, SESSION, ["jsessionid", "sid"])


# --- request side -----------------------------------------------------------------------------


def test_find_cookie() -> None:
    header = f'a=1; {NAME}="{VALUE}";JSESSIONID=j ;{NAME}=second'
    assert find_cookie(header, NAME) == VALUE
    assert find_cookies(header, NAME) == [VALUE, "second"]
    assert find_cookie(header, "JSESSIONID") == "j"
    assert find_cookie(header, "DLBA") is None
    assert find_cookie(None, NAME) is None
    assert find_cookie("xDLBASERVER=1", NAME) is None


def test_find_session_id_cookie_then_url() -> None:
    params = ["jsessionid", "sid"]
    assert find_session_id("PHPSESSID=p1", "/a;jsessionid=u1", SESSION, params) == "p1"
    assert find_session_id("theme=x", "/shop;jsessionid=u1/cart?x=1", SESSION, params) == "u1"
    assert find_session_id(None, "/cart;JSESSIONID=u2?x=1", SESSION, params) == "u2"
    assert find_session_id(None, "/x?a=1&sid=q%2B1&b=2", SESSION, params) == "q+1"
    assert find_session_id("", "/x?sid=&a=1", SESSION, params) is None
    assert find_session_id("JSESSIONID=", "/x", SESSION, params) is None
    assert find_session_id(None, "/x?jsessionid=z", SESSION, []) is None
    assert find_session_id(None, "/x?side=1;sid=2", SESSION, params) is None


# --- Secure over HTTPS, SameSite from the config ------------------------------------------------
LOGIN = "JSESSIONID=abc123; Path=/; Max-Age=3600; HttpOnly"


def test_https_adds_secure_and_the_configured_samesite() -> None:
    (out,) = injected_set_cookies([LOGIN], SESSION, NAME, VALUE, secure=True, same_site="Lax")
    assert out == f"DLBASERVER={VALUE}; Path=/; Max-Age=3600; SameSite=Lax; Secure; HttpOnly"


def test_plain_http_gets_samesite_but_no_secure() -> None:
    (out,) = injected_set_cookies([LOGIN + "; SameSite=None"], SESSION, NAME, VALUE,
                                  same_site="Strict")
    assert attrs_of(out) == {"Path": "/", "Max-Age": "3600", "SameSite": "Strict",
                             "HttpOnly": ""}


@given(secure=st.booleans(), backend_secure=st.booleans(),
       backend_same_site=st.sampled_from(["", "; SameSite=Strict", "; SameSite=None"]))
def test_samesite_none_only_ever_with_secure(
    secure: bool, backend_secure: bool, backend_same_site: str
) -> None:
    """Browsers drop a SameSite=None cookie without Secure: over plain HTTP "None" leaves the
    attribute out (browser default, Lax) rather than lose the persistence cookie."""
    line = LOGIN + ("; Secure" if backend_secure else "") + backend_same_site
    (out,) = injected_set_cookies([line], SESSION, NAME, VALUE, secure=secure, same_site="None")
    attrs = attrs_of(out)
    if secure or backend_secure:
        assert attrs["SameSite"] == "None" and "Secure" in attrs
    else:
        assert "SameSite" not in attrs and "Secure" not in attrs
