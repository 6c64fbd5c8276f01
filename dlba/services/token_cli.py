"""`dlba class-token CLASS --ttl S`: a signed class token for a client (dlba/services/tokens.py).

The token is made with the cluster secret of the config (or `--secret-file`), so every node of
the array accepts it; with `--config` the class must exist and be a token class."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from dlba.services.runtime import TOKEN_COOKIE, TOKEN_HEADER
from dlba.services.tokens import make_token


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dlba class-token",
        description="Print a class token signed with the cluster secret. A client sends it in "
                    f"the {TOKEN_HEADER.decode().title()} header or the {TOKEN_COOKIE} cookie "
                    "to be served as CLASS (a [[classes]] entry with token = true).")
    p.add_argument("name", metavar="CLASS", help="the class the token names")
    p.add_argument("--ttl", type=float, default=3600.0,
                   help="seconds the token stays valid (default 3600)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", type=Path,
                     help="the array's config: its cluster secret, and a check that CLASS is a "
                          "token class")
    src.add_argument("--secret-file", type=Path,
                     help="the cluster secret file itself (as `dlba certs init` makes)")
    return p


def class_token_main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.ttl <= 0:
        print("dlba class-token: --ttl must be positive", file=sys.stderr)
        return 2
    from dlba.config import ConfigError, load_config

    try:
        if args.config is not None:
            cfg = load_config(args.config, check_files=False)
            cls = next((c for c in cfg.classes if c.name == args.name), None)
            if cls is None or not cls.token:
                print(f"dlba class-token: {args.config}: no [[classes]] entry {args.name!r} "
                      "with token = true", file=sys.stderr)
                return 2
            secret = cfg.read_secret()
        else:
            text = args.secret_file.read_text().strip()
            try:
                secret = bytes.fromhex(text)
            except ValueError:
                secret = text.encode()
        token = make_token(secret, args.name, int(time.time() + args.ttl))
    except (ConfigError, OSError, ValueError) as e:
        print(f"dlba class-token: {e}", file=sys.stderr)
        return 2
    print(token)
    return 0
