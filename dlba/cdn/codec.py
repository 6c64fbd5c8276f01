"""Content-Encoding of a page being rewritten: decoded as it streams, re-encoded the same way.

gzip through zlib's streaming objects; br through the `brotli` package when it is installed
(else a br page is passed through untouched and counted). Decoding gives out at most OUT_STEP
bytes per step (brotli: under twice that, its buffer grows once past the limit), so a small
compressed chunk cannot make a large buffer (a decompression bomb costs time, not memory).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import Any

brotli: Any
try:
    import brotli  # type: ignore[no-redef]
except ImportError:  # pragma: no cover - the package is a dependency; kept optional on purpose
    brotli = None

OUT_STEP = 256 * 1024


class CodecError(Exception):
    """The body is not what its Content-Encoding says."""


class Codec:
    """identity: bytes as they are."""

    name = "identity"

    def decode(self, data: bytes) -> Iterator[bytes]:
        yield data

    def encode(self, data: bytes) -> bytes:
        return data

    def finish(self) -> bytes:
        return b""


class Gzip(Codec):
    name = "gzip"

    def __init__(self) -> None:
        self.d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self.c = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)

    def decode(self, data: bytes) -> Iterator[bytes]:
        try:
            while True:
                out = self.d.decompress(data, OUT_STEP)
                data = self.d.unconsumed_tail
                if out:
                    yield out
                if self.d.eof:
                    return  # trailing garbage after the member is dropped, as browsers do
                if not data and len(out) < OUT_STEP:
                    return  # a full step may leave output inside zlib: asked for again
        except zlib.error as e:
            raise CodecError(str(e)) from e

    def encode(self, data: bytes) -> bytes:
        # A sync flush per piece: the client gets each rewritten piece as it passes.
        return self.c.compress(data) + self.c.flush(zlib.Z_SYNC_FLUSH) if data else b""

    def finish(self) -> bytes:
        return self.c.flush(zlib.Z_FINISH)


class Brotli(Codec):
    name = "br"

    def __init__(self) -> None:
        self.d = brotli.Decompressor()
        self.c = brotli.Compressor(quality=5)

    def decode(self, data: bytes) -> Iterator[bytes]:
        try:
            out: bytes = self.d.process(data, output_buffer_limit=OUT_STEP)
            while True:
                if out:
                    yield out
                if self.d.is_finished() or len(out) < OUT_STEP:
                    return  # else the limit stopped it: more output waits inside
                out = self.d.process(b"", output_buffer_limit=OUT_STEP)
        except brotli.error as e:
            raise CodecError(str(e)) from e

    def encode(self, data: bytes) -> bytes:
        if not data:
            return b""
        out: bytes = self.c.process(data) + self.c.flush()
        return out

    def finish(self) -> bytes:
        out: bytes = self.c.finish()
        return out


def codec_for(content_encoding: bytes) -> Codec | None:
    """The codec of a Content-Encoding value, or None when we cannot decode it (left alone)."""
    enc = content_encoding.strip().lower()
    if enc in (b"", b"identity"):
        return Codec()
    if enc in (b"gzip", b"x-gzip"):
        return Gzip()
    if enc == b"br" and brotli is not None:
        return Brotli()
    return None
