"""A task cancelled in the same turn as the answer it waits for arrives is cancelled, not
handed the answer: Python 3.11's asyncio.wait_for swallowed such a cancellation, and an
upgrading node's old master never stopped its failover agent (it kept answering, and later
took the scheduler role beside the new master)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from scheduler.failover.heartbeat import Answer
from scheduler.failover.heartbeat_udp import Pinger


def test_a_ping_cancelled_as_its_answer_arrives_is_cancelled() -> None:
    async def main() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as quiet:
            quiet.bind(("127.0.0.1", 0))  # takes the ping, never answers it
            port = quiet.getsockname()[1]
            pinger = Pinger(b"k" * 32)
            task = asyncio.ensure_future(pinger.ping("127.0.0.1", port, 5.0))
            while not pinger.protocol.waiters:
                await asyncio.sleep(0.001)
            (nonce, fut), = pinger.protocol.waiters.items()
            fut.set_result(Answer(nonce, "n1", 1, False, True))  # the answer, and ...
            task.cancel()  # ... the stop, in the same turn
            with pytest.raises(asyncio.CancelledError):
                await task
            pinger.close()

    asyncio.run(main())
