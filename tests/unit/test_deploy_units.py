"""deploy/: the systemd unit and the sysctl drop-in a bare-metal node is installed with."""

from __future__ import annotations

import configparser
import shlex
from pathlib import Path

from dlba.node import node_parser

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def unit() -> configparser.ConfigParser:
    # strict=False: systemd allows repeated keys (only ExecStartPre could repeat here).
    p = configparser.ConfigParser(interpolation=None, strict=False)
    p.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    p.read(DEPLOY / "systemd" / "dlba-node.service")
    return p


def node_args(command: str) -> list[str]:
    argv = shlex.split(command)
    assert argv[0].endswith("/dlba") and argv[1] == "node", argv
    return argv[2:]


def test_unit_restarts_and_has_what_the_node_needs() -> None:
    svc = unit()["Service"]
    assert svc["Restart"] == "always"
    caps = set(svc["AmbientCapabilities"].split())
    assert {"CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_NET_BIND_SERVICE"} <= caps
    assert caps & {"CAP_BPF", "CAP_SYS_ADMIN"}
    assert caps <= set(svc["CapabilityBoundingSet"].split())
    assert int(svc["LimitNOFILE"]) >= 65536
    assert svc["User"] != "root"
    # SIGHUP reloads the node (its master re-reads the config and replaces its workers).
    assert svc["ExecReload"] == "/bin/kill -HUP $MAINPID"
    # The node notifies readiness, and an upgrade's old master names the new MAINPID.
    assert svc["Type"] == "notify" and svc["NotifyAccess"] == "all"
    assert svc["KillMode"] == "mixed"
    assert unit()["Install"]["WantedBy"] == "multi-user.target"


def test_exec_lines_parse_with_the_node_cli_and_check_first() -> None:
    svc = unit()["Service"]
    start = node_parser().parse_args(node_args(svc["ExecStart"]))
    pre = node_parser().parse_args(node_args(svc["ExecStartPre"]))
    assert not start.check and pre.check
    assert (pre.config, pre.name, pre.dataplane) == (start.config, start.name, start.dataplane)
    assert start.config == "/etc/dlba/cluster.toml"


def test_sysctl_dropin_sets_what_node_check_requires() -> None:
    values = {}
    for line in (DEPLOY / "sysctl.d" / "90-dlba.conf").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, value = (s.strip() for s in line.split("=", 1))
            values[key] = int(value)
    assert values["net.ipv4.conf.all.arp_ignore"] >= 1
    assert values["net.ipv4.conf.all.arp_announce"] >= 2
