"""The heartbeat's sockets on loopback, on uvloop as the node runs them: a ping gets the
node's live state, a stopped responder or another cluster's key gets nothing."""

from __future__ import annotations

import asyncio

import uvloop

from scheduler.failover.heartbeat import heartbeat_key, scheduler_alive
from scheduler.failover.heartbeat_udp import Pinger, SelfState, serve_heartbeat
from tests.integration.loopback import free_port


def test_ping_answer_follows_the_node_state() -> None:
    async def main() -> None:
        key = heartbeat_key(b"secret")
        port = free_port()
        state = SelfState("n3", 4, True, True)
        server = await serve_heartbeat("127.0.0.1", port, key, lambda: state)
        pinger = Pinger(key)
        try:
            answer = await pinger.ping("127.0.0.1", port, 1.0)
            assert answer is not None and scheduler_alive(answer, "n3") and answer.term == 4
            state = SelfState("n3", 4, True, False)  # its proxy stopped serving
            answer = await pinger.ping("127.0.0.1", port, 1.0)
            assert answer is not None and not scheduler_alive(answer, "n3")
            stranger = Pinger(heartbeat_key(b"another cluster"))
            assert await stranger.ping("127.0.0.1", port, 0.2) is None
            stranger.close()
            server.close()  # the process is gone: nothing answers
            assert await pinger.ping("127.0.0.1", port, 0.2) is None
        finally:
            pinger.close()
            server.close()

    uvloop.run(main())


def test_answers_on_the_standard_loop_too() -> None:
    async def main() -> None:
        key = heartbeat_key(b"secret")
        port = free_port()
        server = await serve_heartbeat("127.0.0.1", port, key,
                                       lambda: SelfState("n1", 1, False, True))
        pinger = Pinger(key)
        try:
            answer = await pinger.ping("127.0.0.1", port, 1.0)
            assert answer is not None and answer.name == "n1" and not answer.scheduler
        finally:
            pinger.close()
            server.close()

    asyncio.run(main())
