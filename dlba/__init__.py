"""DLBA: a load-balancing array in Python.

The request path can run compiled by mypyc (`build_native.py`, run by `make install`): the
compiled modules live in build/native/dlba, which goes first on the path of this package and of
each subpackage (`use_native`) only when build/native/manifest.json names this Python and the
very bytes of every module of the package, subpackages included (compiled code relies on the
types the others declare). An edited module therefore never hides
behind a stale build; the package runs as Python until the next build. `DLBA_NATIVE=0` forces
pure Python.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
NATIVE_DIR = _HERE.parent / "build" / "native"


# Python sources and stubs: compiled code relies on the types a stub (a C extension's)
# declares, so an edited stub makes the build stale too.
SOURCE_SUFFIXES = (".py", ".pyi")


def native_problem(native: Path = NATIVE_DIR, sources: Path = _HERE) -> str:
    """Why the compiled modules in `native` cannot be used for `sources` ("" when they can)."""
    if os.environ.get("DLBA_NATIVE", "1") == "0":
        return "DLBA_NATIVE=0"
    try:
        manifest = json.loads((native / "manifest.json").read_text())
    except (OSError, ValueError):
        return "not built (make install)"
    if manifest.get("python") != sys.implementation.cache_tag:
        return f"built for {manifest.get('python')}, this is {sys.implementation.cache_tag}"
    built = dict(manifest.get("sources", {}))
    added = sorted({p.relative_to(sources).as_posix() for p in sources.rglob("*.py*")
                    if p.suffix in SOURCE_SUFFIXES} - set(built))
    if added:
        return f"{added[0]} is newer than the build (make install)"
    for name, digest in built.items():
        try:
            if hashlib.sha256((sources / name).read_bytes()).hexdigest() != digest:
                return f"{name} changed since the build (make install)"
        except OSError:
            return f"{name} is missing"
    return ""


def use_native(path: list[str], package: str) -> None:
    """Put the compiled modules of `package` ("dlba.proxy") first on its `path` (its
    `__path__`) while the build matches the sources; every subpackage's __init__ calls this."""
    if NATIVE:
        path.insert(0, str(NATIVE_DIR.joinpath(*package.split("."))))


NATIVE_PROBLEM = native_problem()
NATIVE = not NATIVE_PROBLEM
use_native(__path__, __name__)
