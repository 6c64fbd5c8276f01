"""HTTP/2 through a real namespace array: curl --http2 in the client namespace to the VIP on
443; the connection's streams are scheduled each on its own, over the node that owns the
client's bucket, and spread over the back ends."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.array.array_harness import VIP, running_array

pytestmark = pytest.mark.array


def test_curl_http2_to_the_vip(tmp_path: Path) -> None:
    with running_array(tmp_path, nodes=2, backends=2) as arr:
        before = arr.hits()
        res = subprocess.run(
            ["ip", "netns", "exec", arr.client_ns, "curl", "-sS", "--http2",
             "--cacert", str(arr.state / "certs" / "ca.pem"),
             "-w", " %{http_version} %{num_connects}\\n", *[f"https://{VIP}/whoami"] * 8],
            capture_output=True, text=True, timeout=60, check=False)
        assert res.returncode == 0, res.stderr
        rows = [line.split() for line in res.stdout.splitlines()]
        assert len(rows) == 8 and all(r[1] == "2" for r in rows), res.stdout
        assert sum(int(r[2]) for r in rows) == 1  # one connection for the eight requests
        assert {r[0] for r in rows} == {"b1", "b2"}, res.stdout  # spread over the back ends
        served = [k for k, n in arr.hits().items() if n > before[k]]
        assert len(served) == 1  # the node owning the client's bucket served every stream
