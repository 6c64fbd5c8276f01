"""`dlba status`'s reading of the nodes' answers (pure: no sockets)."""

from __future__ import annotations

from typing import Any

from dlba.admin.status_cli import confirm_scheduler


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
