"""CDN offload figures: `python -m bench.cdn [--out bench/cdn_results.json]`.

1. Tokenizers on the demo page (20 KiB and 2 MiB): CPU to rewrite it with the hand-written byte
   scanner (dlba/cdn/html_rewriter.py) against only *tokenizing* it with library tokenizers that
   are installed (html5lib, selectolax/lexbor parse + serialise, the standard library's
   html.parser), the measurement behind the choice of a hand-written scanner.
2. A real node (a subprocess, its CPU read from /proc) in front of a real demo back end: node CPU
   per page passed through untouched ([cdn] off), rewritten (a private page: never cached), and
   answered from the page cache, for a 20 KiB and a 2 MiB page.
3. Bytes offloaded in a run of the demo: VIEWS page views as a browser makes them (the page,
   then each object still pointing at the array) with [cdn] off and on: the bytes the node
   sent, and its dlba_cdn_bytes_offloaded_total over the run.
Not a test: figures, printed and written as JSON.
"""

from __future__ import annotations

import argparse
import html.parser
import http.client
import importlib
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.proxies import HOST, free_port, tree_cpu_seconds, wait_port
from dlba.cdn.html_rewriter import HtmlRewriter
from dlba.demo_site import OBJECTS, page_html
from dlba.tls.certs import init_certs

SIZES = {"20KiB": 20 * 1024, "2MiB": 2 * 1024 * 1024}
CHOSEN = {f"/static/{n}" for n in OBJECTS}
CDN = "https://cdn.example.test"  # the [cdn] base default
VIEWS = 50  # page views of the demo run


def _cpu(fn: Callable[[], object], rounds: int) -> float:
    """CPU seconds per call (process time: what this process spent, not the wall clock)."""
    fn()
    t0 = time.process_time()
    for _ in range(rounds):
        fn()
    return (time.process_time() - t0) / rounds


