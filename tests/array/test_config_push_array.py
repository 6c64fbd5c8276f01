"""`dlba config push --state` against a namespace array made by `dlba up` (scheduler included),
over the admin API and over the redis config bus of `dlba up --redis`."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

from tests.array.array_harness import Array, dlba, running_array, wait_until

pytestmark = pytest.mark.array


def without_backend(arr: Array, backend_id: int, folder: Path | None = None) -> Path:
    """The array's own config minus one [[backends]] entry, next to it (same relative paths)
    or in an operator's `folder`, where those relative paths name nothing."""
    lines = (arr.state / "cluster.toml").read_text().splitlines(keepends=True)
    # a table runs from its header to the next header
    starts = [i for i, line in enumerate(lines) if line.startswith("[")] + [len(lines)]
    kept: list[str] = []
    for a, b in itertools.pairwise(starts):
        block = lines[a:b]
        is_it = block[0].strip() == "[[backends]]" and any(
            re.fullmatch(rf"id\s*=\s*{backend_id}\s*", line.strip()) for line in block)
        if not is_it:
            kept += block
    assert len(kept) < len(lines) - 1, "backend entry not found"
    kept = lines[:starts[0]] + kept
    path = (folder or arr.state) / "pushed.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(kept))
    return path


def versions(arr: Array) -> dict[int, int]:
    return {k: arr.admin(k, "/status")["config_version"] for k in range(1, arr.nodes + 1)}


def served_by(arr: Array, count: int = 12) -> set[str]:
    seen = set()
    for i in range(count):
        status, body = arr.request("/whoami", sport=41000 + i * 7)
        assert status == 200
        seen.add(body.decode().strip())
    return seen


def test_push_through_the_admin_api(tmp_path: Path) -> None:
    with running_array(tmp_path, nodes=3, backends=2) as arr:
        assert versions(arr) == {1: 1, 2: 1, 3: 1}
        assert served_by(arr) == {"b1", "b2"}
        bad = arr.state / "bad.toml"
        bad.write_text((arr.state / "cluster.toml").read_text() + "\n[bogus]\n")
        r = dlba("config", "push", str(bad), "--state", str(arr.state))
        assert r.returncode == 2 and "bogus" in r.stderr, r.stderr
        r = dlba("config", "push", str(without_backend(arr, 1)), "--state", str(arr.state))
        assert r.returncode == 0, r.stderr
        assert versions(arr) == {1: 2, 2: 2, 3: 2}  # the scheduler too
        assert served_by(arr) == {"b2"}
        st = dlba("status", "--json", "--state", str(arr.state))
        assert '"config_skew": false' in st.stdout


def test_an_edited_copy_pushes_from_anywhere_and_nodes_check_the_files(tmp_path: Path) -> None:
    with running_array(tmp_path, nodes=3, backends=2) as arr:
        ops = tmp_path / "operator"  # no certs/ or admin.token here: they live with the nodes
        copy = without_backend(arr, 1, ops)
        r = dlba("config", "push", str(copy), "--state", str(arr.state))
        assert r.returncode == 0, r.stderr
        assert versions(arr) == {1: 2, 2: 2, 3: 2}
        assert served_by(arr) == {"b2"}
        # files the nodes do not have: each node refuses at stage, listing every problem
        text = (arr.state / "cluster.toml").read_text().replace(
            'cert = "certs/node.pem"', 'cert = "certs/gone.pem"').replace(
            'token_file = "admin.token"', 'token_file = "gone.token"')
        bad = ops / "bad.toml"
        bad.write_text(text)
        r = dlba("config", "push", str(bad), "--state", str(arr.state))
        assert r.returncode == 2, r.stderr
        assert "aborted, every node keeps its running version" in r.stderr
        node_file = arr.state / "cluster.toml"  # where the nodes resolve relative names
        problems = [line for line in r.stderr.splitlines() if "config error" in line]
        assert problems == [
            f"dlba config push: config error: node n{k}: {node_file}: {key}: file not found: "
            f"{arr.state / name}"
            for k in (1, 2, 3)
            for key, name in (("tls.cert", "certs/gone.pem"), ("admin.token_file", "gone.token"))
        ], r.stderr
        assert versions(arr) == {1: 2, 2: 2, 3: 2}  # aborted everywhere, the running one kept
        assert served_by(arr) == {"b2"}


def test_push_through_the_redis_bus(tmp_path: Path) -> None:
    with running_array(tmp_path, nodes=3, backends=2, redis=True) as arr:
        assert served_by(arr) == {"b1", "b2"}
        # from an operator's folder: the bus needs no token, the nodes have the files
        copy = without_backend(arr, 2, tmp_path / "operator")
        r = dlba("config", "push", str(copy), "--state", str(arr.state))
        assert r.returncode == 0, r.stderr
        wait_until(lambda: versions(arr) == {1: 2, 2: 2, 3: 2}, 10, "version 2 everywhere")
        assert served_by(arr) == {"b1"}
