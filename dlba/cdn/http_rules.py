"""HTTP caching rules the CDN offload needs (RFC 9111, the parts a shared cache of rewritten
pages uses): what may be stored, for how long it is fresh, what makes two requests the same."""

from __future__ import annotations

import email.utils
from collections.abc import Sequence

Headers = Sequence[tuple[bytes, bytes]]


def header(headers: Headers, name: bytes) -> bytes | None:
    """The value of `name` (lower case), several fields joined by commas."""
    values = [v for n, v in headers if n.lower() == name]
    if not values:
        return None
    return b", ".join(values)


def cache_control(headers: Headers) -> dict[str, str]:
    out: dict[str, str] = {}
    value = header(headers, b"cache-control")
    if value is None:
        return out
    for part in value.decode("latin-1").split(","):
        name, _, arg = part.strip().partition("=")
        if name:
            out[name.lower()] = arg.strip().strip('"')
    return out


def shareable(headers: Headers) -> bool:
    """The back end lets a shared cache keep it: no Set-Cookie, no private, no no-store."""
    if header(headers, b"set-cookie") is not None:
        return False
    cc = cache_control(headers)
    return "private" not in cc and "no-store" not in cc


def page_storable(status: int, request: Headers, response: Headers) -> bool:
    """A page response a shared cache may store (RFC 9111 §3, §3.5)."""
    if status != 200 or not shareable(response):
        return False
    if header(request, b"authorization") is not None:
        return False  # never, even with public: a per-user page is not worth the risk
    vary = header(response, b"vary")
    if vary is not None and b"*" in vary:
        return False
    req_cc = cache_control(request)
    return "no-store" not in req_cc


def http_date(value: bytes | None) -> float | None:
    if value is None:
        return None
    try:
        return email.utils.parsedate_to_datetime(value.decode("latin-1")).timestamp()
    except (ValueError, TypeError, IndexError):
        return None


def freshness_s(headers: Headers, now: float) -> float:
    """How long a stored response is fresh from `now` (wall clock seconds): s-maxage, max-age,
    else Expires minus Date; none of them (or no-cache): 0, revalidated every time."""
    cc = cache_control(headers)
    if "no-cache" in cc:
        return 0.0
    for key in ("s-maxage", "max-age"):
        if key in cc:
            try:
                return max(0.0, float(int(cc[key])))
            except ValueError:
                return 0.0
    expires = http_date(header(headers, b"expires"))
    if expires is None:
        return 0.0
    date = http_date(header(headers, b"date")) or now
    return max(0.0, expires - date)


def vary_names(headers: Headers) -> tuple[bytes, ...]:
    vary = header(headers, b"vary")
    if vary is None:
        return ()
    return tuple(sorted({v.strip().lower() for v in vary.split(b",") if v.strip()}))


def vary_values(names: Sequence[bytes], request: Headers) -> tuple[bytes | None, ...]:
    return tuple(header(request, n) for n in names)
