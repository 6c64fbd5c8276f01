"""Certificates from init_certs and a real TLS server on 127.0.0.1 built with server_context."""

from __future__ import annotations

import asyncio
import ipaddress
import shutil
import ssl
import stat
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from dlba.tls import certs
from dlba.tls import context as tls

PRIVATE = ("ca.key", "node.key", "cluster.key", "admin.token")


@pytest.fixture
def certdir(tmp_path: Path) -> Path:
    certs.init_certs(tmp_path / "certs", ["node.test"], certs.DEFAULT_IPS)
    return tmp_path / "certs"


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_files_modes_and_idempotence(certdir: Path) -> None:
    for name in PRIVATE:
        assert stat.S_IMODE((certdir / name).stat().st_mode) == 0o600, name
    for name in ("ca.pem", "node.pem"):
        assert stat.S_IMODE((certdir / name).stat().st_mode) & 0o077 != 0o077
    assert len(certs.read_cluster_secret(certdir / "cluster.key")) == 32
    assert len((certdir / "admin.token").read_text().strip()) >= 32
    before = {p.name: p.read_bytes() for p in certdir.iterdir()}
    certs.init_certs(certdir, ["node.test"], ["127.0.0.1"])
    assert {p.name: p.read_bytes() for p in certdir.iterdir()} == before
    certs.init_certs(certdir, ["node.test"], ["127.0.0.1"], force=True)
    after = {p.name: p.read_bytes() for p in certdir.iterdir()}
    assert all(after[n] != before[n] for n in before)
    for name in PRIVATE:
        assert stat.S_IMODE((certdir / name).stat().st_mode) == 0o600, name


def test_admin_tokens_can_follow_a_command_line_option(tmp_path: Path) -> None:
    """A token is given as `--token TOKEN`: one starting with "-" would be taken for an option
    (a URL-safe token did so one time in 64). Hex never does."""
    for i in range(200):
        paths = certs.init_certs(tmp_path / str(i), ["node.test"], ["127.0.0.1"])
        token = paths.admin_token.read_text().strip()
        assert len(token) == 64 and all(c in "0123456789abcdef" for c in token), token


def test_certificate_contents(certdir: Path) -> None:
    ca, node = load(certdir / "ca.pem"), load(certdir / "node.pem")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert isinstance(node.public_key(), ec.EllipticCurvePublicKey)
    assert node.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    assert not node.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    eku = node.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    san = node.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"node.test", "localhost"}
    ips = {str(i) for i in san.get_values_for_type(x509.IPAddress)}
    expected = {"198.18.0.100", "127.0.0.1", *(f"198.18.0.{10 + k}" for k in range(1, 10))}
    assert ips == expected
    node.verify_directly_issued_by(ca)


