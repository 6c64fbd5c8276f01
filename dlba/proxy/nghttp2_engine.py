"""The HTTP/2 protocol engine: libnghttp2 (the library Apache httpd and curl use) in a small
CPython extension, ``dlba/proxy/nghttp2_ext.c``, built by ``make install`` into
``dlba/proxy/_nghttp2<EXT_SUFFIX>`` (typed by ``_nghttp2.pyi``).

``Session`` is one server session driven sans-I/O. Every nghttp2 callback stays in C and
appends an event, four items ``kind, stream, arg, payload``, to a flat list the call returns,
so no C code calls back into Python and nothing is encoded or parsed here: a request arrives
as one EV_REQUEST whose header block ``fields()`` makes the ``[(name, value)]`` list (in C,
as the request is taken: made for a whole read at once, the lists kept the cyclic GC busy),
and a response head goes down as such a list. Without the extension the node offers HTTP/1.1
only in ALPN (`available()`).
"""

from __future__ import annotations

import struct

try:
    from dlba.proxy._nghttp2 import Session, fields
except ImportError:  # not built (make install), or libnghttp2 missing
    _BUILT = False
else:
    _BUILT = True

__all__ = ["Session", "available", "fields", "goaway_frame"]

# Event kinds (nghttp2_ext.c).
EV_REQUEST, EV_DATA, EV_END, EV_RESET, EV_CLOSE, EV_DRAINED = 1, 2, 3, 4, 5, 6
EV_GOAWAY_RECV, EV_GOAWAY_SENT, EV_BLOCKED, EV_PROGRESS = 7, 8, 9, 10
# Session.receive's rc beyond 0 (read) and -1 (nghttp2 read no further): the flood limit
# crossed in the current window.
FLOOD_RESETS, FLOOD_CONTROL, FLOOD_UPDATES = 1, 2, 3

# RFC 9113 error codes.
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR = 0, 1, 2
REFUSED_STREAM, CANCEL, ENHANCE_YOUR_CALM = 7, 8, 11


def available() -> bool:
    """The extension is built and libnghttp2 loads."""
    return _BUILT


def goaway_frame(last_stream: int, code: int) -> bytes:
    """A GOAWAY frame of our own (a graceful stop: nghttp2's would end the session)."""
    return b"\x00\x00\x08\x07\x00\x00\x00\x00\x00" + struct.pack(">II", last_stream, code)
