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
from dlba.proxy.sockets import tls_context

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
    assert "redis" in svcs
    assert svcs["redis"]["build"]["dockerfile"] == "redis.Dockerfile"
    assert len(nodes(compose)) >= 3
    redis_ip = svcs["redis"]["networks"]["front"]["ipv4_address"]
    for svc in nodes(compose).values():
        assert svc["environment"]["DLBA_REDIS"] == f"redis://{redis_ip}:6379/0"


def test_no_registry_image(compose: dict[str, Any]) -> None:
    # No registry is reachable: every image is built here, FROM the debootstrap base, each once.
    svcs = services(compose)
    built = {svc["image"]: svc["build"] for svc in svcs.values() if "build" in svc}
    assert set(built) == {"dlba:latest", "dlba-redis:latest"}
    for name, svc in svcs.items():
        assert svc["image"] in built, name
        assert "build" in svc or svc["pull_policy"] == "never", name
    for image, build in built.items():
        assert build["network"] == "host", image  # dockerd may run without iptables (no NAT)
        assert build["args"]["BASE"].startswith("${DLBA_BASE_IMAGE:-dlba-base:"), image
        dockerfile = ROOT / build["context"] / build.get("dockerfile", "Dockerfile")
        froms = [line.split()[1] for line in dockerfile.read_text().splitlines()
                 if line.startswith("FROM ")]
        assert froms and all(f == "${BASE}" for f in froms), (image, froms)


def test_nodes_have_the_capabilities_and_sysctls(compose: dict[str, Any]) -> None:
    for name, svc in nodes(compose).items():
        caps = set(svc["cap_add"])
        assert {"NET_ADMIN", "NET_RAW"} <= caps, name
        # loading a tc BPF program: Docker 20.10 refuses BPF and PERFMON by name, SYS_ADMIN
        # covers them; a memlock ulimit is refused by an engine without CAP_SYS_RESOURCE
        assert "SYS_ADMIN" in caps and not {"BPF", "PERFMON"} & caps, name
        assert "ulimits" not in svc, name
        sysctls = {k: int(v) for k, v in svc["sysctls"].items()}
        for scope in ("all", "default"):
            assert sysctls[f"net.ipv4.conf.{scope}.arp_ignore"] == 1
            assert sysctls[f"net.ipv4.conf.{scope}.arp_announce"] == 2
        check = " ".join(svc["healthcheck"]["test"])
        assert "/healthz" in check and ":9000" in check
        # a killed node process is a crash (PID 1 is docker-init), restarted by the policy
        assert svc["init"] is True and svc["restart"] == "unless-stopped", name


def test_every_address_is_fixed_and_outside_the_dynamic_range(compose: dict[str, Any]) -> None:
    used: dict[str, set[ipaddress.IPv4Address]] = {}
    for name, svc in services(compose).items():
        nets = svc.get("networks")
        if svc.get("network_mode") == "none":
            assert nets is None, name
            continue
        assert isinstance(nets, dict), f"{name}: a dynamic address could take a fixed one"
        for net, spec in nets.items():
            ip = ipaddress.IPv4Address(spec["ipv4_address"])
            assert ip not in used.setdefault(net, set()), (name, net, ip)
            used[net].add(ip)
    for net, addresses in used.items():
        (ipam,) = compose["networks"][net]["ipam"]["config"]
        assert compose["networks"][net]["internal"] is True, net
        dynamic = ipaddress.IPv4Network(ipam["ip_range"])
        assert dynamic.subnet_of(ipaddress.IPv4Network(ipam["subnet"]))
        assert not any(a in dynamic for a in addresses), net
        vip = ipaddress.IPv4Address(next(iter(nodes(compose).values()))["environment"]["DLBA_VIP"])
        assert vip not in dynamic


def test_backends_wait_on_nothing(compose: dict[str, Any]) -> None:
    for name, svc in services(compose).items():
        if "demo-backend" in svc.get("entrypoint", []):
            assert "depends_on" not in svc, name


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
    assert "ticket_cb.so" in text  # and the TLS ticket callback
    assert os.access(ROOT / "docker" / "entrypoint.sh", os.X_OK)


