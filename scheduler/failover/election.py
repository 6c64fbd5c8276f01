"""Elect Scheduler (patent 003, Fig. 9 module 905, "Scheduler Failover"): a pure state machine.

Events go in, a ``Decision`` comes out; the failover daemon does the pinging, the asking and the
ARP.  The rules, and why:

* Only ping failures start an election.  The patent's argument: a status/sync channel can break
  while the machine is fine, and electing on it leads to two schedulers fighting with ARPs.  So
  ``on_status_channel`` exists only to record the fact; it can never trigger anything.
* Among the live candidates (this node plus every peer that answered and also lost the
  scheduler) the highest physical IP wins, compared as IPv4 integers ("10.0.0.9" < "10.0.0.10").
* A live scheduler is never preempted: a node that is starting or returning and sees one follows
  it, whatever its own IP.
* Two schedulers can only coexist after a partition heals.  Each takeover starts a new ``term``
  (one above the highest seen); the older term stands down, so the returning old scheduler yields
  to the one elected while it was away.  Equal terms fall back to the IP rule.
* Liveness is the service, not the kernel: the ping is answered by the node process and says
  whether it still holds the role and whether its proxy serves (heartbeat.py).  A node
  whose own proxy does not serve is unfit: it is no candidate, and a scheduler that stays unfit
  for ``threshold`` checks stands down (its peers' pings fail at the same pace).
* A (re)starting node joins a running array as a server: once a peer shows a term above 0 it is
  no candidate while any peer is; the running array elects among its members and it follows.
* Fencing, so two nodes never answer ARP for the VIP when a cut-off scheduler comes back:
  - A node whose own front link is down (admin down or no carrier) cannot serve: a scheduler
    stands down at once, and no such node is a candidate. Back up, it is a starting node that
    follows whoever its peers elected (it answers ARP only after asking them).
  - A scheduler that heard its peers' heartbeats and then hears none for ``threshold`` rounds
    is cut off, or every peer died: it cannot tell which from silence alone, so it holds its
    ARP answers (the data plane keeps forwarding; while cut off nobody hears them anyway).
    It answers again once it confirmed its role: a peer's heartbeat answer shows no newer
    scheduler, or someone on the network asked for the VIP (so it is not cut off) and an
    ask round found no newer scheduler. A newer scheduler among the answers makes it stand
    down. A lone survivor thus keeps the VIP (clients keep using it, and the first ARP
    request it hears releases the hold one ask round later); a healed partition never shows
    two answerers.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass


def ip_key(address: str) -> int:
    return int(ipaddress.IPv4Address(address))


class Role(enum.Enum):
    STARTING = "starting"  # no scheduler known yet
    SERVER = "server"  # following a scheduler that answers pings
    SUSPECTING = "suspecting"  # pings to the scheduler failed `threshold` times
    SCHEDULER = "scheduler"


class Decision(enum.Enum):
    KEEP = "keep"  # nothing to do
    ELECT = "elect"  # ask every reachable peer for its view, then call on_peer_views
    TAKE_OVER = "take_over"  # load the synced table, take the VIP, start sweeping
    STAY_SERVER = "stay_server"  # keep serving; someone else is (or will be) the scheduler
    STAND_DOWN = "stand_down"  # stop answering ARP for the VIP at once, rejoin as a server
    HOLD_ARP = "hold_arp"  # keep the role and the data plane, answer no ARP until confirmed
    RESUME_ARP = "resume_arp"  # role confirmed: answer ARP again and announce the VIP


@dataclass(frozen=True)
class PeerView:
    """What a peer that answered says about itself."""

    address: str
    candidate: bool  # it has lost the scheduler too and is willing to take the role
    scheduler_alive: bool  # its own pings to the scheduler it follows still succeed
    is_scheduler: bool = False  # it holds the role now
    term: int = 0


@dataclass(frozen=True)
class PingResult:
    ok: bool
    now: float


@dataclass(frozen=True)
class PeerViews:
    views: tuple[PeerView, ...]
    now: float


@dataclass(frozen=True)
class SchedulerSeen:
    """The VIP's ARP/neighbour entry points at ``address`` (learned, not asked)."""

    address: str
    now: float


@dataclass(frozen=True)
class StatusChannel:
    ok: bool
    now: float


