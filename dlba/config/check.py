"""`dlba config check FILE [--name NAME]`: validate a config without applying it.

Like `haproxy -c` / `nginx -t`: the parser's problems and the node-side ones (the files the
config names exist, certificates and keys load and match), every problem on its own line,
`file: key: reason`. With `--name` the node's own entry must be there too; without it every
node's view is checked except that one lookup. Exit 0 with one "ok" line, 2 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dlba.config import ConfigError, collect_config
from dlba.config.node_files import node_problems, tls_problems


def check_problems(text: str, path: Path, name: str | None = None) -> list[ConfigError]:
    """Every problem a node would find in this config (node `name`'s, when given)."""
    cfg, problems = collect_config(text, path, check_files=True)
    if cfg is None:
        return problems
    if name is not None:
        return problems + node_problems(cfg, name, problems)
    keys = {p.key for p in problems}
    extra: list[ConfigError] = []
    for key, file in (("cluster.secret_file", cfg.cluster.secret_file),
                      ("admin.token_file", cfg.admin.token_file)):
        if file is None and key not in keys:  # every node signs cookies and guards its admin API
            extra.append(ConfigError(str(path), key, "not set"))
    if not any(k.startswith("tls.") for k in keys):
        extra += tls_problems(cfg)
    return problems + extra


def check_file(path: Path, name: str | None = None) -> list[ConfigError]:
    try:
        text = path.read_text()
    except OSError as e:
        return [ConfigError(str(path), "-", f"cannot read: {e.strerror or e}")]
    return check_problems(text, path, name)


def config_check_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="dlba config check",
        description="Validate a config file without applying it: syntax, values and the files "
                    "it names (secret, token, certificates), as a node would. Prints every "
                    "problem as `file: key: reason`; exit 0 when valid, 2 otherwise.")
    p.add_argument("file", type=Path, help="the config file (TOML)")
    p.add_argument("--name", help="check it as this node's config (its [[nodes]] entry must "
                                  "exist)")
    try:
        args = p.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    problems = check_file(args.file, args.name)
    for prob in problems:
        print(f"{prob.file}: {prob.key}: {prob.reason}", file=sys.stderr)
    if problems:
        return 2
    print(f"{args.file}: ok")
    return 0
