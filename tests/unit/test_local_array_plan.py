"""The local array's plan carries the contract's names and addresses (DESIGN.md, "Default
addresses of dlba up"), and the generated cluster.toml is the contract's config."""

from __future__ import annotations

import ipaddress
import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dlba.local_array import config_gen, up
from dlba.local_array.topology import MAX_BACKENDS, MAX_NODES, Role, link_names, make_plan

FRONT = ipaddress.ip_network("198.18.0.0/24")
BACK = ipaddress.ip_network("198.18.1.0/24")


def _addresses(plan_nodes: int, plan_backends: int, redis: bool) -> dict[str, list[str]]:
    plan = make_plan(plan_nodes, plan_backends, redis=redis)
    return {ns.name: [f"{ep.ifname}={ep.address}" for ep in ns.endpoints] for ns in plan.namespaces}


def test_default_plan_is_the_contract() -> None:
    plan = make_plan()
    assert plan.vip == "198.18.0.100"
    assert plan.bridges == ("dlba-sw", "dlba-bk")
    assert _addresses(3, 3, redis=False) == {
        "dlba-client": ["eth0=198.18.0.2"],
        "dlba-n1": ["front=198.18.0.11", "back=198.18.1.11"],
        "dlba-n2": ["front=198.18.0.12", "back=198.18.1.12"],
        "dlba-n3": ["front=198.18.0.13", "back=198.18.1.13"],
        "dlba-b1": ["eth0=198.18.1.101"],
        "dlba-b2": ["eth0=198.18.1.102"],
        "dlba-b3": ["eth0=198.18.1.103"],
    }
    assert plan.backend_endpoint(2) == "198.18.1.102:8080"
    assert plan.admin_url(3) == "http://198.18.0.13:9000/"
    assert plan.redis_url == ""
    assert plan.host_address is None


def test_redis_namespace_only_when_asked() -> None:
    plan = make_plan(2, 1, redis=True)
    assert plan.namespace("dlba-redis").endpoints[0].address == "198.18.1.2"
    assert plan.namespace("dlba-redis").endpoints[0].bridge == "dlba-bk"
    assert plan.redis_url == "redis://198.18.1.2:6379/0"
    assert "dlba-redis" not in {ns.name for ns in make_plan(2, 1).namespaces}


@given(
    nodes=st.integers(1, MAX_NODES),
    backends=st.integers(1, MAX_BACKENDS),
    redis=st.booleans(),
    prefix=st.sampled_from(["dlba-", "dlbat1a2b-", "lat1a2b-", "x-"]),
)
def test_plan_invariants(nodes: int, backends: int, redis: bool, prefix: str) -> None:
    plan = make_plan(nodes, backends, prefix=prefix, redis=redis)
    names = [ns.name for ns in plan.namespaces]
    assert len(names) == len(set(names)) == 1 + nodes + backends + int(redis)
    assert all(n.startswith(prefix) for n in names + link_names(plan))
    links = link_names(plan)
    assert len(links) == len(set(links)) and all(len(n) <= 15 for n in links)
    every = [ep.address for ns in plan.namespaces for ep in ns.endpoints]
    assert len(every) == len(set(every)) and plan.vip not in every
    for ns in plan.namespaces:
        for ep in ns.endpoints:
            net = FRONT if ep.bridge == plan.front_bridge else BACK
            assert ipaddress.ip_address(ep.address) in net
            assert ep.address not in (str(net.network_address), str(net.broadcast_address))
        # Only nodes carry the VIP, and every node does, with the ARP sysctls.
        assert ns.vip_on_lo == (ns.role is Role.NODE)
        if ns.role is Role.NODE:
            k = ns.index
            assert ns.name == f"{prefix}n{k}"
            assert [(e.ifname, e.address) for e in ns.endpoints] == [
                ("front", f"198.18.0.{10 + k}"),
                ("back", f"198.18.1.{10 + k}"),
            ]
            sysctls = dict(ns.sysctls)
            for dev in ("all", "front"):
                assert sysctls[f"net.ipv4.conf.{dev}.arp_ignore"] == "1"
                assert sysctls[f"net.ipv4.conf.{dev}.arp_announce"] == "2"
        if ns.role is Role.BACKEND:
            assert ns.endpoints[0].address == f"198.18.1.{100 + ns.index}"
        if ns.role is Role.CLIENT:
            assert ns.default_dev == "eth0"


