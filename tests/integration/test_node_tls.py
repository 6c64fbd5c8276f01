"""Issue 2, point 2 through a running node: SNI picks among configured certificates, ALPN is
h2 for a client offering it (http/1.1 otherwise), old protocol versions are refused."""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
import time
from pathlib import Path

from cryptography import x509

from dlba.tls.certs import load_ca, make_cert, write_cert
from tests.integration.loopback import loopback_array, make_certs


def served_cert(port: int, server_name: str, cafile: Path) -> tuple[str, str | None]:
    ctx = ssl.create_default_context(cafile=str(cafile))
    ctx.check_hostname = False
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, ctx.wrap_socket(
        raw, server_hostname=server_name
    ) as s:
        der = s.getpeercert(binary_form=True)
        assert der is not None
        cert = x509.load_der_x509_certificate(der)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        return ",".join(san.get_values_for_type(x509.DNSName)), s.selected_alpn_protocol()


async def test_sni_alpn_and_versions(tmp_path: Path) -> None:
    certs_dir = tmp_path / "certs"
    paths = make_certs(certs_dir)  # the default certificate; one for shop.example is added
    ca = load_ca(paths.ca_cert, paths.ca_key)
    cert, key = make_cert(ca, ["shop.example", "*.shop.example"])
    write_cert(cert, key, certs_dir / "shop.pem", certs_dir / "shop.key")
    extra = (f'[[tls.sni]]\nnames = ["shop.example", "*.shop.example"]\n'
             f'cert = "{certs_dir / "shop.pem"}"\nkey = "{certs_dir / "shop.key"}"\n')
    # TOML lets [[tls.sni]] come after the other tables: the loopback config appends it
    async with loopback_array(tmp_path, 1, extra=extra) as arr:
        port = arr.https_port
        names, alpn = await asyncio.to_thread(served_cert, port, "shop.example", arr.certs.ca_cert)
        assert "shop.example" in names and alpn == "h2"  # [proxy] http2 is on by default
        names, _ = await asyncio.to_thread(served_cert, port, "www.shop.example",
                                           arr.certs.ca_cert)
        assert "shop.example" in names
        names, _ = await asyncio.to_thread(served_cert, port, "localhost", arr.certs.ca_cert)
        assert "localhost" in names and "shop.example" not in names
        for old in ("-tls1", "-tls1_1"):
            res = await asyncio.to_thread(
                subprocess.run, ["openssl", "s_client", old, "-connect", f"127.0.0.1:{port}"],
                input=b"", capture_output=True, timeout=20, check=False,
            )
            assert res.returncode != 0, f"{old} was accepted"


async def test_tls_session_from_one_node_resumes_on_another(tmp_path: Path) -> None:
    """Nodes of one array share the cluster secret and so the ticket keys: a client whose next
    connection lands on another node (the client table hashes its port) resumes there."""
    from dlba.config import load_config
    from dlba.node import NodeRuntime
    from tests.integration.loopback import free_port, write_config

    async with loopback_array(tmp_path, 1) as arr:
        other = tmp_path / "n2"
        other.mkdir()
        port2 = free_port()
        path = write_config(other, arr.certs, [(1, f"127.0.0.1:{arr.backend_ports['b1']}")],
                            http_port=free_port(), https_port=port2, admin_port=free_port(),
                            name="n2")
        node2 = NodeRuntime(load_config(path), "n2")
        await node2.start()
        try:
            for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
                reused = await asyncio.to_thread(
                    resume_across, arr.https_port, port2, arr.certs.ca_cert, version
                )
                assert reused, version
        finally:
            await node2.stop()


def resume_across(port_a: int, port_b: int, cafile: Path, version: ssl.TLSVersion) -> bool:
    ctx = ssl.create_default_context(cafile=str(cafile))
    ctx.minimum_version = ctx.maximum_version = version
    with socket.create_connection(("127.0.0.1", port_a), timeout=5) as raw, ctx.wrap_socket(
        raw, server_hostname="localhost"
    ) as s:
        s.sendall(b"GET /whoami HTTP/1.1\r\nHost: x\r\n\r\n")
        s.recv(4096)  # TLS 1.3 tickets arrive after the handshake
        session = s.session
    with socket.create_connection(("127.0.0.1", port_b), timeout=5) as raw, ctx.wrap_socket(
        raw, server_hostname="localhost", session=session
    ) as s:
        return bool(s.session_reused)


def close_after_response(port: int, cafile: Path, path: str = "/whoami",
                         slow: bool = False) -> tuple[bytes, bool, bytes]:
    """One `Connection: close` request over TLS; the client never sends close_notify. Returns
    the response, whether close_notify came (a missing one raises SSLEOFError here), and what
    a peek at the bare TCP stream sees afterwards (b"" once the node closed the socket)."""
    ctx = ssl.create_default_context(cafile=str(cafile))
    ctx.check_hostname = False
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    s = ctx.wrap_socket(raw, server_hostname="localhost", suppress_ragged_eofs=False)
    try:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        data = b""
        notified = False
        if slow:  # let the node's socket buffer fill: it closes with the response in flight
            time.sleep(1.0)
        while True:
            try:
                chunk = s.recv(65536)
            except ssl.SSLZeroReturnError:
                notified = True
                break
            if not chunk:
                notified = True  # SSLSocket.recv turns close_notify into b""
                break
            data += chunk
        s.settimeout(3)
        try:
            tail = socket.socket.recv(s, 1, socket.MSG_PEEK)
        except TimeoutError:
            tail = b"(still open)"
        return data, notified, tail
    finally:
        socket.socket.close(s)


async def test_tls_close_sends_close_notify_and_does_not_wait(tmp_path: Path) -> None:
    """Like nginx and HAProxy: after the last response the node sends close_notify and closes
    the socket at once, without waiting for a close_notify most clients never send."""
    async with loopback_array(tmp_path, 1) as arr:
        for _ in range(3):
            data, notified, tail = await asyncio.to_thread(
                close_after_response, arr.https_port, arr.certs.ca_cert)
            assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"b1"), data[:200]
            assert notified, "no close_notify before the end of the stream"
            assert tail == b"", "the node kept the socket open waiting for our close_notify"
        for _ in range(100):
            if arr.node.ctx.stats.connections_open == 0:
                break
            await asyncio.sleep(0.02)
        assert arr.node.ctx.stats.connections_open == 0
        # a long response still in the node's buffers arrives whole, then the notify and a FIN
        # (a half-close: the node waits for the client to close first, test_half_close.py)
        data, notified, tail = await asyncio.to_thread(
            close_after_response, arr.https_port, arr.certs.ca_cert, "/bytes/8000000", True)
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and len(body) == 8_000_000
        assert notified and tail == b""
