"""TLS contexts for the node (server side) and for tests / health checks (client side).

Patent 003: each DLBA server decrypts the SSL session itself, so the request (cookie, session
id, URL) can be scheduled. The server context is built once per certificate at start-up and
shared by every connection; SNI picks among them without any per-connection parsing.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from pathlib import Path

from cryptography import x509

from dlba.tls.groups import set_groups

ALPN = ["http/1.1"]
ALPN_H2 = ["h2", "http/1.1"]  # h2 first: a client offering both gets HTTP/2
# TLS 1.2 suites: forward secrecy (ECDHE) and AEAD only, i.e. Mozilla intermediate's ECDHE
# suites; ECDSA first (our certs are P-256), RSA kept for operators who bring RSA certificates.
# TLS 1.3 suites are all AEAD already and are configured separately by OpenSSL (set_ciphers
# does not touch them); OpenSSL's three are Mozilla intermediate's.
TLS12_CIPHERS = ":".join([
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-RSA-CHACHA20-POLY1305",
])


def _harden(ctx: ssl.SSLContext, alpn: list[str] = ALPN) -> None:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.set_alpn_protocols(alpn)
    # Compression: CRIME. Renegotiation: a client-driven CPU sink and old MITM bugs; nothing
    # we serve needs it. Server preference: our order (AES-GCM with AES-NI) wins.
    ctx.options |= (ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
                    | ssl.OP_CIPHER_SERVER_PREFERENCE)
    # Session tickets stay ON: resumption skips the ECDHE + signature work for returning
    # clients. The node installs ticket keys shared by all its workers and all nodes
    # (dlba/tls/tickets.py), so a client whose next connection lands elsewhere resumes too.
    ctx.options &= ~ssl.OP_NO_TICKET
    # One TLS 1.3 ticket per handshake, not OpenSSL's two: a client resumes with one, and each
    # ticket costs an encryption (and a callback into Python for the shared keys).
    ctx.num_tickets = 1
    # Key-exchange groups: X25519, P-256, P-384 (OpenSSL's default adds X448 and P-521).
    set_groups(ctx)


def _load(cert: Path, key: Path, alpn: list[str] = ALPN) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(ctx, alpn)
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


def cert_dns_names(cert: Path) -> list[str]:
    """DNS names in the certificate's SAN (lower case), e.g. ``["www.example.com",
    "*.example.com"]``; the CN is ignored, as browsers do."""
    c = x509.load_pem_x509_certificate(cert.read_bytes())
    try:
        san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [n.lower() for n in san.get_values_for_type(x509.DNSName)]


class SniSelector:
    """Server name -> context: exact names first, then a ``*.parent`` wildcard (one label, as
    in RFC 6125), else None (the default context stays)."""

    def __init__(self) -> None:
        self.exact: dict[str, ssl.SSLContext] = {}
        self.wildcard: dict[str, ssl.SSLContext] = {}  # "example.com" for "*.example.com"

    def add(self, pattern: str, ctx: ssl.SSLContext) -> None:
        pattern = pattern.strip().lower().rstrip(".")
        if pattern.startswith("*."):
            self.wildcard.setdefault(pattern[2:], ctx)
        elif pattern:
            self.exact.setdefault(pattern, ctx)

    def select(self, server_name: str | None) -> ssl.SSLContext | None:
        if not server_name:
            return None
        name = server_name.lower().rstrip(".")
        ctx = self.exact.get(name)
        if ctx is None:
            _, dot, parent = name.partition(".")
            if dot and parent:
                ctx = self.wildcard.get(parent)
        return ctx


def server_context(default_cert: Path, default_key: Path,
                   sni: Mapping[str, tuple[Path, Path]] | None = None,
                   http2: bool = False) -> ssl.SSLContext:
    """The node's TLS server context.

    ``sni`` maps a server name (or ``*.domain``) to (cert, key). A ClientHello's server name
    selects, in this order: an entry whose key matches, an entry whose certificate SAN matches,
    else the default certificate (also used without SNI, e.g. clients connecting by IP).
    ``http2``: ALPN offers h2 before http/1.1.
    """
    alpn = ALPN_H2 if http2 else ALPN
    default = _load(default_cert, default_key, alpn)
    if not sni:
        return default
    selector = SniSelector()
    # Keys first so an explicit mapping beats a SAN that happens to overlap another cert.
    loaded = {pattern: _load(cert, key, alpn) for pattern, (cert, key) in sni.items()}
    for pattern, ctx in loaded.items():
        selector.add(pattern, ctx)
    for pattern, ctx in loaded.items():
        for name in cert_dns_names(sni[pattern][0]):
            selector.add(name, ctx)

    def pick(sock: ssl.SSLObject | ssl.SSLSocket, server_name: str | None,
             _ctx: ssl.SSLContext) -> None:
        chosen = selector.select(server_name)
        if chosen is not None:
            # Only the certificate changes; version, ciphers and ALPN are identical in every
            # context (all built by _harden), so the handshake behaves the same whichever wins.
            sock.context = chosen
        return None

    default.sni_callback = pick
    return default


def client_context(cafile: Path | str | None = None) -> ssl.SSLContext:
    """A verifying client context (TLS 1.2+, ALPN http/1.1) trusting ``cafile`` (the dev CA),
    or the system store when None. For tests and health checks."""
    ctx = ssl.create_default_context(cafile=str(cafile) if cafile is not None else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(ALPN)
    return ctx
