"""The request path compiled by mypyc (build_native.py): used when built and current, never
when a source changed since the build, and not with DLBA_NATIVE=0."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dlba
from dlba import native_problem

ROOT = Path(dlba.__file__).resolve().parent.parent


def test_the_request_path_runs_compiled() -> None:
    assert dlba.NATIVE, f"compiled modules not in use: {dlba.NATIVE_PROBLEM}"
    from dlba.proxy import client_connection, core_exchange, core_session
    from dlba.scheduling import selection
    from dlba.tls import transport as tls_transport

    # one module of each subpackage that has compiled ones: each extends its own path
    for mod in (client_connection, core_exchange, core_session, selection, tls_transport):
        assert mod.__file__ is not None
        assert mod.__file__.endswith(".so") and "build/native" in mod.__file__, mod.__file__


def test_a_changed_source_is_never_shadowed_by_a_stale_build(tmp_path: Path) -> None:
    manifest = json.loads((dlba.NATIVE_DIR / "manifest.json").read_text())
    src = tmp_path / "dlba"
    src.mkdir()
    for name in manifest["sources"]:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "dlba" / name, src / name)
    assert native_problem(dlba.NATIVE_DIR, src) == ""
    # a module inside a subpackage: the manifest covers dlba/ recursively
    edited = "proxy/core_exchange.py"
    assert edited in manifest["sources"]
    with (src / edited).open("a") as f:
        f.write("\n# edited\n")
    assert native_problem(dlba.NATIVE_DIR, src) == (
        f"{edited} changed since the build (make install)")
    (src / "tls" / "new_module.py").write_text("")
    assert native_problem(dlba.NATIVE_DIR, src) == (
        "tls/new_module.py is newer than the build (make install)")
    (src / "tls" / "new_module.py").unlink()
    # a C extension's stub: compiled callers rely on the types it declares
    stub = "proxy/_nghttp2.pyi"
    assert stub in manifest["sources"]
    with (src / stub).open("a") as f:
        f.write("\n# edited\n")
    assert native_problem(dlba.NATIVE_DIR, src) == (
        f"{stub} changed since the build (make install)")
    shutil.copy(ROOT / "dlba" / stub, src / stub)
    (src / edited).unlink()
    assert native_problem(dlba.NATIVE_DIR, src) == f"{edited} is missing"
    assert native_problem(tmp_path / "nothing", src) == "not built (make install)"


def test_dlba_native_0_runs_pure_python() -> None:
    code = ("import dlba, dlba.proxy.client_connection as c; "
            "print(dlba.NATIVE, dlba.NATIVE_PROBLEM, c.__file__)")
    env = {**os.environ, "DLBA_NATIVE": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, timeout=60).stdout.split()
    assert out[0] == "False" and out[1] == "DLBA_NATIVE=0"
    assert out[2] == str(ROOT / "dlba" / "proxy" / "client_connection.py")
