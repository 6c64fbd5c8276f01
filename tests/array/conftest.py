"""Helpers for the data-plane array tests: root, the compiled BPF object, throwaway namespaces.

Every namespace made here is called `dlbat-<role>-<random>` so it can never clash with the real
array's `dlba-*` names, and is removed (with the processes started in it, killed by PID) even
when a test fails.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from scheduler.dataplane_ebpf import OBJECT_PATH

SOURCE = OBJECT_PATH.with_suffix(".c")


def require_root() -> None:
    """The array tests must run (as root, in CI): fail loudly rather than skip."""
    if os.geteuid() != 0:
        pytest.fail("array tests need root (network namespaces, BPF, tc)")


def ensure_bpf_object() -> Path:
    """`make install` compiles dlba_tc.o; rebuild here when it is missing or stale."""
    newest = max(p.stat().st_mtime for p in (SOURCE, SOURCE.with_suffix(".h")))
    if OBJECT_PATH.exists() and OBJECT_PATH.stat().st_mtime >= newest:
        return OBJECT_PATH
    clang = shutil.which("clang")
    if clang is None:
        pytest.fail("clang missing: `make install` installs it and builds dlba_tc.o")
    arch = subprocess.run(
        ["gcc", "-print-multiarch"], capture_output=True, text=True, check=False, timeout=30
    ).stdout.strip()
    cmd = [clang, "-O2", "-g", "-target", "bpf", f"-I/usr/include/{arch}"]
    res = subprocess.run(
        [*cmd, "-c", str(SOURCE), "-o", str(OBJECT_PATH)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if res.returncode != 0:
        pytest.fail(f"clang could not build {OBJECT_PATH}: {res.stderr[-2000:]}")
    return OBJECT_PATH


@pytest.fixture(scope="session")
def bpf_object() -> Path:
    require_root()
    return ensure_bpf_object()


@pytest.fixture
def netns_names() -> Iterator[dict[str, str]]:
    """Random `dlbat-` namespace names for one test; all of them are deleted afterwards."""
    require_root()
    suffix = secrets.token_hex(3)
    names = {role: f"dlbat-{role}-{suffix}" for role in ("sw", "cl", "sch", "n1", "n2")}
    try:
        yield names
    finally:
        from pyroute2 import netns

        for name in names.values():
            if name in netns.listnetns():
                netns.remove(name)
