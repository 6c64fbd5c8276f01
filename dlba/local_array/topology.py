"""The local array's network, as data: names, interfaces and addresses of the contract.

Pure description, no I/O. `netns_builder` applies a `Plan`, `config_gen` turns it into the
cluster config, `up` starts processes where it says. Every name is derived from one prefix
(`dlba-` for the real array) so tests can build a private copy (`lat1a2b-`) next to a
user's running array without touching it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

DEFAULT_PREFIX = "dlba-"
VIP = "198.18.0.100"
FRONT_NET = "198.18.0.0/24"
BACK_NET = "198.18.1.0/24"
PREFIXLEN = 24
CLIENT_ADDRESS = "198.18.0.2"
# Not in the contract's defaults: only given to the front bridge when the user asks for
# host access (`dlba up --host-access`), so a browser on this machine can open the dashboard.
HOST_ADDRESS = "198.18.0.1"
REDIS_ADDRESS = "198.18.1.2"
REDIS_PORT = 6379
BACKEND_PORT = 8080
ADMIN_PORT = 9000
VIP_HTTP_PORT = 80
VIP_TLS_PORT = 443

# Node k is .(10+k) and must stay below the VIP (.100); back end j is .(100+j) and must
# stay a host address (≤ .254).
MAX_NODES = 89
MAX_BACKENDS = 154
IFNAMSIZ = 15  # Linux interface names are at most 15 bytes


class Role(Enum):
    CLIENT = "client"
    NODE = "node"
    BACKEND = "backend"
    REDIS = "redis"


@dataclass(frozen=True)
class Endpoint:
    """One veth pair: `ifname` inside a namespace, `peer` in the root namespace on `bridge`."""

    netns: str
    ifname: str
    peer: str
    bridge: str
    address: str
    prefixlen: int = PREFIXLEN


@dataclass(frozen=True)
class Namespace:
    name: str
    role: Role
    index: int  # k for node nk, j for back end bj, 0 for client and redis
    endpoints: tuple[Endpoint, ...]
    vip_on_lo: bool
    # Applied in order inside the namespace (dotted sysctl names, as `sysctl -w` takes them).
    sysctls: tuple[tuple[str, str], ...]
    # Interface that carries the default route (on-link, no gateway), or None.
    default_dev: str | None


@dataclass(frozen=True)
class Plan:
    prefix: str
    nodes: int
    backends: int
    redis: bool
    vip: str
    front_bridge: str
    back_bridge: str
    host_address: str | None  # address of the front bridge in the root namespace, if any
    namespaces: tuple[Namespace, ...]
    # Node namespaces n(nodes+1).. built without a node process or a [[nodes]] entry: room
    # for a node to join the running array by `dlba config push`.
    spare_nodes: int = 0

    # --- names -------------------------------------------------------------------------
    @property
    def client_ns(self) -> str:
        return f"{self.prefix}client"

    @property
    def redis_ns(self) -> str:
        return f"{self.prefix}redis"

    def node_name(self, k: int) -> str:
        return f"n{k}"

    def node_ns(self, k: int) -> str:
        return f"{self.prefix}n{k}"

    def backend_name(self, j: int) -> str:
        return f"b{j}"

    def backend_ns(self, j: int) -> str:
        return f"{self.prefix}b{j}"

    @property
    def bridges(self) -> tuple[str, str]:
        return (self.front_bridge, self.back_bridge)

    def namespace(self, name: str) -> Namespace:
        for ns in self.namespaces:
            if ns.name == name:
                return ns
        raise KeyError(name)

    # --- addresses ---------------------------------------------------------------------
    def node_front(self, k: int) -> str:
        return node_front_address(k)

    def node_back(self, k: int) -> str:
        return node_back_address(k)

    def backend_address(self, j: int) -> str:
        return backend_address(j)

    def backend_endpoint(self, j: int) -> str:
        return f"{backend_address(j)}:{BACKEND_PORT}"

    def admin_url(self, k: int) -> str:
        return f"http://{node_front_address(k)}:{ADMIN_PORT}/"

    @property
    def redis_url(self) -> str:
        return f"redis://{REDIS_ADDRESS}:{REDIS_PORT}/0" if self.redis else ""


def node_front_address(k: int) -> str:
    return f"198.18.0.{10 + k}"


def node_back_address(k: int) -> str:
    return f"198.18.1.{10 + k}"


def backend_address(j: int) -> str:
    return f"198.18.1.{100 + j}"


def _node_sysctls(vip_dev: str) -> tuple[tuple[str, str], ...]:
    # arp_ignore=1: answer ARP only for addresses on the receiving interface, so the VIP on
    # `lo` stays silent. arp_announce=2: ARP requests carry the interface's own address,
    # never the VIP as sender. Both are max(all, dev), so set both. rp_filter off: frames
    # the scheduler redirects arrive with a source reachable only because of the MAC
    # rewrite, and a strict check on `front` must not drop them. ip_forward stays at the
    # new namespace's 0: a node proxies between front and back, it never routes.
    out: list[tuple[str, str]] = []
    for dev in ("all", vip_dev):
        out.append((f"net.ipv4.conf.{dev}.arp_ignore", "1"))
        out.append((f"net.ipv4.conf.{dev}.arp_announce", "2"))
    for dev in ("all", "default", vip_dev, "back"):
        out.append((f"net.ipv4.conf.{dev}.rp_filter", "0"))
    # No TIME_WAIT: a bucket that moves (its node failed) may land on a node still holding
    # the same 4-tuple in TIME_WAIT from a connection it closed first; TIME_WAIT answers the
    # moved flow with bare ACKs and re-arms itself, never a reset, so the client hangs until
    # its own timeout instead of retrying at once.
    out.append(("net.ipv4.tcp_max_tw_buckets", "0"))
    return tuple(out)


def _host(ns: str, role: Role, index: int, veth: str, bridge: str, address: str,
          default_dev: str | None = None) -> Namespace:
    """A one-interface namespace (`eth0`) on one bridge: the client, a back end, redis."""
    return Namespace(ns, role, index, (Endpoint(ns, "eth0", veth, bridge, address),),
                     vip_on_lo=False, sysctls=(), default_dev=default_dev)


def _node(prefix: str, k: int, front_br: str, back_br: str) -> Namespace:
    ns = f"{prefix}n{k}"
    return Namespace(
        ns, Role.NODE, k,
        (
            Endpoint(ns, "front", f"{prefix}n{k}f", front_br, node_front_address(k)),
            Endpoint(ns, "back", f"{prefix}n{k}b", back_br, node_back_address(k)),
        ),
        vip_on_lo=True, sysctls=_node_sysctls("front"), default_dev=None,
    )


def make_plan(
    nodes: int = 3,
    backends: int = 3,
    *,
    prefix: str = DEFAULT_PREFIX,
    redis: bool = False,
    host_access: bool = False,
    spare_nodes: int = 0,
) -> Plan:
    """The contract's topology for N nodes and M back ends; ValueError on impossible sizes."""
    if not 1 <= nodes <= MAX_NODES or not 0 <= spare_nodes <= MAX_NODES - nodes:
        raise ValueError(f"nodes (spare ones too) must be 1..{MAX_NODES}, got {nodes} + "
                         f"{spare_nodes}")
    if not 1 <= backends <= MAX_BACKENDS:
        raise ValueError(f"backends must be 1..{MAX_BACKENDS}, got {backends}")
    if not prefix or not prefix.replace("-", "").isalnum():
        raise ValueError(f"prefix must be letters, digits and '-', got {prefix!r}")
    front_br, back_br = f"{prefix}sw", f"{prefix}bk"
    # On-link default for the client: it ARPs for whatever it talks to, the VIP included,
    # like a host on the same switch as a hardware load balancer.
    spaces = [_host(f"{prefix}client", Role.CLIENT, 0, f"{prefix}ce", front_br, CLIENT_ADDRESS,
                    default_dev="eth0")]
    spaces += [_node(prefix, k, front_br, back_br) for k in range(1, nodes + spare_nodes + 1)]
    spaces += [_host(f"{prefix}b{j}", Role.BACKEND, j, f"{prefix}b{j}e", back_br,
                     backend_address(j)) for j in range(1, backends + 1)]
    if redis:
        spaces.append(_host(f"{prefix}redis", Role.REDIS, 0, f"{prefix}re", back_br,
                            REDIS_ADDRESS))
    plan = Plan(
        prefix=prefix,
        nodes=nodes,
        backends=backends,
        redis=redis,
        vip=VIP,
        front_bridge=front_br,
        back_bridge=back_br,
        host_address=HOST_ADDRESS if host_access else None,
        namespaces=tuple(spaces),
        spare_nodes=spare_nodes,
    )
    too_long = [n for n in link_names(plan) if len(n.encode()) > IFNAMSIZ]
    if too_long:
        raise ValueError(f"prefix {prefix!r} too long: {too_long[0]!r} exceeds {IFNAMSIZ} bytes")
    return plan


def link_names(plan: Plan) -> list[str]:
    """Every interface name the plan creates in the root namespace (bridges and veth peers)."""
    names = list(plan.bridges)
    names += [ep.peer for ns in plan.namespaces for ep in ns.endpoints]
    return names
