"""Asking the peers (`GET /peer`): what each says about itself, and what ours says.

Both ends of the `/peer` document live here. A peer's answer feeds the election (its PeerView),
teaches us its MAC (so a takeover can forward at once) and names the scheduler it follows while
its pings to it pass (so a starting node can follow a scheduler it cannot ask itself).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from dlba.config import Config
from scheduler.failover.election import PeerView

ASK_TIMEOUT_S = 0.3  # a peer on the same switch answers in well under a millisecond


@dataclass(frozen=True)
class PeerAnswer:
    view: PeerView
    mac: str  # "" when the peer does not know its own
    follows: str | None  # name of the scheduler it follows while its pings to it pass
    members: tuple[str, ...] | None = None  # the [[nodes]] of its config (None: not said)


@dataclass(frozen=True)
class PeerRound:
    """One round of asking the peers."""

    views: list[PeerView]
    macs: dict[str, str]  # MAC -> address
    follows: str | None  # the scheduler's name, when every peer that follows one agrees
    # A peer's config does not name us: we were removed by a push (and drain) or are not yet
    # added; such a node follows, it never takes over (scheduler/membership.py).
    outsider: bool = False


def peer_json(name: str, view: PeerView, scheduler: str | None, mac: str,
              table_version: int, epoch: int, members: Sequence[str] = ()) -> dict[str, Any]:
    """What this node answers to `GET /peer`."""
    return {
        "name": name, "address": view.address, "candidate": view.candidate,
        "scheduler_alive": view.scheduler_alive, "is_scheduler": view.is_scheduler,
        "term": view.term, "scheduler": scheduler, "mac": mac,
        "table_version": table_version, "epoch": epoch, "members": list(members),
    }


def parse_peer(doc: Any) -> PeerAnswer:
    """A peer's `/peer` answer; KeyError, ValueError or TypeError when it is not one."""
    view = PeerView(str(doc["address"]), bool(doc["candidate"]), bool(doc["scheduler_alive"]),
                    bool(doc["is_scheduler"]), int(doc["term"]))
    follows = doc.get("scheduler") if doc.get("scheduler_alive") else None
    members = doc.get("members")
    return PeerAnswer(view, str(doc.get("mac") or ""), None if follows is None else str(follows),
                      tuple(str(m) for m in members) if members else None)


def summarize(answers: Iterable[PeerAnswer | None], addresses: dict[str, str],
              me: str = "") -> PeerRound:
    """The round's views, the MACs learned, the one scheduler the peers agree on, if any
    (as an address: `addresses` maps node names to addresses), and whether a peer's config
    leaves `me` out."""
    got = [a for a in answers if a is not None]
    followed = [addresses[a.follows] for a in got if a.follows in addresses]
    return PeerRound(
        views=[a.view for a in got],
        macs={a.mac: a.view.address for a in got if a.mac},
        follows=followed[0] if followed and len(set(followed)) == 1 else None,
        outsider=bool(me) and any(a.members is not None and me not in a.members for a in got),
    )


async def ask_peer(session: aiohttp.ClientSession, url: str,
                   headers: dict[str, str]) -> PeerAnswer | None:
    """One peer's answer, or None when it does not give one in time."""
    try:
        async with session.get(url + "/peer", headers=headers,
                               timeout=aiohttp.ClientTimeout(total=ASK_TIMEOUT_S)) as r:
            if r.status != 200:
                return None
            return parse_peer(await r.json())
    except (TimeoutError, aiohttp.ClientError, KeyError, ValueError, TypeError):
        return None


async def ask_peers(session: aiohttp.ClientSession, config: Config, indexes: Iterable[int],
                    headers: dict[str, str], me: str = "") -> PeerRound:
    """Ask the nodes `indexes` at once."""
    answers = await asyncio.gather(*(ask_peer(session, config.admin_url(i), headers)
                                     for i in indexes))
    return summarize(answers, {n.name: n.address for n in config.nodes}, me)
