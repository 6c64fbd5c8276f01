"""dlba/tls_shutdown.py on real OpenSSL objects: the SSL pointer it finds is the object's own,
and marking it makes the next shutdown complete without the peer's close_notify."""

from __future__ import annotations

import contextlib
import ssl
from pathlib import Path

from dlba.tls import server_context
from dlba.tls_shutdown import SSL_RECEIVED_SHUTDOWN, QuietShutdown
from tests.integration.loopback import make_certs


def handshaken_pair(tmp: Path) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    certs = make_certs(tmp / "certs")
    server_ctx = server_context(certs.node_cert, certs.node_key)
    client_ctx = ssl.create_default_context(cafile=str(certs.ca_cert))
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="localhost")
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):  # pump the handshake between the two memory BIOs
        for side in (client, server):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    client.write(b"x")  # both sides done: the server reads application data
    s_in.write(c_out.read())
    assert server.read(1) == b"x"
    server.bio_pair = (s_in, s_out)  # type: ignore[attr-defined]
    return client, server


def test_marked_shutdown_completes_at_once(tmp_path: Path) -> None:
    _, server = handshaken_pair(tmp_path)
    quiet = QuietShutdown()
    assert quiet.mark(server) is True
    ptr = quiet._ssl_pointer(server)
    assert ptr is not None and quiet.get_shutdown(ptr) & SSL_RECEIVED_SHUTDOWN
    server.unwrap()  # would raise SSLWantReadError, waiting for the client's close_notify
    s_out = server.bio_pair[1]  # type: ignore[attr-defined]
    assert s_out.pending > 0  # our close_notify is on its way


def test_unmarked_shutdown_waits_for_the_peer(tmp_path: Path) -> None:
    _, server = handshaken_pair(tmp_path)
    try:
        server.unwrap()
    except ssl.SSLWantReadError:
        pass
    else:
        raise AssertionError("asyncio's bidirectional shutdown no longer waits: recheck")


def test_nothing_to_mark() -> None:
    assert QuietShutdown().mark(None) is False


def test_a_wrong_layout_is_refused_and_nothing_is_touched(tmp_path: Path) -> None:
    """The self-check: a pointer read at the wrong place is not the object's SSL (its
    SSL_get_SSL_CTX is not the context's), so nothing is called with it; closes go the
    asyncio way from then on."""
    _, server = handshaken_pair(tmp_path)
    quiet = QuietShutdown()
    quiet.offset -= 8  # PyObject *Socket instead of SSL *ssl
    assert quiet.mark(server) is False
    assert quiet.lib is None and quiet.mark(server) is False
    try:
        server.unwrap()
    except ssl.SSLWantReadError:
        pass  # untouched: still waits for the peer
    else:
        raise AssertionError("the refused object was marked anyway")
