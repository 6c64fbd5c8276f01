"""Compile the node's request path with mypyc into build/native/ (`make install` runs this).

The modules below are plain, type-checked Python; mypyc turns them into C extensions, which
cut the interpreter's share of a proxied request (measured in docs/NOTES.md). They are built
outside the source tree: `dlba/__init__.py` puts build/native/dlba (and each subpackage's
folder there) first on the package's paths only while build/native/manifest.json matches every
source under dlba/ byte for byte and this Python, so an edited module is never shadowed by a
stale build, and `DLBA_NATIVE=0` runs pure Python.

    python build_native.py          # from the project root, with the dev extras installed
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
OUT = ROOT / "build" / "native"
# The per-connection and per-request path; cookie_codec stays Python (its argument checks rely
# on Python's bool-is-int, which compiled code enforces differently) and costs little.
MODULES = [
    "dlba/proxy/backend_pool.py", "dlba/proxy/client_connection.py",
    "dlba/proxy/core_exchange.py", "dlba/proxy/core_framing.py", "dlba/proxy/core_io.py",
    "dlba/proxy/core_session.py", "dlba/proxy/h2_connection.py", "dlba/proxy/h2_headers.py",
    "dlba/proxy/h2_session.py", "dlba/proxy/h2_stream.py", "dlba/proxy/nghttp2_engine.py",
    "dlba/proxy/http_head.py", "dlba/proxy/http1_exchange.py", "dlba/proxy/node_stats.py",
    "dlba/proxy/proxy_context.py",
    "dlba/proxy/worker_pool.py",
    "dlba/scheduling/cookie_injection.py", "dlba/scheduling/hash_ring.py",
    "dlba/scheduling/learned_sessions.py", "dlba/scheduling/policies.py",
    "dlba/scheduling/selection.py", "dlba/scheduling/web_server_status_table.py",
    "dlba/tls/transport.py",
]


def manifest() -> dict[str, object]:
    # Every module of the package, not only the compiled ones: compiled code checks the types
    # other modules declare (a field of Config, say), so any edit makes the build stale.
    package = ROOT / "dlba"
    sources = {p.relative_to(package).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
               for p in sorted(package.rglob("*.py*")) if p.suffix in (".py", ".pyi")}
    return {"python": sys.implementation.cache_tag, "sources": sources}


def main() -> int:
    from mypyc.build import mypycify
    from setuptools import setup

    shutil.rmtree(OUT, ignore_errors=True)
    tmp = ROOT / "build" / "native-tmp"
    exts = mypycify(MODULES, opt_level="3", group_name="dlba.native", target_dir=str(tmp / "c"))
    setup(name="dlba-native", ext_modules=exts, script_args=[
        "build_ext", "--build-lib", str(OUT), "--build-temp", str(tmp / "obj"), "-q"])
    shutil.rmtree(tmp, ignore_errors=True)
    (OUT / "manifest.json").write_text(json.dumps(manifest(), indent=1) + "\n")
    print(f"native: {len(MODULES)} modules compiled into {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
