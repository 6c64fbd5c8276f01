"""Web server status table (Fig. 7): failure/backoff/recovery state machine, drain, agent,
health, reconfigure, version bumps and the JSON contract."""

from __future__ import annotations

from typing import Literal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from dlba.config import BackendConfig, HostPort
from dlba.scheduling.agent_check import AgentReport
from dlba.scheduling.web_server_status_table import BackendState, WebServerStatusTable

THRESHOLD = 3
BACKOFF = 1.0
BACKOFF_MAX = 8.0


def backends(n: int = 3, weight: int = 100) -> list[BackendConfig]:
    return [BackendConfig(i, HostPort(f"10.0.0.{i}", 8080), weight) for i in range(1, n + 1)]


def state_of(t: WebServerStatusTable, backend_id: int) -> BackendState:
    # A function call, so mypy does not carry a narrowed property type across mutations.
    row = t.get(backend_id)
    assert row is not None
    return row.state


def table(n: int = 3) -> WebServerStatusTable:
    return WebServerStatusTable(backends(n), THRESHOLD, BACKOFF, BACKOFF_MAX)


class FailureMachine(RuleBasedStateMachine):
    """Model: after THRESHOLD consecutive failures the back end is down; while down, each failed
    probe doubles the wait (capped); may_try lets exactly one probe through per retry time; a
    success always brings it up."""

    def __init__(self) -> None:
        super().__init__()
        self.t = table(1)
        self.now = 100.0
        self.fails = 0
        self.down = False
        self.retry_at = 0.0

    def expected_backoff(self) -> float:
        return min(BACKOFF_MAX, BACKOFF * 2.0 ** max(0, self.fails - THRESHOLD))

    @rule(dt=st.floats(0, 20))
    def advance(self, dt: float) -> None:
        self.now += dt

    @rule()
    def failure(self) -> None:
        marked = self.t.on_connect_failure(1, self.now)
        self.fails += 1
        became_down = not self.down and self.fails >= THRESHOLD
        assert marked == became_down
        if self.down or became_down:
            self.retry_at = self.now + self.expected_backoff()
        self.down = self.down or became_down

    @rule()
    def success(self) -> None:
        assert self.t.on_connect_success(1, self.now) == self.down
        self.fails = 0
        self.down = False

    @precondition(lambda self: self.down)
    @rule()
    def probe(self) -> None:
        due = self.now >= self.retry_at
        assert self.t.may_try(1, self.now) == due
        if due:
            # The probe is claimed: nobody else gets through until the backoff passes again.
            self.retry_at = self.now + self.expected_backoff()
            assert not self.t.may_try(1, self.now)

    @invariant()
    def matches_model(self) -> None:
        row = self.t.get(1)
        assert row is not None
        assert row.marked_down == self.down
        assert row.consecutive_failures == self.fails
        assert row.state is (BackendState.DOWN if self.down else BackendState.UP)
        assert row.accepts_new == (not self.down)
        if self.down:
            assert row.retry_at == pytest.approx(self.retry_at)
            assert row.retry_at - self.now <= BACKOFF_MAX + 1e-9
        else:
            assert self.t.may_try(1, self.now)


TestFailureMachine = FailureMachine.TestCase


def test_draining_takes_no_new_sessions_but_keeps_persistent() -> None:
    how: Literal["disable", "drain"]
    for how in ("disable", "drain"):
        t = table()
        t.set_admin(2, how)
        row = t.get(2)
        assert row is not None
        assert row.state is BackendState.DRAINING
        assert not row.accepts_new and row.effective_weight == 0
        assert row.accepts_persistent and t.may_try(2, 0.0)
        t.set_admin(2, "enable")
        assert state_of(t, 2) is BackendState.UP and row.accepts_new


def test_config_enabled_false_drains() -> None:
    cfg = [BackendConfig(1, HostPort("10.0.0.1", 80), 100, enabled=False)]
    row = WebServerStatusTable(cfg, 3, 1.0, 8.0).rows[0]
    assert row.state is BackendState.DRAINING and row.accepts_persistent and not row.accepts_new


def test_unknown_admin_target_or_action() -> None:
    t = table()
    with pytest.raises(KeyError):
        t.set_admin(99, "drain")
    with pytest.raises(ValueError):
        t.set_admin(1, "explode")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("report", "state", "weight"),
    [
        (AgentReport("drain", None, None), BackendState.DRAINING, 0),
        (AgentReport("down", None, None), BackendState.DOWN, 0),
        (AgentReport("maint", None, None), BackendState.DOWN, 0),
        (AgentReport("stopped", None, None), BackendState.DOWN, 0),
        (AgentReport(None, 50, None), BackendState.UP, 20),
        (AgentReport("ready", None, 7), BackendState.UP, 7),
        (AgentReport(None, 1, None), BackendState.UP, 1),
    ],
)
def test_agent_sets_state_and_weight(report: AgentReport, state: BackendState,
                                     weight: int) -> None:
    t = WebServerStatusTable([BackendConfig(1, HostPort("10.0.0.1", 80), 40)], 3, 1.0, 8.0)
    v = t.version
    t.apply_agent(1, report)
    row = t.rows[0]
    assert row.state is state
    assert row.effective_weight == weight
    assert t.version == v + 1
    t.apply_agent(1, AgentReport("ready", 100, None))
    assert row.state is BackendState.UP and row.effective_weight == 40