def test_dockerfile_runs_from_a_slim_stage() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = text.split("\nFROM ")
    assert len(stages) == 3 and stages[1].startswith("${BASE} AS build")
    build, run = stages[1], stages[2]
    assert "clang" in build and "mypy" in build and "build_native.py" in build
    for tool in ("clang", "llvm", "gcc", "python3-dev", "libbpf-dev", "mypy"):
        assert tool not in run, tool
    assert "COPY --from=build /opt/venv /opt/venv" in run


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


def fake_proc_sys(root: Path, values: dict[str, tuple[int, int]]) -> Path:
    """A /proc/sys/net/ipv4/conf tree: interface -> (arp_ignore, arp_announce)."""
    for dev, (ignore, announce) in values.items():
        d = root / "net" / "ipv4" / "conf" / dev
        d.mkdir(parents=True)
        (d / "arp_ignore").write_text(f"{ignore}\n")
        (d / "arp_announce").write_text(f"{announce}\n")
    return root


def run_entrypoint(compose: dict[str, Any], tmp_path: Path,
                   conf: dict[str, tuple[int, int]]) -> subprocess.CompletedProcess[str]:
    svc = services(compose)["n2"]
    env = {**node_env(svc, tmp_path / "certs"), "DLBA_DRY_RUN": "1",
           "DLBA_CONFIG": str(tmp_path / "etc" / "cluster.toml"),
           "DLBA_PROC_SYS": str(fake_proc_sys(tmp_path / "sys", conf))}
    return subprocess.run(["sh", str(ROOT / "docker" / "entrypoint.sh")], env=env,
                          capture_output=True, text=True, timeout=60)


def test_entrypoint_dry_run(compose: dict[str, Any], tmp_path: Path) -> None:
    # `all` set as compose sets it: the interfaces' own zeros do not matter (max of the two)
    proc = run_entrypoint(compose, tmp_path, {
        "all": (1, 2), "default": (1, 2), "lo": (0, 0), "eth0": (0, 0), "eth1": (0, 0)})
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    config = tmp_path / "etc" / "cluster.toml"
    assert "would run: ip addr replace 172.28.0.100/32 dev lo" in out
    assert "net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2" in out
    assert f"would exec: dlba node --config {config} --name n2" in out
    assert load_config(config).node("n2").address == "172.28.0.12"


@pytest.mark.parametrize("conf", [
    {"all": (0, 0), "eth0": (1, 2), "eth1": (0, 2)},  # eth1's kernel would answer
    {"all": (1, 0), "eth0": (0, 0)},  # it would ask with the VIP as sender
])
def test_entrypoint_refuses_a_kernel_that_could_answer_for_the_vip(
    compose: dict[str, Any], tmp_path: Path, conf: dict[str, tuple[int, int]],
) -> None:
    proc = run_entrypoint(compose, tmp_path, conf)
    assert proc.returncode == 2
    assert "refusing to start" in proc.stderr and "172.28.0.100" in proc.stderr
    assert "would run: ip addr replace" not in proc.stdout
    assert "would exec" not in proc.stdout


def test_the_compose_check_leaves_the_host_forwarding_alone() -> None:
    # The namespace array tests after it need ip_forward, the FORWARD policy and br_netfilter
    # as they were: the dockerd it starts must not touch them, and it puts them back anyway.
    script = ROOT / "docker" / "test-compose.sh"
    assert subprocess.run(["bash", "-n", str(script)], timeout=30).returncode == 0
    text = script.read_text()
    for flag in ("--iptables=false", "--ip-forward=false", "--bridge=none"):
        assert flag in text, flag
    for saved in ("ip_forward", "bridge-nf-call-iptables", "-P FORWARD", "trap cleanup EXIT"):
        assert saved in text, saved
    make = subprocess.run(["make", "-n", "test-compose"], cwd=ROOT, capture_output=True,
                          text=True, timeout=30)
    assert make.returncode == 0 and "docker/test-compose.sh" in make.stdout
