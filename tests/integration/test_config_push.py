"""`dlba config push` against real nodes on loopback: all or nothing, and hot reload under load."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from rich.console import Console

from dlba.admin.status_cli import gather, render
from dlba.config.push import push_main
from dlba.tls import context as tls
from dlba.tls.certs import init_certs
from tests.integration.config_array import Backend, Ports, config_array
from tests.integration.loopback import free_port

DLBA = [sys.executable, "-m", "dlba"]


async def push(path: Path, *extra: str) -> int:
    # push_main is a blocking CLI (urllib); the nodes share this event loop.
    return await asyncio.to_thread(push_main, [str(path), *extra])


async def test_push_commits_on_every_node(tmp_path: Path) -> None:
    async with config_array(tmp_path) as arr:
        assert await arr.versions() == {"n1": 1, "n2": 1, "n3": 1}
        assert await arr.whoami("n1") <= {"b1", "b2"}
        text = arr.render([arr.backend(3, "b3")], policy="weighted_rr")
        assert await push(arr.push_file(text)) == 0
        assert await arr.versions() == {"n1": 2, "n2": 2, "n3": 2}
        for name in arr.names:
            assert await arr.whoami(name) == {"b3"}
            assert arr.nodes[name].ctx.selector.scheduling.policy == "weighted_rr"
        # a second push takes the next version everywhere
        assert await push(arr.push_file(arr.render([arr.backend(4, "b4")]))) == 0
        assert await arr.versions() == {"n1": 3, "n2": 3, "n3": 3}
        doc = await asyncio.to_thread(
            gather, [arr.admin_url(n) for n in arr.names], arr.token)
        assert doc["config_skew"] is False


async def test_invalid_config_exits_2_and_changes_nothing(tmp_path: Path) -> None:
    async with config_array(tmp_path) as arr:
        bad = arr.push_file(arr.render([arr.backend(3, "b3")], policy="fastest"))
        proc = await asyncio.create_subprocess_exec(
            *DLBA, "config", "push", str(bad), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 2, err
        lines = err.decode().strip().splitlines()
        assert len(lines) == 1
        assert str(bad) in lines[0] and "scheduling.policy" in lines[0] and "fastest" in lines[0]
        assert await arr.versions() == {"n1": 1, "n2": 1, "n3": 1}
        assert await arr.whoami("n2") <= {"b1", "b2"}


async def test_one_node_cannot_stage_so_nobody_commits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    async with config_array(tmp_path) as arr:
        other = init_certs(tmp_path / "other", ["localhost"], ["127.0.0.1"])
        # the new certificate reaches n1 and n2 but not n3
        arr.add_file("certs2/node.pem", other.node_cert, ["n1", "n2"])
        arr.add_file("certs2/node.key", other.node_key, ["n1", "n2"])
        text = arr.render([arr.backend(3, "b3")], tls_cert="certs2/node.pem",
                          tls_key="certs2/node.key")
        path = arr.push_file(text)
        code = await push(path)
        err = capsys.readouterr().err
        assert code == 2  # refused for what the config says: a config error
        assert "node n3" in err and "tls.cert" in err and "aborted" in err
        assert await arr.versions() == {"n1": 1, "n2": 1, "n3": 1}
        for name in arr.names:
            assert arr.nodes[name].reloader.staged is None, name  # aborted everywhere
            assert await arr.whoami(name) <= {"b1", "b2"}


def elsewhere(root: Path, text: str) -> Path:
    """An operator's copy in a folder of its own, without the files the config names."""
    d = root / "elsewhere" / "edits"
    d.mkdir(parents=True, exist_ok=True)
    path = d / "my-cluster.toml"
    path.write_text(text)
    return path


SNI = ('[[tls.sni]]\nnames = ["shop.test"]\ncert = "certs/shop.pem"\n'
       'key = "certs/shop.key"\n')


async def test_a_copy_elsewhere_pushes_when_the_nodes_have_the_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    async with config_array(tmp_path) as arr:
        copy = elsewhere(tmp_path, arr.render([arr.backend(3, "b3")]))
        assert not (copy.parent / "certs").exists()
        # the token file lives on the nodes too: the pusher says how to give it
        assert await push(copy) == 2
        err = capsys.readouterr().err
        assert "admin.token_file" in err and "--token" in err and "secret_file" not in err
        assert await push(copy, "--token", arr.token) == 0, capsys.readouterr().err
        assert await arr.versions() == {"n1": 2, "n2": 2, "n3": 2}
        for name in arr.names:
            assert await arr.whoami(name) == {"b3"}


