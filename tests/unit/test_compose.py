"""The container deployment without a Docker engine: docker-compose.yml parsed and checked, the
image's entry point and config generation run as plain processes, their output validated."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from dlba.config import load_config
from dlba.sockets import tls_context

ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(doc, dict)
    return doc


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(compose["services"])


def nodes(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in services(compose).items()
            if "DLBA_NODE_NAME" in (v.get("environment") or {})}


def front_subnet(compose: dict[str, Any]) -> ipaddress.IPv4Network:
    subnets = [c["subnet"] for c in compose["networks"]["front"]["ipam"]["config"]]
    assert len(subnets) == 1
    return ipaddress.IPv4Network(subnets[0])


def node_env(svc: dict[str, Any], certs: Path) -> dict[str, str]:
    env = {k: str(v) for k, v in svc["environment"].items()}
    return {**os.environ, **env, "DLBA_CERTS": str(certs),
            "PYTHONPATH": str(ROOT), "DLBA_PYTHON": sys.executable}


def test_redis_and_three_nodes(compose: dict[str, Any]) -> None:
    svcs = services(compose)
    assert "redis" in svcs and svcs["redis"]["image"].startswith("redis")
    assert len(nodes(compose)) >= 3
    redis_ip = svcs["redis"]["networks"]["front"]["ipv4_address"]
    for svc in nodes(compose).values():
        assert svc["environment"]["DLBA_REDIS"] == f"redis://{redis_ip}:6379/0"


def test_nodes_have_the_capabilities_and_sysctls(compose: dict[str, Any]) -> None:
    for name, svc in nodes(compose).items():
        caps = set(svc["cap_add"])
        assert {"NET_ADMIN", "NET_RAW"} <= caps, name
        # loading a tc BPF program: CAP_BPF (+PERFMON) on kernels >= 5.8, else SYS_ADMIN
        assert {"BPF", "PERFMON"} <= caps or "SYS_ADMIN" in caps, name
        assert svc["ulimits"]["memlock"] == {"soft": -1, "hard": -1}
        sysctls = {k: int(v) for k, v in svc["sysctls"].items()}
        assert sysctls["net.ipv4.conf.all.arp_ignore"] == 1
        assert sysctls["net.ipv4.conf.all.arp_announce"] == 2
        check = " ".join(svc["healthcheck"]["test"])
        assert "/healthz" in check and ":9000" in check


def test_front_network_holds_the_vip_and_the_nodes(compose: dict[str, Any]) -> None:
    subnet = front_subnet(compose)
    ns = nodes(compose)
    vips = {svc["environment"]["DLBA_VIP"] for svc in ns.values()}
    assert len(vips) == 1
    vip = ipaddress.IPv4Address(vips.pop())
    assert vip in subnet
    used = {ipaddress.IPv4Address(s["networks"]["front"]["ipv4_address"])
            for s in services(compose).values()
            if isinstance(s.get("networks"), dict) and "front" in s["networks"]}
    assert vip not in used  # no container owns the VIP: the scheduler node takes it
    for svc in ns.values():
        env = svc["environment"]
        listed = dict(p.split("=") for p in env["DLBA_NODES"].split(","))
        # every node's idea of the array matches where compose puts each node
        front = svc["networks"]["front"]["ipv4_address"]
        assert listed[env["DLBA_NODE_NAME"]] == front == env["DLBA_ADDRESS"]
        assert ipaddress.IPv4Address(front) in subnet
        assert len(listed) == len(ns)


def test_backends_and_client(compose: dict[str, Any]) -> None:
    svcs = services(compose)
    demo = {k: v for k, v in svcs.items() if "demo-backend" in v.get("entrypoint", [])}
    assert len(demo) >= 2
    addresses = {f"{v['networks']['back']['ipv4_address']}:8080" for v in demo.values()}
    for svc in nodes(compose).values():
        configured = {p.split("=")[1] for p in svc["environment"]["DLBA_BACKENDS"].split(",")}
        assert configured == addresses
    client = svcs["client"]
    assert "front" in client["networks"]


def test_dockerfile_runs_the_entrypoint() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["/opt/dlba/docker/entrypoint.sh"]' in text
    assert "dlba_tc.o" in text  # the eBPF object is built in the image
    assert "_tls_ticket_cb.so" in text  # and the TLS ticket callback
    assert os.access(ROOT / "docker" / "entrypoint.sh", os.X_OK)


@pytest.mark.parametrize("node", ["n1", "n3"])
def test_generated_config_is_valid_for_each_node(
    compose: dict[str, Any], tmp_path: Path, node: str,
) -> None:
    svc = services(compose)[node]
    out = tmp_path / "etc" / "cluster.toml"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "docker" / "gen_config.py"), "--out", str(out)],
        env=node_env(svc, tmp_path / "certs"), capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    cfg = load_config(out)
    env = svc["environment"]
    assert cfg.cluster.vip == env["DLBA_VIP"]
    assert cfg.cluster.redis == env["DLBA_REDIS"]
    me = cfg.node(node)
    assert me.address == env["DLBA_ADDRESS"]
    assert [str(a) for a in me.listen_tls] == [f"{env['DLBA_VIP']}:443"]
    assert len(cfg.backends) == 2 and all(b.health == "/health" for b in cfg.backends)
    cfg.read_secret()
    cfg.read_admin_token()
    assert tls_context(cfg) is not None  # the generated certificate loads


def test_every_node_gets_the_same_file(compose: dict[str, Any], tmp_path: Path) -> None:
    texts = set()
    for svc in nodes(compose).values():
        out = tmp_path / f"{svc['environment']['DLBA_NODE_NAME']}.toml"
        subprocess.run(
            [sys.executable, str(ROOT / "docker" / "gen_config.py"), "--out", str(out)],
            env=node_env(svc, tmp_path / "certs"), check=True, capture_output=True, timeout=60)
        texts.add(out.read_text())
    assert len(texts) == 1  # so a pushed edit means the same on every node


def test_bad_environment_exits_2(compose: dict[str, Any], tmp_path: Path) -> None:
    env = node_env(services(compose)["n1"], tmp_path / "certs")
    env["DLBA_BACKENDS"] = "one=172.29.0.101:8080"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "docker" / "gen_config.py"), "--out",
         str(tmp_path / "c.toml")], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "DLBA_BACKENDS" in proc.stderr and not (tmp_path / "c.toml").exists()


def test_entrypoint_dry_run(compose: dict[str, Any], tmp_path: Path) -> None:
    svc = services(compose)["n2"]
    config = tmp_path / "etc" / "cluster.toml"
    env = {**node_env(svc, tmp_path / "certs"), "DLBA_DRY_RUN": "1", "DLBA_CONFIG": str(config)}
    proc = subprocess.run(["sh", str(ROOT / "docker" / "entrypoint.sh")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "would run: ip addr replace 172.28.0.100/32 dev lo" in out
    assert "net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2" in out
    assert f"would exec: dlba node --config {config} --name n2" in out
    assert load_config(config).node("n2").address == "172.28.0.12"
