"""scripts/bench_train.py's tables: every ratio with its goal, and the section's text, built
from the measurements' JSON alone (so `--from-json` can rebuild them)."""


from __future__ import annotations

import statistics
from collections.abc import Callable

from raygan.bench.train_speed import PEER_NLL_ORACLE_S, PEER_ROLLOUT_G_STEP_S, Sizes, tokens_per_s
from raygan.core.sampler import SAMPLE_CHUNK_ROWS


def _row(what: str, value: float, goal: str = "info", ok: Callable | None = None) -> dict:
    met = None if ok is None or goal == "info" else ok(value)
    return {"what": what, "value": value, "goal": goal, "met": met}


def ratios(r: dict, s: Sizes) -> list[dict]:
    """Every ratio with its goal; `met` is None where the ratio is for information."""
    st, nll, ing = r["steps"], r["nll"], r["ingest"]
    med = lambda d, *keys: d[keys[0]]["median_s"] / d[keys[1]]["median_s"]  # noqa: E731
    rows = [
        _row("MLE epoch time, raygan / plain", med(st["mle_epoch"], "raygan", "plain"),
             "<= 1.0 (no slower)", lambda v: v <= 1.0),
        _row("MLE step time, raygan / plain", med(st["mle_step"], "raygan", "plain")),
        _row("Gumbel G+D step time, raygan / plain", med(st["gumbel_step"], "raygan", "plain")),
        _row(f"rollout g_step ({s.rollout_num}): peer {PEER_ROLLOUT_G_STEP_S:.0f} s / ours",
             PEER_ROLLOUT_G_STEP_S / st["rollout_g_step"]["raygan"]["median_s"], ">= 50",
             lambda v: v >= 50),
        _row(f"NLL_oracle {s.nll_samples:,}: peer {PEER_NLL_ORACLE_S:.0f} s / ours",
             PEER_NLL_ORACLE_S / nll["nll_oracle"]["median_s"], ">= 20", lambda v: v >= 20),
        _row(f"multinomial / sample_categorical time ({s.cat_rows}, {s.vocab})",
             med(nll["sampler"], "multinomial", "sample_categorical"), "6-14 (sample_categorical docstring)"),
        _row("RankBatches rows/s / MLE consumption", ing["vs_mle"], ">= 20", lambda v: v >= 20),
        _row("RankBatches rows/s / adversarial consumption", ing["vs_adversarial"], ">= 20",
             lambda v: v >= 20),
    ]  # fmt: skip
    if "floor" in r:
        fl = r["floor"]
        rows += [
            _row("rollout g_step: peer / this CPU's floor (best possible)",
                 PEER_ROLLOUT_G_STEP_S / fl["rollout_g_step"]["floor_s"]),
            _row("NLL_oracle: peer / this CPU's floor (best possible)",
                 PEER_NLL_ORACLE_S / fl["nll_oracle"]["floor_s"]),
        ]  # fmt: skip
    for kind, pair in r.get("two_processes", {}).items():
        rows += [
            _row(f"two processes / one, tokens/s, {kind}, {s.batch} rows each "
                 "(this machine's most)", pair["pair_vs_alone"]),
            _row(f"two processes, {s.batch // 2} rows each / one with {s.batch}, tokens/s, "
                 f"{kind}", pair["pair_half_vs_alone"]),
        ]  # fmt: skip
        if "ddp_vs_alone" in pair:
            rows.append(_row(f"two processes under DDP (no Ray) / one, tokens/s, {kind}, "
                             f"{s.batch} rows each", pair["ddp_vs_alone"]))  # fmt: skip
    if "ray" not in r:
        return rows
    one, two = r["ray"]["one_worker"]["phases"], r["ray"]["two_workers"]["phases"]
    full = r["ray"].get("two_workers_full", {}).get("phases")
    # Ray gives a 1-CPU worker OMP_NUM_THREADS=1: compare with this process at 1 thread
    alt = st["other_threads"]
    mle_1, gumbel_1 = (
        (st["mle_step"]["raygan"], st["gumbel_step"]["raygan"])
        if r["machine"]["torch_threads"] == 1  # this run's threads, not this process's
        else (alt["mle"], alt["gumbel"])
    )
    rows += [
        _row("Ray 1 worker MLE step / one process (1 thread)",
             one["mle"]["median_s"] / mle_1["median_s"], "<= 1.10", lambda v: v <= 1.10),
        _row("Ray 1 worker gumbel adv step / one process (1 thread)",
             one["adversarial"]["median_s"] / gumbel_1["median_s"], "<= 1.10",
             lambda v: v <= 1.10),
    ]  # fmt: skip
    if full is not None:  # 2 workers x 64 rows vs 1 worker x 64 rows: twice the tokens per step
        rows += [
            _row(f"Ray 2 workers (2 nodes) / 1 worker tokens/s, MLE, {s.batch} rows per worker",
                 2 * one["mle"]["median_s"] / full["mle"]["median_s"], ">= 1.7",
                 lambda v: v >= 1.7),
            _row(f"Ray 2 workers (2 nodes) / 1 worker tokens/s, gumbel adv, {s.batch} rows per "
                 "worker", 2 * one["adversarial"]["median_s"] / full["adversarial"]["median_s"],
                 ">= 1.7", lambda v: v >= 1.7),
        ]  # fmt: skip
        for kind, phase in (("mle", "mle"), ("gumbel", "adversarial")):
            pair = r.get("two_processes", {}).get(kind)
            if pair is not None:  # how much of the machine's two-process throughput Ray gets
                ray_tokens_s = tokens_per_s(2 * s.batch, s.max_len, full[phase]["median_s"])
                rows.append(_row(
                    f"Ray 2 workers x {s.batch} rows / two processes x {s.batch} rows, "
                    f"tokens/s, {kind}", ray_tokens_s / statistics.median(pair["tokens_per_s"]["pair"]),
                ))  # fmt: skip
    split = "info" if full is not None else ">= 1.7"  # runs from before the per-worker cell
    rows += [
        _row(f"Ray 2 workers (2 nodes) / 1 worker tokens/s, MLE, batch {s.batch} split",
             one["mle"]["median_s"] / two["mle"]["median_s"], split, lambda v: v >= 1.7),
        _row(f"Ray 2 workers (2 nodes) / 1 worker tokens/s, gumbel adv, batch {s.batch} split",
             one["adversarial"]["median_s"] / two["adversarial"]["median_s"], split,
             lambda v: v >= 1.7),
        _row("RankBatches rows/s / Ray Data rows/s (incl. start-up)",
             ing["rank_batches"]["rows_per_s"] / r["ray"]["ray_data"]["rows_per_s"]),
        _row("RankBatches rows/s / Ray Data rows/s (after 1st batch)",
             ing["rank_batches"]["rows_per_s"] / r["ray"]["ray_data"]["rows_per_s_after_first"]),
    ]  # fmt: skip
    return rows


