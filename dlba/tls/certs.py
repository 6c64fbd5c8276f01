"""Development PKI for the array: a CA, a node certificate, the cluster secret, the admin token.

Every node of the array terminates TLS for the same VIP (patent 003: the SSL session is
decrypted on whichever DLBA server the scheduler picked), so one node certificate carries SANs
for the VIP *and* every node address: the same files are installed on all nodes, and a client
reaching a node directly (health checks, admin) also verifies. ECDSA P-256 keeps handshakes
cheap, which matters because TLS is the node's main CPU cost.

``dlba certs init`` is wired in dlba/cli.py to ``certs_init_main``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import secrets
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_DIR = Path("certs")
# Contract addresses of `dlba up`: the VIP and nodes n1..n9 on the front network.
DEFAULT_IPS: tuple[str, ...] = ("198.18.0.100", *(f"198.18.0.{10 + k}" for k in range(1, 10)),
                                "127.0.0.1")
DEFAULT_NAMES: tuple[str, ...] = ("localhost",)
CA_DAYS = 3650
NODE_DAYS = 825  # the longest validity Apple/Chrome accept for a server certificate


@dataclass(frozen=True)
class CertPaths:
    ca_cert: Path
    ca_key: Path
    node_cert: Path
    node_key: Path
    cluster_key: Path
    admin_token: Path

    @classmethod
    def in_dir(cls, out_dir: Path) -> CertPaths:
        return cls(out_dir / "ca.pem", out_dir / "ca.key", out_dir / "node.pem",
                   out_dir / "node.key", out_dir / "cluster.key", out_dir / "admin.token")


@dataclass(frozen=True)
class CA:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _write_private(path: Path, data: bytes) -> None:
    # Create with 0600 from the start (no window where the key is world-readable, unlike
    # write-then-chmod), then chmod in case the file already existed with a wider mode.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.chmod(path, 0o600)


def _write_public(path: Path, data: bytes) -> None:
    path.write_bytes(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _now() -> dt.datetime:
    # Backdate a little: a node whose clock is slightly behind must still accept the cert.
    return dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)


def make_ca(common_name: str = "DLBA dev CA") -> CA:
    """A self-signed CA (ECDSA P-256, CA:true, pathlen 0, keyCertSign + cRLSign)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "DLBA")])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now()).not_valid_after(_now() + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return CA(cert, key)


def make_cert(ca: CA, names: Sequence[str], ips: Sequence[str] = ()
              ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A server certificate signed by ``ca`` with SANs for ``names`` (DNS, ``*.x`` allowed)
    and ``ips``; serverAuth EKU. Also used by tests to make extra SNI certificates."""
    if not names and not ips:
        raise ValueError("a certificate needs at least one DNS name or IP address")
    key = ec.generate_private_key(ec.SECP256R1())
    cn = names[0] if names else ips[0]
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dict.fromkeys(names)]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in dict.fromkeys(ips)]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn[:64])]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now()).not_valid_after(_now() + dt.timedelta(days=NODE_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=False, crl_sign=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
                       critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return cert, key


def write_cert(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, cert_path: Path,
               key_path: Path) -> None:
    """Write a certificate (0644) and its key (0600) as PEM."""
    _write_public(cert_path, _cert_pem(cert))
    _write_private(key_path, _key_pem(key))


def load_ca(cert_path: Path, key_path: Path) -> CA:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_path}: not an EC private key")
    return CA(cert, key)


def init_certs(out_dir: Path, names: Sequence[str] = DEFAULT_NAMES,
               ips: Sequence[str] = DEFAULT_IPS, *, force: bool = False) -> CertPaths:
    """Create the CA, node certificate, cluster secret and admin token in ``out_dir``.

    Idempotent: files that exist are kept (so re-running never invalidates cookies signed with
    the cluster secret or logs out admin clients) unless ``force``. A missing node certificate
    is re-issued by the existing CA. ``localhost`` and ``127.0.0.1`` are always included so
    loopback tests and health checks verify.
    """
    paths = CertPaths.in_dir(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    all_names = list(dict.fromkeys([*names, "localhost"]))
    all_ips = list(dict.fromkeys([*ips, "127.0.0.1"]))
    for ip in all_ips:
        ipaddress.ip_address(ip)  # fail before writing anything on a bad address

    if force or not (paths.ca_cert.exists() and paths.ca_key.exists()):
        ca = make_ca()
        write_cert(ca.cert, ca.key, paths.ca_cert, paths.ca_key)
        # A new CA makes the old node certificate unverifiable: re-issue it.
        force_node = True
    else:
        ca = load_ca(paths.ca_cert, paths.ca_key)
        force_node = force
    if force_node or not (paths.node_cert.exists() and paths.node_key.exists()):
        cert, key = make_cert(ca, all_names, all_ips)
        write_cert(cert, key, paths.node_cert, paths.node_key)
    if force or not paths.cluster_key.exists():
        # 32 bytes = 256 bits, the HMAC-SHA256 block-safe key size; hex so it is one text line.
        _write_private(paths.cluster_key, (secrets.token_hex(32) + "\n").encode())
    if force or not paths.admin_token.exists():
        # Hex, like the secret: a URL-safe token can begin with "-", which a command line's
        # `--token TOKEN` then takes for an option (one token in 64).
        _write_private(paths.admin_token, (secrets.token_hex(32) + "\n").encode())
    return paths


def read_cluster_secret(path: Path) -> bytes:
    """The cluster secret as HMAC key bytes (the file holds hex text)."""
    return bytes.fromhex(path.read_text().strip())


def certs_init_main(argv: list[str]) -> int:
    """``dlba certs init [--dir DIR] [--name N]... [--ip IP]... [--force]``; exit code."""
    parser = argparse.ArgumentParser(prog="dlba certs init",
                                     description="Make the dev CA, node certificate, cluster "
                                                 "secret and admin token.")
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR,
                        help="output folder (default: ./certs)")
    parser.add_argument("--name", action="append", default=None,
                        help="DNS name for the node certificate (repeatable)")
    parser.add_argument("--ip", action="append", default=None,
                        help="IP address for the node certificate (repeatable; default: the VIP "
                             "198.18.0.100, nodes 198.18.0.11-19 and 127.0.0.1)")
    parser.add_argument("--force", action="store_true", help="overwrite existing files")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    names: list[str] = args.name or list(DEFAULT_NAMES)
    ips: list[str] = args.ip or list(DEFAULT_IPS)
    try:
        paths = init_certs(args.dir, names, ips, force=args.force)
    except ValueError as exc:
        print(f"dlba certs init: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"dlba certs init: {args.dir}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(f"certificates in {args.dir}/: CA {paths.ca_cert.name}, node {paths.node_cert.name}, "
          f"cluster secret {paths.cluster_key.name}, admin token {paths.admin_token.name}")
    return 0


if __name__ == "__main__":
    sys.exit(certs_init_main(sys.argv[1:]))
