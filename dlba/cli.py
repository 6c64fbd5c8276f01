"""The `dlba` command: one dispatcher, each subcommand's parsing lives with its module."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

USAGE = """usage: dlba COMMAND [ARGS]
       dlba --version | dlba help [COMMAND [SUBCOMMAND]]

Run and operate a DLBA array: load-balancing nodes that share one virtual IP.

commands:
  node           run one node:            dlba node --config FILE --name NAME
  up             run a local array:       dlba up [--nodes N] [--backends M] [--state DIR]
  down           remove a crashed array:  dlba down [--state DIR]
  status         show the array's tables: dlba status [--json] [--admin URL]
  config push    commit a config:         dlba config push FILE
  config check   validate, apply nothing: dlba config check FILE [--name NAME]
  certs init     make dev CA and certs:   dlba certs init [--dir DIR]
  class-token    sign a client class:     dlba class-token CLASS --ttl S --config FILE
  demo-backend   demo web server:         dlba demo-backend --name B --listen HOST:PORT
  help           help on a command:       dlba help [COMMAND [SUBCOMMAND]]

`dlba COMMAND --help` (or `dlba help COMMAND`) describes a command and each of its options.
"""

CONFIG_USAGE = """usage: dlba config SUBCOMMAND [ARGS]

Manage the array's configuration (a TOML file, see docs/ for its keys).

subcommands:
  push FILE      validate FILE, then commit it to every node of the array (or to none)
  check FILE     validate FILE as a node would, apply nothing (exit 0 ok, 2 with the problems)

`dlba config SUBCOMMAND --help` describes its options.
"""

CERTS_USAGE = """usage: dlba certs SUBCOMMAND [ARGS]

Make the development certificates and secrets an array needs.

subcommands:
  init           make the dev CA, node certificate, cluster secret and admin token

`dlba certs SUBCOMMAND --help` describes its options.
"""


def _group_usage(argv: list[str], usage: str) -> int | None:
    """A command group asked for help (exit 0, stdout) or given no subcommand (exit 2,
    stderr); None when argv names a subcommand to run."""
    if argv and argv[0] in ("-h", "--help"):
        print(usage, end="")
        return 0
    if not argv:
        print(usage, file=sys.stderr, end="")
        return 2
    return None


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
    asked = _group_usage(argv, CERTS_USAGE)
    if asked is not None:
        return asked
    if argv[0] != "init":
        print(f"dlba certs: unknown subcommand {argv[0]!r}\n{CERTS_USAGE}", file=sys.stderr,
              end="")
        return 2
    from dlba.tls.certs import certs_init_main

    return certs_init_main(argv[1:])


def _config(argv: list[str]) -> int:
    asked = _group_usage(argv, CONFIG_USAGE)
    if asked is not None:
        return asked
    if argv[0] == "check":
        from dlba.config.check import config_check_main

        return config_check_main(argv[1:])
    if argv[0] != "push":
        print(f"dlba config: unknown subcommand {argv[0]!r}\n{CONFIG_USAGE}", file=sys.stderr,
              end="")
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


def _class_token(argv: list[str]) -> int:
    from dlba.services.token_cli import class_token_main

    return class_token_main(argv)


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
    "class-token": _class_token,
    "demo-backend": _demo_backend,
    "_supervise": _supervise,
}


def version() -> str:
    """The installed distribution's version; from pyproject.toml when run from a source tree
    that was never installed."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("dlba")
    except PackageNotFoundError:
        import tomllib

        pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
        try:
            return str(tomllib.loads(pyproject.read_text())["project"]["version"])
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return "unknown"


def _help(argv: list[str]) -> int:
    """`dlba help [COMMAND [SUBCOMMAND]]`: the same text as `dlba COMMAND ... --help`."""
    if not argv:
        print(USAGE, end="")
        return 0
    if argv[0] not in COMMANDS or argv[0].startswith("_"):
        print(f"dlba help: unknown command {argv[0]!r}\n{USAGE}", file=sys.stderr, end="")
        return 2
    try:
        return main([*argv[:2], "--help"])
    except SystemExit as e:  # argparse exits after printing a command's help
        return e.code if isinstance(e.code, int) else 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(USAGE, end="", file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    if args[0] in ("-V", "--version"):
        print(f"dlba {version()}")
        return 0
    if args[0] == "help":
        return _help(args[1:])
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