async def test_a_file_one_node_lacks_is_refused_by_that_node_at_stage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    async with config_array(tmp_path) as arr:
        for name in ("n1", "n2"):  # n3 lacks the SNI certificate; so does the pusher's folder
            for ext, src in (("pem", arr.certs.node_cert), ("key", arr.certs.node_key)):
                shutil.copy(src, arr.node_dir(name) / "certs" / f"shop.{ext}")
        text = arr.render([arr.backend(3, "b3")]).replace("[persistence]", SNI + "[persistence]")
        code = await push(elsewhere(tmp_path, text), "--token", arr.token)
        err = capsys.readouterr().err
        assert code == 2, err
        assert "node n3" in err and "aborted" in err
        n3 = arr.node_dir("n3")
        # resolved where n3 runs, each named by file and key
        problems = [line for line in err.splitlines() if "config error" in line]
        assert problems == [
            f"dlba config push: config error: node n3: {n3 / 'cluster.toml'}: tls.sni[0].cert: "
            f"file not found: {n3 / 'certs' / 'shop.pem'}",
            f"dlba config push: config error: node n3: {n3 / 'cluster.toml'}: tls.sni[0].key: "
            f"file not found: {n3 / 'certs' / 'shop.key'}",
        ], err
        assert await arr.versions() == {"n1": 1, "n2": 1, "n3": 1}
        for name in arr.names:
            assert arr.nodes[name].reloader.staged is None, name  # aborted everywhere
            assert await arr.whoami(name) <= {"b1", "b2"}
        # once n3 has the files too, the same copy goes through
        for ext, src in (("pem", arr.certs.node_cert), ("key", arr.certs.node_key)):
            shutil.copy(src, n3 / "certs" / f"shop.{ext}")
        assert await push(elsewhere(tmp_path, text), "--token", arr.token) == 0
        assert await arr.versions() == {"n1": 2, "n2": 2, "n3": 2}


