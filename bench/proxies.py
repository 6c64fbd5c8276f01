"""The processes under test: one nginx back end and three proxies in front of it (bench of issue 7).

Every proxy gets the same back end, the same ECDSA P-256 certificate (from `dlba certs init`)
and four listeners on 127.0.0.1:

* ``http``       plain HTTP/1.1 keepalive
* ``https``      TLS, session tickets / cache ON (keepalive and resumed-handshake figures)
* ``https_full`` TLS, tickets and session cache OFF where the proxy allows it (full handshakes)

The DLBA node has one TLS context for all listeners (tickets on, see dlba/tls/context.py); its
``https_full`` is therefore just a second TLS listener. The full-handshake figure does not depend
on the server side: it is measured with ``openssl s_time -new``, a client that never offers a
session, and `verify_resumption` checks what each listener would do with one that does.

A proxy's cost is read from /proc: user+system CPU of its whole process tree (the root, its
reaped children via cutime/cstime, and every live descendant), and RSS summed over the tree.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
HOST = "127.0.0.1"


def nofile_limit() -> int:
    import resource

    return int(resource.getrlimit(resource.RLIMIT_NOFILE)[1])


NOFILE = min(nofile_limit(), 200_000)
MAXCONN = min(60_000, max(NOFILE // 2, 10_500))


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0,
              proc: subprocess.Popen[bytes] | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


# --- /proc accounting ---------------------------------------------------------------------------

def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may contain spaces and parentheses: split after the last ')'.
    return raw[raw.rindex(")") + 2:].split()


def tree_pids(root: int) -> list[int]:
    """root and all its live descendants."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        f = _stat_fields(int(d))
        if f is None:
            continue
        children.setdefault(int(f[1]), []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


def tree_times(root: int) -> tuple[float, float]:
    """(user, system) seconds of the process tree: each live process's utime/stime plus
    cutime/cstime (children it has already reaped)."""
    user = system = 0
    for pid in tree_pids(root):
        f = _stat_fields(pid)
        if f is None:
            continue
        # after the comm: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14)
        user += int(f[11]) + int(f[13])
        system += int(f[12]) + int(f[14])
    return user / CLK_TCK, system / CLK_TCK


def tree_cpu_seconds(root: int) -> float:
    """user+system seconds of the process tree (see tree_times)."""
    return sum(tree_times(root))


def tree_rss_mb(root: int) -> float:
    total = 0
    for pid in tree_pids(root):
        f = _stat_fields(pid)
        if f is not None:
            total += int(f[21]) * PAGE  # rss (pages) is field 24 of stat -> index 21 here
    return total / (1024 * 1024)


# --- processes ----------------------------------------------------------------------------------

@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    ports: dict[str, int]
    log: Path
    notes: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu(self) -> float:
        return tree_cpu_seconds(self.pid)

    def rss_mb(self) -> float:
        return tree_rss_mb(self.pid)

    def nprocs(self) -> int:
        return len(tree_pids(self.pid))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _spawn(name: str, argv: list[str], work: Path) -> tuple[subprocess.Popen[bytes], Path]:
    log = work / f"{name}.log"
    fh = open(log, "ab")  # noqa: SIM115 - the child owns it
    proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, cwd=work,
                            start_new_session=True)
    fh.close()
    return proc, log


def _started(name: str, proc: subprocess.Popen[bytes], ports: dict[str, int], log: Path) -> Server:
    for p in ports.values():
        if not wait_port(p, 15, proc):
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            proc.kill()
            raise RuntimeError(f"{name} did not start (port {p}); log {log}:\n{tail}")
    return Server(name, proc, ports, log)


@dataclass
class Certs:
    cert: Path
    key: Path
    pem_bundle: Path  # cert + key in one file (HAProxy)
    ca: Path


def make_certs(work: Path) -> Certs:
    d = work / "certs"
    r = subprocess.run([sys.executable, "-m", "dlba.cli", "certs", "init", "--dir", str(d)],
                       capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"dlba certs init failed: {r.stderr}")
    cert, key = d / "node.pem", d / "node.key"
    bundle = d / "haproxy.pem"
    bundle.write_text(cert.read_text() + key.read_text())
    os.chmod(bundle, 0o600)
    return Certs(cert, key, bundle, d / "ca.pem")


# --- the back end: nginx, one worker, static 1 KiB and 100 KiB ---------------------------------

