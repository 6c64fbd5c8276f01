"""`dlba status` shows services, pools (queue depth, shed count) and classes."""

from __future__ import annotations

import io

from rich.console import Console

from dlba.admin.status_cli import render

VIEW = {
    "services": [{"name": "shop", "vips": ["198.18.0.100", "198.18.0.112/28"], "ports": [80, 443],
                  "pool": "web", "routes": 2, "requests": 120}],
    "pools": {
        "web": {"backends": [2, 3], "policy": "least_conn", "queue_depth": 7, "queued": 40,
                "shed": 13, "timeouts": 9, "max_depth": 20, "slots_used": 100, "slots": 100,
                "classes": {"gold": {"requests": 50, "queued": 5, "shed": 0, "served": 50,
                                     "waiting": 1},
                            "default": {"requests": 70, "queued": 35, "shed": 13,
                                        "served": 57, "waiting": 6}}},
        "default": {"backends": [1], "policy": "p2c", "queue_depth": 0, "queued": 0, "shed": 0,
                    "timeouts": 0, "max_depth": 0, "slots_used": 0, "slots": 0, "classes": {}},
    },
    "classes": [{"name": "gold", "priority": 0, "weight": 100},
                {"name": "default", "priority": 1, "weight": 100}],
}


def test_status_shows_services_pools_and_classes() -> None:
    out = io.StringIO()
    render({"services": VIEW, "config_versions": {}}, Console(file=out, width=120))
    text = out.getvalue()
    assert "Virtual services" in text and "198.18.0.112/28" in text
    web = next(line for line in text.splitlines() if "least_conn" in line)
    assert "100/100" in web and " 7 " in web and " 13 " in web  # slots, waiting, shed
    gold = next(line for line in text.splitlines() if "gold" in line and "web" in line)
    default = next(line for line in text.splitlines() if "default" in line and " 70 " in line)
    assert text.index(gold) < text.index(default)  # highest class first
    assert " 13 " in default
