"""Shared TLS session tickets across processes.

Two real TLS servers on 127.0.0.1 in two separate Python processes -- A a blocking ``SSLSocket``
server, B a uvloop server as the node's worker processes run -- both built with
``dlba.tls.context.server_context`` and ``install_ticket_keys`` on the keys each derives from
the cluster secret for the clock the test sets (``derived_keys``, as every worker process of
every node does for the real clock). A session from A resumes on B, seen by
Python's ssl (``session_reused`` on both ends) and by ``openssl s_client`` (``-sess_out`` on A,
``-sess_in`` on B, "Reused"); after rotations an old ticket still resumes (last three keys) and is
renewed under the current key, and a ticket whose key fell off the ring gets a full handshake.
TLS 1.2 and 1.3. A control pair without shared keys shows the failure this fixes.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, cast

import pytest

from dlba.tls import certs
from dlba.tls import context as tls
from dlba.tls import tickets as tls_tickets
from dlba.tls.tickets import ROTATE_S, TicketKey, TicketKeyRing, derived_keys

# The server: argv = mode (blocking|asyncio|uvloop), cert, key, cluster secret file, clock file,
# install (1, or 0 for the control: OpenSSL's own per-process ticket key).
# It prints "READY <port> <installed 0/1> <c|python|None>", then on each "reload" line on stdin
# re-derives its ring for the clock file's time and prints "RELOADED". Each connection gets one line
# "reused=<0/1> version=<TLS version>" and is closed.
SERVER = r"""
import asyncio, socket, ssl, sys, threading
from pathlib import Path
from dlba.tls import certs
from dlba.tls import context as tls
from dlba.tls import tickets as tls_tickets

mode, cert, key, secret_file, clock_file, install = sys.argv[1:7]
secret = certs.read_cluster_secret(Path(secret_file))
ring = tls_tickets.TicketKeyRing()
def load() -> None:
    ring.replace(tls_tickets.derived_keys(secret, float(Path(clock_file).read_text())))
load()
ctx = tls.server_context(Path(cert), Path(key))
installed = install == "1" and tls_tickets.install_ticket_keys(ctx, ring)

def control() -> None:
    for line in sys.stdin:
        if line.strip() == "reload":
            load()
            print("RELOADED", flush=True)

def reply(obj) -> bytes:
    return f"reused={int(obj.session_reused)} version={obj.version()}\n".encode()

srv = socket.create_server(("127.0.0.1", 0))
threading.Thread(target=control, daemon=True).start()
print(f"READY {srv.getsockname()[1]} {int(installed)} {tls_tickets.ticket_callback_kind(ctx)}",
      flush=True)

if mode == "blocking":
    while True:
        conn, _ = srv.accept()
        conn.settimeout(10)
        try:
            with ctx.wrap_socket(conn, server_side=True) as tconn:
                tconn.sendall(reply(tconn))
        except (ssl.SSLError, OSError) as exc:
            print(f"server error: {exc}", file=sys.stderr, flush=True)
else:
    async def handle(reader, writer) -> None:
        writer.write(reply(writer.get_extra_info("ssl_object")))
        await writer.drain()
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, sock=srv, ssl=ctx)
        await server.serve_forever()
    if mode == "uvloop":
        import uvloop
        uvloop.run(main())
    else:
        asyncio.run(main())
