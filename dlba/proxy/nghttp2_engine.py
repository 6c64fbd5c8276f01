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
from typing import Final

try:
    from dlba.proxy._nghttp2 import Session, fields, request, response_fields
except ImportError:  # not built (make install), or libnghttp2 missing
    _BUILT = False
else:
    _BUILT = True

__all__ = ["Session", "available", "fields", "goaway_frame", "request", "response_fields"]

# Event kinds (nghttp2_ext.c). Final, one a line: compiled callers then use the number itself,
# not a module attribute looked up per event.
EV_REQUEST: Final = 1
EV_DATA: Final = 2
EV_END: Final = 3
EV_RESET: Final = 4
EV_CLOSE: Final = 5
EV_DRAINED: Final = 6
EV_GOAWAY_RECV: Final = 7
EV_GOAWAY_SENT: Final = 8
EV_BLOCKED: Final = 9
EV_PROGRESS: Final = 10
# Session.receive's rc beyond 0 (read) and -1 (nghttp2 read no further): the flood limit
# crossed in the current window.
FLOOD_RESETS: Final = 1
FLOOD_CONTROL: Final = 2
FLOOD_UPDATES: Final = 3

# RFC 9113 error codes.
NO_ERROR: Final = 0
PROTOCOL_ERROR: Final = 1
INTERNAL_ERROR: Final = 2
REFUSED_STREAM: Final = 7
CANCEL: Final = 8
ENHANCE_YOUR_CALM: Final = 11

def available() -> bool:
    """The extension is built and libnghttp2 loads."""
    return _BUILT


def goaway_frame(last_stream: int, code: int) -> bytes:
    """A GOAWAY frame of our own (a graceful stop: nghttp2's would end the session)."""
    return b"\x00\x00\x08\x07\x00\x00\x00\x00\x00" + struct.pack(">II", last_stream, code)