def test_cli_main(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "c"
    assert certs.certs_init_main(["--dir", str(out), "--ip", "10.0.0.1", "--name", "a.b"]) == 0
    san = load(out / "node.pem").extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("10.0.0.1") in san.get_values_for_type(x509.IPAddress)
    assert certs.certs_init_main(["--dir", str(tmp_path / "d"), "--ip", "not-an-ip"]) == 2
    assert not (tmp_path / "d" / "ca.key").exists()
    assert certs.certs_init_main(["--bogus"]) == 2
    capsys.readouterr()


# --- a real TLS server ---------------------------------------------------------------------------


async def serve(ctx: ssl.SSLContext) -> AsyncIterator[int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.read(100)
            writer.write(b"pong")
            await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def sni_server(tmp_path: Path, certdir: Path) -> AsyncIterator[int]:
    ca = certs.load_ca(certdir / "ca.pem", certdir / "ca.key")
    for stem, names in (("shop", ["shop.example"]), ("wild", ["*.api.example"])):
        cert, key = certs.make_cert(ca, names)
        certs.write_cert(cert, key, tmp_path / f"{stem}.pem", tmp_path / f"{stem}.key")
    ctx = tls.server_context(
        certdir / "node.pem", certdir / "node.key",
        {"shop.example": (tmp_path / "shop.pem", tmp_path / "shop.key"),
         "ignored-key-uses-san": (tmp_path / "wild.pem", tmp_path / "wild.key")})
    async for port in serve(ctx):
        yield port


async def handshake(port: int, ctx: ssl.SSLContext, server_hostname: str | None
                    ) -> tuple[str | None, str | None, bytes | None]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                                   server_hostname=server_hostname)
    sslobj: ssl.SSLObject = writer.get_extra_info("ssl_object")
    writer.write(b"ping")
    assert await reader.read(4) == b"pong"
    result = (sslobj.version(), sslobj.selected_alpn_protocol(), sslobj.getpeercert(True))
    writer.close()
    return result


def der(path: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(path.read_text())


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
async def test_tls_versions_and_alpn(sni_server: int, certdir: Path,
                                     version: ssl.TLSVersion) -> None:
    ctx = tls.client_context(certdir / "ca.pem")
    ctx.minimum_version = ctx.maximum_version = version
    got_version, alpn, cert = await handshake(sni_server, ctx, "127.0.0.1")
    assert got_version == {ssl.TLSVersion.TLSv1_3: "TLSv1.3", ssl.TLSVersion.TLSv1_2: "TLSv1.2"
                           }[version]
    assert alpn == "http/1.1"
    assert cert == der(certdir / "node.pem")


async def test_tls12_negotiates_only_modern_cipher(sni_server: int, certdir: Path) -> None:
    ctx = tls.client_context(certdir / "ca.pem")
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    _, writer = await asyncio.open_connection("127.0.0.1", sni_server, ssl=ctx,
                                              server_hostname="localhost")
    cipher = writer.get_extra_info("cipher")[0]
    writer.close()
    assert cipher.startswith("ECDHE-") and ("GCM" in cipher or "CHACHA20" in cipher), cipher
    # A client offering only CBC suites is refused.
    cbc = tls.client_context(certdir / "ca.pem")
    cbc.maximum_version = ssl.TLSVersion.TLSv1_2
    cbc.set_ciphers("ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await handshake(sni_server, cbc, "localhost")


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated")
async def test_tls11_refused(sni_server: int, certdir: Path) -> None:
    def tls11(ctx: ssl.SSLContext) -> ssl.SSLContext:
        # SECLEVEL=0 lets OpenSSL 3 speak TLS 1.1 at all (SHA-1 PRF).
        ctx.set_ciphers("ALL:@SECLEVEL=0")
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        return ctx

    client = tls11(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    client.load_verify_locations(str(certdir / "ca.pem"))
    # Control: this client does complete TLS 1.1 with a permissive server, so the refusal
    # below is our server's doing, not the client's.
    permissive = tls11(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    permissive.load_cert_chain(str(certdir / "node.pem"), str(certdir / "node.key"))
    async for port in serve(permissive):
        assert (await handshake(port, client, "localhost"))[0] == "TLSv1.1"
    assert tls.server_context(certdir / "node.pem", certdir / "node.key").minimum_version == (
        ssl.TLSVersion.TLSv1_2)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await handshake(sni_server, client, "localhost")


@pytest.mark.parametrize(("server_name", "expected"), [
    ("shop.example", "shop.pem"), ("SHOP.example", "shop.pem"), ("v1.api.example", "wild.pem"),
    ("localhost", "node.pem"), (None, "node.pem"),
])
async def test_sni_selects_certificate(sni_server: int, certdir: Path, tmp_path: Path,
                                       server_name: str | None, expected: str) -> None:
    ctx = tls.client_context(certdir / "ca.pem")
    if server_name is None:
        ctx.check_hostname = False  # no SNI sent at all
    _, _, cert = await handshake(sni_server, ctx, server_name)
    path = certdir / expected if expected == "node.pem" else tmp_path / expected
    assert cert == der(path)


async def test_sni_unknown_name_gets_default_and_fails_verification(
        sni_server: int, certdir: Path) -> None:
    # a.b.api.example must NOT match *.api.example (one label only): default cert, so a
    # verifying client rejects it.
    with pytest.raises(ssl.SSLCertVerificationError):
        await handshake(sni_server, tls.client_context(certdir / "ca.pem"), "a.b.api.example")


async def test_openssl_s_client_sni(sni_server: int, certdir: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.fail("openssl CLI missing: `make install` installs it")

    def run() -> str:
        proc = subprocess.run(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{sni_server}", "-servername",
             "shop.example", "-CAfile", str(certdir / "ca.pem"), "-verify_return_error",
             "-alpn", "http/1.1"],
            input=b"", capture_output=True, timeout=20, check=False)
        return (proc.stdout + proc.stderr).decode(errors="replace")

    out = await asyncio.to_thread(run)
    assert "CN = shop.example" in out, out
    assert "ALPN protocol: http/1.1" in out, out
    assert "Verify return code: 0 (ok)" in out, out