def ingest_summary(r: dict, s: Sizes) -> dict:
    """Rows/s RankBatches yields vs rows/s training consumes, against the fastest one-process step
    measured (conservative). An adversarial step with d_steps=1 reads two batches (D and G)."""
    st, rb = r["steps"], r["ingest"]["rank_batches"]
    alt = st["other_threads"]
    mle_s = min(st["mle_step"]["raygan"]["median_s"], alt["mle"]["median_s"])
    adv = {
        "gumbel": st["gumbel_step"]["raygan"]["median_s"],
        f"gumbel, {alt['threads']} threads": alt["gumbel"]["median_s"],
        "dense": st["dense_step"]["raygan"]["median_s"],
    }
    adv_name = min(adv, key=adv.get)
    mle_rows_s, adv_rows_s = s.batch / mle_s, 2 * s.batch / adv[adv_name]
    return {
        "mle_consumes_rows_per_s": mle_rows_s,
        "adversarial_step_used": adv_name,
        "adversarial_consumes_rows_per_s": adv_rows_s,
        "vs_mle": rb["rows_per_s"] / mle_rows_s,
        "vs_adversarial": rb["rows_per_s"] / adv_rows_s,
    }


def times_table(r: dict, s: Sizes) -> str:
    st, T, B = r["steps"], s.max_len, s.batch
    alt = st["other_threads"]
    rows = [
        ("plain MLE step", st["mle_step"]["plain"]["median_s"]),
        ("raygan mle_step", st["mle_step"]["raygan"]["median_s"]),
        (f"raygan mle_step, {alt['threads']} thread(s)", alt["mle"]["median_s"]),
        ("plain Gumbel G+D step", st["gumbel_step"]["plain"]["median_s"]),
        ("raygan adversarial_step gumbel", st["gumbel_step"]["raygan"]["median_s"]),
        (f"raygan adversarial_step gumbel, {alt['threads']} thread(s)", alt["gumbel"]["median_s"]),
        (f"raygan adversarial_step rollout ({s.rollout_num})",
         st["rollout_step"]["raygan"]["median_s"]),
        (f"raygan g_step rollout ({s.rollout_num})", st["rollout_g_step"]["raygan"]["median_s"]),
        ("raygan adversarial_step dense", st["dense_step"]["raygan"]["median_s"]),
    ]  # fmt: skip
    rows = [(name, t, B) for name, t in rows]
    workers = []
    if "ray" in r:
        workers = [("1 worker", "one_worker"), (f"2 workers x {B // 2} rows", "two_workers")]
        if "two_workers_full" in r["ray"]:
            workers.append((f"2 workers x {B} rows", "two_workers_full"))
    for name, key in workers:
        batch = r["ray"][key].get("batch", B)
        for phase, p in r["ray"][key]["phases"].items():
            rows.append((f"Ray Train {name}, {phase} step (TB stamps)", p["median_s"], batch))
    lines = ["| step | median s | tokens/s |", "|---|---:|---:|"]
    lines += [f"| {n} | {t:.4f} | {tokens_per_s(b, T, t):,.0f} |" for n, t, b in rows]
    ep = st["mle_epoch"]
    lines += [
        f"| MLE epoch ({ep['steps']} steps), plain | {ep['plain']['median_s']:.2f} | |",
        f"| MLE epoch ({ep['steps']} steps), raygan | {ep['raygan']['median_s']:.2f} | |",
        f"| NLL_oracle of {s.nll_samples:,} samples | {r['nll']['nll_oracle']['median_s']:.2f} | |",
    ]
    if "floor" in r:
        fl = r["floor"]
        ro, nl = fl["rollout_g_step"], fl["nll_oracle"]
        lines += [
            f"| floor: rollout g_step ({ro['rows']:,} rows projected + exp, D on "
            f"{ro['d_seqs']:,} sequences) | {ro['floor_s']:.2f} | |",
            f"| floor: NLL_oracle ({nl['rows']:,} rows projected + exp) | {nl['floor_s']:.2f} | |",
        ]
    if "ray" in r:
        data = r["ray"]["ray_data"]
        lines.append(
            f"| Ray Data read_parquet → iter_batches(64) + pad: first batch / total "
            f"({data['rows']:,} rows) | {data['first_batch_s']:.2f} / {data['total_s']:.2f} | |"
        )
    for name, key in workers:
        w = r["ray"][key]
        lines.append(
            f"| Ray Train {name}: start-up (fit − loop) / loop wall / loop per step | "
            f"{w['startup_s']:.1f} / {w['loop_wall_s']:.1f} / {w['loop_wall_per_step_s']:.3f} | |"
        )
    return "\n".join(lines)


