"""`dlba status`: the array's tables in the terminal (rich), or as the contract's JSON."""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from rich.console import Console, RenderableType
from rich.table import Table

from dlba.config import ConfigError
from dlba.local_array.running import NoArrayRunning, running_record
from dlba.services.runtime import merge_json

TIMEOUT_S = 2.0
NODE_COLS = ("name", "address", "mac", "ip_groups", "avg_response_ms", "hits",
             "open_connections", "failed", "enabled", "weight")
BACKEND_COLS = ("id", "address", "state", "cookie_groups", "avg_response_ms", "hits",
                "open_connections", "unable_to_connect", "weight")
HEADERS = {"avg_response_ms": "avg_ms", "open_connections": "open", "cookie_groups": "groups",
           "unable_to_connect": "unreachable", "ip_groups": "groups", "queue_depth": "waiting"}
SERVICE_COLS = ("name", "vips", "ports", "pool", "routes", "requests")
POOL_COLS = ("name", "policy", "backends", "slots", "queue_depth", "queued", "shed",
             "timeouts")
CLASS_COLS = ("pool", "class", "priority", "requests", "queued", "shed", "waiting")


def service_rows(view: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]],
                                                list[dict[str, Any]]]:
    """Rows of the services, pools and classes tables from the array's summed view
    (dlba/services/runtime.py merge_json)."""
    services = [{**s, "vips": " ".join(s["vips"]), "ports": " ".join(map(str, s["ports"]))}
                for s in view.get("services", [])]
    pools = [{**p, "name": name, "backends": " ".join(map(str, p["backends"])),
              "slots": f"{p['slots_used']}/{p['slots']}" if p["slots"] else "-"}
             for name, p in sorted(view.get("pools", {}).items())]
    priority = {c["name"]: c["priority"] for c in view.get("classes", [])}
    classes = [{**c, "pool": name, "class": cname, "priority": priority.get(cname)}
               for name, p in sorted(view.get("pools", {}).items())
               for cname, c in sorted(p["classes"].items(),
                                      key=lambda kv: (priority.get(kv[0], 0), kv[0]))]
    return services, pools, classes


def fetch(url: str, token: str) -> Any:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=TIMEOUT_S) as r:
        return json.loads(r.read())


def admin_urls_from_state(state: Path) -> tuple[list[str], str, str | None]:
    """Every node's admin base URL, the token, and the namespace to ask from, from the folder
    `dlba up` keeps. The array's addresses exist only inside its namespaces. Raises
    NoArrayRunning (an OSError) when the folder records no running array: then nothing may
    be sent, since those addresses would route out through the host's default route."""
    info = running_record(state)
    token = Path(info["token_file"]).read_text().strip()
    netns = info.get("client_netns")
    return list(info["admin"]), token, netns if isinstance(netns, str) else None