@pytest.mark.parametrize(
    ("nodes", "backends", "prefix"),
    [(0, 1, "dlba-"), (MAX_NODES + 1, 1, "dlba-"), (1, 0, "dlba-"), (1, MAX_BACKENDS + 1, "dlba-"),
     (1, 1, ""), (1, 1, "a/b-"), (1, 1, "muchtoolongprefix-")],
)  # fmt: skip
def test_impossible_plans_are_refused(nodes: int, backends: int, prefix: str) -> None:
    with pytest.raises(ValueError):
        make_plan(nodes, backends, prefix=prefix)


@given(nodes=st.integers(1, 20), backends=st.integers(1, 20), redis=st.booleans())
def test_generated_config_is_the_contracts(nodes: int, backends: int, redis: bool) -> None:
    plan = make_plan(nodes, backends, redis=redis)
    data = tomllib.loads(config_gen.config_for_plan(plan))
    assert data["cluster"]["vip"] == "198.18.0.100"
    assert data["cluster"]["buckets"] == 4096 and data["cluster"]["bucket_idle_s"] == 300
    assert data["cluster"]["secret_file"] == "certs/cluster.key"
    assert data["cluster"]["redis"] == ("redis://198.18.1.2:6379/0" if redis else "")
    assert [n["name"] for n in data["nodes"]] == [f"n{k}" for k in range(1, nodes + 1)]
    assert [n["address"] for n in data["nodes"]] == [
        f"198.18.0.{10 + k}" for k in range(1, nodes + 1)
    ]
    assert all(n["listen"] == ["198.18.0.100:80"] for n in data["nodes"])
    assert all(n["listen_tls"] == ["198.18.0.100:443"] for n in data["nodes"])
    assert [(b["id"], b["address"], b["health"]) for b in data["backends"]] == [
        (j, f"198.18.1.{100 + j}:8080", "/health") for j in range(1, backends + 1)
    ]
    assert data["tls"] == {"cert": "certs/node.pem", "key": "certs/node.key"}
    assert data["admin"] == {"listen": ":9000", "token_file": "admin.token"}
    assert data["persistence"]["cookie"] == "DLBASERVER"
    assert data["scheduling"]["policy"] == "least_conn"


@given(st.text())
def test_toml_strings_round_trip(s: str) -> None:
    text = config_gen.render_config(
        [config_gen.NodeEntry(s, "127.0.0.1", (s,), ())], [], vip=None, redis=s
    )
    data = tomllib.loads(text)
    assert data["nodes"][0]["name"] == s and data["cluster"]["redis"] == s
    assert "vip" not in data["cluster"]


def test_state_folder_config_loads(tmp_path: Path) -> None:
    """The state folder `up` writes is one the node's own config loader accepts."""
    from dlba.config import load_config

    plan = make_plan(3, 2)
    state = config_gen.StatePaths(tmp_path / "run")
    config_gen.write_state(state, config_gen.config_for_plan(plan), *config_gen.cert_subjects(plan))
    for f in ("cluster.toml", "admin.token", "certs/ca.pem", "certs/node.pem", "certs/node.key",
              "certs/cluster.key"):  # fmt: skip
        assert (state.root / f).is_file(), f
    assert config_gen.read_token(state) == (state.certs / "admin.token").read_text().strip()
    cfg = load_config(state.config)
    assert [n.name for n in cfg.nodes] == ["n1", "n2", "n3"]
    assert len(cfg.backends) == 2


def test_node_command_uses_this_interpreter(tmp_path: Path) -> None:
    import sys

    cmd = up.node_command(tmp_path / "cluster.toml", "n2")
    assert cmd == [sys.executable, "-m", "dlba", "node", "--config",
                   str(tmp_path / "cluster.toml"), "--name", "n2"]  # fmt: skip
    assert up.backend_command("b1", "198.18.1.101:8080")[-4:] == [
        "--name", "b1", "--listen", "198.18.1.101:8080"
    ]  # fmt: skip