async def test_a_refused_config_lists_every_problem(tmp_path: Path) -> None:
    async with config_array(tmp_path) as arr:
        good = arr.render([arr.backend(3, "b3")])
        # three problems the pusher sees itself
        bad = elsewhere(tmp_path, good.replace('policy = "least_conn"', 'policy = "fastest"')
                        .replace("id = 3", "id = 0") + "\n[bogus]\nx = 1\n")
        proc = await asyncio.create_subprocess_exec(
            *DLBA, "config", "push", str(bad), "--token", arr.token,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 2, err
        lines = err.decode().strip().splitlines()
        assert [line.split(": ")[3] for line in lines] == [
            "scheduling.policy", "backends[0].id", "bogus"], lines
        assert all(line.startswith(f"dlba config push: config error: {bad}: ") for line in lines)
        # two only the nodes can see: each node's stage answer lists both
        text = good.replace('cert = "certs/node.pem"', 'cert = "certs/gone.pem"').replace(
            'token_file = "certs/admin.token"', 'token_file = "certs/gone.token"')
        answer = await arr.admin("n2", "/config?stage=1&version=2", "PUT", text)
        n2 = arr.node_dir("n2") / "cluster.toml"
        assert [(p["file"], p["key"]) for p in answer["problems"]] == [
            (str(n2), "tls.cert"), (str(n2), "admin.token_file")], answer
        assert all("file not found" in p["reason"] for p in answer["problems"])
        assert answer["error"].splitlines() == [
            f"{p['file']}: {p['key']}: {p['reason']}" for p in answer["problems"]]
        assert arr.nodes["n2"].reloader.staged is None
        assert await arr.versions() == {"n1": 1, "n2": 1, "n3": 1}


async def test_a_down_node_fails_the_push(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    async with config_array(tmp_path, start=["n1", "n2"]) as arr:
        code = await push(arr.push_file(arr.render([arr.backend(3, "b3")])))
        assert code == 1
        assert "unreachable" in capsys.readouterr().err
        for name in ("n1", "n2"):
            status = await arr.admin(name, "/status")
            assert status["config_version"] == 1
            assert arr.nodes[name].reloader.staged is None


async def test_commit_refuses_another_push_s_text(tmp_path: Path) -> None:
    async with config_array(tmp_path, n_nodes=1) as arr:
        # pusher A stages version 2, pusher B stages its own version 2 over it
        text_a = arr.render([arr.backend(3, "b3")])
        text_b = arr.render([arr.backend(4, "b4")])
        a = await arr.admin("n1", "/config?stage=1&version=2", "PUT", text_a)
        b = await arr.admin("n1", "/config?stage=1&version=2", "PUT", text_b)
        assert a["digest"] != b["digest"]
        # A's commit names A's text: refused, nothing changes; B's goes through
        r = await arr.admin("n1", "/config/commit", "POST",
                            json.dumps({"version": 2, "digest": a["digest"]}))
        assert "another push" in r["error"]
        assert (await arr.versions()) == {"n1": 1}
        r = await arr.admin("n1", "/config/commit", "POST",
                            json.dumps({"version": 2, "digest": b["digest"]}))
        assert r["config_version"] == 2
        assert await arr.whoami("n1") == {"b4"}


async def test_status_shows_version_skew(tmp_path: Path) -> None:
    async with config_array(tmp_path) as arr:
        # a node changed by hand (PUT /config without stage: stage + commit on that node only)
        text = arr.render([arr.backend(1, "b1")])
        r = await arr.admin("n2", "/config?version=5", "PUT", text)
        assert r["config_version"] == 5
        doc = await asyncio.to_thread(
            gather, [arr.admin_url(n) for n in arr.names], arr.token)
        assert doc["config_versions"] == {"n1": 1, "n2": 5, "n3": 1}
        assert doc["config_skew"] is True
        console = Console(record=True, width=200)
        render(doc, console)
        text_out = console.export_text()
        assert "config version skew: newest 5, behind: n1=1, n3=1" in text_out
        # the next push takes the array past the skew: version 6 everywhere
        assert await push(arr.push_file(arr.render([arr.backend(2, "b2")]))) == 0
        assert await arr.versions() == {"n1": 6, "n2": 6, "n3": 6}


async def test_hot_reload_under_load_drops_nothing(tmp_path: Path) -> None:
    async with config_array(tmp_path, n_nodes=2, initial=(1, 2, 3)) as arr:
        b = arr.backend
        plans: list[tuple[list[Backend], str, str]] = [
            ([b(1, "b1"), b(2, "b2"), b(3, "b3"), b(4, "b4")], "least_conn", "DLBASERVER"),
            ([b(1, "b1", "weight = 10"), b(2, "b2"), b(4, "b4")], "weighted_rr", "DLBASERVER"),
            ([b(2, "b2"), b(4, "b4", "weight = 300")], "response_time", "DLBASERVER"),
            ([b(1, "b1"), b(2, "b2", "enabled = false"), b(4, "b4")], "p2c", "LB"),
            ([b(3, "b3")], "url_hash", "LB"),
            ([b(1, "b1"), b(3, "b3"), b(4, "b4", "enabled = false")], "least_conn", "LB"),
            ([b(2, "b2", "weight = 1"), b(3, "b3", "weight = 50")], "weighted_rr", "SRV"),
            ([b(1, "b1"), b(2, "b2"), b(3, "b3"), b(4, "b4")], "p2c", "SRV"),
            ([b(4, "b4")], "response_time", "DLBASERVER"),
            ([b(1, "b1"), b(2, "b2")], "least_conn", "DLBASERVER"),
        ]
        total, clients = 2000, 8
        results: list[tuple[int, str]] = []
        failures: list[str] = []
        done = asyncio.Event()

        async def client(k: int) -> None:
            node = arr.names[k % len(arr.names)]
            # keep-alive: the client connection lives across every reload
            # a request stuck behind a reload is a failure too, not just an error status
            timeout = aiohttp.ClientTimeout(total=5)
            async with aiohttp.ClientSession(timeout=timeout) as s:
                for i in range(total // clients):
                    # slow ones are in flight at the back end when a push removes it
                    path = ("/login" if i % 10 == 0 else "/slow?ms=40" if i % 3 == 0
                            else f"/bytes/{512 + i}")
                    try:
                        async with s.get(arr.url(node) + path) as r:
                            body = await r.read()
                            results.append((r.status, r.headers.get("X-Backend", "")))
                            short = path.startswith("/bytes/") and len(body) != 512 + i
                            if r.status != 200 or short:
                                failures.append(f"{path}: {r.status} {body[:80]!r}")
                    except (aiohttp.ClientError, TimeoutError) as e:
                        failures.append(f"{path}: {e!r}")

        async def pusher() -> None:
            for backends, policy, cookie in plans:
                await asyncio.sleep(0.05)
                text = arr.render(backends, policy=policy, cookie=cookie)
                assert await push(arr.push_file(text)) == 0
            done.set()

        await asyncio.wait_for(
            asyncio.gather(pusher(), *(client(k) for k in range(clients))), 120)
        assert done.is_set()
        assert failures == []
        assert len(results) == total
        assert await arr.versions() == {"n1": 11, "n2": 11}
        # the pushes really landed while traffic flowed: several back ends served
        assert len({be for _, be in results}) >= 3
        for name in arr.names:
            assert await arr.whoami(name, 8) <= {"b1", "b2"}


async def slow_backend(delay: float) -> tuple[web.AppRunner, int]:
    async def slow(_: web.Request) -> web.Response:
        await asyncio.sleep(delay)
        return web.Response(text="slow done", headers={"X-Backend": "slow"})

    app = web.Application()
    app.router.add_get("/slow", slow)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, int(runner.addresses[0][1])


def peer_cert(port: int, ca: Path) -> bytes:
    ctx = tls.client_context(ca)
    ctx.check_hostname = False
    with socket.create_connection(("127.0.0.1", port), 5) as raw, \
            ctx.wrap_socket(raw) as s:
        der = s.getpeercert(binary_form=True)
        assert der is not None
        return der


def resumes(port: int, ca: Path) -> bool:
    """A second connection offers the first one's session: was it resumed?"""
    ctx = tls.client_context(ca)
    ctx.check_hostname = False
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2  # the session is known after the handshake
    with socket.create_connection(("127.0.0.1", port), 5) as raw, ctx.wrap_socket(raw) as s:
        session = s.session
    with socket.create_connection(("127.0.0.1", port), 5) as raw, \
            ctx.wrap_socket(raw, session=session) as s2:
        return bool(s2.session_reused)


async def test_listener_change_keeps_an_inflight_request(tmp_path: Path) -> None:
    async with config_array(tmp_path, n_nodes=1) as arr:
        runner, port = await slow_backend(1.5)
        try:
            slow = Backend(9, f"127.0.0.1:{port}")
            assert await push(arr.push_file(arr.render([slow]))) == 0
            old, new = arr.ports["n1"], Ports(free_port(), free_port(), free_port())
            async with aiohttp.ClientSession() as s:
                inflight = asyncio.ensure_future(s.get(f"http://127.0.0.1:{old.http}/slow"))
                await asyncio.sleep(0.3)  # the request is at the back end now
                # the file names the new admin address: reach the node where it is now
                moved = arr.push_file(arr.render([slow], ports={"n1": new}))
                assert await push(moved, "--admin", arr.admin_url("n1")) == 0
                r = await asyncio.wait_for(inflight, 10)
                assert r.status == 200 and await r.text() == "slow done"
                r.release()
            arr.ports["n1"] = new  # the admin API moved too
            assert (await arr.admin("n1", "/status"))["config_version"] == 3
            async with aiohttp.ClientSession() as s, \
                    s.get(f"http://127.0.0.1:{new.http}/slow") as r2:
                assert r2.status == 200
            with pytest.raises(aiohttp.ClientConnectionError):
                async with aiohttp.ClientSession() as s, \
                        s.get(f"http://127.0.0.1:{old.http}/slow"):
                    pass
            # TLS moved to the new port as well, with the same certificate
            der = await asyncio.to_thread(peer_cert, new.https, arr.certs.ca_cert)
            assert der == ssl.PEM_cert_to_DER_cert(arr.certs.node_cert.read_text())
        finally:
            await runner.cleanup()


async def test_certificate_change_serves_the_new_cert(tmp_path: Path) -> None:
    async with config_array(tmp_path, n_nodes=1) as arr:
        https = arr.ports["n1"].https
        before = await asyncio.to_thread(peer_cert, https, arr.certs.ca_cert)
        other = init_certs(tmp_path / "other", ["localhost"], ["127.0.0.1"])
        arr.add_file("certs2/node.pem", other.node_cert, ["n1"])
        arr.add_file("certs2/node.key", other.node_key, ["n1"])
        for round_ in range(2):  # first swap reopens on the switching context, then in place
            cert = "certs2/node.pem" if round_ == 0 else "certs/node.pem"
            key = "certs2/node.key" if round_ == 0 else "certs/node.key"
            text = arr.render([arr.backend(1, "b1")], tls_cert=cert, tls_key=key)
            assert await push(arr.push_file(text)) == 0
            ca = other.ca_cert if round_ == 0 else arr.certs.ca_cert
            got = await asyncio.to_thread(peer_cert, https, ca)
            want = other.node_cert if round_ == 0 else arr.certs.node_cert
            assert got == ssl.PEM_cert_to_DER_cert(want.read_text())
            assert (got != before) == (round_ == 0)
            # sessions still resume on the switching context
            assert await asyncio.to_thread(resumes, https, ca)
