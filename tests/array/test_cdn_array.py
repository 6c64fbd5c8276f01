"""CDN offload on a real namespace array: with [cdn] pushed to every node, objects requested
through the VIP from client ports whose buckets belong to different nodes are each sampled by
one node only, yet every node ends up holding the same choice (the scheduler decides from every
node's figures), and pages through the VIP come back rewritten whichever node serves them."""

from __future__ import annotations

from pathlib import Path

import pytest

from dlba.demo_site import OBJECTS
from tests.array.array_harness import Array, dlba, running_array, wait_until

pytestmark = pytest.mark.array

CDN = "https://cdn.array.test"


def _choices(arr: Array) -> dict[int, tuple[str, frozenset[str]]]:
    out = {}
    for k in range(1, arr.nodes + 1):
        view = arr.admin(k, "/cdn")
        out[k] = (view["version"], frozenset(o["path"] for o in view["objects"]))
    return out


def test_choice_converges_on_every_node(tmp_path: Path) -> None:
    with running_array(tmp_path, nodes=3, backends=2) as arr:
        pushed = arr.state / "cdn.toml"
        pushed.write_text((arr.state / "cluster.toml").read_text()
                          + f'\n[cdn]\nenabled = true\nbase = "{CDN}"\nsample = 1.0\n')
        r = dlba("config", "push", str(pushed), "--state", str(arr.state))
        assert r.returncode == 0, r.stderr
        before = arr.hits()
        # One object per client port: each object is seen by the node owning its bucket only.
        for i, name in enumerate(OBJECTS):
            for j in range(3):
                status, _ = arr.request(f"/static/{name}", sport=43000 + i * 31 + j * 7)
                assert status == 200
        served = {k for k, n in arr.hits().items() if n > before[k]}
        assert len(served) >= 2, "the objects' traffic should have crossed several nodes"

        want = frozenset(f"/static/{n}" for n in OBJECTS)

        def converged() -> bool:
            c = _choices(arr)
            return all(paths == want for _, paths in c.values()) and len(
                {v for v, _ in c.values()}) == 1

        wait_until(converged, 10, "every node to hold the same choice of every object")
        for i in range(6):  # pages through the VIP, whichever node serves them
            status, body = arr.request("/page", sport=44000 + i * 17)
            assert status == 200
            assert f'src="{CDN}/static/app.js"'.encode() in body, body[:300]
