"""Agent-check reply parser: HAProxy's words, any order and separator, garbage rejected."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dlba.scheduling.agent_check import AgentReport, parse_agent_reply


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("ready\n", AgentReport("ready", None, None)),
        ("up", AgentReport("ready", None, None)),
        ("drain", AgentReport("drain", None, None)),
        ("maint", AgentReport("maint", None, None)),
        ("down", AgentReport("down", None, None)),
        ("fail", AgentReport("down", None, None)),
        ("stopped", AgentReport("stopped", None, None)),
        ("75%", AgentReport(None, 75, None)),
        ("0%", AgentReport(None, 0, None)),
        ("weight:30", AgentReport(None, None, 30)),
        ("up 75%\r\n", AgentReport("ready", 75, None)),
        ("75%,drain", AgentReport("drain", 75, None)),
        ("READY\t50%", AgentReport("ready", 50, None)),
        ("up maxconn:30", AgentReport("ready", None, None, 30)),
        ("down #disk full", AgentReport("down", None, None, None, "disk full")),
        ("up drain", AgentReport("drain", None, None)),
        ("drain down", AgentReport("down", None, None)),
    ],
)
def test_known_replies(line: str, expected: AgentReport) -> None:
    assert parse_agent_reply(line) == expected


@pytest.mark.parametrize(
    "line",
    ["", "   \n", "#only a comment", "hello", "75", "%", "-5%", "7.5%", "weight:", "weight:x",
     "up 75% banana", "x" * 600, "99999999%"],
)
def test_garbage_raises(line: str) -> None:
    with pytest.raises(ValueError):
        parse_agent_reply(line)


STATE_WORDS = ["ready", "up", "drain", "maint", "down", "fail", "stopped"]
SEVERITY = {"ready": 0, "drain": 1, "maint": 2, "stopped": 3, "down": 4}
CANON = {"up": "ready", "fail": "down"}


@given(
    st.lists(st.sampled_from(STATE_WORDS), max_size=3),
    st.none() | st.integers(0, 1000),
    st.none() | st.integers(0, 1000),
    st.sampled_from([" ", ",", "\t", " , ", ",\t"]),
    st.randoms(),
)
def test_any_order_and_separator(states: list[str], pct: int | None, weight: int | None,
                                 sep: str, rnd: object) -> None:
    words = list(states)
    if pct is not None:
        words.append(f"{pct}%")
    if weight is not None:
        words.append(f"weight:{weight}")
    if not words:
        return
    rnd.shuffle(words)  # type: ignore[attr-defined]
    report = parse_agent_reply(sep.join(words) + "\n")
    assert report.weight_pct == pct
    assert report.weight == weight
    if states:
        canon = [CANON.get(s, s) for s in states]
        assert report.state == max(canon, key=SEVERITY.__getitem__)
    else:
        assert report.state is None


@given(st.text(max_size=80))
def test_never_crashes_other_than_value_error(line: str) -> None:
    try:
        report = parse_agent_reply(line)
    except ValueError:
        return
    assert report.state in (None, "ready", "drain", "maint", "down", "stopped")
