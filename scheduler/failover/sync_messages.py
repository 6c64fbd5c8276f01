"""The client-table sync messages the scheduler sends its peers (pure: no I/O).

Sync is pushed (agent.py): every change, as a delta from the version a peer last got, or the
whole table when the scheduler has no delta from there. A follower that missed something pulls
the whole table from the scheduler's `/table?indexes=1`. These classes are the only code that
knows the JSON of either: the scheduler role builds them, the agent parses them.

Every message carries the liveness of the nodes (a takeover must never rebalance onto a node
known dead), the panic pin (the node panic mode sends every bucket to, or None) and the names
of the node numbers (scheduler/membership.py; absent from an older scheduler's messages).
A bucket's owner is a node index, or None for no owner (JSON null).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Change = tuple[int, int | None]


class SyncMessageError(ValueError):
    """A sync message (or table snapshot) whose JSON is not one: missing key, wrong type."""


@dataclass(frozen=True)
class SyncDelta:
    """The buckets that changed owner between `from_version` and `version` of term `epoch`."""

    epoch: int
    from_version: int
    version: int
    changes: tuple[Change, ...]
    live: tuple[bool, ...] | None = None
    panic: int | None = None
    names: tuple[str, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "from_version": self.from_version, "version": self.version,
                "changes": [[b, n] for b, n in self.changes],
                **_tail(self.live, self.panic, self.names)}

    @classmethod
    def from_json(cls, doc: object) -> SyncDelta:
        d = _object(doc)
        return cls(_count(d, "epoch"), _count(d, "from_version"), _count(d, "version"),
                   tuple(_change(c) for c in _list(d, "changes")), _live(d), _panic(d),
                   _names(d))


@dataclass(frozen=True)
class SyncSnapshot:
    """The whole table: every bucket's owner at `version` of term `epoch`."""

    epoch: int
    version: int
    assignments: tuple[int | None, ...]
    live: tuple[bool, ...] | None = None
    panic: int | None = None
    names: tuple[str, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "version": self.version,
                "assignments": list(self.assignments), **_tail(self.live, self.panic, self.names)}

    @classmethod
    def from_json(cls, doc: object) -> SyncSnapshot:
        return cls._parse(_object(doc), "assignments")

    def to_table_json(self) -> dict[str, Any]:
        """The fields `/table?indexes=1` adds to the table document (owners as node indexes)."""
        return {"epoch": self.epoch, "version": self.version,
                "indexes": list(self.assignments), **_tail(self.live, self.panic, self.names)}

    @classmethod
    def from_table_json(cls, doc: object) -> SyncSnapshot:
        """The snapshot in a `/table?indexes=1` answer (what a follower pulls)."""
        return cls._parse(_object(doc), "indexes")

    @classmethod
    def _parse(cls, d: Mapping[str, object], key: str) -> SyncSnapshot:
        return cls(_count(d, "epoch"), _count(d, "version"),
                   tuple(_owner(o) for o in _list(d, key)), _live(d), _panic(d), _names(d))


SyncMessage = SyncDelta | SyncSnapshot


def parse_sync(doc: object) -> SyncMessage:
    """A pushed message: a snapshot when it has `assignments`, else a delta."""
    d = _object(doc)
    if d.get("assignments") is not None:
        return SyncSnapshot.from_json(d)
    return SyncDelta.from_json(d)


# --- validation: every failure is one SyncMessageError naming what was wrong -----------------

def _tail(live: tuple[bool, ...] | None, panic: int | None,
          names: tuple[str, ...] | None) -> dict[str, Any]:
    # `names` only when known, so a message without it is the older peers' exact form.
    return {"live": None if live is None else list(live), "panic": panic,
            **({} if names is None else {"names": list(names)})}


def _object(doc: object) -> Mapping[str, object]:
    if not isinstance(doc, Mapping):
        raise SyncMessageError(f"a sync message is a JSON object, not {type(doc).__name__}")
    return doc


def _int(value: object, what: str) -> int:
    # bool is an int in Python, never in this protocol.
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise SyncMessageError(f"{what} is not a non-negative integer: {value!r}")
    return value


def _count(d: Mapping[str, object], key: str) -> int:
    if key not in d:
        raise SyncMessageError(f"{key} is missing")
    return _int(d[key], key)


def _list(d: Mapping[str, object], key: str) -> Sequence[object]:
    value = d.get(key)
    if not isinstance(value, list | tuple):
        raise SyncMessageError(f"{key} is not a list: {value!r}")
    return value


def _owner(value: object) -> int | None:
    return None if value is None else _int(value, "owner")


def _change(value: object) -> Change:
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise SyncMessageError(f"a change is [bucket, owner], not {value!r}")
    return _int(value[0], "bucket"), _owner(value[1])


def _live(d: Mapping[str, object]) -> tuple[bool, ...] | None:
    value = d.get("live")
    if value is None:
        return None
    if not isinstance(value, list | tuple) or not all(isinstance(v, bool) for v in value):
        raise SyncMessageError(f"live is not a list of booleans: {value!r}")
    return tuple(value)


def _panic(d: Mapping[str, object]) -> int | None:
    value = d.get("panic")
    return None if value is None else _int(value, "panic")


def _names(d: Mapping[str, object]) -> tuple[str, ...] | None:
    value = d.get("names")
    if value is None:
        return None
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise SyncMessageError(f"names is not a list of strings: {value!r}")
    return tuple(value)
