"""A pushed config reaches the scheduler's data plane: a deny CIDR drops the client in the
kernel (counted), node weights move idle buckets; removing them restores the array."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.array.array_harness import Array, dlba, running_array, wait_until


@pytest.fixture(scope="module")
def array(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Array]:
    with running_array(tmp_path_factory.mktemp("push"), nodes=3, backends=2) as arr:
        yield arr


def push(arr: Array, edit: dict[str, str]) -> None:
    text = (arr.state / "cluster.toml").read_text()
    for old, new in edit.items():
        assert old in text
        text = text.replace(old, new, 1)
    path = arr.state / "pushed.toml"
    path.write_text(text)
    res = dlba("config", "push", str(path), "--state", str(arr.state))
    assert res.returncode == 0, res.stdout + res.stderr


def acl_drops(arr: Array) -> float:
    def call() -> str:
        req = urllib.request.Request(f"http://{arr.node_address(3)}:9000/metrics",
                                     headers={"Authorization": f"Bearer {arr.token}"})
        with urllib.request.urlopen(req, timeout=5) as r:
            return str(r.read().decode())

    for fam in text_string_to_metric_families(arr.in_client(call)):
        for s in fam.samples:
            if s.name == "dlba_dataplane_drops_total" and s.labels.get("reason") == "acl":
                return float(s.value)
    return 0.0


def test_pushed_deny_list_reaches_the_data_plane(array: Array) -> None:
    assert array.request("/whoami", 47001)[0] == 200
    version = array.admin(3, "/status")["config_version"] + 1  # whatever ran before
    push(array, {'secret_file = "certs/cluster.key"':
                 'secret_file = "certs/cluster.key"\ndeny = ["198.18.0.0/30"]'})
    wait_until(lambda: all(array.admin(k, "/status")["config_version"] == version
                           for k in (1, 2, 3)), 10, f"version {version} everywhere")
    with pytest.raises(OSError):
        array.request("/whoami", 47002, timeout=1.0)
    assert acl_drops(array) > 0
    push(array, {})  # the generated config again: no deny list
    assert array.request("/whoami", 47003)[0] == 200


def test_pushed_weights_move_idle_buckets(array: Array) -> None:
    before = array.admin(3, "/table")["assignments"].count("n1")
    push(array, {'name = "n1"\naddress = "198.18.0.11"\nweight = 100':
                 'name = "n1"\naddress = "198.18.0.11"\nweight = 300'})
    after = wait_until(
        lambda: (c := array.admin(3, "/table")["assignments"].count("n1")) > before + 800 and c,
        10, "n1 to gain idle buckets")
    assert after <= 4096 * 3 // 5 + 1
    summary = array.admin(3, "/summary")
    assert next(n for n in summary["nodes"] if n["name"] == "n1")["weight"] == 300