def gather(urls: list[str], token: str) -> dict[str, Any]:
    """The contract's status document, from the scheduler's summary when there is one."""
    statuses: list[dict[str, Any]] = []
    errors: list[str] = []
    for url in urls:
        try:
            statuses.append(fetch(url + "/status", token))
        except (OSError, urllib.error.URLError, ValueError) as e:
            errors.append(f"{url}: {e}")
    if not statuses:
        raise ConnectionError("no node answered: " + "; ".join(errors))
    first = statuses[0]
    sched_name = next((s["node"] for s in statuses if s.get("role") == "scheduler"), None)
    sched_name = sched_name or first.get("scheduler")
    doc: dict[str, Any] = {
        "node": first["node"], "role": first["role"], "scheduler": sched_name,
        "config_version": first.get("config_version"), "table_version": first.get(
            "table_version"),
        "config_versions": {s["node"]: s.get("config_version") for s in statuses},
        "unreachable": errors,
    }
    doc["config_skew"] = bool(version_skew(doc))
    sched_url = next(
        (u for u, s in zip(urls, statuses, strict=False) if s.get("node") == sched_name), None
    )
    if sched_name and sched_url is None:
        sched_url = next((u for u in urls if sched_name in u), None)
    summary = None
    if sched_url is not None:
        try:
            summary = fetch(sched_url + "/summary", token)
            table = fetch(sched_url + "/table", token)
            doc["table"] = table
        except (OSError, urllib.error.URLError, ValueError) as e:
            errors.append(f"{sched_url}: {e}")
    confirm_scheduler(doc, statuses, summary, asked=sched_url is not None)
    if summary is not None:
        doc["table_version"] = summary["table_version"]
        doc["nodes"] = summary["nodes"]
        doc["backends"] = summary["backends"]
        doc["last_sweep"] = summary.get("last_sweep")
        doc["dataplane"] = summary.get("dataplane")
    else:  # a standalone node, or no scheduler reachable: each node's own rows
        doc["nodes"] = [row for s in statuses for row in s.get("nodes", [])]
        doc["backends"] = first.get("backends", [])
    # Services, pools and classes: every node's counters summed.
    doc["services"] = merge_json([s["services"] for s in statuses if "services" in s])
    draining = {b.get("id") for s in statuses for b in s.get("backends", [])
                if b.get("state") == "draining"}
    doc["backends"] = [{**b, "state": backend_state(b, b.get("id") in draining)}
                       for b in doc["backends"]]
    return doc


def backend_state(row: dict[str, Any], draining: bool) -> str:
    """up, down, draining or disabled, from a summary row (failed on every node, enabled on
    every node) and whether some node drains it. A disabled back end also drains on the
    nodes: the operator's word comes first, but a failed one needs attention first."""
    if row.get("failed"):
        return "down"
    if not row.get("enabled", True):
        return "disabled"
    if draining or row.get("state") == "draining":
        return "draining"
    return "up"