def tokenizers(page: bytes, rounds: int) -> dict[str, float | str]:
    def scanner() -> None:
        rw = HtmlRewriter(lambda u: "https://cdn.test" + u if u in CHOSEN else None)
        for i in range(0, len(page), 65536):
            rw.feed(page[i:i + 65536])
        rw.finish()

    out: dict[str, float | str] = {"hand_scanner_rewrite_ms": _cpu(scanner, rounds) * 1000}
    text = page.decode()

    def stdlib() -> None:
        p = html.parser.HTMLParser(convert_charrefs=False)
        for i in range(0, len(text), 65536):
            p.feed(text[i:i + 65536])
        p.close()

    out["stdlib_html_parser_tokenize_ms"] = _cpu(stdlib, rounds) * 1000
    # Library tokenizers are optional here (not dependencies): measured when installed.
    try:
        h5_tokenizer = importlib.import_module("html5lib._tokenizer").HTMLTokenizer

        def h5() -> None:
            for _ in h5_tokenizer(text):
                pass

        out["html5lib_tokenize_ms"] = _cpu(h5, max(1, rounds // 4)) * 1000
    except ImportError:
        out["html5lib_tokenize_ms"] = "not installed"
    try:
        lexbor_parser = importlib.import_module("selectolax.lexbor").LexborHTMLParser

        def lexbor() -> None:
            lexbor_parser(text).html  # noqa: B018 - serialising is part of the cost

        out["lexbor_parse_serialize_ms"] = _cpu(lexbor, rounds) * 1000
    except ImportError:
        out["lexbor_parse_serialize_ms"] = "not installed"
    return out


def _node_config(work: Path, backend: int, port: int, admin: int, cdn: bool) -> Path:
    certs = init_certs(work / "certs", ["localhost"], ["127.0.0.1"])
    text = f"""
[cluster]
secret_file = "{certs.cluster_key}"
[[nodes]]
name = "n1"
address = "127.0.0.1"
listen = ["127.0.0.1:{port}"]
listen_tls = []
[admin]
listen = "127.0.0.1:{admin}"
token_file = "{certs.admin_token}"
[[backends]]
id = 1
address = "127.0.0.1:{backend}"
[cdn]
enabled = {"true" if cdn else "false"}
sample = 1.0
"""
    path = work / "node.toml"
    path.write_text(text)
    return path


class Node:
    def __init__(self, work: Path, backend: int, cdn: bool) -> None:
        work.mkdir(parents=True, exist_ok=True)
        self.port, self.admin = free_port(), free_port()
        cfg = _node_config(work, backend, self.port, self.admin, cdn)
        self.token = (work / "certs" / "admin.token").read_text().strip()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dlba", "node", "--config", str(cfg), "--name", "n1",
             "--log-level", "WARNING"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not wait_port(self.port, 20, self.proc) or not wait_port(self.admin, 20, self.proc):
            raise RuntimeError("the node did not start")
        self.conn = http.client.HTTPConnection(HOST, self.port)

    def get(self, path: str) -> tuple[int, bytes, str]:
        self.conn.request("GET", path, headers={"Accept-Encoding": "identity"})
        r = self.conn.getresponse()
        return r.status, r.read(), r.getheader("X-Dlba-Cdn") or ""

    def admin_get(self, path: str) -> bytes:
        req = urllib.request.Request(f"http://{HOST}:{self.admin}{path}",
                                     headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, timeout=5) as r:
            data: bytes = r.read()
            return data

    def cpu_per_page(self, path: str, n: int, expect: str) -> float:
        self.get(path)  # the first one may be the miss that fills the cache
        c0 = tree_cpu_seconds(self.proc.pid)
        for _ in range(n):
            status, _, how = self.get(path)
            assert status == 200 and how == expect, (path, status, how)
        return (tree_cpu_seconds(self.proc.pid) - c0) / n

    def views(self, n: int) -> int:
        """`n` page views as a browser makes them: /page, then every object it references
        that still points at the array (a rewritten one goes to the CDN). Bytes the array sent."""
        sent = 0
        for _ in range(n):
            _, body, _ = self.get("/page")
            sent += len(body)
            for name in OBJECTS:
                if f"{CDN}/static/{name}".encode() not in body:
                    sent += len(self.get(f"/static/{name}")[1])
        return sent

    def offloaded(self) -> int:
        metrics = self.admin_get("/metrics").decode()
        return int(next(float(x.split()[-1]) for x in metrics.splitlines()
                        if x.startswith("dlba_cdn_bytes_offloaded_total")))

    def stop(self) -> None:
        self.conn.close()
        self.proc.terminate()
        self.proc.wait(10)


def node_figures(work: Path, pages: int) -> dict[str, Any]:
    bport = free_port()
    backend = subprocess.Popen(
        [sys.executable, "-m", "dlba", "demo-backend", "--name", "b1", "--listen",
         f"{HOST}:{bport}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out: dict[str, Any] = {}
    try:
        if not wait_port(bport, 20, backend):
            raise RuntimeError("the demo back end did not start")
        plain = Node(work / "off", bport, cdn=False)
        try:
            for label, size in SIZES.items():
                n = pages if size < 1 << 20 else max(5, pages // 8)
                out[f"passthrough_{label}_cpu_ms"] = plain.cpu_per_page(
                    f"/page?size={size}&private=1", n, "") * 1000
            out["demo_run_views"] = VIEWS
            out["demo_run_bytes_sent_cdn_off"] = plain.views(VIEWS)
        finally:
            plain.stop()
        node = Node(work / "on", bport, cdn=True)
        try:
            for name in OBJECTS:  # sampled: the choice follows within a second
                node.get(f"/static/{name}")
            deadline = time.monotonic() + 10
            while len(json.loads(node.admin_get("/cdn"))["objects"]) < len(OBJECTS):
                if time.monotonic() > deadline:
                    raise RuntimeError("no choice")
                time.sleep(0.1)
            before = node.offloaded()
            out["demo_run_bytes_sent_cdn_on"] = node.views(VIEWS)
            out["demo_run_bytes_offloaded"] = node.offloaded() - before
            for label, size in SIZES.items():
                n = pages if size < 1 << 20 else max(5, pages // 8)
                out[f"rewritten_{label}_cpu_ms"] = node.cpu_per_page(
                    f"/page?size={size}&private=1", n, "rewritten") * 1000
                out[f"cached_{label}_cpu_ms"] = node.cpu_per_page(
                    f"/page?size={size}&max_age=3600", n, "hit") * 1000
        finally:
            node.stop()
    finally:
        backend.terminate()
        backend.wait(10)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.cdn", description=__doc__.split("\n")[0])
    p.add_argument("--pages", type=int, default=200, help="20 KiB pages per figure (2 MiB: /8)")
    p.add_argument("--out", default="bench/cdn_results.json")
    args = p.parse_args(argv)
    res: dict[str, Any] = {}
    for label, size in SIZES.items():
        page = page_html(size=size)
        res[f"tokenizers_{label}"] = tokenizers(page, 20 if size < 1 << 20 else 3)
    with tempfile.TemporaryDirectory(prefix="bench-cdn-") as tmp:
        res["node"] = node_figures(Path(tmp), args.pages)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    for k, v in res.items():
        print(k)
        for name, value in v.items():
            print(f"  {name:36s} {value:.2f}" if isinstance(value, float)
                  else f"  {name:36s} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
