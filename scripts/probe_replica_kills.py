"""Kill a Serve replica under load, repeatedly, and say how each failed request ended in HAProxy.

    python scripts/probe_replica_kills.py --kills 7 --clients 8

A diagnostic for requests lost to replica deaths (BENCHMARKS.md, serving: none since HAProxy
reads each request whole), not a benchmark: a local Ray with HAProxy's request log sent to a UDP
socket this script reads (RAY_SERVE_HAPROXY_LOG_TARGET), bench_serve's model on 2 replicas,
`--clients` threads posting `{"n": 4}` (half of them with a seed) through urllib, one replica
killed with ray.kill, then Serve's replacement awaited, `--kills` times. Prints the failures by
kind, HAProxy's termination states (`SH--`: the server closed before any header), and the
HAProxy log lines around each failure. Extra environment (e.g. RAY_SERVE_HAPROXY_RETRY_ON)
reaches HAProxy as usual.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import socket
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

STATE = re.compile(r" ([-A-Z][-A-Z][-A-Z][-A-Z]) \d+/\d+/\d+/\d+/\+?\d+ ")  # httplog's termination state


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()

    logs: list[tuple[float, str]] = []
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    os.environ["RAY_SERVE_HAPROXY_LOG_TARGET"] = f"127.0.0.1:{udp.getsockname()[1]}"

    def listen() -> None:
        while True:
            data, _ = udp.recvfrom(65535)
            logs.append((time.time(), data.decode(errors="replace").strip()))

    threading.Thread(target=listen, daemon=True).start()

    import bench_serve
    import ray
    from ray import serve

    from raygan.run.ray_env import ensure_ray, free_port
    from raygan.serve.app import APP_NAME, start_server

    ensure_ray(num_cpus=2)
    checkpoint = bench_serve.make_checkpoint(Path(tempfile.mkdtemp()), bench_serve.Sizes())
    url = start_server(checkpoint, port=free_port(), replicas=2, num_cpus=0.5,
                       batch_wait_timeout_s=0.05)  # fmt: skip

    def post(body: dict) -> int:
        request = urllib.request.Request(url + "/generate", data=json.dumps(body).encode(),
                                         headers={"content-type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status

    stop, outcomes = threading.Event(), []

    def client(i: int) -> None:
        while not stop.is_set():
            started = time.time()
            try:
                outcome: int | str = post({"n": 4} if i % 2 else {"n": 4, "seed": i})
            except Exception as exc:  # an HTTP error status or a dropped connection
                outcome = repr(exc)[:80]
            outcomes.append((started, time.time(), outcome))

    def replicas() -> set[str]:
        return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                if a["name"].startswith(f"SERVE_REPLICA::{APP_NAME}#")}  # fmt: skip

    def running() -> int:
        app = serve.status().applications[APP_NAME]
        return sum(d.replica_states.get("RUNNING", 0) for d in app.deployments.values())

    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        for k in range(args.kills):
            before = replicas()
            ray.kill(ray.get_actor(sorted(before)[0], namespace="serve"), no_restart=True)
            killed = time.monotonic()
            while time.monotonic() - killed < 60 and not (replicas() - before and running() == 2):
                time.sleep(0.2)
            print(f"kill {k}: replaced after {time.monotonic() - killed:.1f} s", flush=True)
            time.sleep(2.0)
    finally:
        stop.set()
        for t in threads:
            t.join()
        time.sleep(1.0)  # the last log lines
        serve.shutdown()
        ray.shutdown()
    failed = [o for o in outcomes if o[2] != 200]
    kinds = collections.Counter(str(o[2]) for o in failed)
    states = collections.Counter(m.group(1) for _, line in logs if (m := STATE.search(line)))
    print(f"{len(outcomes)} requests, {len(failed)} failed: {dict(kinds)}")
    print(f"HAProxy termination states: {dict(states)}")
    for started, ended, outcome in failed:
        near = [line for t, line in logs if started - 0.5 <= t <= ended + 0.5 and " 200 " not in line]
        print(f"{outcome} at {time.strftime('%H:%M:%S', time.localtime(started))}:")
        for line in near[:8]:
            print(f"    {line[:300]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