def cell(value: Any) -> str:
    """A figure as an operator reads it: times to 0.1 ms, no float noise."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.1f}"
    return "" if value is None else str(value)


def status_table(title: str, cols: tuple[str, ...], rows: list[dict[str, Any]],
                 width: int) -> RenderableType:
    """One table, never cutting an address: one row per line when it fits in `width`, else
    each row on two lines (names and address, then the figures) so a 45-character IPv6
    address with its port still shows whole in an 80-column terminal."""
    cells = [[cell(r.get(c)) for c in cols] for r in rows]
    heads = [HEADERS.get(c, c) for c in cols]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(heads)]
    if sum(widths) + 3 * len(cols) + 1 <= width:
        table = Table(title=title)
        for h, w in zip(heads, widths, strict=True):
            table.add_column(h, no_wrap=True, min_width=w, overflow="fold")
        for r, row in zip(rows, cells, strict=True):
            table.add_row(*row, style="red" if r.get("failed") else None)
        return table
    table = Table(title=title)
    table.add_column(f"{heads[0]} / {heads[1]}", no_wrap=True, overflow="fold",
                     min_width=max(widths[1], 20))
    table.add_column("figures", overflow="fold")
    for r, row in zip(rows, cells, strict=True):
        figures = "  ".join(f"{h}={v}" for h, v in zip(heads[2:], row[2:], strict=True))
        table.add_row(f"{row[0]}\n{row[1]}", figures, style="red" if r.get("failed") else None)
    return table


def confirm_scheduler(doc: dict[str, Any], statuses: list[dict[str, Any]],
                      summary: dict[str, Any] | None, asked: bool) -> None:
    """A scheduler we could ask is named only if it answered (its status or its summary): the
    peers may still name one whose processes just died, and an operator must not be told it
    runs. (With one `--admin` URL of a server the scheduler's address is unknown: not asked.)"""
    named = doc.get("scheduler")
    if not named or summary is not None or not asked:
        return
    if any(s.get("node") == named and s.get("role") == "scheduler" for s in statuses):
        return
    doc["scheduler"] = None
    doc["scheduler_unreachable"] = named


def version_skew(doc: dict[str, Any]) -> str:
    """One line when the nodes do not all run the same config version (a push that did not
    reach everyone, or a node restarted from its file), else empty."""
    versions = doc.get("config_versions") or {}
    if len(set(versions.values())) <= 1:
        return ""
    newest = max(v for v in versions.values() if v is not None)
    behind = sorted(f"{k}={v}" for k, v in versions.items() if v != newest)
    return f"config version skew: newest {newest}, behind: {', '.join(behind)}"


def render(doc: dict[str, Any], console: Console) -> None:
    lost = doc.get("scheduler_unreachable")
    console.print(
        f"[bold]DLBA[/bold] scheduler: [cyan]{doc.get('scheduler') or '-'}[/cyan]"
        + (f" [bold red](named {lost}, which does not answer)[/bold red]" if lost else "") + "  "
        f"table version: {doc.get('table_version')}  config versions: "
        + ", ".join(f"{k}={v}" for k, v in doc.get("config_versions", {}).items())
    )
    skew = version_skew(doc)
    if skew:
        console.print(f"[bold yellow]warning:[/bold yellow] {skew}")
    console.print(status_table("DLBA server status table (Fig. 5)", NODE_COLS,
                               doc.get("nodes", []), console.width))
    console.print(status_table("Web server status table (Fig. 7/8)", BACKEND_COLS,
                               doc.get("backends", []), console.width))
    services, pools, classes = service_rows(doc.get("services") or {})
    if len(services) > 1 or len(pools) > 1 or classes:
        for title, cols, rows in (("Virtual services", SERVICE_COLS, services),
                                  ("Pools (slots: held/maxconn)", POOL_COLS, pools),
                                  ("Client classes per pool", CLASS_COLS, classes)):
            if rows:
                console.print(status_table(title, cols, rows, console.width))
    if doc.get("last_sweep"):
        console.print(f"last sweep: {time.ctime(doc['last_sweep'])}")
    for e in doc.get("unreachable", []):
        console.print(f"[red]unreachable[/red] {e}")


def status_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="dlba status", description="show the array's tables")
    p.add_argument("--json", action="store_true", help="print the contract's JSON")
    p.add_argument("--admin", help="admin URL of any node, e.g. http://198.18.0.11:9000")
    p.add_argument("--token", help="admin token (default: from the state folder)")
    p.add_argument("--state", default="run", help="state folder of `dlba up` (default ./run)")
    p.add_argument("--watch", type=float, nargs="?", const=2.0, help="refresh every N s")
    p.add_argument("--netns", help="network namespace to connect from")
    args = p.parse_args(argv)
    netns: str | None = args.netns
    try:
        if args.admin:
            urls = [args.admin.rstrip("/")]
            token = args.token or (Path(args.state) / "admin.token").read_text().strip()
        else:
            urls, token, found_ns = admin_urls_from_state(Path(args.state))
            token = args.token or token
            netns = netns or found_ns
    except NoArrayRunning as e:
        print(f"dlba status: {e}", file=sys.stderr)
        return 1
    except (ConfigError, OSError, KeyError) as e:
        print(f"dlba status: cannot find the array: {e}", file=sys.stderr)
        return 2
    console = Console()
    while True:
        try:
            if netns is None:
                doc = gather(urls, token)
            else:
                from dlba.local_array.processes import run_in_netns

                doc = run_in_netns(netns, lambda: gather(urls, token))
        except ConnectionError as e:
            print(f"dlba status: {e}", file=sys.stderr)
            return 1
        if args.json:
            print(json.dumps(doc, indent=1))
        else:
            if args.watch:
                console.clear()
            render(doc, console)
        if not args.watch:
            # No answering scheduler: the array is not whole, whatever the table says.
            return 1 if doc.get("scheduler_unreachable") else 0
        time.sleep(args.watch)
