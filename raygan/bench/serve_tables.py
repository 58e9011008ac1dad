"""scripts/bench_serve.py's goals and tables, built from its JSON alone (so `--from-json` can
rebuild them)."""

from __future__ import annotations

import json

from raygan.bench.markdown import markdown_table

BATCHED, UNBATCHED, ECHO, LOADED = "batched", "unbatched", "echo", "loaded"

def cell_of(result: dict, batching: str, concurrency: int, proxy: str = "haproxy") -> dict:
    return next(
        c for c in result["cells"]
        if c["batching"] == batching and c["concurrency"] == concurrency and c["proxy"] == proxy
    )  # fmt: skip


def best_batched(result: dict) -> float:
    """Requests/s batched serving could reach on this machine at top concurrency, if the HTTP
    path cost what the no-model app measured and sampling what a full batch costs in-process,
    one after the other (one effective CPU for replica, proxy and client): an estimate of the
    ceiling, not a bound proven for every schedule."""
    top = max(result["sizes"]["concurrency"])
    http_s = 1 / cell_of(result, "HTTP only", top)["requests_per_s"]
    return 1 / (http_s + result["compute"]["batch_per_request_ms"] / 1e3)


MARK = {True: "yes", False: "**no**"}
"""A goal row's last cell: met or not."""


def goals(result: dict) -> list[list]:
    top = max(result["sizes"]["concurrency"])
    on, off = cell_of(result, "on", top), cell_of(result, "off", top)
    ratio = on["requests_per_s"] / off["requests_per_s"]
    best = best_batched(result)
    sustained, kill = result["sustained"], result["kill"]
    return [
        [f"req/s batching on / off, concurrency {top}", f"{ratio:.1f}x", ">= 10x", MARK[ratio >= 10]],
        [f"the same, at the estimated ceiling of batched serving here ({best:,.0f} req/s)",
         f"{best / off['requests_per_s']:.1f}x", ">= 10x", MARK[best / off["requests_per_s"] >= 10]],
        [f"p99 latency, batching on, concurrency {top}", f"{on['p99_ms']:.0f} ms", "<= 100 ms",
         MARK[on["p99_ms"] <= 100]],
        ["sustained: requests answered at concurrency 32 (5xx)",
         f"{sustained['ok']:,} ({sustained['server_5xx']})", f">= {result['sizes']['sustained_requests']:,} (0)",
         MARK[sustained["ok"] >= result["sizes"]["sustained_requests"] and sustained["server_5xx"] == 0]],
        ["replica killed under load: failed requests / replaced after",
         f"{kill['failed']} / {kill.get('replaced_s', float('nan')):.1f} s", "0; replaced",
         MARK[kill["failed"] == 0 and kill.get("replaced_s") is not None]],
        *overload_goals(result.get("overload")),
        *waiting_goals(result.get("overload_waiting")),
    ]  # fmt: skip


def overload_goals(over: dict | None) -> list[list]:
    if over is None:  # a JSON from before the overload section
        return []
    sent = over["ok"] + over["failed"]
    rejected = over.get("rejected", {"count": 0, "p99_ms": float("nan")})
    other = other_errors(over)
    return [
        [f"overload, 4x capacity ({over['concurrency']} clients, 1 replica): answered 503 "
         "with Retry-After / p99 of those", f"{rejected['count'] / sent:.1%} / "
         f"{rejected['p99_ms']:.0f} ms", ">= 50%, faster than the rest",
         MARK[rejected["count"] >= sent / 2 and rejected["p99_ms"] < (over["p99_ms"] or 0)]],
        ["overload: p99 latency of the answered", f"{over['p99_ms']:,.0f} ms", "<= 1,000 ms",
         MARK[(over["p99_ms"] or float("inf")) <= 1000]],
        ["overload: errors other than 503", f"{other}", "0", MARK[other == 0]],
    ]  # fmt: skip


def other_errors(over: dict) -> int:
    """An overload cell's failed requests that were not its 503 + Retry-After refusals."""
    return over["failed"] - over.get("rejected", {"count": 0})["count"]


def waiting_goals(over: dict | None) -> list[list]:
    """The overload cell again with clients that wait the Retry-After they are given."""
    if over is None:  # a JSON from before this cell
        return []
    other = other_errors(over)
    return [
        ["overload, clients that wait Retry-After: p99 latency of the answered / errors other "
         "than 503", f"{over['p99_ms']:,.0f} ms / {other}", "<= 1,000 ms / 0",
         MARK[(over["p99_ms"] or float("inf")) <= 1000 and other == 0]],
    ]  # fmt: skip


