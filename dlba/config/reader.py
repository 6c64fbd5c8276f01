"""Reading a TOML config table by table, collecting every problem instead of stopping at one.

A problem is a ConfigError (file, dotted key, reason). The readers record problems and hand
back a default, so one pass over the file finds them all; ConfigErrors carries the list.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


class ConfigError(Exception):
    """One problem: the file, the key (dotted path, with array indexes) and the reason."""

    def __init__(self, file: str, key: str, reason: str) -> None:
        super().__init__(f"{file}: {key}: {reason}")
        self.file = file
        self.key = key
        self.reason = reason

    @property
    def problems(self) -> list[ConfigError]:
        return [self]

    def lines(self) -> list[str]:
        """One line per problem, `file: key: reason`."""
        return [f"{p.file}: {p.key}: {p.reason}" for p in self.problems]

    def to_json(self) -> list[dict[str, str]]:
        return [{"file": p.file, "key": p.key, "reason": p.reason} for p in self.problems]


class ConfigErrors(ConfigError):
    """Every problem found; file/key/reason are the first one's, so a caller that knows only
    ConfigError still gets a correct line."""

    def __init__(self, problems: Iterable[ConfigError]) -> None:
        flat = [p for e in problems for p in e.problems]
        if not flat:
            raise ValueError("ConfigErrors needs at least one problem")
        first = flat[0]
        super().__init__(first.file, first.key, first.reason)
        self._problems = flat

    @property
    def problems(self) -> list[ConfigError]:
        return list(self._problems)

    def __str__(self) -> str:
        return "\n".join(self.lines())


class Problems:
    """The problems of one file, in the order found."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.items: list[ConfigError] = []

    def add(self, key: str, reason: str) -> None:
        self.items.append(ConfigError(self.file, key, reason))

    def has(self, prefix: str) -> bool:
        """Is there a problem at this key or below it?"""
        return any(p.key == prefix or p.key.startswith((prefix + ".", prefix + "["))
                   for p in self.items)


@dataclass(frozen=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class Reader:
    """Walks one table, taking keys by type; whatever is left over is an unknown key. A bad
    value is recorded and the default handed back, so reading goes on."""

    def __init__(self, problems: Problems, prefix: str, table: Mapping[str, Any]) -> None:
        self.problems = problems
        self.prefix = prefix
        self.table = dict(table)

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def report(self, name: str, reason: str) -> None:
        self.problems.add(self.key(name), reason)

    def fail(self, name: str, reason: str) -> ConfigError:
        """A problem to raise at once (reading stops there); `report` goes on."""
        return ConfigError(self.problems.file, self.key(name), reason)

    def _typed(self, name: str, kind: type[T]) -> T | None:
        value = self.table.pop(name)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            self.report(name, f"expected {kind.__name__}, got {type(value).__name__}")
            return None
        return value

    def take(self, name: str, kind: type[T], default: T) -> T:
        if name not in self.table:
            return default
        value = self._typed(name, kind)
        return default if value is None else value

    def require(self, name: str, kind: type[T]) -> T | None:
        """A key without a default: None (and a problem) when missing or of the wrong type."""
        if name not in self.table:
            self.report(name, "missing")
            return None
        return self._typed(name, kind)

    def take_list(self, name: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        if name not in self.table:
            return default
        value = self.table.pop(name)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.report(name, "expected a list of strings")
            return default
        return tuple(value)

    def take_path(self, name: str, base: Path) -> Path | None:
        """A file name, relative to `base`. Whether it exists is the node's business: it may
        live only on the nodes (see check_files)."""
        raw = self.take(name, str, "")
        if not raw:
            return None
        p = Path(raw)
        return p if p.is_absolute() else base / p

    def positive(self, name: str, kind: type[T], default: T) -> T:
        value = self.take(name, kind, default)
        if not 0 < value < math.inf:  # type: ignore[operator]  # nan and inf too
            self.report(name, "must be > 0 and finite")
            return default
        return value

    def section(self, name: str) -> Reader:
        value = self.table.pop(name, {})
        if not isinstance(value, dict):
            self.report(name, "expected a table")
            value = {}
        return Reader(self.problems, self.key(name), value)

    def each(self, name: str, build: Callable[[Reader], T]
             ) -> tuple[list[tuple[int, T]], list[tuple[int, T]]]:
        """The entries of an array of tables that read without a problem, with their index
        (checks across entries use these, so a bad entry is not reported twice), and every
        entry as read, bad ones with defaults in place of their bad values."""
        if name not in self.table:
            return [], []
        value = self.table.pop(name)
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            self.report(name, "expected an array of tables ([[" + name + "]])")
            return [], []
        good: list[tuple[int, T]] = []
        built: list[tuple[int, T]] = []
        for i, table in enumerate(value):
            before = len(self.problems.items)
            r = Reader(self.problems, f"{self.key(name)}[{i}]", table)
            entry = build(r)
            r.done()
            built.append((i, entry))
            if len(self.problems.items) == before:
                good.append((i, entry))
        return good, built

    def done(self) -> None:
        for name in self.table:
            self.report(name, "unknown key")


def parse_host_port(text: str, *, default_host: str = "0.0.0.0") -> HostPort:
    """`host:port`, `[v6]:port` or `:port`; raises ValueError with the reason."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"{text!r} is not [host]:port")
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            raise ValueError(f"{text!r} is not host:port")
    host = host or default_host
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad port in {text!r}")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        # A DNS name (RFC 1123): ASCII labels, no empty ones, and not a mistyped IPv4 address.
        labels = host.split(".")
        if (len(host) > 253 or labels[-1].isdigit()
                or not all(_HOST_LABEL.fullmatch(label) for label in labels)):
            raise ValueError(f"bad host in {text!r}") from None
    return HostPort(host, int(port))


def ipv4(r: Reader, name: str, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        r.report(name, f"not an IPv4 address: {value!r}")
        return None


def addr(r: Reader, name: str, value: str | None, default_host: str = "0.0.0.0"
         ) -> HostPort | None:
    if value is None:
        return None
    try:
        return parse_host_port(value, default_host=default_host)
    except ValueError as e:
        r.report(name, str(e))
        return None


def networks(r: Reader, name: str, values: Sequence[str], v4_only: bool) -> None:
    for cidr in values:
        try:
            if v4_only:
                ipaddress.IPv4Network(cidr, strict=False)
            else:
                ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            kind = "an IPv4 network" if v4_only else "a network"
            r.report(name, f"not {kind}: {cidr!r}")


def unique(problems: Problems, table: str, values: Sequence[tuple[int, str]], key: str) -> None:
    seen: set[str] = set()
    for i, v in values:
        if v in seen:
            problems.add(f"{table}[{i}].{key}", f"duplicate value {v!r}")
        seen.add(v)


NONEMPTY_FILES = ("cluster.secret_file", "admin.token_file")


def check_files(problems: Problems, files: Iterable[tuple[str, Path]]) -> None:
    """Each named file exists and can be read (the secret and the token are not empty).
    Only the machine that runs the node can say: relative names resolve next to its config."""
    for key, path in files:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            problems.add(key, f"file not found: {path}")
            continue
        except OSError as e:
            problems.add(key, f"cannot read {path}: {e.strerror}")
            continue
        if key in NONEMPTY_FILES and not data.strip():
            problems.add(key, f"{path} is empty")
