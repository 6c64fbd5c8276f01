"""A config as one node sees it: the parser's problems plus what only that machine can check.

The files a config names (cluster secret, admin token, certificates) live on the nodes, and
relative names resolve next to the node's own config file. So a node checks them when it
starts and when it stages a push, and a pusher working on a copy elsewhere does not. Every
problem comes back together (ConfigErrors), one file/key/reason each.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from dlba.config import Config, ConfigError, ConfigErrors, collect_config
from dlba.config.reader import Problems
from dlba.proxy.sockets import tls_context
from dlba.tls.context import server_context


def tls_problems(cfg: Config) -> list[ConfigError]:
    """The certificates and keys load (and match); each pair named by its own key."""
    problems = Problems(str(cfg.path))
    pairs = [("tls.cert", cfg.tls.cert, cfg.tls.key)]
    pairs += [(f"tls.sni[{i}].cert", s.cert, s.key) for i, s in enumerate(cfg.tls.sni)]
    for key, cert, private in pairs:
        if cert is None or private is None:
            continue
        try:
            server_context(cert, private)
        except (ssl.SSLError, OSError, ValueError) as e:
            problems.add(key, f"cannot load {cert} with {private}: {e}")
    if not problems.items:
        try:
            tls_context(cfg)  # the whole context, SNI selection included
        except (ssl.SSLError, OSError, ValueError) as e:
            problems.add("tls.cert", f"cannot load: {e}")
    return problems.items


def node_problems(cfg: Config, name: str, earlier: list[ConfigError]) -> list[ConfigError]:
    """This node's own checks on a config that parsed with the `earlier` problems."""
    out: list[ConfigError] = []
    keys = {p.key for p in earlier}
    for key, path in (("cluster.secret_file", cfg.cluster.secret_file),
                      ("admin.token_file", cfg.admin.token_file)):
        if path is None and key not in keys:  # a node signs cookies and guards its admin API
            out.append(ConfigError(str(cfg.path), key, "not set"))
    if not any(p.key == "nodes" or p.key.startswith("nodes[") for p in earlier):
        try:
            cfg.node(name)  # a bad [[nodes]] entry is left out: do not also say "no node"
        except ConfigError as e:
            out.append(e)
    if not any(p.key.startswith("tls.") for p in earlier):
        out += tls_problems(cfg)
    return out


def parse_node_config(text: str, path: Path, name: str) -> Config:
    """The config node `name` can run, `path` being where its relative names resolve;
    raises ConfigErrors with every problem."""
    cfg, problems = collect_config(text, path, check_files=True)
    if cfg is not None:
        problems = problems + node_problems(cfg, name, problems)
    if problems or cfg is None:
        raise ConfigErrors(problems)
    return cfg


def load_node_config(path: str | Path, name: str) -> Config:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(str(path), "-", f"cannot read: {e.strerror}") from e
    return parse_node_config(text, path, name)