def test_agent_zero_percent_takes_no_new_sessions() -> None:
    t = table()
    t.apply_agent(1, AgentReport(None, 0, None))
    row = t.get(1)
    assert row is not None and row.state is BackendState.UP and not row.accepts_new


def test_health_transitions_and_recovery() -> None:
    t = table()
    assert t.set_health(1, False, 0.0)
    assert not t.set_health(1, False, 1.0)
    row = t.get(1)
    assert row is not None and row.state is BackendState.DOWN and not t.may_try(1, 1e9)
    assert t.set_health(1, True, 2.0)
    assert state_of(t, 1) is BackendState.UP
    # A passing health check also clears a connect-failure mark.
    for _ in range(THRESHOLD):
        t.on_connect_failure(1, 3.0)
    assert row.marked_down
    assert t.set_health(1, True, 4.0)
    assert not row.marked_down and row.state is BackendState.UP


def test_version_bumps_only_on_selectable_changes() -> None:
    t = table()
    v = t.version
    t.on_request_start(1)
    t.on_request_end(1, 0.01, 100)
    t.on_connect_failure(1, 0.0)  # below threshold: nothing selectable changed
    assert t.version == v
    for _ in range(THRESHOLD - 1):
        t.on_connect_failure(1, 0.0)
    assert t.version == v + 1
    t.on_connect_success(1, 1.0)
    assert t.version == v + 2
    t.set_admin(2, "enable")  # already enabled: no change
    assert t.version == v + 2


@given(st.lists(st.floats(0, 10), min_size=1, max_size=50))
def test_counters_and_ewma(samples: list[float]) -> None:
    t = table(1)
    for _ in samples:
        t.on_request_start(1)
    for s in samples:
        t.on_request_end(1, s, 10)
    row = t.rows[0]
    assert row.hits == len(samples)
    assert row.open_connections == 0
    assert row.bytes_out == 10 * len(samples)
    assert min(samples) * 1000 - 1e-6 <= row.avg_response_ms <= max(samples) * 1000 + 1e-6
    if len(samples) == 1:
        assert row.avg_response_ms == pytest.approx(samples[0] * 1000)
    t.on_request_end(1, 0.0, 0)  # more ends than starts never goes negative
    assert row.open_connections == 0


def test_reconfigure_keeps_counters_of_same_server_only() -> None:
    t = table(3)
    for bid in (1, 2, 3):
        t.on_request_start(bid)
    t.on_cookie_injected(1)
    new = [
        BackendConfig(1, HostPort("10.0.0.1", 8080), 50),  # same server, new weight
        BackendConfig(2, HostPort("10.0.0.99", 8080), 100),  # same id, new address
        BackendConfig(4, HostPort("10.0.0.4", 8080), 100),  # new
    ]
    v = t.version
    t.reconfigure(new)
    assert [r.id for r in t.rows] == [1, 2, 4]
    r1, r2, r4 = t.rows
    assert r1.hits == 1 and r1.cookie_groups == 1 and r1.weight == 50
    assert r2.hits == 0 and r2.address == "10.0.0.99:8080"
    assert r4.hits == 0
    assert t.get(3) is None and "10.0.0.3:8080" not in t.by_address
    assert t.by_address["10.0.0.99:8080"] is r2
    assert t.version > v


def test_to_json_contract_fields() -> None:
    t = table(1)
    for _ in range(THRESHOLD):
        t.on_connect_failure(1, 0.0)
    (doc,) = t.to_json()
    for key in ("id", "address", "cookie_groups", "avg_response_ms", "hits", "open_connections",
                "unable_to_connect", "failed", "enabled", "weight", "state",
                "effective_weight", "agent"):
        assert key in doc
    assert doc["address"] == "10.0.0.1:8080"
    assert doc["failed"] is True and doc["state"] == "down"
    assert doc["unable_to_connect"] == THRESHOLD
    assert doc["effective_weight"] == 0 and doc["agent"] is None


@given(
    marked_down=st.booleans(), health_ok=st.booleans(), enabled=st.booleans(),
    admin_drain=st.booleans(),
    agent_state=st.sampled_from([None, "ready", "drain", "down", "maint", "stopped"]),
    pct=st.integers(0, 300), agent_weight=st.none() | st.integers(0, 500),
    weight=st.integers(1, 500),
)
def test_derived_properties_agree(marked_down: bool, health_ok: bool, enabled: bool,
                                  admin_drain: bool, agent_state: str | None, pct: int,
                                  agent_weight: int | None, weight: int) -> None:
    row = table(1).rows[0]
    row.marked_down, row.health_ok, row.enabled, row.admin_drain = (
        marked_down, health_ok, enabled, admin_drain)
    row.agent_state, row.agent_weight_pct, row.agent_weight, row.weight = (
        agent_state, pct, agent_weight, weight)
    down = marked_down or not health_ok or agent_state in ("down", "maint", "stopped")
    draining = not down and (not enabled or admin_drain or agent_state == "drain")
    expected = BackendState.DOWN if down else (
        BackendState.DRAINING if draining else BackendState.UP)
    assert row.state is expected
    if expected is not BackendState.UP:
        assert row.effective_weight == 0
    elif agent_weight is not None:
        assert row.effective_weight == agent_weight
    else:
        assert row.effective_weight == (0 if pct == 0 else max(1, weight * pct // 100))
    assert row.accepts_new == (expected is BackendState.UP and row.effective_weight > 0)
    assert row.accepts_persistent == (expected is not BackendState.DOWN)
