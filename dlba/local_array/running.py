"""Is an array running from this state folder?

What `dlba status`, `dlba config push --state` and `dlba down` ask before they touch
anything: the folder's record (`array.json`, written by `dlba up`) and its pid files, each
checked with its start time. Never the network: with no array, the array's addresses may
route out of the host through its default route.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from dlba.local_array import processes


class NoArrayRunning(OSError):
    """The state folder records no running array (the message says why, in one line)."""


def read_record(root: Path) -> dict[str, Any] | None:
    """The array record `dlba up` wrote, or None when there is none (or it is unreadable)."""
    try:
        info = json.loads((root / "array.json").read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def live_processes(root: Path) -> list[str]:
    """Names of the recorded processes that still run (same PID and start time)."""
    return [n for n, pid, st in processes.recorded(root) if processes.alive(pid, st)]


def running_record(root: Path) -> dict[str, Any]:
    """The record of the array running from `root`; NoArrayRunning when none does."""
    where = str(root.resolve())
    info = read_record(root)
    if info is None:
        raise NoArrayRunning(f"no array is running from {where} (no array record; dlba up "
                             "starts one)")
    if not live_processes(root):
        raise NoArrayRunning(f"no array is running from {where} (its recorded processes "
                             "have exited; dlba down removes what is left)")
    netns = info.get("client_netns")
    if isinstance(netns, str) and not os.path.exists(processes.netns_path(netns)):
        raise NoArrayRunning(f"no array is running from {where} (namespace {netns} is gone; "
                             "dlba down removes what is left)")
    return info
