"""The HTTP/2 protocol engine: libnghttp2 (the library Apache httpd and curl use) through a
small C shim, ``dlba/proxy/nghttp2_shim.c``, built by ``make install`` into
``dlba/proxy/_nghttp2_shim.so`` and loaded here with cffi in ABI mode.

Every nghttp2 callback stays in C and appends a record to an event buffer that Python reads
once per call, so no C code calls back into Python: a request costs a handful of crossings
(its bytes in, its header block out whole, the response head, its body, the bytes to send).
Without the library the node offers HTTP/1.1 only in ALPN (`available()`).
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

LIBRARY_NAME = "_nghttp2_shim.so"

CDEF = """
typedef struct { char *ev; size_t ev_len; uint32_t control, resets, updates, data_frames; }
    dn_public;
dn_public *dn_new(uint32_t max_streams, uint32_t header_list, uint32_t conn_window);
void dn_free(dn_public *);
int dn_recv(dn_public *, const char *, size_t);
size_t dn_send(dn_public *, const char **, int *);
int dn_head(dn_public *, int32_t, const char *, size_t, int, int);
long dn_data(dn_public *, int32_t, const char *, size_t, int);
long dn_pending(dn_public *, int32_t);
int dn_consume(dn_public *, int32_t, size_t);
int dn_reset(dn_public *, int32_t, uint32_t);
int dn_terminate(dn_public *, uint32_t);
int32_t dn_last_stream(dn_public *);
"""

# Event records (nghttp2_shim.c): u32 type, u32 stream, u32 arg, u32 length, then the bytes.
EV_REQUEST, EV_DATA, EV_END, EV_RESET, EV_CLOSE, EV_DRAINED = 1, 2, 3, 4, 5, 6
EV_GOAWAY_RECV, EV_GOAWAY_SENT, EV_BLOCKED, EV_PROGRESS = 7, 8, 9, 10
RECORD = struct.Struct("=IIII")

# RFC 9113 error codes.
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR = 0, 1, 2
REFUSED_STREAM, CANCEL, ENHANCE_YOUR_CALM = 7, 8, 11

_ffi: Any = None
_lib: Any = None
_tried = False


def library_path() -> Path | None:
    """The built shim, beside the package's sources (this module may be the mypyc build's
    copy under build/native, so every folder of the package is looked in)."""
    import dlba.proxy

    for folder in [Path(__file__).parent, *map(Path, dlba.proxy.__path__)]:
        if (folder / LIBRARY_NAME).exists():
            return folder / LIBRARY_NAME
    return None


def _load() -> bool:
    global _ffi, _lib, _tried
    if not _tried:
        _tried = True
        path = library_path()
        try:
            from cffi import FFI

            ffi = FFI()
            ffi.cdef(CDEF)
            _lib = ffi.dlopen(str(path)) if path is not None else None
            _ffi = ffi
        except (ImportError, OSError):
            _lib = None
    return _lib is not None


def available() -> bool:
    """The shim is built and libnghttp2 loads."""
    return _load()


def goaway_frame(last_stream: int, code: int) -> bytes:
    """A GOAWAY frame of our own (a graceful stop: nghttp2's would end the session)."""
    return b"\x00\x00\x08\x07\x00\x00\x00\x00\x00" + struct.pack(">II", last_stream, code)


class Engine:
    """One server session. Calls return the event records nghttp2 produced meanwhile."""

    __slots__ = ("done", "outp", "p")

    def __init__(self, max_streams: int, header_list: int, conn_window: int) -> None:
        if not _load():
            raise OSError(f"{LIBRARY_NAME}: not built or libnghttp2 missing")
        p = _lib.dn_new(max_streams, header_list, conn_window)
        if p == _ffi.NULL:
            raise MemoryError("nghttp2 session")
        self.p = _ffi.gc(p, _lib.dn_free)  # freed with this object (no cycle to wait for)
        self.outp = _ffi.new("const char **")
        self.done = _ffi.new("int *")

    def _events(self) -> bytes:
        p = self.p
        n = p.ev_len
        if not n:
            return b""
        p.ev_len = 0
        return bytes(_ffi.buffer(p.ev, n))

    def receive(self, data: bytes) -> tuple[int, bytes]:
        rc = _lib.dn_recv(self.p, data, len(data))
        return int(rc), self._events()

    def send(self) -> tuple[bytes, bool, bytes]:
        """The bytes to send now, whether the session is over, and the events of sending."""
        outp, done = self.outp, self.done
        n = _lib.dn_send(self.p, outp, done)
        data = bytes(_ffi.buffer(outp[0], n)) if n else b""
        return data, bool(done[0]), self._events()

    def head(self, sid: int, fields: bytes, final: bool, end: bool) -> int:
        return int(_lib.dn_head(self.p, sid, fields, len(fields), final, end))

    def data(self, sid: int, data: bytes, end: bool) -> int:
        return int(_lib.dn_data(self.p, sid, data, len(data), end))

    def pending(self, sid: int) -> int:
        return int(_lib.dn_pending(self.p, sid))

    def consume(self, sid: int, n: int) -> None:
        _lib.dn_consume(self.p, sid, n)

    def reset(self, sid: int, code: int) -> None:
        _lib.dn_reset(self.p, sid, code)

    def terminate(self, code: int) -> None:
        _lib.dn_terminate(self.p, code)

    def last_stream(self) -> int:
        return int(_lib.dn_last_stream(self.p))

    # Flood counters of the current window (nghttp2_shim.c counts them as frames arrive).
    def counters(self) -> tuple[int, int, int, int]:
        p = self.p
        return int(p.resets), int(p.control), int(p.updates), int(p.data_frames)

    def clear_counters(self) -> None:
        p = self.p
        p.resets = p.control = p.updates = p.data_frames = 0


def encode_fields(fields: list[tuple[bytes, bytes]]) -> bytes:
    """A head as the shim takes it: name NUL value NUL ... (a field holding NUL is dropped:
    HTTP/2 forbids it, and it would end the record early)."""
    parts: list[bytes] = []
    for name, value in fields:  # (a plain loop: compiled, it beats chain.from_iterable)
        parts.append(name)
        parts.append(value)
    parts.append(b"")
    block = b"\0".join(parts)
    if block.count(0) == 2 * len(fields):
        return block
    return b"".join([n + b"\0" + v + b"\0" for n, v in fields if b"\0" not in n + v])


def decode_fields(block: bytes) -> list[tuple[bytes, bytes]]:
    parts = block.split(b"\0")
    return [(parts[i], parts[i + 1]) for i in range(0, len(parts) - 1, 2)]