NGINX_COMMON = """
daemon off;
master_process on;
user root;
pid {work}/{name}.pid;
error_log {work}/{name}.error.log warn;
worker_rlimit_nofile {nofile};
events {{ worker_connections {wconns}; multi_accept on; use epoll; }}
"""


def start_backend(work: Path, certs: Certs) -> Server:
    www = work / "www"
    www.mkdir(exist_ok=True)
    (www / "1k").write_bytes(b"a" * 1024)
    (www / "100k").write_bytes(b"b" * 102400)
    ports = {"http": free_port(), "https": free_port()}
    conf = work / "backend.conf"
    conf.write_text(NGINX_COMMON.format(work=work, name="backend", nofile=NOFILE,
                                        wconns=NOFILE - 200) + f"""
worker_processes 1;
http {{
    access_log off;
    sendfile on; tcp_nopush on; tcp_nodelay on;
    keepalive_timeout 120s; keepalive_requests 100000000;
    open_file_cache max=100;
    default_type application/octet-stream;
    server {{
        listen {HOST}:{ports["http"]} backlog=4096 reuseport;
        listen {HOST}:{ports["https"]} ssl backlog=4096 reuseport;
        ssl_certificate {certs.cert}; ssl_certificate_key {certs.key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_tickets off; ssl_session_cache off;
        root {www};
    }}
}}
""")
    proc, log = _spawn("backend", ["nginx", "-c", str(conf), "-p", str(work)], work)
    return _started("backend", proc, ports, log)


# --- nginx as a reverse proxy -------------------------------------------------------------------

def start_nginx_proxy(work: Path, certs: Certs, backend_port: int) -> Server:
    ports = {"http": free_port(), "https": free_port(), "https_full": free_port(),
             "h2": free_port()}
    conf = work / "nginx-proxy.conf"
    tls = f"""ssl_certificate {certs.cert}; ssl_certificate_key {certs.key};
        ssl_protocols TLSv1.2 TLSv1.3; ssl_prefer_server_ciphers on;"""
    loc = """location / { proxy_pass http://be; proxy_http_version 1.1;
            proxy_set_header Connection ""; proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $remote_addr; }"""
    conf.write_text(NGINX_COMMON.format(work=work, name="nginx-proxy",
                                                 nofile=NOFILE, wconns=NOFILE - 200) + f"""
worker_processes 2;
http {{
    access_log off;
    tcp_nodelay on;
    keepalive_timeout 120s; keepalive_requests 100000000;
    upstream be {{ server {HOST}:{backend_port}; keepalive 64; keepalive_requests 100000000; }}
    server {{ listen {HOST}:{ports["http"]} backlog=4096 reuseport; {loc} }}
    server {{ listen {HOST}:{ports["https"]} ssl backlog=4096 reuseport; {tls}
        ssl_session_cache shared:SSL:20m; ssl_session_tickets on; {loc} }}
    server {{ listen {HOST}:{ports["https_full"]} ssl backlog=4096 reuseport; {tls}
        ssl_session_cache off; ssl_session_tickets off; {loc} }}
    server {{ listen {HOST}:{ports["h2"]} ssl http2 backlog=4096 reuseport; {tls}
        ssl_session_cache shared:SSL:20m; ssl_session_tickets on; {loc} }}
}}
""")
    proc, log = _spawn("nginx-proxy", ["nginx", "-c", str(conf), "-p", str(work)], work)
    return _started("nginx", proc, ports, log)


# --- HAProxy ------------------------------------------------------------------------------------

