"""The typed client-table sync messages: JSON round trips, the wire's key names, one error type."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler.failover.sync_messages import (
    SyncDelta,
    SyncMessageError,
    SyncSnapshot,
    parse_sync,
)

counts = st.integers(0, 2**40)
owners = st.none() | st.integers(0, 63)
lives = st.none() | st.lists(st.booleans(), max_size=8).map(tuple)
panics = st.none() | st.integers(0, 63)
deltas = st.builds(SyncDelta, counts, counts, counts,
                   st.lists(st.tuples(st.integers(0, 65535), owners), max_size=20).map(tuple),
                   lives, panics)
snapshots = st.builds(SyncSnapshot, counts, counts, st.lists(owners, max_size=64).map(tuple),
                      lives, panics)


def over_the_wire(doc: object) -> object:
    return json.loads(json.dumps(doc))


@given(deltas)
def test_delta_round_trips_through_json(m: SyncDelta) -> None:
    assert SyncDelta.from_json(over_the_wire(m.to_json())) == m
    assert parse_sync(over_the_wire(m.to_json())) == m


@given(snapshots)
def test_snapshot_round_trips_through_json_and_the_table_document(m: SyncSnapshot) -> None:
    assert SyncSnapshot.from_json(over_the_wire(m.to_json())) == m
    assert parse_sync(over_the_wire(m.to_json())) == m
    table_doc = {"size": len(m.assignments), "assignments": ["n1"] * len(m.assignments),
                 **m.to_table_json()}
    assert SyncSnapshot.from_table_json(over_the_wire(table_doc)) == m


def test_wire_keys_are_the_ones_peers_of_every_version_read() -> None:
    delta = SyncDelta(3, 7, 9, ((1, 2), (4, None)), (True, False), None)
    assert delta.to_json() == {"epoch": 3, "from_version": 7, "version": 9,
                               "changes": [[1, 2], [4, None]], "live": [True, False],
                               "panic": None}
    snap = SyncSnapshot(3, 9, (0, None, 1), None, 0)
    assert snap.to_json() == {"epoch": 3, "version": 9, "assignments": [0, None, 1],
                              "live": None, "panic": 0}
    assert snap.to_table_json()["indexes"] == [0, None, 1]


def test_missing_live_and_panic_mean_none() -> None:
    m = parse_sync({"epoch": 1, "from_version": 0, "version": 1, "changes": []})
    assert m == SyncDelta(1, 0, 1, (), None, None)


@pytest.mark.parametrize("doc", [
    None, [], "x",
    {"version": 1, "changes": []},  # no epoch
    {"epoch": 1, "from_version": 0, "version": 1},  # neither changes nor assignments
    {"epoch": "1", "from_version": 0, "version": 1, "changes": []},
    {"epoch": True, "from_version": 0, "version": 1, "changes": []},
    {"epoch": 1, "from_version": -1, "version": 1, "changes": []},
    {"epoch": 1, "from_version": 0, "version": 1, "changes": [[1]]},
    {"epoch": 1, "from_version": 0, "version": 1, "changes": [[1, "n2"]]},
    {"epoch": 1, "from_version": 0, "version": 1, "changes": [[-1, 0]]},
    {"epoch": 1, "from_version": 0, "version": 1, "changes": {}},
    {"epoch": 1, "version": 1, "assignments": [0, -1]},
    {"epoch": 1, "version": 1, "assignments": [0.5]},
    {"epoch": 1, "version": 1, "assignments": [0], "live": [1, 0]},
    {"epoch": 1, "version": 1, "assignments": [0], "live": "yes"},
    {"epoch": 1, "version": 1, "assignments": [0], "panic": "n1"},
    {"epoch": 1, "version": 1, "assignments": [0], "panic": False},
])
def test_anything_else_is_one_error_type(doc: object) -> None:
    with pytest.raises(SyncMessageError):
        parse_sync(doc)


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=3),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(
                        st.sampled_from(["epoch", "version", "from_version", "changes",
                                         "assignments", "live", "panic"]), c, max_size=7),
                    max_leaves=12))
def test_arbitrary_json_parses_or_raises_sync_message_error(doc: object) -> None:
    with contextlib.suppress(SyncMessageError):
        parse_sync(doc)