def ratio_table(rows: list[dict]) -> str:
    mark = {True: "yes", False: "**no**", None: "—"}
    lines = ["| ratio | value | goal | met |", "|---|---:|---|---|"]
    lines += [f"| {r['what']} | {r['value']:.2f} | {r['goal']} | {mark[r['met']]} |" for r in rows]
    return "\n".join(lines)


def report_text(result: dict) -> str:
    """The tables and the notes that belong with them, for stdout and BENCHMARKS.md."""
    machine = result["machine"]
    lines = [
        f"Oracle: {result['oracle']}. Machine: {machine['cpu']}, {machine['cpus']} CPUs, torch "
        f"threads {machine['torch_threads']} (Ray 1-CPU workers: "
        f"{result.get('ray', {}).get('worker_torch_threads', '-')}); load average at start "
        f"{result['loadavg_start'][0]:.1f}.",
        "",
        result["markdown"],
    ]
    if "rollout_profile" in result:
        top = result["rollout_profile"]["top_ops"][:5]
        lines += ["", "Rollout g_step, top self-CPU ops: " + "; ".join(
            f"{o['op']} {o['self_cpu_s']:.2f} s ({o['share']:.0%}, {o['calls']} calls)" for o in top
        )]  # fmt: skip
    if "floor" in result:
        fl = result["floor"]
        lines += ["", (
            f"Floors: per sampled or scored row, the vocab projection ({fl['project_us_per_row']:.2f}"
            f" us, {fl['project_gflops']:.0f} GFLOP/s, addmm of {SAMPLE_CHUNK_ROWS} rows) and one "
            f"exp per logit ({fl['exp_us_per_row']:.2f} us), which any exact softmax draw or "
            f"log-softmax needs; per sequence D scores, its forward pass "
            f"({fl['d_forward_us_per_seq']:.0f} us). Counts times rates, nothing else: a step "
            "that did only this arithmetic would take the floor, so a ratio to the peer above "
            "`peer / floor` cannot be reached on this CPU in float32."
        )]  # fmt: skip
    peer = f"{PEER_ROLLOUT_G_STEP_S:.0f} s, {PEER_NLL_ORACLE_S:.0f} s"
    lines += [
        "",
        f"Peer figures ({peer}) are TextGAN-PyTorch's, measured earlier on this CPU model; "
        "not re-measured here.",
        f"Command: `{result['command']}`; total {result['total_s']:.0f} s.",
    ]
    return "\n".join(lines)
