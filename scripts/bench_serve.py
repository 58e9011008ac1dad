"""Serving speed of `raygan serve` over loopback HTTP: batching on vs off, a long load, a replica
killed under load.

    python scripts/bench_serve.py --markdown BENCHMARKS.md   # full run, ~8 minutes on 2 CPUs
    python scripts/bench_serve.py --smoke-test               # tiny sizes: checks the script

Model: SeqGAN oracle sizes (vocab 5000, G embed/hidden 32/32, 20 tokens), a few MLE steps on a
random oracle's samples; the weights do not change the speed. Every request asks for one
20-token sample (`{"n": 1, "max_tokens": 20, "seed": i}`) from one client process (aiohttp, one
connection per concurrent client), all on 127.0.0.1. Sections, all in one run:
  1. two applications side by side, one replica each, identical but for `max_batch_size`
     (32: batching on; 1: batch-1 serving), and a no-model app (`HTTP only`); for each
     concurrency the three are loaded in turn, every cell bounded by a request count and a time
     limit; first on a Ray whose Serve uses its Python proxy (top concurrency only), then on a
     fresh Ray with the HAProxy ingress raygan starts by default (every concurrency);
  2. on that Ray, a sustained load on a 2-replica application: `--sustained` requests at concurrency 32;
  3. the same application under load while one replica actor is killed (`ray.kill`): failed
     requests counted, time until Serve reports the replica replaced;
  4. overload: one replica loaded by 4x the requests it can hold (max_ongoing_requests +
     max_queued_requests): the share answered 503 (with Retry-After), how fast, and the latency
     of the rest.
Load from other processes on this shared 2-CPU machine slows every number: the load average
is recorded at the start and end of each section, and the on/off ratio is taken within a run.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import shlex
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from raygan.bench.harness import Benchmark, machine, main
from raygan.bench.serve_tables import report_text
from raygan.run.ray_env import free_port, ray_environment

BATCHED, UNBATCHED, ECHO, LOADED = "batched", "unbatched", "echo", "loaded"
LOGGING = {"enable_access_log": False, "log_level": "WARNING"}
SEQGAN_ORACLE = (
    Path(__file__).resolve().parents[1].parent / "shared/data/seqgan_oracle/target_params.npz"
)


@dataclasses.dataclass(frozen=True)
class Sizes:
    vocab: int = 5000
    max_len: int = 20
    g_dim: int = 32
    concurrency: tuple[int, ...] = (1, 8, 32)
    cell_requests: int = 2000  # per (concurrency, batching) cell, after warm-up ...
    cell_seconds: float = 20.0  # ... or this long, whichever comes first
    warmup_requests: int = 64
    sustained_requests: int = 10_000
    sustained_seconds: float = 480.0  # 10,000 requests at >= 21 req/s
    kill_requests: int = 4000
    kill_seconds: float = 90.0
    kill_after_s: float = 3.0  # into the kill load
    overload_requests: int = 6000
    overload_seconds: float = 60.0
    max_batch_size: int = 32


FULL = Sizes()
SMOKE = Sizes(
    vocab=50, max_len=8, g_dim=8, concurrency=(1, 4), cell_requests=40, cell_seconds=5.0,
    warmup_requests=8, sustained_requests=200, sustained_seconds=30.0, kill_requests=300,
    kill_seconds=30.0, kill_after_s=1.0, overload_requests=800, overload_seconds=20.0,
)  # fmt: skip
OVERLOADED = "overloaded"


# -- a checkpoint at serving sizes ----------------------------------------------------------------
def make_checkpoint(work: Path, s: Sizes) -> str:
    """A few MLE steps of G on a random oracle's samples, saved as a real checkpoint."""
    from raygan.data.prepare import prepare_oracle
    from raygan.run.checkpoint import copy_checkpoint
    from raygan.run.loop import RunSpec, WorkerContext, train_loop
    from raygan.run.train import resolve_config

    data = work / "data"
    prepare_oracle(str(data), oracle="random", num_samples=640, num_test=64, vocab_size=s.vocab,
                   max_len=s.max_len, seed=0, progress=False)  # fmt: skip
    overrides = {"num_workers": 1, "batch_size": 64, "mle_steps": 10, "d_pretrain_steps": 0,
                 "adv_steps": 0, "eval_every": 10, "eval_samples": 64, "checkpoint_every": 10,
                 "g_embed_dim": s.g_dim, "g_hidden_dim": s.g_dim}  # fmt: skip
    config = resolve_config(str(data), overrides)
    saved = []
    ctx = WorkerContext(report=lambda m, d: saved.append(copy_checkpoint(d, work / "ckpt")))
    train_loop(RunSpec(config=config, data_dir=str(data), run_dir=None), ctx)
    return str(saved[-1])


