"""Parser of a back end's agent-check reply (seed 004: servers advertise their own capacity).

The reply format is HAProxy's ``agent-check``: one ASCII line of words separated by spaces,
commas or tabs, in any order:

* an administrative or operational state: ``ready`` | ``up`` (back in service), ``drain`` (keep
  persistent clients, take no new ones), ``maint``, ``down``, ``fail``, ``stopped``;
* ``N%`` -- the effective weight as a percentage of the configured weight (HAProxy's form);
* ``weight:N`` -- an absolute weight (the issue's form; HAProxy itself only knows ``N%``);
* ``maxconn:N`` -- accepted because HAProxy agents send it, carried but not used for scheduling;
* ``#`` starts a free-text description (HAProxy logs it after ``down``/``fail``/``stopped``).

Pure: the polling (TCP connect, read one line, timeout) lives in the node's I/O shell.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Word -> the table's agent_state. "up" and "ready" both mean "serve normally"; "fail" is
# HAProxy's synonym of "down" with a reason attached.
_STATES = {
    "ready": "ready",
    "up": "ready",
    "drain": "drain",
    "maint": "maint",
    "down": "down",
    "fail": "down",
    "stopped": "stopped",
}
# When one reply carries several states (HAProxy allows "up drain" or "down maint"), the most
# restrictive wins: a reply must never make a back end more available than any of its words say.
_SEVERITY = {"ready": 0, "drain": 1, "maint": 2, "stopped": 3, "down": 4}
_SPLIT = re.compile(r"[ ,\t]+")
_INT = re.compile(r"[0-9]{1,6}")
# An agent line is short; a longer one is garbage or an attack on the poller, not a reply.
MAX_LINE = 512
# HAProxy caps server weights at 256; a percentage far beyond that only multiplies noise.
MAX_WEIGHT_PCT = 25600
MAX_WEIGHT = 1_000_000


@dataclass(frozen=True, slots=True)
class AgentReport:
    state: str | None  # None | "ready" | "drain" | "maint" | "down" | "stopped"
    weight_pct: int | None
    weight: int | None
    maxconn: int | None = None
    description: str = ""


def _number(word: str, text: str, line: str, limit: int) -> int:
    if _INT.fullmatch(text) is None:
        raise ValueError(f"bad number in agent reply word {word!r}: {line!r}")
    value = int(text)
    if value > limit:
        raise ValueError(f"agent reply value out of range in {word!r}: {line!r}")
    return value


def parse_agent_reply(line: str) -> AgentReport:
    """Parse one reply line; raise ValueError when it is empty or has an unknown word."""
    if len(line) > MAX_LINE:
        raise ValueError(f"agent reply longer than {MAX_LINE} characters")
    body, hash_, comment = line.partition("#")
    words = [w for w in _SPLIT.split(body.strip(" \t\r\n")) if w]
    if not words:
        raise ValueError(f"empty agent reply: {line!r}")
    state: str | None = None
    pct: int | None = None
    weight: int | None = None
    maxconn: int | None = None
    for word in words:
        low = word.lower()
        if low in _STATES:
            new = _STATES[low]
            if state is None or _SEVERITY[new] > _SEVERITY[state]:
                state = new
        elif low.endswith("%"):
            pct = _number(word, low[:-1], line, MAX_WEIGHT_PCT)
        elif low.startswith("weight:"):
            weight = _number(word, low[7:], line, MAX_WEIGHT)
        elif low.startswith("maxconn:"):
            maxconn = _number(word, low[8:], line, MAX_WEIGHT)
        else:
            raise ValueError(f"unknown word {word!r} in agent reply {line!r}")
    return AgentReport(state, pct, weight, maxconn, comment.strip() if hash_ else "")