"""

VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


@dataclass
class Server:
    proc: subprocess.Popen[str]
    port: int
    installed: bool
    kind: str  # the ticket callback: "c" (dlba/tls/ticket_cb.c) or "python"

    def command(self, line: str, expect: str) -> None:
        stdin: IO[str] | None = self.proc.stdin
        stdout: IO[str] | None = self.proc.stdout
        assert stdin is not None and stdout is not None
        stdin.write(line + "\n")
        stdin.flush()
        assert stdout.readline().strip() == expect


@dataclass
class Array:
    certdir: Path
    clock_file: Path
    secret: bytes
    ring: TicketKeyRing
    a: Server
    b: Server
    clients: dict[str, ssl.SSLContext] = field(default_factory=dict)

    def client(self, version: str) -> ssl.SSLContext:
        """One client context per version (Python resumes a session only on its context)."""
        if version not in self.clients:
            ctx = tls.client_context(self.certdir / "ca.pem")
            ctx.minimum_version = ctx.maximum_version = VERSIONS[version]
            self.clients[version] = ctx
        return self.clients[version]

    def rotate(self) -> TicketKey:
        """One rotation period later on both servers' clock (and the test's own ring)."""
        now = float(self.clock_file.read_text()) + ROTATE_S
        self.clock_file.write_text(repr(now))
        for server in (self.a, self.b):
            server.command("reload", "RELOADED")
        self.ring.replace(derived_keys(self.secret, now))
        assert self.ring.current is not None
        return self.ring.current


def start_server(mode: str, certdir: Path, clock_file: Path, log: Path,
                 install: bool = True, kind: str = "c") -> Server:
    env = dict(os.environ, DLBA_TICKET_CALLBACK=kind)
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, mode, str(certdir / "node.pem"), str(certdir / "node.key"),
         str(certdir / "cluster.key"), str(clock_file), "1" if install else "0"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log.open("w"), text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline().split()
    assert line[:1] == ["READY"], (line, log.read_text())
    return Server(proc, int(line[1]), line[2] == "1", line[3])


@pytest.fixture(params=["c", "python"])
def array(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Array]:
    """Both ticket callbacks: the C one `make install` builds, and the Python fallback."""
    kind = request.param
    paths = certs.init_certs(tmp_path / "certs", ["localhost"], ["127.0.0.1"])
    secret = certs.read_cluster_secret(paths.cluster_key)
    ring = TicketKeyRing(derived_keys(secret, 1_000_000.0))
    clock_file = tmp_path / "clock"
    clock_file.write_text(repr(1_000_000.0))
    a = start_server("blocking", paths.ca_cert.parent, clock_file, tmp_path / "a.log", kind=kind)
    try:
        # uvloop, as the node's worker processes run.
        b = start_server("uvloop", paths.ca_cert.parent, clock_file, tmp_path / "b.log", kind=kind)
    except BaseException:
        a.proc.kill()
        raise
    yield Array(paths.ca_cert.parent, clock_file, secret, ring, a, b)
    for server in (a, b):
        server.proc.kill()
        server.proc.wait()


# --- clients -----------------------------------------------------------------------------
def py_connect(array: Array, server: Server, version: str,
               session: ssl.SSLSession | None = None) -> tuple[ssl.SSLSession, bool, str]:
    """(session to resume with next time, client saw reuse, the server's line)."""
    ctx = array.client(version)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost", session=session) as conn:
        data = b""
        while not data.endswith(b"\n"):
            chunk = conn.recv(100)
            if not chunk:
                break
            data += chunk
        # Reading the line also read the TLS 1.3 NewSessionTicket messages sent before it.
        new_session = conn.session
        assert new_session is not None
        return new_session, bool(conn.session_reused), data.decode().strip()


def s_client(array: Array, server: Server, version: str, *, sess_in: Path | None = None,
             sess_out: Path | None = None) -> str:
    cmd = ["openssl", "s_client", "-connect", f"127.0.0.1:{server.port}",
           "-servername", "localhost", "-CAfile", str(array.certdir / "ca.pem"), "-ign_eof",
           "-tls1_2" if version == "1.2" else "-tls1_3"]
    if sess_in is not None:
        cmd += ["-sess_in", str(sess_in)]
    if sess_out is not None:
        cmd += ["-sess_out", str(sess_out)]
    done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=30, check=False)
    return done.stdout


def handshake_kind(output: str) -> str:
    """"Reused" or "New" from s_client's summary line ("Reused, TLSv1.3, Cipher is ...")."""
    found = re.findall(r"^(Reused|New), (TLSv1\.[23])", output, re.MULTILINE)
    assert found, output
    return str(found[-1][0])


def last_ticket_key_name(text: str) -> bytes:
    """The key name (first 16 bytes of the ticket) of the last session printed in ``text``
    (s_client prints the session after the handshake and again for each TLS 1.3
    NewSessionTicket; ``openssl sess_id -text`` prints a -sess_out file)."""
    lines = text.splitlines()
    at = max(i for i, line in enumerate(lines) if "TLS session ticket:" in line)
    first = lines[at + 1].split(" - ", 1)[1][:47].replace("-", " ")
    return bytes.fromhex("".join(first.split()))


def ticket_key_name(sess_file: Path) -> bytes:
    """The ticket key name of a session written by ``-sess_out``."""
    text = subprocess.run(["openssl", "sess_id", "-in", str(sess_file), "-noout", "-text"],
                          capture_output=True, text=True, check=True, timeout=10).stdout
    return last_ticket_key_name(text)


