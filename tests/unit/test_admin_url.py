"""Where peers reach a node's admin API: worked out in Config, used by every caller."""

from __future__ import annotations

from pathlib import Path

from dlba.config import HostPort, parse_config

CONFIG = """
[cluster]
vip = "198.18.0.100"
[[nodes]]
name = "n1"
address = "198.18.0.11"
[[nodes]]
name = "n2"
address = "198.18.0.12"
admin = "0.0.0.0:9100"
[tls]
cert = "node.pem"
key = "node.key"
[[backends]]
id = 1
address = "10.0.1.101:8080"
[admin]
listen = "ADMIN"
"""


def test_the_admin_port_is_the_nodes_own_or_the_shared_listeners_and_the_host_its_address(
        tmp_path: Path) -> None:
    for listen, port in ((":9000", 9000), ("0.0.0.0:9200", 9200)):
        cfg = parse_config(CONFIG.replace("ADMIN", listen), tmp_path / "dlba.toml",
                           check_files=False)
        assert cfg.admin_endpoint(0) == HostPort("198.18.0.11", port)
        # A node's own admin listener names the port; peers still dial the node's address.
        assert cfg.admin_endpoint(1) == HostPort("198.18.0.12", 9100)
        assert cfg.admin_url(0) == f"http://198.18.0.11:{port}"
        assert cfg.admin_url(1) == "http://198.18.0.12:9100"
