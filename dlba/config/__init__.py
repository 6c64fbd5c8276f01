"""The array's configuration: the model (`model`), reading the file (`sections`, `reader`),
checks where the node runs (`node_files`), `dlba config push` (`push`), the redis bus (`bus`)
and the node's live reload (`reload`).

`from dlba.config import Config, load_config, ...` is the public way in.
"""

from dlba import use_native
from dlba.config.model import (
    POLICIES,
    AdminConfig,
    BackendConfig,
    ClusterConfig,
    Config,
    NodeConfig,
    PersistenceConfig,
    PortRule,
    ProxyConfig,
    SchedulingConfig,
    TlsConfig,
)
from dlba.config.reader import ConfigError, ConfigErrors, HostPort, parse_host_port
from dlba.config.sections import collect_config, load_config, parse_config
from dlba.config.sni_cert import SniCert

__all__ = [
    "POLICIES", "AdminConfig", "BackendConfig", "ClusterConfig", "Config", "ConfigError",
    "ConfigErrors", "HostPort", "NodeConfig", "PersistenceConfig", "PortRule", "ProxyConfig",
    "SchedulingConfig", "SniCert", "TlsConfig", "collect_config", "load_config", "parse_config",
    "parse_host_port",
]

use_native(__path__, __name__)
