"""An HTTP/2 stream is freed by reference counting when it ends, as an HTTP/1.1 exchange is
(test_connection_lifetime.py): no per-request cyclic garbage for the collector."""

from __future__ import annotations

import asyncio
import gc
import subprocess
from pathlib import Path

from h2.connection import H2Connection

from dlba.proxy.h2_connection import H2ClientConnection
from dlba.proxy.h2_session import H2Session
from dlba.proxy.h2_stream import H2Exchange, H2Stream
from tests.integration.loopback import loopback_array


async def test_ended_streams_leave_no_cyclic_garbage(tmp_path: Path) -> None:
    async with loopback_array(tmp_path, 2) as arr:
        base = f"https://localhost:{arr.https_port}"
        argv = ["curl", "-sS", "--http2", "--cacert", str(arr.certs.ca_cert), "--resolve",
                f"localhost:{arr.https_port}:127.0.0.1", "-o", "/dev/null", "-o", "/dev/null",
                "-o", "/dev/null", f"{base}/whoami", f"{base}/bytes/300000", f"{base}/a%20b"]
        gc.collect()
        gc.disable()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            res = await asyncio.to_thread(subprocess.run, argv, capture_output=True,
                                          timeout=30, check=False)
            deadline = asyncio.get_running_loop().time() + 5
            while arr.node.ctx.stats.connections_open and \
                    asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.05)
            open_after = arr.node.ctx.stats.connections_open
            gc.collect()
            leaked = sorted(type(o).__name__ for o in gc.garbage
                            if isinstance(o, (H2Stream, H2Exchange, H2Session,
                                              H2ClientConnection, H2Connection)))
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
    assert res.returncode == 0, res.stderr
    assert arr.node.ctx.stats.h2_connections == 1 and open_after == 0
    assert leaked == []
