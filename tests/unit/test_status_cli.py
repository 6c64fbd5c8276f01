"""`dlba status`'s reading of the nodes' answers (pure: no sockets)."""

from __future__ import annotations

import io
from typing import Any

import pytest

from dlba.admin.status_cli import backend_state, confirm_scheduler


def doc_naming(name: str) -> dict[str, Any]:
    return {"scheduler": name}


def test_a_named_scheduler_that_does_not_answer_is_not_shown_as_the_scheduler() -> None:
    doc = doc_naming("n3")  # the peers still name n3, whose processes just died
    statuses = [{"node": "n1", "role": "server"}, {"node": "n2", "role": "server"}]
    confirm_scheduler(doc, statuses, None, asked=True)
    assert doc["scheduler"] is None and doc["scheduler_unreachable"] == "n3"


def test_a_scheduler_that_answered_is_kept() -> None:
    doc = doc_naming("n3")
    confirm_scheduler(doc, [{"node": "n3", "role": "scheduler"}], None, asked=True)
    assert doc == {"scheduler": "n3"}
    doc = doc_naming("n3")
    confirm_scheduler(doc, [{"node": "n1", "role": "server"}], {"nodes": []}, asked=True)
    assert doc == {"scheduler": "n3"}


def test_a_scheduler_that_could_not_be_asked_is_left_as_named() -> None:
    doc = doc_naming("n3")
    confirm_scheduler(doc, [{"node": "n1", "role": "server"}], None, asked=False)
    assert doc == {"scheduler": "n3"}


LONG = "[2001:db8:1234:5678:9abc:def0:1234:5678]:65535"  # 46 characters


def rendered(doc: dict[str, Any], width: int) -> str:
    from rich.console import Console

    from dlba.admin.status_cli import render

    console = Console(width=width, record=True, file=io.StringIO())
    render(doc, console)
    return console.export_text()


def backend(**kw: Any) -> dict[str, Any]:
    row = {"id": 1, "address": LONG, "cookie_groups": 3, "avg_response_ms": 12.34567,
           "hits": 42, "open_connections": 0, "unable_to_connect": 0, "failed": False,
           "enabled": True, "weight": 100}
    return {**row, **kw}


@pytest.mark.parametrize("width", [80, 100, 200])
def test_addresses_show_whole_and_figures_are_rounded(width: int) -> None:
    doc = {"scheduler": "n1", "config_versions": {"n1": 1},
           "nodes": [{"name": "n1", "address": LONG, "avg_response_ms": 0.123456, "hits": 7}],
           "backends": [backend(state="up")]}
    text = rendered(doc, width)
    assert text.count(LONG) == 2  # one line each, not folded
    assert "12.3" in text and "12.34" not in text and "0.1" in text and "0.12" not in text
    assert max(len(line) for line in text.splitlines()) <= width


def test_each_back_end_shows_its_state() -> None:
    assert backend_state(backend(), draining=False) == "up"
    assert backend_state(backend(), draining=True) == "draining"
    assert backend_state(backend(enabled=False), draining=True) == "disabled"
    assert backend_state(backend(failed=True, enabled=False), draining=True) == "down"
    assert backend_state(backend(state="draining"), draining=False) == "draining"
    doc = {"config_versions": {}, "backends": [
        backend(id=k, state=s) for k, s in enumerate(("up", "down", "draining", "disabled"))]}
    text = rendered(doc, 200)
    for s in ("up", "down", "draining", "disabled"):
        assert f" {s} " in text
