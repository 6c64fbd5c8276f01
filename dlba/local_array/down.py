"""`dlba down`: stop and remove what one state folder records, and nothing else.

Only the processes with a pid file in the folder (the supervisor first), and the namespaces
and bridges of the prefix its `array.json` names, when the front bridge's owner tag does not
name another state folder. An empty or foreign folder removes nothing: another folder's
running array is never touched.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from dlba.local_array import netns_builder, processes, running, supervisor
from dlba.local_array.config_gen import StatePaths

# Stop order: nodes before back ends, so no node sees its back ends vanish and marks them
# failed (noise in the logs of a clean shutdown).
NODE_FIRST = [f"n{k}" for k in range(1, 100)]


def stop_processes(state: StatePaths) -> list[str]:
    """The supervisor first (it would restart the nodes being stopped), then the nodes, then
    the rest; pid files are read again once the supervisor is gone."""
    stopped = processes.stop_recorded(state.root, only={supervisor.SUPERVISOR})
    return stopped + processes.stop_recorded(state.root, order=NODE_FIRST)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dlba down", description="Remove what `dlba up` left of a crashed or detached "
        "array: its processes, namespaces and links, as its state folder records them.")
    p.add_argument("--state", default="./run", help="state folder (default ./run)")
    # Tests build private arrays under another prefix next to a user's `dlba-` array.
    p.add_argument("--prefix", default=None, help=argparse.SUPPRESS)
    return p


def _prefixes(args: argparse.Namespace, state: StatePaths) -> list[str]:
    """An explicit --prefix (tests), else the one the folder's record names, else none."""
    if args.prefix:
        return [args.prefix]
    info = running.read_record(state.root)
    prefix = info.get("prefix") if info else None
    return [prefix] if isinstance(prefix, str) and prefix else []


def down_main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    state = StatePaths(Path(args.state).resolve())
    prefixes = _prefixes(args, state)
    if os.geteuid() != 0:
        # Without root only the loopback mode's processes can be ours to stop.
        stopped = processes.stop_recorded(state.root)
        print(f"dlba down: stopped {len(stopped)} processes")
        if any(netns_builder.leftovers(p).namespaces for p in prefixes):
            print("dlba down: array namespaces exist; removing them needs root")
            return 1
        return 0
    stopped = stop_processes(state)
    removed = netns_builder.Removed()
    foreign: list[str] = []
    for prefix in prefixes:
        owner = netns_builder.owner(prefix)
        if owner is not None and owner != str(state.root):
            foreign.append(f"{prefix}* belongs to {owner}")
            continue
        r = netns_builder.teardown(prefix)
        removed.processes += r.processes
        removed.namespaces += r.namespaces
        removed.links += r.links
    state.array_file.unlink(missing_ok=True)
    if stopped or removed:
        print(f"dlba down: stopped {len(stopped)} recorded processes; removed {removed.summary()}")
    else:
        note = f" ({'; '.join(foreign)})" if foreign else ""
        print(f"dlba down: nothing to remove in {state.root}{note}")
    return 0
