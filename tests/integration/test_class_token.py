"""A class token made by `dlba class-token` through a real node: the header or the cookie names
the class, a forged or expired one does not, and a class kept out of a pool gets 403."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from dlba.cli import main
from dlba.services.tokens import make_token
from tests.integration.loopback import free_port, loopback_array, make_certs


def config(port: int) -> str:
    return f"""
[[pools]]
name = "private"

[[services]]
name = "svc"
vips = ["127.0.40.1"]
ports = [{port}]
tls_ports = []

[[services.routes]]
path_prefix = "/private/"
pool = "private"

[[classes]]
name = "partner"
priority = 0
token = true

[[classes]]
name = "guest"
priority = 1
sources = ["127.0.0.0/8"]
pools = ["default"]
"""


async def test_class_token_names_the_class(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    certs = make_certs(tmp_path / "certs")
    port = free_port()
    async with loopback_array(tmp_path, 2, extra=config(port),
                              backend_extra={2: 'pool = "private"'}) as arr:
        assert main(["class-token", "partner", "--ttl", "60", "--config",
                     str(arr.config_path)]) == 0
        token = capsys.readouterr().out.strip()
        assert main(["class-token", "guest", "--config", str(arr.config_path)]) == 2
        secret = bytes.fromhex(certs.cluster_key.read_text().strip())
        expired = make_token(secret, "partner", 1000)
        base = f"http://127.0.40.1:{port}"
        async with aiohttp.ClientSession() as s:

            async def status(path: str, **kw: object) -> int:
                async with s.get(base + path, **kw) as r:  # type: ignore[arg-type]
                    await r.read()
                    return r.status

            assert await status("/whoami", headers={"X-DLBA-Class": token}) == 200
            assert await status("/private/x", headers={"X-DLBA-Class": token}) == 404  # b2's
            assert await status("/private/x", cookies={"DLBACLASS": token}) == 404
            # guest (by source) may not use the private pool; forged/expired tokens are guests.
            assert await status("/private/x") == 403
            assert await status("/private/x", headers={"X-DLBA-Class": token + "x"}) == 403
            assert await status("/private/x", headers={"X-DLBA-Class": expired}) == 403
            async with s.get(arr.admin_url + "/status",
                             headers={"Authorization": f"Bearer {arr.token}"}) as r:
                pools = (await r.json())["services"]["pools"]
    assert pools["default"]["classes"]["partner"]["requests"] == 1
    assert pools["private"]["classes"]["partner"]["requests"] == 2
    assert pools["private"]["classes"]["guest"]["requests"] == 3