# --- tests -------------------------------------------------------------------------------
def test_installed_in_both_processes(array: Array, request: pytest.FixtureRequest) -> None:
    assert array.a.installed and array.b.installed
    # the C callback must be the one in use after `make install`, not silently the fallback
    assert array.a.kind == array.b.kind == request.node.callspec.params["array"]


def test_control_without_shared_keys_no_resumption(array: Array, tmp_path: Path) -> None:
    """The problem this solves: two processes with OpenSSL's own ticket keys do not resume
    each other's sessions (so the tests above are not vacuous)."""
    c = start_server("blocking", array.certdir, array.clock_file, tmp_path / "c.log", False)
    d = start_server("asyncio", array.certdir, array.clock_file, tmp_path / "d.log", False)
    try:
        assert not c.installed and not d.installed
        for version in VERSIONS:
            session, _, _ = py_connect(array, c, version)
            _, reused, line = py_connect(array, d, version, session)
            assert not reused and line.startswith("reused=0")
            _, reused, _ = py_connect(array, c, version, session)
            assert reused                                   # same process: its own key
    finally:
        for server in (c, d):
            server.proc.kill()
            server.proc.wait()


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_python_client_resumes_on_the_other_process(array: Array, version: str) -> None:
    session, reused, line = py_connect(array, array.a, version)
    assert not reused and line == f"reused=0 version=TLSv{version}"
    assert session.has_ticket
    _, reused, line = py_connect(array, array.b, version, session)
    assert reused and line == f"reused=1 version=TLSv{version}"
    # ... and the other way round: a session from B resumes on A.
    session_b, _, _ = py_connect(array, array.b, version)
    _, reused, line = py_connect(array, array.a, version, session_b)
    assert reused and line.startswith("reused=1")


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_python_client_rotation(array: Array, version: str) -> None:
    first, _, _ = py_connect(array, array.a, version)          # ticket under key 1
    array.rotate()                                              # ring: 2 1
    _, reused, line = py_connect(array, array.b, version, first)
    assert reused and line.startswith("reused=1")
    array.rotate()                                              # ring: 3 2 1
    _, reused, _ = py_connect(array, array.a, version, first)
    assert reused
    array.rotate()                                              # ring: 4 3 2 (key 1 is gone)
    fresh, reused, line = py_connect(array, array.b, version, first)
    assert not reused and line == f"reused=0 version=TLSv{version}"  # full handshake, still ok
    _, reused, _ = py_connect(array, array.a, version, fresh)
    assert reused


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_s_client_resumes_across_processes_and_rotations(array: Array, version: str,
                                                         tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.fail("openssl CLI missing: `make install` installs it")
    k1 = array.ring.current
    assert k1 is not None
    s1 = tmp_path / "s1.pem"
    assert handshake_kind(s_client(array, array.a, version, sess_out=s1)) == "New"
    assert ticket_key_name(s1) == k1.name                      # encrypted with the newest key
    assert handshake_kind(s_client(array, array.b, version, sess_in=s1)) == "Reused"

    k2 = array.rotate()                                         # ring: 2 1
    # An old ticket resumes and is renewed under the current key (the callback returned 2).
    out = s_client(array, array.b, version, sess_in=s1)
    assert handshake_kind(out) == "Reused"
    assert last_ticket_key_name(out) == k2.name
    s2 = tmp_path / "s2.pem"                                    # a new session under key 2
    assert handshake_kind(s_client(array, array.a, version, sess_out=s2)) == "New"
    assert ticket_key_name(s2) == k2.name

    array.rotate()                                              # ring: 3 2 1
    assert handshake_kind(s_client(array, array.a, version, sess_in=s1)) == "Reused"
    array.rotate()                                              # ring: 4 3 2
    assert handshake_kind(s_client(array, array.a, version, sess_in=s1)) == "New"
    assert handshake_kind(s_client(array, array.b, version, sess_in=s1)) == "New"
    assert handshake_kind(s_client(array, array.b, version, sess_in=s2)) == "Reused"
    array.rotate()                                              # ring: 5 4 3
    assert handshake_kind(s_client(array, array.a, version, sess_in=s2)) == "New"


@pytest.mark.parametrize("server_name", ["localhost", "other.test"])
def test_same_process_contexts_sni_and_reinstall(tmp_path: Path, server_name: str) -> None:
    """In one process: two separate contexts on one ring resume each other's tickets, also when
    the SNI callback switched to another certificate's context (OpenSSL takes the ticket
    callback from the listener's context); a second install on a context switches rings."""
    paths = certs.init_certs(tmp_path / "certs", ["localhost"], ["127.0.0.1"])
    other_cert, other_key = certs.make_cert(certs.load_ca(paths.ca_cert, paths.ca_key),
                                            ["other.test"])
    certs.write_cert(other_cert, other_key, tmp_path / "other.pem", tmp_path / "other.key")
    sni = {"other.test": (tmp_path / "other.pem", tmp_path / "other.key")}
    ring = TicketKeyRing(derived_keys(b"other secret", 0.0))
    ctx1 = tls.server_context(paths.node_cert, paths.node_key, sni)
    ctx2 = tls.server_context(paths.node_cert, paths.node_key, sni)
    assert tls_tickets.install_ticket_keys(ctx1, ring)
    assert tls_tickets.install_ticket_keys(ctx2, TicketKeyRing(derived_keys(b"other secret", 0.0)))
    assert tls_tickets.install_ticket_keys(ctx2, ring)         # switch to the shared ring
    assert tls_tickets.ticket_keys_installed(ctx1) and tls_tickets.ticket_keys_installed(ctx2)

    client = tls.client_context(paths.ca_cert)

    def connect(server_ctx: ssl.SSLContext, session: ssl.SSLSession | None
                ) -> tuple[ssl.SSLSession, bool]:
        c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
        cli = client.wrap_bio(c_in, c_out, server_hostname=server_name, session=session)
        srv = server_ctx.wrap_bio(s_in, s_out, server_side=True)
        done = False
        for _ in range(20):
            for obj in (cli, srv):
                with contextlib.suppress(ssl.SSLWantReadError):
                    obj.do_handshake()
            s_in.write(c_out.read())
            c_in.write(s_out.read())
            if done:
                break
            done = cli.version() is not None and srv.version() is not None
        srv.write(b"x")
        c_in.write(s_out.read())
        assert cli.read(1) == b"x"                      # the client takes in the tickets
        assert cli.session is not None
        peer = cli.getpeercert()
        assert peer is not None
        san = cast(tuple[tuple[str, str], ...], peer["subjectAltName"])
        names = [value for kind, value in san if kind == "DNS"]
        assert server_name in names                     # the SNI certificate was served
        return cli.session, bool(cli.session_reused)

    session, reused = connect(ctx1, None)
    assert not reused
    _, reused = connect(ctx2, session)
    assert reused


SLOT_CHECK = """
import gc, sys
from pathlib import Path
from dlba.tls import certs
from dlba.tls import context as tls
from dlba.tls import tickets as tls_tickets
from dlba.tls.ticket_native import native_callbacks
from dlba.tls.tickets import TicketKeyRing

native = native_callbacks()
assert native is not None, "dlba/tls/_ticket_cb.so is not built: run `make install`"
paths = certs.init_certs(Path(sys.argv[1]) / "certs", ["localhost"], ["127.0.0.1"])
ring = TicketKeyRing(tls_tickets.derived_keys(b"s" * 32, 1_000_000.0))
free = len(native.free)
assert free > 0
contexts = [tls.server_context(paths.node_cert, paths.node_key) for _ in range(free + 2)]
for ctx in contexts:
    assert tls_tickets.install_ticket_keys(ctx, ring)
kinds = [tls_tickets.ticket_callback_kind(ctx) for ctx in contexts]
assert kinds == ["c"] * free + ["python"] * 2, kinds
ours = {getattr(ctx, tls_tickets._CB_ATTR).slot for ctx in contexts[:free]}
assert len(ours) == free and not ours & set(native.free)
del contexts, ctx
gc.collect()
assert ours <= set(native.free), (ours, native.free)
print("ok")
"""


def test_c_callback_slots_are_reused_after_their_context_is_gone(tmp_path: Path) -> None:
    """The C library has a fixed number of callbacks (slots): a context beyond them gets the
    Python callback, and a collected context gives its slot back. In a fresh interpreter:
    here, nodes of earlier tests stay referenced from aiohttp's handler caches, and their
    contexts may hold every slot."""
    r = subprocess.run([sys.executable, "-c", SLOT_CHECK, str(tmp_path)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
