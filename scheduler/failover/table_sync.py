"""Client-table sync between the scheduler and its peers: push, pull, apply.

Sync is pushed: the scheduler sends every assignment change to its peers *before* writing it to
its data plane, so a new scheduler's copy always holds every bucket a live flow may use, and no
flow is reset by a takeover (the alternative, GLB's "second chance", would need the old owner
to be alive, which it may not be). A follower that finds a gap pulls the whole table.

`apply_message` is the follower's rule (pure); the rest moves messages over the admin API.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiohttp

from scheduler.client_table import ClientTable, SyncError
from scheduler.failover.sync_messages import SyncDelta, SyncMessage, SyncSnapshot

PUSH_TIMEOUT_S = 0.3


def apply_message(table: ClientTable, msg: SyncMessage, *, term: int,
                  now: float) -> tuple[dict[str, Any], bool]:
    """Apply a pushed change (or a pulled snapshot) to a follower's copy of the table.

    Returns the answer for the scheduler and whether this follower missed a change (a version
    that does not follow on): then it should pull the whole table."""
    if msg.epoch < term:
        # A scheduler of an older term that has not yet seen it was replaced.
        return {"ok": False, "reason": f"term {msg.epoch} is older than {term}"}, False
    # A node a config push just added may own buckets before this follower commits the
    # push: its copy grows to fit (the scheduler's table is the truth).
    nodes = (msg.assignments if isinstance(msg, SyncSnapshot) else [n for _, n in msg.changes])
    highest = max((n for n in nodes if n is not None), default=-1)
    while table.node_count <= max(highest, len(msg.names or ()) - 1):
        table.add_node(0)
    if msg.names is not None:
        # The scheduler's numbering is the truth (membership.py: slots by name).
        table.names[:len(msg.names)] = msg.names
    try:
        if isinstance(msg, SyncSnapshot):
            table.apply_snapshot(msg.version, msg.assignments, epoch=msg.epoch)
        else:
            table.apply_delta(msg.from_version, msg.version, msg.changes, epoch=msg.epoch)
    except SyncError as e:
        return {"ok": False, "reason": str(e), "version": table.version,
                "epoch": table.epoch}, True
    while msg.names is not None and table.node_count > len(msg.names) and not (
            table.counts()[-1]):
        table.drop_last_node()  # the scheduler forgot it (it drained): so does the copy
    if msg.live is not None and len(msg.live) == table.node_count:
        # Liveness travels too, so a takeover never rebalances onto a node known dead.
        for i, up in enumerate(msg.live):
            if up and not table.is_live(i):
                table.node_joined(i, now)
            elif not up and table.is_live(i):
                table.node_failed(i, now)
    # After the liveness: a node's failure clears a pin to it.
    pin = msg.panic
    table.panic_scheduler = pin if pin is not None and pin < table.node_count else None
    return {"ok": True, "version": table.version}, False


def snapshot_of(table: ClientTable) -> SyncSnapshot:
    """The whole table, as the scheduler pushes it or a follower pulls it."""
    return SyncSnapshot(table.epoch, table.version, tuple(table.assignments()),
                        _live(table), table.panic_scheduler, tuple(table.names))


def message_for(table: ClientTable, pushed_version: int) -> SyncMessage:
    """What the scheduler sends after `pushed_version`: the changes since, or the whole table
    when it has no delta from there (a new term, a log that no longer reaches back)."""
    changes = (table.changes_since(pushed_version, epoch=table.epoch) if pushed_version >= 0
               else None)
    if changes is None:
        return snapshot_of(table)
    return SyncDelta(table.epoch, pushed_version, table.version, tuple(changes), _live(table),
                     table.panic_scheduler, tuple(table.names))


def _live(table: ClientTable) -> tuple[bool, ...]:
    return tuple(table.is_live(i) for i in range(table.node_count))


async def push_message(session: aiohttp.ClientSession, urls: list[str], msg: SyncMessage,
                       headers: dict[str, str]) -> bool:
    """POST one message to every peer's `/sync` at once; a peer that fails is not waited for
    beyond PUSH_TIMEOUT_S. True when every peer answered: one that did not may never have
    applied the change (it pulls the whole table only when a later change shows it the gap,
    and there may be none before a takeover), so the caller sends it the whole table."""
    body = msg.to_json()

    async def push(url: str) -> bool:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.post(url + "/sync", json=body, headers=headers,
                                    timeout=aiohttp.ClientTimeout(total=PUSH_TIMEOUT_S)) as r:
                await r.read()
                return r.status == 200
        return False

    return all(await asyncio.gather(*(push(u) for u in urls)))


async def pull_snapshot(session: aiohttp.ClientSession, url: str,
                        headers: dict[str, str]) -> SyncSnapshot | None:
    """The whole table from the scheduler at `url`, or None when it does not give it."""
    with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
        async with session.get(url + "/table", params={"indexes": "1"}, headers=headers) as r:
            if r.status == 200:
                return SyncSnapshot.from_table_json(await r.json())
    return None