def start_haproxy(work: Path, certs: Certs, backend_port: int, threads: int = 2) -> Server:
    ports = {"http": free_port(), "https": free_port(), "https_full": free_port(),
             "h2": free_port()}
    conf = work / "haproxy.cfg"
    # Tuning as HAProxy's configuration manual / management guide advise for a 2-core box:
    # one process, nbthread = cores, http-reuse always (idle server connections shared between
    # client connections), keepalive on both sides, no logging, large maxconn.
    conf.write_text(f"""
global
    nbthread {threads}
    # The hard RLIMIT_NOFILE here may be 20000 (no CAP_SYS_RESOURCE in a container): HAProxy
    # would want 2 x maxconn; idle client connections need no server socket (http-reuse).
    maxconn {MAXCONN}
    ulimit-n {NOFILE}
    no strict-limits
    tune.ssl.cachesize 100000
    ssl-default-bind-options ssl-min-ver TLSv1.2
    stats socket {work}/haproxy.sock mode 600 level admin

defaults
    mode http
    option http-keep-alive
    timeout connect 5s
    timeout client 120s
    timeout server 120s
    timeout http-keep-alive 120s
    timeout http-request 10s
    maxconn {MAXCONN}

frontend fe
    bind {HOST}:{ports["http"]}
    bind {HOST}:{ports["https"]} ssl crt {certs.pem_bundle} alpn http/1.1
    bind {HOST}:{ports["https_full"]} ssl crt {certs.pem_bundle} alpn http/1.1 no-tls-tickets
    bind {HOST}:{ports["h2"]} ssl crt {certs.pem_bundle} alpn h2,http/1.1
    option forwardfor
    default_backend be

backend be
    http-reuse always
    server b1 {HOST}:{backend_port} maxconn 1000
""")
    proc, log = _spawn("haproxy", ["haproxy", "-f", str(conf), "-db"], work)
    return _started("haproxy", proc, ports, log)


# --- the DLBA node ------------------------------------------------------------------------------

def _dlba_config(work: Path, dcerts: Path, backend_port: int, ports: dict[str, int],
                 workers: int) -> Path:
    lines = [
        "[cluster]", f'secret_file = "{dcerts / "cluster.key"}"', "",
        "[[nodes]]", 'name = "n1"', f'address = "{HOST}"',
        f'listen = ["{HOST}:{ports["http"]}"]',
        f'listen_tls = ["{HOST}:{ports["https"]}", "{HOST}:{ports["https_full"]}"]', "",
        "[tls]", f'cert = "{dcerts / "node.pem"}"', f'key = "{dcerts / "node.key"}"', "",
        "[admin]", f'listen = "{HOST}:{ports["admin"]}"',
        f'token_file = "{dcerts / "admin.token"}"', "",
        "[[backends]]", "id = 1", f'address = "{HOST}:{backend_port}"', "",
    ]
    if workers != 1:
        lines += ["[proxy]", f"workers = {workers}", ""]
    path = work / f"dlba-w{workers}.toml"
    path.write_text("\n".join(lines))
    return path


def dlba_argv(config: Path) -> list[str]:
    exe = Path(sys.executable).with_name("dlba")
    base = [str(exe)] if exe.exists() else [sys.executable, "-m", "dlba.cli"]
    return [*base, "node", "--config", str(config), "--name", "n1", "--log-level", "WARNING"]


def start_dlba(work: Path, certs: Certs, backend_port: int, workers: int = 2) -> Server:
    """Start the node with `[proxy] workers = N` when `dlba node` accepts it, else 1."""
    notes = []
    for w in ([workers, 1] if workers != 1 else [1]):
        ports = {"http": free_port(), "https": free_port(), "https_full": free_port(),
                 "admin": free_port()}
        config = _dlba_config(work, certs.cert.parent, backend_port, ports, w)
        proc, log = _spawn(f"dlba-w{w}", dlba_argv(config), work)
        try:
            srv = _started("dlba", proc, ports, log)
        except RuntimeError as e:
            notes.append(f"workers={w} refused: {str(e).splitlines()[0]}; "
                         + log.read_text(errors="replace")[-300:].strip().replace("\n", " | "))
            continue
        # let worker processes (if any) come up before counting them
        deadline = time.monotonic() + 5
        while srv.nprocs() < w + (1 if w > 1 else 0) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.3)
        n = srv.nprocs()
        srv.notes = [*notes, f"dlba node: config [proxy] workers = {w} accepted; process tree: "
                     f"{n} process(es); --log-level WARNING (no access log)"]
        if w > 1 and n < w:
            srv.notes.append(f"dlba node: `workers = {w}` is accepted by the config but the node "
                             f"runs {n} process(es): figures are for a single-process node")
        srv.ports.pop("admin")
        # ALPN offers h2 on the node's TLS listeners ([proxy] http2, on by default); HTTP/1.1
        # clients (wrk, s_time) offer no ALPN and keep HTTP/1.1 there.
        srv.ports["h2"] = srv.ports["https"]
        return srv
    raise RuntimeError("dlba node did not start: " + "; ".join(notes))


def tools_missing() -> list[str]:
    return [t for t in ("nginx", "haproxy", "wrk", "openssl") if shutil.which(t) is None]