def client_cpu(cell: dict) -> str:
    """The load generator's share of one CPU (the machine has os.cpu_count() of them)."""
    return f"{cell['client_cpu']:.0%}" if "client_cpu" in cell else "—"


def report_text(result: dict) -> str:
    """The tables and their notes, for stdout and BENCHMARKS.md."""
    m, s, loadavg, c = result["machine"], result["sizes"], result["loadavg"], result["compute"]
    rows = [
        [c["proxy"], c["batching"], c["concurrency"], c["ok"], f"{c['requests_per_s']:,.1f}",
         f"{c['p50_ms']:.1f}", f"{c['p99_ms']:.1f}", f"{c['mean_batch']:.1f}", c["failed"],
         client_cpu(c)]
        for c in result["cells"]
    ]  # fmt: skip
    sustained, kill = result["sustained"], result["kill"]
    loaded = [("sustained, 2 replicas", sustained), ("replica killed, 2 replicas", kill)]
    if "overload" in result:
        loaded.append(("overload, 1 replica", result["overload"]))
    if "overload_waiting" in result:
        loaded.append(("overload, clients wait Retry-After", result["overload_waiting"]))
    for label, r in loaded:
        rows.append(["haproxy", label, r["concurrency"], r["ok"], f"{r['requests_per_s']:,.1f}",
                     f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}", f"{r['mean_batch']:.1f}",
                     r["failed"], client_cpu(r)])  # fmt: skip
    header = ["proxy", "batching", "concurrency", "answered", "req/s", "p50 ms", "p99 ms",
              "mean batch", "failed", "client CPU"]  # fmt: skip
    top = max(s["concurrency"])
    echo = {
        p: cell_of(result, "HTTP only", top, p)["requests_per_s"] for p in ("python", "haproxy")
    }
    lines = [
        f"Model: vocab {s['vocab']}, G {s['g_dim']}/{s['g_dim']}, {s['max_len']}-token samples, "
        f"one per request. Machine: {m['cpu']}, {m['cpus']} CPUs, Ray {m['ray']}, torch "
        f"{m['torch']}; replicas run torch with 1 thread. Load average (1 min) at start "
        f"{loadavg['start'][0]:.1f}, after the on/off cells {loadavg['after_cells'][0]:.1f}, at "
        f"the end {loadavg['end'][0]:.1f}.",
        "",
        markdown_table(header, rows),
        "",
        f"Sampling alone, in-process, 1 thread: one request {c['one_request_ms']:.1f} ms; "
        f"{s['max_batch_size']} requests in one batch {c['batch_ms']:.1f} ms, i.e. "
        f"{c['batch_per_request_ms']:.2f} ms per request ({c['speedup_per_request']:.1f}x less). "
        "`HTTP only` is a FastAPI ingress that answers without sampling: the ceiling of the HTTP "
        f"path (proxy, replica, client) on this machine, {echo['haproxy']:,.0f} req/s through "
        f"HAProxy vs {echo['python']:,.0f} through Serve's Python proxy at concurrency {top} "
        f"({echo['haproxy'] / echo['python']:.1f}x).",
        "",
        markdown_table(["goal", "measured", "target", "met"], goals(result)),
        "",
        f"Batching on: max_batch_size {s['max_batch_size']}, batch_wait_timeout_s 0.005; off: "
        "max_batch_size 1, everything else equal. Each on/off cell: up to "
        f"{s['cell_requests']:,} requests or {s['cell_seconds']:.0f} s after "
        f"{s['warmup_requests']} warm-up requests. Replica killed "
        f"{kill['killed_after_s']:.1f} s into the load; Serve saw it gone after "
        f"{kill.get('detected_s', float('nan')):.1f} s; failures by kind: "
        f"{json.dumps(kill['failures']) if kill['failures'] else 'none'}."
        + (f" Overload: max_ongoing_requests {result['overload']['max_ongoing_requests']} + "
           f"max_queued_requests {result['overload']['max_queued_requests']} per replica; its "
           f"`failed` are the 503s: {json.dumps(result['overload']['failures'])}; its clients "
           "send again at once, except in the row whose clients wait the Retry-After they get."
           if "overload" in result else ""),
        f"Command: `{result['command']}`; total {result['total_s']:.0f} s.",
    ]
    return "\n".join(lines)
