"""The `dlba` command: one dispatcher, each subcommand's parsing lives with its module."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

USAGE = """usage: dlba COMMAND [ARGS]

commands:
  node           run one node:            dlba node --config FILE --name NAME
  up             run a local array:       dlba up [--nodes N] [--backends M] [--state DIR]
  down           remove a crashed array:  dlba down [--state DIR]
  status         show the array's tables: dlba status [--json] [--admin URL]
  config push    commit a config:         dlba config push FILE
  config check   validate, apply nothing: dlba config check FILE [--name NAME]
  certs init     make dev CA and certs:   dlba certs init [--dir DIR]
  demo-backend   demo web server:         dlba demo-backend --name B --listen HOST:PORT
"""


def _node(argv: list[str]) -> int:
    from dlba.node import node_main

    return node_main(argv)


def _up(argv: list[str]) -> int:
    from dlba.local_array.up import up_main

    return up_main(argv)


def _down(argv: list[str]) -> int:
    from dlba.local_array.up import down_main

    return down_main(argv)


def _status(argv: list[str]) -> int:
    from dlba.admin.status_cli import status_main

    return status_main(argv)


def _certs(argv: list[str]) -> int:
    if not argv or argv[0] != "init":
        print("usage: dlba certs init [--dir DIR]", file=sys.stderr)
        return 2
    from dlba.tls.certs import certs_init_main

    return certs_init_main(argv[1:])


def _config(argv: list[str]) -> int:
    if argv and argv[0] == "check":
        from dlba.config.check import config_check_main

        return config_check_main(argv[1:])
    if not argv or argv[0] != "push":
        print("usage: dlba config push FILE | dlba config check FILE", file=sys.stderr)
        return 2
    no_array = _no_array_at_state(argv[1:])
    if no_array:
        print(f"dlba config push: {no_array}", file=sys.stderr)
        return 1
    from dlba.config.push import push_main

    return int(push_main(argv[1:]))


def _no_array_at_state(argv: list[str]) -> str:
    """Why `--state DIR` (without `--admin`) names no running array, or "" when it does.

    Checked before anything is sent: the array's addresses exist only inside its namespaces,
    and with no array they would route out through the host's default route."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--state")
    pre.add_argument("--admin", action="append")
    known, _ = pre.parse_known_args(argv)
    if known.state is None or known.admin:
        return ""
    from dlba.local_array.running import NoArrayRunning, running_record

    try:
        running_record(Path(known.state))
    except NoArrayRunning as e:
        return str(e)
    return ""


def _supervise(argv: list[str]) -> int:
    # Hidden: the process `dlba up --detach` leaves behind to restart dead nodes.
    from dlba.local_array.supervisor import supervise_main

    return supervise_main(argv)


def _demo_backend(argv: list[str]) -> int:
    from dlba.demo_backend import demo_backend_main

    return demo_backend_main(argv)


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "node": _node,
    "up": _up,
    "down": _down,
    "status": _status,
    "certs": _certs,
    "config": _config,
    "demo-backend": _demo_backend,
    "_supervise": _supervise,
}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if args else 2
    cmd = COMMANDS.get(args[0])
    if cmd is None:
        print(f"dlba: unknown command {args[0]!r}\n{USAGE}", file=sys.stderr, end="")
        return 2
    try:
        return cmd(args[1:])
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