Event = PingResult | PeerViews | SchedulerSeen | StatusChannel


class Election:
    """One node's view of who the scheduler is, and what to do about it."""

    def __init__(self, address: str, *, ping_failures: int = 3) -> None:
        if ping_failures < 1:
            raise ValueError("ping_failures must be >= 1")
        self.address = address
        self._key = ip_key(address)
        self.threshold = ping_failures
        self.role = Role.STARTING
        self.scheduler: str | None = None
        self.term = 0  # highest term seen anywhere
        self._term_held = 0  # the term in which this node took the role
        self.failures = 0
        self.status_channel_ok = True
        self.last_change = 0.0
        self.fit = True  # this node's own proxy serves
        self.unfit_checks = 0
        self.link_up = True  # this node's front interface is up and has carrier
        self.arp_held = False  # a scheduler that lost its peers: no ARP answers
        self._peers_heard = False  # some peer answered our heartbeat since the last hold
        self._silent_rounds = 0
        self._network_heard = False  # an ARP request arrived while held: we are not cut off

    def _joining(self) -> bool:
        """Starting inside an array that already had a scheduler (a restart, a return)."""
        return self.role is Role.STARTING and self.term > 0

    def view(self) -> PeerView:
        """What this node answers when a peer asks (the other half of ``on_peer_views``)."""
        return PeerView(
            address=self.address,
            candidate=self.fit and self.link_up and (
                self.role is Role.SUSPECTING or (self.role is Role.STARTING and self.term == 0)
            ),
            scheduler_alive=self.role is Role.SERVER,
            is_scheduler=self.role is Role.SCHEDULER,
            term=self._term_held if self.role is Role.SCHEDULER else self.term,
        )

    def handle(self, event: Event) -> Decision:
        if isinstance(event, PingResult):
            return self.on_ping_result(event.ok, event.now)
        if isinstance(event, PeerViews):
            return self.on_peer_views(event.views, event.now)
        if isinstance(event, SchedulerSeen):
            return self.on_scheduler_seen(event.address, event.now)
        return self.on_status_channel(event.ok, event.now)

    def on_ping_result(self, ok: bool, now: float) -> Decision:
        if self.role in (Role.SCHEDULER, Role.STARTING):
            return Decision.KEEP  # nothing to ping yet, or we are the one being pinged
        if ok:
            self.failures = 0
            if self.role is Role.SUSPECTING:
                self._become(Role.SERVER, self.scheduler, now)
            return Decision.KEEP
        self.failures += 1
        if self.failures < self.threshold:
            return Decision.KEEP
        self._become(Role.SUSPECTING, self.scheduler, now)
        # Every failure past the threshold asks again, so a winner that died mid-election is
        # replaced on the next round without a separate timer.
        return Decision.ELECT

    def on_service_health(self, ok: bool, now: float) -> Decision:
        """This node's own proxy check, once per round."""
        if ok:
            self.fit = True
            self.unfit_checks = 0
            return Decision.KEEP
        self.unfit_checks += 1
        if self.unfit_checks < self.threshold:
            return Decision.KEEP
        self.fit = False
        if self.role is Role.SCHEDULER:
            # Our peers see the same in our ping answers and elect another; keep no ARP
            # answerer of ours beside theirs.
            self._become(Role.STARTING, None, now)
            self._clear_fence()
            return Decision.STAND_DOWN
        return Decision.KEEP

    def on_link_state(self, up: bool, now: float) -> Decision:
        """This node's front interface, checked every round: down means it cannot serve."""
        self.link_up = up
        if not up and self.role is Role.SCHEDULER:
            self._become(Role.STARTING, None, now)
            self._clear_fence()
            return Decision.STAND_DOWN
        return Decision.KEEP

    def on_peer_heartbeats(self, answers: Iterable[PeerView], now: float) -> Decision:
        """A scheduler's round of heartbeats to every peer: the peers that answered."""
        if self.role is not Role.SCHEDULER:
            return Decision.KEEP
        heard = [v for v in answers if v.address != self.address]
        if self._rival_of(heard) is not None:
            return self.on_peer_views(heard, now)  # a newer scheduler: stand down
        if heard:
            self._peers_heard = True
            self._silent_rounds = 0
            if self.arp_held:
                self.arp_held = False
                return Decision.RESUME_ARP
            return Decision.KEEP
        if not self._peers_heard or self.arp_held:
            return Decision.KEEP  # never had a peer this term (a lone node), or held already
        self._silent_rounds += 1
        if self._silent_rounds < self.threshold:
            return Decision.KEEP
        self.arp_held = True
        self._peers_heard = False
        return Decision.HOLD_ARP

    def on_arp_request_held(self, now: float) -> Decision:
        """Someone on the front network asked for the VIP while we held our answers: we are
        not cut off. Ask the peers before answering."""
        if self.role is not Role.SCHEDULER or not self.arp_held:
            return Decision.KEEP
        self._network_heard = True
        return Decision.ELECT

    @property
    def confirm_wanted(self) -> bool:
        """Held, and the network asked for the VIP: ask the peers now."""
        return self.arp_held and self._network_heard

    def _clear_fence(self) -> None:
        self.arp_held = False
        self._peers_heard = False
        self._silent_rounds = 0
        self._network_heard = False

    def _rival_of(self, peers: list[PeerView]) -> PeerView | None:
        """The scheduler among `peers` that outranks us (newer term, or same term, higher IP)."""
        schedulers = [v for v in peers if v.is_scheduler]
        rival = max(schedulers, key=lambda v: (v.term, ip_key(v.address)), default=None)
        if rival is not None and (rival.term, ip_key(rival.address)) > (self._term_held, self._key):
            return rival
        return None

    def on_status_channel(self, ok: bool, now: float) -> Decision:
        # Recorded for the dashboard only: see the module docstring.
        self.status_channel_ok = ok
        return Decision.KEEP

    def on_scheduler_seen(self, address: str, now: float) -> Decision:
        if address == self.address:
            return Decision.KEEP
        if self.role is Role.SCHEDULER:
            # Someone else answers for the VIP: which of us yields depends on terms, which ARP
            # does not carry.  Ask.
            return Decision.ELECT
        if self.role is Role.SUSPECTING and address == self.scheduler:
            return Decision.KEEP  # a stale neighbour entry for the one that stopped answering
        self.failures = 0
        self._become(Role.SERVER, address, now)
        return Decision.STAY_SERVER

    def on_peer_views(self, views: Iterable[PeerView], now: float) -> Decision:
        peers = [v for v in views if v.address != self.address]
        self.term = max([self.term, *(v.term for v in peers)])
        schedulers = [v for v in peers if v.is_scheduler]
        if self.role is Role.SCHEDULER:
            rival = self._rival_of(peers)
            if rival is not None:
                self._become(Role.SERVER, rival.address, now)
                self._clear_fence()
                return Decision.STAND_DOWN
            if self.arp_held and (peers or self._network_heard):
                # Confirmed: peers answered and none is newer, or the network hears us and
                # no peer answers (they are dead, not we cut off).
                self._clear_fence()
                return Decision.RESUME_ARP
            self._network_heard = False
            return Decision.KEEP
        if schedulers:
            # A live scheduler answered: follow it, never preempt (a returning node's case).
            best = max(schedulers, key=lambda v: (v.term, ip_key(v.address)))
            self.failures = 0
            self._become(Role.SERVER, best.address, now)
            return Decision.STAY_SERVER
        if self.role is Role.SERVER:
            return Decision.STAY_SERVER  # our pings work: no reason to elect
        if any(v.scheduler_alive for v in peers):
            # Someone still reaches the scheduler: the fault is on our side; taking the VIP now
            # would start an ARP war.
            return Decision.STAY_SERVER
        if not self.fit or not self.link_up:
            return Decision.STAY_SERVER  # our proxy or link does not serve: no scheduler of ours
        if self._joining() and any(v.candidate for v in peers):
            return Decision.STAY_SERVER  # the running array elects; we follow its choice
        winner = max([self._key, *(ip_key(v.address) for v in peers if v.candidate)])
        if winner == self._key:
            self.term += 1
            self._term_held = self.term
            self.failures = 0
            self._clear_fence()
            self._become(Role.SCHEDULER, self.address, now)
            return Decision.TAKE_OVER
        return Decision.STAY_SERVER

    def _become(self, role: Role, scheduler: str | None, now: float) -> None:
        if role is not self.role or scheduler != self.scheduler:
            self.last_change = now
        self.role = role
        self.scheduler = scheduler
