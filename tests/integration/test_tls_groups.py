"""Key-exchange groups of the node: X25519, P-256 and P-384 are accepted, X448 and P-521 (in
OpenSSL 3's default list) and finite-field groups are refused, in TLS 1.3 and TLS 1.2, checked
with `openssl s_client -groups` against a running node.

TLS 1.2 with an ECDSA certificate cannot show it alone: the client's group list also bounds
the certificate's curve (RFC 8422), so a client offering only X448 fails there whatever the
server allows. The node gets an RSA certificate for rsa.test too (SNI), whose ECDHE-RSA suites
take any group, so each group is tried on its own in both versions.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import subprocess
from pathlib import Path

import pytest

from dlba.tls import context as tls
from dlba.tls import openssl_ctx
from tests.integration.loopback import loopback_array

ALLOWED = ["X25519", "P-256", "P-384"]
REFUSED = ["X448", "P-521", "ffdhe2048"]
# s_client's "Server Temp Key" names them so
TEMP_KEY = {"X25519": "X25519", "P-256": "ECDH, prime256v1", "P-384": "ECDH, secp384r1"}


def rsa_cert(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "rsa.pem", directory / "rsa.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=rsa.test", "-addext", "subjectAltName=DNS:rsa.test",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def s_client(port: int, server_name: str, version: str, groups: str) -> tuple[bool, str | None]:
    """(handshake done, the server's key-exchange group as s_client names it)."""
    done = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", server_name,
         "-tls1_2" if version == "1.2" else "-tls1_3", "-groups", groups],
        input="", capture_output=True, text=True, timeout=30, check=False)
    found = re.search(r"^Server Temp Key: (.+?), \d+ bits$", done.stdout, re.MULTILINE)
    ok = done.returncode == 0 and "Cipher is (NONE)" not in done.stdout
    return ok, found.group(1) if found else None


async def test_node_accepts_only_x25519_p256_p384(tmp_path: Path) -> None:
    cert, key = rsa_cert(tmp_path)
    extra = f'[[tls.sni]]\nnames = ["rsa.test"]\ncert = "{cert}"\nkey = "{key}"\n'
    async with loopback_array(tmp_path, 1, extra=extra) as arr:
        port = arr.https_port
        for version in ("1.2", "1.3"):
            for name in ("rsa.test", "localhost"):
                if version == "1.2" and name == "localhost":
                    continue  # the ECDSA certificate: see below
                for group in ALLOWED:
                    result = await asyncio.to_thread(s_client, port, name, version, group)
                    assert result == (True, TEMP_KEY[group]), (version, name, group, result)
                for group in REFUSED:
                    result = await asyncio.to_thread(s_client, port, name, version, group)
                    assert not result[0], (version, name, group, result)
        # TLS 1.2 on the P-256 ECDSA certificate: the server's order (X25519 first) wins and
        # X448 / P-521 are never chosen even when a client prefers them.
        for groups, chosen in (("X448:P-521:X25519:P-256", "X25519"),
                               ("P-521:X448:P-256", "ECDH, prime256v1")):
            result = await asyncio.to_thread(s_client, port, "localhost", "1.2", groups)
            assert result == (True, chosen), (groups, result)


def handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> bool:
    """A TLS handshake through memory BIOs; True when both ends finish it."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    cli = client.wrap_bio(c_in, c_out, server_hostname="localhost")
    srv = server.wrap_bio(s_in, s_out, server_side=True)
    try:
        for _ in range(10):
            for obj in (cli, srv):
                with contextlib.suppress(ssl.SSLWantReadError):
                    obj.do_handshake()
            s_in.write(c_out.read())
            c_in.write(s_out.read())
    except ssl.SSLError:
        return False
    return cli.version() is not None and srv.version() is not None


def test_fallback_without_the_ssl_ctx_is_p256_alone(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the SSL_CTX cannot be reached, the context is narrowed to P-256 (one curve is all
    Python's ssl can set): still inside the allowed list, never OpenSSL's default."""
    from tests.integration.loopback import make_certs

    paths = make_certs(tmp_path / "certs")
    client_p384 = tls.client_context(paths.ca_cert)
    client_p384.set_ecdh_curve("secp384r1")  # this client offers P-384 only
    client_p256 = tls.client_context(paths.ca_cert)
    client_p256.set_ecdh_curve("prime256v1")
    normal = tls.server_context(paths.node_cert, paths.node_key)
    assert handshake(normal, client_p384) and handshake(normal, client_p256)

    monkeypatch.setattr(openssl_ctx, "check_ssl_ctx_pointer", lambda *_: "layout unknown")
    narrowed = tls.server_context(paths.node_cert, paths.node_key)
    assert not handshake(narrowed, client_p384)
    assert handshake(narrowed, client_p256)
