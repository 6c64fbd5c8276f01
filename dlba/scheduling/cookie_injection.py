"""Cookie injection (patent 003, "Cookie Injection") and session-id lookup. Pure functions.

Response side: when a back end's response sets a session cookie (JSESSIONID, PHPSESSID, ...),
the node adds one more Set-Cookie, ``DLBASERVER=<signed back-end id>``, with the *same
attributes* as the session cookie, so "persistence will be maintained as long as the session is
maintained" -- the two cookies share path, domain, lifetime and flags, and a session logout
(Max-Age=0) drops the persistence cookie as well.

Request side: ``find_cookie`` pulls the injected cookie out of a Cookie header, and
``find_session_id`` finds the session id in a cookie or in the URL (``;jsessionid=`` path
parameter or ``?sid=`` query parameter) for session-id scheduling.

Why a hand-written parser and not ``http.cookies.SimpleCookie``: SimpleCookie parses the *request*
Cookie syntax of RFC 2109, rejects (silently drops the whole line on) many values real servers
send (``=`` or ``[]`` in values, ``SameSite=None; Partitioned``, unknown attributes), raises
CookieError on others, and re-serialises values with its own quoting, which would change what
the browser stores. We must never change the back end's own cookies and must never raise on a
back end's garbage, so we follow RFC 6265 section 5.2's lenient algorithm instead: split on ``;``,
the first ``=`` separates name and value, attribute names are case-insensitive, unknown
attributes are ignored, the last occurrence of an attribute wins.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from urllib.parse import unquote

from dlba.scheduling import cookie_codec

# Attribute name (lower case) -> name as we write it. Flags carry no value.
_VALUED = {"path": "Path", "domain": "Domain", "expires": "Expires", "max-age": "Max-Age",
           "samesite": "SameSite"}
_FLAGS = {"secure": "Secure", "httponly": "HttpOnly", "partitioned": "Partitioned"}
# Output order: fixed, so equal attribute sets give identical lines (dedup, tests).
_ORDER = ("Path", "Domain", "Expires", "Max-Age", "SameSite", "Secure", "HttpOnly", "Partitioned")

# Attribute values are copied verbatim from the back end into a header we emit, so they must
# not be able to smuggle anything: printable ASCII without ';' (which would start a new attribute)
# and without '"'/'\\' (which some parsers treat specially).
_EDGE = r"\x21\x23-\x3a\x3c-\x5b\x5d-\x7e"  # visible ASCII minus '"', ';', '\\'
_SAFE_VALUE = re.compile(rf"[{_EDGE}](?:[\x20{_EDGE}]*[{_EDGE}])?")
_MAX_AGE = re.compile(r"-?[0-9]{1,19}")
# RFC 7230 token: the only characters allowed in a cookie name we emit.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# A comma starts a new cookie in a folded Set-Cookie line only when it is followed by
# "name=". Inside "Expires=Wed, 21 Oct 2015 07:28:00 GMT" the comma is followed by " 21 Oct",
# which has no '=' before the next space, so the date stays whole.
_FOLD_SPLIT = re.compile(r",(?=\s*[!#$%&'*+.^_`|~0-9A-Za-z-]+=)")


def _split_semicolons(line: str) -> list[str]:
    """Split on ';' outside double quotes; an unterminated quote just runs to the end."""
    if '"' not in line:
        return line.split(";")
    parts: list[str] = []
    start = 0
    quoted = False
    for i, ch in enumerate(line):
        if ch == '"':
            quoted = not quoted
        elif ch == ";" and not quoted:
            parts.append(line[start:i])
            start = i + 1
    parts.append(line[start:])
    return parts


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        return value[1:-1]
    return value


def split_set_cookie(header_value: str) -> list[str]:
    """Split a Set-Cookie value that may hold several cookies folded with commas (legacy
    proxies do this) into single cookie lines, keeping commas inside Expires dates."""
    return [p for p in _FOLD_SPLIT.split(header_value) if p.strip()]


def parse_set_cookie(line: str) -> tuple[str, str, dict[str, str]] | None:
    """Parse one Set-Cookie line into (name, value, attributes).

    Attributes are keyed by their canonical name (``Path``, ``Max-Age``, ...); flags map to
    ``""``. Unknown attributes are dropped. Returns None when the line sets no cookie (no
    ``=`` in the first part or an empty name), as RFC 6265 5.2 says to ignore such lines.
    """
    parts = _split_semicolons(line)
    name, eq, value = parts[0].partition("=")
    name = name.strip()
    if not eq or not name:
        return None
    attrs: dict[str, str] = {}
    for part in parts[1:]:
        key, _, val = part.partition("=")
        key = key.strip().lower()
        if key in _FLAGS:
            attrs[_FLAGS[key]] = ""
        elif key in _VALUED:
            attrs[_VALUED[key]] = _unquote(val.strip()).strip()
    return name, value.strip(), attrs


def format_set_cookie(name: str, value: str, attrs: dict[str, str]) -> str:
    """Serialise a cookie line with attributes in a fixed order, dropping unsafe values."""
    out = [f"{name}={value}"]
    for canon in _ORDER:
        if canon not in attrs:
            continue
        val = attrs[canon]
        if canon in _FLAGS.values():
            out.append(canon)
        elif canon == "Max-Age":
            # A browser ignores a malformed Max-Age; we drop it rather than echo junk.
            if _MAX_AGE.fullmatch(val):
                out.append(f"Max-Age={val}")
        elif _SAFE_VALUE.fullmatch(val):
            out.append(f"{canon}={val}")
    return "; ".join(out)


def injected_set_cookies(set_cookie_values: Iterable[str], session_cookies: Collection[str],
                         cookie_name: str, value: str, *, secure: bool = False,
                         same_site: str = "") -> list[str]:
    """Return the Set-Cookie values to ADD to a back-end response (possibly none).

    ``secure`` (the response goes out over HTTPS) adds ``Secure``; ``same_site`` (Strict, Lax
    or None) replaces the session cookie's SameSite (see ``persistence_attributes``).

    ``value`` is the injected cookie's value, normally ``cookie_codec.encode(backend_id,
    secret)`` computed once per back end. One line is returned per distinct attribute set of the
    session cookies the response sets (a response setting JSESSIONID for Path=/ and for
    Path=/app gets two). Nothing is added when the back end itself already sets
    ``cookie_name`` (its choice wins; two conflicting cookies would be worse), or when the
    injected name or value is not a valid cookie token (nothing unsafe is ever emitted).
    """
    if not _TOKEN.fullmatch(cookie_name) or not _SAFE_VALUE.fullmatch(value):
        return []
    lines: list[str] = []
    for header_value in set_cookie_values:
        if not isinstance(header_value, str):
            continue
        for line in split_set_cookie(header_value):
            parsed = parse_set_cookie(line)
            if parsed is None:
                continue
            name, _, attrs = parsed
            if name == cookie_name:
                return []
            # Cookie names are case-sensitive (RFC 6265): JSESSIONID is not jsessionid.
            if name in session_cookies:
                if secure or same_site:
                    attrs = persistence_attributes(attrs, secure=secure, same_site=same_site)
                out = format_set_cookie(cookie_name, value, attrs)
                if out not in lines:
                    lines.append(out)
    return lines


def persistence_attributes(attrs: dict[str, str], *, secure: bool, same_site: str
                           ) -> dict[str, str]:
    """The session cookie's attributes as the persistence cookie's: ``Secure`` over HTTPS, and
    the configured SameSite. Browsers drop a ``SameSite=None`` cookie that is not ``Secure``
    (and the persistence with it), so over plain HTTP "None" leaves SameSite out: the browser's
    default (Lax) applies and the cookie is kept."""
    out = dict(attrs)
    if secure:
        out["Secure"] = ""
    if same_site == "None" and "Secure" not in out:
        out.pop("SameSite", None)
    elif same_site:
        out["SameSite"] = same_site
    return out


def inject_for_backend(set_cookie_values: Iterable[str], session_cookies: Collection[str],
                       cookie_name: str, backend_id: int, secret: bytes) -> list[str]:
    """Convenience: ``injected_set_cookies`` with the value signed by ``cookie_codec``."""
    return injected_set_cookies(set_cookie_values, session_cookies, cookie_name,
                                cookie_codec.encode(backend_id, secret))


def find_cookies(cookie_header: str | None, name: str) -> list[str]:
    """All values of cookie ``name`` in a request Cookie header, in order.

    Several may be present (same name set for different paths); the caller tries each, e.g. the
    first one that ``cookie_codec.decode`` accepts. Values are returned unquoted.
    """
    # Fast path: most requests do not carry the cookie at all.
    if not cookie_header or name not in cookie_header:
        return []
    found: list[str] = []
    for part in cookie_header.split(";"):
        key, eq, val = part.partition("=")
        if eq and key.strip() == name:
            found.append(_unquote(val.strip()))
    return found


def find_cookie(cookie_header: str | None, name: str) -> str | None:
    """The first value of cookie ``name`` in a request Cookie header, or None."""
    values = find_cookies(cookie_header, name)
    return values[0] if values else None


def _url_session_param(path_and_query: str, params: Collection[str]) -> str | None:
    # URL parameter names are matched case-insensitively: servlet containers write
    # ";jsessionid=" but clients and proxies have been seen to upper-case it.
    if not params or (";" not in path_and_query and "?" not in path_and_query):
        return None  # the usual URL has no parameters at all: nothing to parse
    wanted = {p.lower() for p in params}
    path, _, query = path_and_query.partition("?")
    query = query.partition("#")[0]
    # Path parameters: "/shop;jsessionid=ABC/cart" or "/cart;jsessionid=ABC".
    if ";" in path:
        for segment in path.split("/"):
            for param in segment.split(";")[1:]:
                key, eq, val = param.partition("=")
                if eq and val and key.strip().lower() in wanted:
                    return unquote(val)
    if query:
        for pair in query.split("&"):
            key, eq, val = pair.partition("=")
            if eq and val and unquote(key).lower() in wanted:
                return unquote(val.replace("+", " "))
    return None


def find_session_id(cookie_header: str | None, path_and_query: str,
                    session_cookies: Iterable[str], url_session_params: Collection[str]
                    ) -> str | None:
    """The session id of a request: from a session cookie first, else from the URL.

    The cookie wins because URL rewriting is the servlet fallback for clients without cookies;
    when both are present the cookie is what the application itself will use.
    """
    if cookie_header:
        for name in session_cookies:
            for val in find_cookies(cookie_header, name):
                if val:
                    return val
    if not isinstance(path_and_query, str) or not path_and_query:
        return None
    return _url_session_param(path_and_query, url_session_params)
