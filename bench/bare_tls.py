"""The floor for a TLS proxy in Python: a bare uvloop TLS server with the node's own TLS context
(dlba.tls.context.server_context) that answers every request with a fixed 1 KiB and closes. No back
end, no parsing: what uvloop + Python's ssl cost per full handshake on their own.

    python bench/bare_tls.py PORT CERT KEY [PROCESSES]
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import socket
import sys
from pathlib import Path

from dlba.tls.context import server_context

PR_SET_PDEATHSIG = 1
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Length: 1024\r\nConnection: close\r\n"
            b"Content-Type: text/plain\r\n\r\n" + b"x" * 1024)


class Answer(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if b"\r\n\r\n" in data:
            self.transport.write(RESPONSE)  # type: ignore[attr-defined]
            self.transport.close()


async def serve(port: int, cert: Path, key: Path) -> None:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(1024)
    await asyncio.get_running_loop().create_server(Answer, sock=sock,
                                                   ssl=server_context(cert, key))
    await asyncio.Event().wait()


def main(argv: list[str]) -> int:
    port, cert, key = int(argv[0]), Path(argv[1]), Path(argv[2])
    for _ in range(int(argv[3]) - 1 if len(argv) > 3 else 0):
        if os.fork() == 0:
            # the bench stops the parent by PID: its children go with it
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
            break
    import uvloop

    uvloop.run(serve(port, cert, key))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
