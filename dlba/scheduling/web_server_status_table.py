"""The web server status table (patent 003, Fig. 7): one row per back end, kept by each node.

The patent's columns (physical address, average response time, hits, open connections,
unable-to-connect count, enabled, weight) plus what the issue adds: a state (up / down /
draining) derived from the connect-failure state machine, the optional active health check, the
admin API and the back end's own agent (seed 004).

Failure handling follows the patent: no node needs to probe a back end; a connect that fails *is*
the probe. After ``fail_threshold`` consecutive failures a back end is marked down and retried
after an exponential backoff; when the retry time comes, exactly one request is let through
(half-open). A success brings it back, a failure doubles the wait (capped).

Pure: time is passed in (monotonic seconds), nothing here sleeps, reads a clock or a socket.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final, Literal

from dlba.config import BackendConfig
from dlba.scheduling.agent_check import AgentReport

# Weight of the newest sample in the response-time moving average: ~5 samples of memory, so a
# back end that slows down is noticed within a handful of requests but one outlier does not
# swing the policy.
EWMA_ALPHA: Final = 0.2
_AGENT_DOWN = frozenset(("down", "maint", "stopped"))

AdminAction = Literal["enable", "disable", "drain"]


class BackendState(StrEnum):
    UP = "up"
    DOWN = "down"
    DRAINING = "draining"


@dataclass(slots=True, eq=False)
class WebServerStatus:
    id: int
    address: str
    weight: int
    enabled: bool = True
    admin_drain: bool = False
    agent_state: str | None = None
    agent_weight_pct: int = 100
    agent_weight: int | None = None
    health_ok: bool = True
    hits: int = 0
    open_connections: int = 0
    unable_to_connect: int = 0
    consecutive_failures: int = 0
    marked_down: bool = False
    retry_at: float = 0.0
    cookie_groups: int = 0
    avg_response_ms: float = 0.0
    responses: int = 0
    bytes_out: int = 0
    reroutes: int = 0

    @property
    def state(self) -> BackendState:
        if self.marked_down or not self.health_ok or self.agent_state in _AGENT_DOWN:
            return BackendState.DOWN
        if not self.enabled or self.admin_drain or self.agent_state == "drain":
            return BackendState.DRAINING
        return BackendState.UP

    @property
    def effective_weight(self) -> int:
        # Same conditions as `state is UP`, inlined: this runs for every candidate of every
        # request, and agent_state is None or "ready" exactly when the agent allows service.
        if (self.marked_down or not self.health_ok or not self.enabled or self.admin_drain
                or (self.agent_state is not None and self.agent_state != "ready")):
            return 0
        return self._agent_scaled_weight()

    def _agent_scaled_weight(self) -> int:
        if self.agent_weight is not None:
            return self.agent_weight
        if self.agent_weight_pct <= 0:
            return 0
        # A small percentage of a small weight must not round a live back end to zero: the
        # agent said "some", not "none" (0% is how an agent says none).
        return max(1, self.weight * self.agent_weight_pct // 100)

    @property
    def accepts_new(self) -> bool:
        # effective_weight > 0 implies the state is UP.
        return self.effective_weight > 0

    @property
    def accepts_persistent(self) -> bool:
        # Clients with a cookie or session on a draining back end keep going there until their
        # session ends; only a down back end loses them.
        return self.state is not BackendState.DOWN

    @property
    def probe_eligible(self) -> bool:
        """Down only because connects failed, so a real request may serve as the retry probe.

        A back end the health check or its agent calls down is not probed with client traffic:
        those have their own way back up.
        """
        return (
            self.marked_down
            and self.health_ok
            and self.agent_state not in _AGENT_DOWN
            and self.enabled
            and not self.admin_drain
            and self.agent_state != "drain"
            and self._agent_scaled_weight() > 0
        )

    def to_json(self) -> dict[str, Any]:
        state = self.state
        agent: dict[str, Any] | None = None
        if self.agent_state is not None or self.agent_weight is not None or (
            self.agent_weight_pct != 100
        ):
            agent = {"state": self.agent_state, "weight_pct": self.agent_weight_pct,
                     "weight": self.agent_weight}
        return {
            "id": self.id,
            "address": self.address,
            "cookie_groups": self.cookie_groups,
            "avg_response_ms": round(self.avg_response_ms, 3),
            "hits": self.hits,
            "open_connections": self.open_connections,
            "unable_to_connect": self.unable_to_connect,
            "failed": state is BackendState.DOWN,
            "enabled": self.enabled,
            "weight": self.weight,
            "state": state.value,
            "effective_weight": self.effective_weight,
            "agent": agent,
            "health_ok": self.health_ok,
            "consecutive_failures": self.consecutive_failures,
            "bytes_out": self.bytes_out,
            "reroutes": self.reroutes,
        }


def _row(b: BackendConfig) -> WebServerStatus:
    return WebServerStatus(id=b.id, address=str(b.address), weight=b.weight, enabled=b.enabled)


class WebServerStatusTable:
    def __init__(self, backends: Sequence[BackendConfig], fail_threshold: int,
                 backoff_s: float, backoff_max_s: float) -> None:
        if fail_threshold < 1 or backoff_s <= 0 or backoff_max_s < backoff_s:
            raise ValueError("need fail_threshold >= 1 and 0 < backoff_s <= backoff_max_s")
        self.fail_threshold = fail_threshold
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.rows: list[WebServerStatus] = [_row(b) for b in backends]
        self._by_id: dict[int, WebServerStatus] = {r.id: r for r in self.rows}
        self.by_address: dict[str, WebServerStatus] = {r.address: r for r in self.rows}
        self.version = 0
        self._signature = self._compute_signature()

    # -- lookups ---------------------------------------------------------------------------

    def get(self, backend_id: int) -> WebServerStatus | None:
        return self._by_id.get(backend_id)

    def _compute_signature(self) -> tuple[tuple[int, str, int, int, bool], ...]:
        return tuple((r.id, r.state.value, r.effective_weight, r.weight, r.probe_eligible)
                     for r in self.rows)

    def _touch(self) -> None:
        # Only what a selector's rings and candidate lists depend on counts as a change, so the
        # hot path rebuilds nothing when only counters move.
        sig = self._compute_signature()
        if sig != self._signature:
            self._signature = sig
            self.version += 1

    # -- per-request counters (hot path: no signature work) ---------------------------------

    def on_request_start(self, backend_id: int) -> None:
        row = self._by_id.get(backend_id)
        if row is not None:
            row.hits += 1
            row.open_connections += 1

    def on_request_end(self, backend_id: int, elapsed_s: float, bytes_out: int) -> None:
        # An unknown id is a request that outlived a reconfigure which removed its back end.
        row = self._by_id.get(backend_id)
        if row is None:
            return
        if row.open_connections > 0:
            row.open_connections -= 1
        ms = max(0.0, elapsed_s) * 1000.0
        row.avg_response_ms = ms if row.responses == 0 else (
            row.avg_response_ms + EWMA_ALPHA * (ms - row.avg_response_ms))
        row.responses += 1
        row.bytes_out += max(0, bytes_out)

    def on_cookie_injected(self, backend_id: int) -> None:
        row = self._by_id.get(backend_id)
        if row is not None:
            row.cookie_groups += 1

    def on_reroute(self, backend_id: int) -> None:
        """Count a request that had to leave this back end for another one."""
        row = self._by_id.get(backend_id)
        if row is not None:
            row.reroutes += 1

    # -- failure state machine ---------------------------------------------------------------

    def _backoff(self, row: WebServerStatus) -> float:
        extra = max(0, row.consecutive_failures - self.fail_threshold)
        # min() before the power would still overflow for huge exponents; cap the exponent.
        return min(self.backoff_max_s, self.backoff_s * (2.0 ** min(extra, 60)))

    def on_connect_failure(self, backend_id: int, now: float) -> bool:
        row = self._by_id.get(backend_id)
        if row is None:
            return False
        row.unable_to_connect += 1
        row.consecutive_failures += 1
        if row.marked_down:
            # The half-open probe failed: wait longer before the next one.
            row.retry_at = now + self._backoff(row)
            return False
        if row.consecutive_failures < self.fail_threshold:
            return False
        row.marked_down = True
        row.retry_at = now + self._backoff(row)
        self._touch()
        return True

    def on_connect_success(self, backend_id: int, now: float) -> bool:
        row = self._by_id.get(backend_id)
        if row is None:
            return False
        row.consecutive_failures = 0
        if not row.marked_down:
            return False
        row.marked_down = False
        row.retry_at = 0.0
        self._touch()
        return True

    def may_try(self, backend_id: int, now: float) -> bool:
        """May a request be sent to this back end now?

        True when it is not down. For a back end marked down by connect failures, True once its
        retry time has come -- and that call claims the probe: the retry time moves on by the
        current backoff, so concurrent requests do not all pile onto a back end that is
        probably still dead. The probe's outcome (on_connect_success/failure) settles it.
        """
        row = self._by_id.get(backend_id)
        if row is None:
            return False
        if row.state is not BackendState.DOWN:
            return True
        if not row.probe_eligible or now < row.retry_at:
            return False
        row.retry_at = now + self._backoff(row)
        return True

    # -- admin, agent, health --------------------------------------------------------------

    def set_admin(self, backend_id: int, action: AdminAction) -> None:
        """Raise KeyError for an unknown back end, ValueError for an unknown action."""
        row = self._by_id[backend_id]
        if action == "enable":
            row.enabled = True
            row.admin_drain = False
        elif action == "disable":
            row.enabled = False
        elif action == "drain":
            row.admin_drain = True
        else:
            raise ValueError(f"unknown admin action {action!r}")
        self._touch()

    def apply_agent(self, backend_id: int, report: AgentReport) -> None:
        row = self._by_id.get(backend_id)
        if row is None:
            return
        if report.state is not None:
            row.agent_state = report.state
        # The latest weight word wins; an absolute weight overrides a percentage.
        if report.weight is not None:
            row.agent_weight = report.weight
        elif report.weight_pct is not None:
            row.agent_weight = None
            row.agent_weight_pct = report.weight_pct
        self._touch()

    def set_health(self, backend_id: int, ok: bool, now: float) -> bool:
        row = self._by_id.get(backend_id)
        if row is None:
            return False
        changed = row.health_ok != ok
        row.health_ok = ok
        if ok and row.marked_down:
            # A passing active check proves the back end accepts connections again.
            row.marked_down = False
            row.consecutive_failures = 0
            row.retry_at = 0.0
            changed = True
        self._touch()
        return changed

    # -- configuration ---------------------------------------------------------------------

    def reconfigure(self, backends: Sequence[BackendConfig]) -> None:
        """Adopt a new back-end list. A back end whose id *and* address stay keeps its counters
        and runtime state (it is the same server); a changed address is a new server."""
        rows: list[WebServerStatus] = []
        for b in backends:
            old = self._by_id.get(b.id)
            if old is not None and old.address == str(b.address):
                old.weight = b.weight
                old.enabled = b.enabled
                rows.append(old)
            else:
                rows.append(_row(b))
        self.rows = rows
        self._by_id = {r.id: r for r in rows}
        self.by_address = {r.address: r for r in rows}
        self._touch()

    def to_json(self) -> list[dict[str, Any]]:
        return [r.to_json() for r in self.rows]
