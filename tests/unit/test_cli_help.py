"""`dlba --version`, `dlba help`, and a description and help text for every command,
subcommand and option."""

from __future__ import annotations

import argparse
import contextlib
import tomllib
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any

import pytest

from dlba.cli import main

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = [["node"], ["up"], ["down"], ["status"], ["config", "push"], ["config", "check"],
            ["certs", "init"], ["class-token"], ["demo-backend"]]
GROUPS = {"config": ["push", "check"], "certs": ["init"]}


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    out = capsys.readouterr().out.strip()
    assert out == f"dlba {dist_version('dlba')}"
    assert out == "dlba " + tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "version"]


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["help"]) == 0
    out = capsys.readouterr().out
    for cmd in COMMANDS:
        assert " ".join(cmd) in out
    assert "_supervise" not in out


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_command_groups_describe_their_subcommands(
    group: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([group, "--help"]) == 0
    out = capsys.readouterr().out
    assert main(["help", group]) == 0
    assert capsys.readouterr().out == out
    assert len(out.splitlines()) > 3  # more than a usage line
    for sub in GROUPS[group]:
        assert f"\n  {sub} " in out
    assert main([group]) == 2  # no subcommand: the same text, as an error
    assert capsys.readouterr().err == out
    assert main([group, "nope"]) == 2
    assert "unknown subcommand 'nope'" in capsys.readouterr().err


def _parser_of(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> argparse.ArgumentParser:
    """The parser a command builds to read `argv --help` (pre-parsers without help pass)."""
    seen: list[argparse.ArgumentParser] = []
    original = argparse.ArgumentParser.parse_known_args

    def capture(self: argparse.ArgumentParser, *a: Any, **k: Any) -> Any:
        if not self.add_help:
            return original(self, *a, **k)
        seen.append(self)
        raise SystemExit(0)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", capture)
    with contextlib.suppress(SystemExit):  # some commands turn argparse's exit into a code
        main([*argv, "--help"])
    monkeypatch.undo()
    assert seen, argv
    return seen[-1]


@pytest.mark.parametrize("argv", COMMANDS, ids=" ".join)
def test_every_command_and_option_has_help(
    argv: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    p = _parser_of(argv, monkeypatch)
    assert p.prog == "dlba " + " ".join(argv)
    assert p.description, p.prog
    for action in p._actions:
        assert action.help, (p.prog, action.option_strings or action.dest)


@pytest.mark.parametrize("argv", COMMANDS, ids=" ".join)
def test_help_command_prints_the_commands_help(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["help", *argv]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: dlba " + " ".join(argv))
    assert "options:" in out
