"""Returning TLS clients resume on every connection, not every other one, against a real node
process (`dlba node`, its own TLS layer), with both ticket callbacks (the C library and the
Python fallback, ``DLBA_TICKET_CALLBACK=python``).

A TLS 1.3 client uses a ticket once and keeps a session only when a ticket arrives, so the node
must send a fresh ticket after each resumption (the ticket-key callback answers 2). Before, it
answered 1 for a ticket under the current key, OpenSSL sent no NewSessionTicket, and curl or a
`s_client -sess_out/-sess_in` chain alternated full and resumed handshakes. TLS 1.2 clients
keep their session, and resume every time too.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dlba.tls import context as tls
from dlba.tls.ticket_native import LIBRARY
from tests.integration.loopback import free_port, make_certs, node_processes, write_config

ROUNDS = 8
VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
REQUEST = "GET /whoami HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"


@dataclass
class Node:
    port: int
    ca: Path
    pid: int


@pytest.fixture(scope="module", params=["c", "python"])
def node(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
         ) -> Iterator[Node]:
    """One node process per callback for the module's tests (each test makes its own
    sessions, so they do not depend on each other)."""
    kind = request.param
    tmp_path = tmp_path_factory.mktemp(f"node_{kind}")
    certs = make_certs(tmp_path / "certs")
    backend, http, https, admin = free_port(), free_port(), free_port(), free_port()
    config = write_config(tmp_path, certs, [(1, f"127.0.0.1:{backend}")], http_port=http,
                          https_port=https, admin_port=admin)
    with contextlib.ExitStack() as stack:
        with pytest.MonkeyPatch.context() as mp:  # only while the processes start
            mp.setenv("DLBA_TICKET_CALLBACK", kind)  # node_processes passes os.environ on
            pid = stack.enter_context(node_processes(config, [backend], [http, https, admin]))
        # The callback in use is the one asked for: the C library is mapped only then.
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert (LIBRARY.name in maps) == (kind == "c"), f"{kind}: {LIBRARY.name} mapping"
        yield Node(https, certs.ca_cert, pid)


# --- clients ------------------------------------------------------------------------------
def s_client(node: Node, version: str, *extra: str) -> str:
    cmd = ["openssl", "s_client", "-connect", f"127.0.0.1:{node.port}", "-servername",
           "localhost", "-CAfile", str(node.ca), "-tls1_2" if version == "1.2" else "-tls1_3",
           # -ign_eof: read the answer to the end, and with it any NewSessionTicket
           "-ign_eof", *extra]
    done = subprocess.run(cmd, input=REQUEST, capture_output=True, text=True, timeout=30,
                          check=False)
    assert "HTTP/1.1 200" in done.stdout, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


def handshake(output: str) -> str:
    """"New" or "Reused", from s_client's summary line."""
    found = re.findall(r"^(Reused|New), TLSv1\.[23]", output, re.MULTILINE)
    assert found, output[-2000:]
    return str(found[-1])


def py_connect(ctx: ssl.SSLContext, node: Node, session: ssl.SSLSession | None
               ) -> tuple[ssl.SSLSession | None, bool]:
    """One request on a new connection: (the session afterwards, whether it was resumed)."""
    with socket.create_connection(("127.0.0.1", node.port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost", session=session) as conn:
        conn.sendall(REQUEST.encode())
        answer = b""
        while chunk := conn.recv(65536):  # reading takes in the TLS 1.3 tickets too
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        return conn.session, bool(conn.session_reused)


# --- tests --------------------------------------------------------------------------------
def test_s_client_chain_tls13_resumes_every_time(node: Node, tmp_path: Path) -> None:
    """Each connection resumes with the ticket the previous one received (-sess_out writes a
    session only when a ticket arrives, as a single-use client keeps it)."""
    kinds = []
    for i in range(ROUNDS):
        out = tmp_path / f"s{i}.pem"
        args = ["-sess_out", str(out)]
        if i:
            args += ["-sess_in", str(tmp_path / f"s{i - 1}.pem")]
        kinds.append(handshake(s_client(node, "1.3", *args)))
        assert out.exists(), f"connection {i}: no session ticket arrived"
    assert kinds == ["New"] + ["Reused"] * (ROUNDS - 1)


def test_s_client_tls12_resumes_every_time(node: Node, tmp_path: Path) -> None:
    """TLS 1.2 clients keep resuming with their session (s_client cannot write a resumed
    TLS 1.2 session with -sess_out, so every connection offers the first one)."""
    first = tmp_path / "s.pem"
    kinds = [handshake(s_client(node, "1.2", "-sess_out", str(first)))]
    kinds += [handshake(s_client(node, "1.2", "-sess_in", str(first))) for _ in range(ROUNDS - 1)]
    assert kinds == ["New"] + ["Reused"] * (ROUNDS - 1)


def test_python_single_use_tickets_tls13(node: Node) -> None:
    """A client that uses each TLS 1.3 ticket once (curl >= 8.12, browsers): it keeps a session
    only when a new ticket came (a new ticket is a new session: its id is the ticket's hash)."""
    ctx = tls.client_context(node.ca)
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    cache: ssl.SSLSession | None = None
    resumed = []
    for _ in range(ROUNDS + 2):
        offered = cache
        session, reused = py_connect(ctx, node, offered)
        resumed.append(reused)
        cache = session if session is not None and session != offered else None
    assert resumed == [False] + [True] * (ROUNDS + 1)


def test_python_reuse_tls12(node: Node) -> None:
    ctx = tls.client_context(node.ca)
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    session: ssl.SSLSession | None = None
    resumed = []
    for _ in range(ROUNDS + 2):
        session, reused = py_connect(ctx, node, session)
        resumed.append(reused)
    assert resumed == [False] + [True] * (ROUNDS + 1)


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_curl_resumes_every_connection(node: Node, version: str) -> None:
    """curl, one process, ROUNDS requests each on its own connection (Connection: close) with
    its session cache: only the first handshake carries the server's certificate. HTTP/1.1:
    over HTTP/2 curl would carry every request on the first connection."""
    url = f"https://localhost:{node.port}/whoami"
    cmd = ["curl", "-sv", "--http1.1", "--cacert", str(node.ca), "--resolve",
           f"localhost:{node.port}:127.0.0.1", f"--tlsv{version}", "--tls-max", version,
           "-H", "Connection: close"]
    for _ in range(ROUNDS):
        cmd += [url, "-o", os.devnull]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr.count("Connected to localhost") == ROUNDS, done.stderr[-3000:]
    certificates = done.stderr.count(f"TLSv{version} (IN), TLS handshake, Certificate (11)")
    assert certificates == 1, done.stderr[-3000:]