# -- the load generator ---------------------------------------------------------------------------
async def load(
    url: str, *, concurrency: int, requests: int, seconds: float, max_tokens: int, seed0: int = 0,
    wait_retry_after: bool = False,
) -> dict:
    """`concurrency` clients send requests back to back until `requests` were sent or `seconds`
    passed (a client refused with 503 and Retry-After waits that long first if
    `wait_retry_after`); returns throughput, latency percentiles, batch sizes and every non-200
    outcome."""
    import aiohttp

    latencies, batch_sizes, failures, rejected = [], [], {}, []
    sent = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=60)
    started, cpu_started = time.perf_counter(), time.process_time()
    deadline = started + seconds
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def client() -> None:
            nonlocal sent
            while sent < requests and time.perf_counter() < deadline:
                body = {"n": 1, "max_tokens": max_tokens, "seed": seed0 + sent}
                sent += 1
                t0 = time.perf_counter()
                try:
                    async with session.post(url + "/generate", json=body) as response:
                        status = response.status
                        payload = await response.json() if status == 200 else None
                        retry_after = response.headers.get("Retry-After")
                        if status == 503 and retry_after is not None:
                            rejected.append(time.perf_counter() - t0)
                            if wait_retry_after:
                                await asyncio.sleep(float(retry_after))
                except Exception as exc:  # a dropped connection is a failed request too
                    status, payload = type(exc).__name__, None
                if status == 200:
                    latencies.append(time.perf_counter() - t0)
                    batch_sizes.append(payload["batch_requests"])
                else:
                    failures[str(status)] = failures.get(str(status), 0) + 1

        await asyncio.gather(*(client() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    result = summarize(latencies, batch_sizes, failures, wall, concurrency)
    if rejected:  # 503s for a full queue (they carry Retry-After): how fast they came back
        ordered = sorted(rejected)
        result["rejected"] = {"count": len(ordered), "p50_ms": ordered[len(ordered) // 2] * 1e3,
                              "p99_ms": ordered[int(0.99 * len(ordered))] * 1e3}  # fmt: skip
    result["client_cpu"] = (time.process_time() - cpu_started) / wall  # of one CPU, this process
    return result


def summarize(latencies, batch_sizes, failures, wall, concurrency) -> dict:
    ordered = sorted(latencies)

    def pct(q: float) -> float | None:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3 if ordered else None

    return {
        "concurrency": concurrency, "ok": len(ordered), "failed": sum(failures.values()),
        "failures": failures, "wall_s": wall, "requests_per_s": len(ordered) / wall,
        "p50_ms": pct(0.50), "p90_ms": pct(0.90), "p99_ms": pct(0.99),
        "max_ms": ordered[-1] * 1e3 if ordered else None,
        "mean_batch": statistics.fmean(batch_sizes) if batch_sizes else None,
        "server_5xx": sum(n for k, n in failures.items() if k.startswith("5")),
    }  # fmt: skip


# -- what batching can gain, and what HTTP costs ---------------------------------------------------
def bench_compute(checkpoint: str, s: Sizes, reps: int = 10) -> dict:
    """Sampling alone, in this process (1 thread): one request vs a full batch of them."""
    from raygan.serve.sampling import SampleRequest, load_model, sample_batch

    model = load_model(checkpoint)
    batch = [SampleRequest(num=1, max_tokens=s.max_len, seed=i) for i in range(s.max_batch_size)]
    times: dict[str, list[float]] = {"one": [], "batch": []}
    for rep in range(2 + reps):  # interleaved, after 2 warm-up rounds
        for name, requests in (("one", batch[:1]), ("batch", batch)):
            t0 = time.perf_counter()
            sample_batch(model, requests)
            if rep >= 2:
                times[name].append(time.perf_counter() - t0)
    one, full = statistics.median(times["one"]), statistics.median(times["batch"])
    return {"one_request_ms": one * 1e3, "batch_ms": full * 1e3,
            "batch_per_request_ms": full * 1e3 / len(batch),
            "speedup_per_request": one * len(batch) / full, "times_s": times}  # fmt: skip


def echo_app():
    """The HTTP path without the model: a FastAPI ingress that answers at once (the floor)."""
    from fastapi import FastAPI
    from ray import serve

    api = FastAPI()

    @serve.deployment(max_ongoing_requests=64, ray_actor_options={"num_cpus": 0.5})
    @serve.ingress(api)
    class Echo:
        @api.post("/generate", response_model=None)
        async def generate(self):
            return {"batch_requests": 1}

    return Echo.bind()


# -- Serve ----------------------------------------------------------------------------------------
def deploy(name: str, checkpoint: str, *, replicas: int, max_batch_size: int) -> dict:
    from raygan.serve.app import build_app, run_app

    # num_cpus 0.5: two apps and a replacement replica fit the 2 logical CPUs
    app = build_app(checkpoint, replicas=replicas, num_cpus=0.5, max_batch_size=max_batch_size)
    run_app(app, name=name, route_prefix=f"/{name}", logging_config=LOGGING)
    deployment = app._bound_deployment  # what Serve was given, not raygan's constants again
    return {"max_ongoing_requests": deployment.max_ongoing_requests,
            "max_queued_requests": deployment.max_queued_requests}  # fmt: skip


def replica_names(app: str) -> list[str]:
    import ray

    return [
        a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith(f"SERVE_REPLICA::{app}#")
    ]  # fmt: skip


def running_replicas(app: str) -> int:
    from ray import serve

    status = serve.status().applications.get(app)
    if status is None:
        return 0
    return sum(d.replica_states.get("RUNNING", 0) for d in status.deployments.values())


def kill_during_load(base: str, s: Sizes) -> dict:
    """Load the 2-replica app; kill one replica after kill_after_s; watch Serve replace it."""
    import ray

    watch: dict = {"events": []}

    def killer() -> None:
        time.sleep(s.kill_after_s)
        before = set(replica_names(LOADED))
        victim = sorted(before)[0]
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        killed = time.perf_counter()
        watch.update(victim=victim, killed_at=killed)
        # Serve's status counts the dead replica as RUNNING until its controller notices: the
        # replacement is done when the count, having dropped, is back with a new replica.
        while time.perf_counter() - killed < s.kill_seconds:
            running, names = running_replicas(LOADED), set(replica_names(LOADED))
            if "detected_s" not in watch and running < len(before):
                watch["detected_s"] = time.perf_counter() - killed
            if "detected_s" in watch and running >= len(before) and names - before:
                watch["replaced_s"] = time.perf_counter() - killed
                watch["replacement"] = sorted(names - before)[0]
                break
            time.sleep(0.05)

    thread = threading.Thread(target=killer)
    started = time.perf_counter()
    thread.start()
    result = asyncio.run(load(f"{base}/{LOADED}", concurrency=32, requests=s.kill_requests,
                              seconds=s.kill_seconds, max_tokens=s.max_len, seed0=10**6))  # fmt: skip
    thread.join()
    result.update({k: v for k, v in watch.items() if k not in ("events", "killed_at")})
    result["killed_after_s"] = watch.get("killed_at", started) - started
    result["replicas_after"] = running_replicas(LOADED)
    return result


# -- the run --------------------------------------------------------------------------------------
def start_serve(proxy: str) -> str:
    """A fresh local Ray whose Serve takes HTTP through `proxy`; returns the base URL."""
    import ray
    from ray import serve

    from raygan.run.ray_env import PROXY_VAR, serve_proxy_environment

    for var in [v for v in os.environ if v.startswith("RAY_SERVE_")]:
        del os.environ[var]  # each Ray gets the variables of its own proxy
    os.environ[PROXY_VAR] = proxy
    serve_proxy_environment()
    ray.init(num_cpus=2, log_to_driver=True)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
    return f"http://127.0.0.1:{port}"


def stop_serve() -> None:
    import ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()


def on_off_cells(base: str, checkpoint: str, s: Sizes, proxy: str, concurrency) -> list[dict]:
    """Batching on, off and the no-model app, loaded in turn at each concurrency."""
    from ray import serve

    t0 = time.perf_counter()
    deploy(BATCHED, checkpoint, replicas=1, max_batch_size=s.max_batch_size)
    deploy(UNBATCHED, checkpoint, replicas=1, max_batch_size=1)
    serve.run(echo_app(), name=ECHO, route_prefix=f"/{ECHO}", logging_config=LOGGING)
    print(f"  {proxy} proxy: apps up in {time.perf_counter() - t0:.1f} s at {base}", flush=True)
    cells = []
    for c in concurrency:
        for name, batching in ((BATCHED, "on"), (UNBATCHED, "off"), (ECHO, "HTTP only")):
            common = {"concurrency": c, "max_tokens": s.max_len}
            asyncio.run(load(f"{base}/{name}", requests=s.warmup_requests, seconds=30, **common))
            cell = asyncio.run(load(f"{base}/{name}", requests=s.cell_requests,
                                    seconds=s.cell_seconds, seed0=1000, **common))  # fmt: skip
            cell.update(proxy=proxy, batching=batching, loadavg=os.getloadavg()[0])
            cells.append(cell)
            print(f"  {proxy} batching {batching:3s} c={c:2d}: {cell['requests_per_s']:7.1f} "
                  f"req/s, p50 {cell['p50_ms']:.1f} ms, p99 {cell['p99_ms']:.1f} ms, "
                  f"mean batch {cell['mean_batch']:.1f}, failed {cell['failed']}", flush=True)  # fmt: skip
    for name in (BATCHED, UNBATCHED, ECHO):
        serve.delete(name)
    return cells


def run(s: Sizes, work: Path) -> dict:
    result: dict = {"command": "python " + shlex.join(sys.argv), "sizes": dataclasses.asdict(s)}
    result["machine"] = machine()
    result["loadavg"] = {"start": os.getloadavg()}  # other work on the machine skews every number
    t0 = time.perf_counter()
    checkpoint = make_checkpoint(work, s)
    result["checkpoint_s"] = time.perf_counter() - t0
    result["compute"] = bench_compute(checkpoint, s)
    print("[0] sampling in-process: " + json.dumps(
        {k: round(v, 2) for k, v in result["compute"].items() if k != "times_s"}), flush=True)  # fmt: skip
    top = max(s.concurrency)
    print(f"[1] Serve's Python proxy, concurrency {top}", flush=True)
    base = start_serve("python")
    cells = on_off_cells(base, checkpoint, s, "python", [top])
    stop_serve()
    print("[2] HAProxy ingress: batching on vs off", flush=True)
    base = start_serve("haproxy")
    cells += on_off_cells(base, checkpoint, s, "haproxy", s.concurrency)
    result["cells"] = cells
    result["loadavg"]["after_cells"] = os.getloadavg()

    print("[3] sustained load on 2 replicas", flush=True)
    deploy(LOADED, checkpoint, replicas=2, max_batch_size=s.max_batch_size)
    url = f"{base}/{LOADED}"
    asyncio.run(
        load(url, concurrency=32, requests=s.warmup_requests, seconds=30, max_tokens=s.max_len)
    )
    result["sustained"] = asyncio.run(load(url, concurrency=32, requests=s.sustained_requests,
                                           seconds=s.sustained_seconds, max_tokens=s.max_len))  # fmt: skip
    result["loadavg"]["after_sustained"] = os.getloadavg()
    print(
        "  " + json.dumps({k: result["sustained"][k] for k in ("ok", "failed", "requests_per_s")})
    )

    print("[4] a replica killed under load", flush=True)
    result["kill"] = kill_during_load(base, s)
    result["loadavg"]["end"] = os.getloadavg()
    print("  " + json.dumps({k: result["kill"].get(k) for k in
                             ("ok", "failed", "failures", "replaced_s", "replicas_after")}))  # fmt: skip
    from ray import serve

    serve.delete(LOADED)
    print("[5] overload: one replica, 4x the requests it holds", flush=True)
    limits = deploy(OVERLOADED, checkpoint, replicas=1, max_batch_size=s.max_batch_size)
    capacity = limits["max_ongoing_requests"] + limits["max_queued_requests"]
    result["overload"] = asyncio.run(load(f"{base}/{OVERLOADED}", concurrency=4 * capacity,
                                          requests=s.overload_requests,
                                          seconds=s.overload_seconds, max_tokens=s.max_len))  # fmt: skip
    result["overload"].update(limits, capacity=capacity)
    print("  " + json.dumps({k: result["overload"].get(k) for k in
                             ("ok", "failures", "rejected", "p99_ms")}))  # fmt: skip
    print("[6] overload, clients that wait Retry-After", flush=True)
    result["overload_waiting"] = asyncio.run(load(
        f"{base}/{OVERLOADED}", concurrency=4 * capacity, requests=s.overload_requests,
        seconds=s.overload_seconds, max_tokens=s.max_len, seed0=s.overload_requests,
        wait_retry_after=True))  # fmt: skip
    result["overload_waiting"].update(limits, capacity=capacity)
    print("  " + json.dumps({k: result["overload_waiting"].get(k) for k in
                             ("ok", "failures", "rejected", "p99_ms")}))  # fmt: skip
    stop_serve()
    return result


def measure(args: argparse.Namespace) -> dict:
    ray_environment()  # RAY_USAGE_STATS_ENABLED=0, RAY_AUTH_MODE=disabled
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up Ray and temp dirs too
    os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="rgs-", dir="/tmp")  # short socket paths
    torch.set_num_threads(1)
    started = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
            result = run(SMOKE if args.smoke_test else FULL, Path(tmp))
    finally:
        shutil.rmtree(os.environ["RAY_TMPDIR"], ignore_errors=True)
    result["total_s"] = time.perf_counter() - started
    return result


BENCH = Benchmark(section="serve", default_json="benchmarks/serve.json", measure=measure,
                  render=report_text)  # fmt: skip

if __name__ == "__main__":
    raise SystemExit(main(BENCH, __doc__.split("\n")[0]))
