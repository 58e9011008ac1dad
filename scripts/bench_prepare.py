"""Benchmark `raygan prepare` (throughput, flat memory, Ray Data workers) and the RankBatches
read path.

    python scripts/bench_prepare.py --sizes-mb 30 300 --scaling-mb 40 --markdown BENCHMARKS.md
    python scripts/bench_prepare.py --smoke-test       # one 0.5 MB corpus: checks the script

For each size: write a text file of random sentences from a seeded vocabulary (in a temporary
directory, deleted afterwards), run prepare_text with the word tokenizer in a fresh child process,
and record wall time, lines/s, MB/s and peak RSS (getrusage, plus a thread sampling VmRSS every
50 ms). Flat memory means the peak RSS ratio between sizes stays near 1 while the input grows.
Then, in another child, time RankBatches: loading the train split and producing batches (rows/s).

Reader (`--reader-rows`): synthetic train splits of 1M and 10M rows (20 random tokens each, in
shards of 100,000 rows written straight with pyarrow), read by RankBatches (the split in RAM) and
StreamBatches (a 1M-row shuffle buffer) in fresh processes: peak RSS, time to the first batch,
rows/s over 2,000 batches of 64.

Scaling (`--scaling-mb`): one corpus prepared per tokenizer kind by one process (with the
tokenizers' thread pool, and on one thread as in a Ray task; per core: MB over its CPU-seconds),
and by `--workers 1` and `--workers 2` on a Ray cluster of two 1-CPU nodes
(ray.cluster_utils.Cluster, started before the clock), with the tokenizer's own encode_batch
rate beside them (MB/s per core: the work one core does, so a process that uses more than one
core is rated per core used).
Then Ray's own ceiling on the same two nodes: as many tasks as the corpus has pieces, each a
fixed share of the word cell's 1-worker time spent computing in pure Python (no I/O), through
prepare's task runner on 1 and 2 workers: what 2 workers can gain over 1 on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PUNCTUATION = (".", ",", "?", "!", ";")
REPO = Path(__file__).resolve().parents[1]


def write_corpus(path: Path, megabytes: float, *, vocab_words: int, seed: int) -> int:
    """Random sentences (5-25 Zipf-distributed words, some punctuation); returns the line count."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocab = ["".join(rng.choice(letters, rng.integers(2, 10))) for _ in range(vocab_words)]
    vocab[:3] = ["don't", "it's", "(maybe)"]  # a few words the nltk rules split
    target, written, lines = int(megabytes * 1e6), 0, 0
    with path.open("w", encoding="utf-8") as f:
        while written < target:
            lengths = rng.integers(5, 26, size=10_000)
            words = (rng.zipf(1.3, size=lengths.sum()) - 1) % vocab_words
            ends = rng.choice(PUNCTUATION, size=len(lengths), p=[0.7, 0.1, 0.1, 0.05, 0.05])
            block, start = [], 0
            for n, end in zip(lengths, ends, strict=True):
                block.append(" ".join(vocab[w] for w in words[start : start + n]) + end + "\n")
                start += n
            text = "".join(block)
            f.write(text)
            written += len(text.encode())
            lines += len(block)
    return lines


class RssSampler(threading.Thread):
    """Samples this process's VmRSS every `interval` seconds."""

    def __init__(self, interval: float = 0.05):
        super().__init__(daemon=True)
        self.interval, self.samples_mb, self._done = interval, [], threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    self.samples_mb.append(int(line.split()[1]) / 1024)
            self._done.wait(self.interval)

    def stop(self) -> dict:
        self._done.set()
        self.join()
        samples = np.array(self.samples_mb or [0.0])
        half = len(samples) // 2
        return {
            "rss_peak_sampled_mb": round(float(samples.max()), 1),
            "rss_median_first_half_mb": round(float(np.median(samples[: max(half, 1)])), 1),
            "rss_median_second_half_mb": round(float(np.median(samples[half:])), 1),
            "rss_samples": len(samples),
        }


def child_prepare(corpus: str, out: str) -> dict:
    from raygan.data.prepare import prepare_text

    sampler = RssSampler()
    sampler.start()
    started = time.perf_counter()
    summary = prepare_text([corpus], out, tokenizer="word", max_len=32, test_fraction=0.0, progress=False)
    seconds = time.perf_counter() - started
    result = sampler.stop()
    counts = summary.splits["train"]
    megabytes = Path(corpus).stat().st_size / 1e6
    result.update(
        seconds=round(seconds, 2),
        lines=counts.lines_read,
        kept=counts.kept,
        lines_per_s=round(counts.lines_read / seconds),
        mb_per_s=round(megabytes / seconds, 2),
        vocab_size=summary.vocab_size,
        rss_peak_getrusage_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    )
    return result


def child_prepare_ray(corpus: str, out: str, kind: str, workers: str, piece_mb: str) -> dict:
    """prepare_text on a fresh cluster of two 1-CPU nodes (workers 0: one process, no Ray;
    "0-1": one process whose tokenizers run on one thread, as in a Ray task)."""
    if workers == "0-1":
        os.environ["TOKENIZERS_PARALLELISM"] = "false"  # read at the tokenizers' first use
    import ray

    from raygan.data.prepare import prepare_text

    ray_workers = 0 if workers.startswith("0") else int(workers)
    cluster = start_two_nodes() if ray_workers else None
    cpu_started, started = time.process_time(), time.perf_counter()
    summary = prepare_text([corpus], out, tokenizer=kind, max_len=64, test_fraction=0.05,
                           progress=False, workers=ray_workers or None,
                           piece_mb=float(piece_mb))  # fmt: skip
    seconds = time.perf_counter() - started
    driver_cpu_s = time.process_time() - cpu_started
    if cluster is not None:
        ray.shutdown()
        cluster.shutdown()
    megabytes = Path(corpus).stat().st_size / 1e6
    return {"kind": kind, "workers": workers, "seconds": round(seconds, 2),
            "mb_per_s": round(megabytes / seconds, 2), "driver_cpu_s": round(driver_cpu_s, 2),
            "kept": summary.splits["train"].kept + summary.splits["test"].kept}  # fmt: skip


def start_two_nodes():
    """A fresh Ray cluster of two 1-CPU nodes, the driver connected to it."""
    import ray
    from ray.cluster_utils import Cluster

    from raygan.run.ray_env import ray_environment

    ray_environment(local=False)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
    return cluster


@dataclass(frozen=True)
class BurnTask:
    index: int
    size: int = 1


def burn(task: BurnTask, *, seconds: float) -> dict:
    """`seconds` of this process's CPU time in pure Python: a task of fixed work, no I/O."""
    end, spins = time.process_time() + seconds, 0
    while time.process_time() < end:
        spins += 1
    return {"spins": spins}


def child_ray_ceiling(tasks: str, task_s: str, workers: str) -> dict:
    """Ray's own ceiling here: `tasks` tasks of `task_s` CPU-seconds each through prepare's task
    runner (raygan.data.distributed._run_tasks), on the same two 1-CPU nodes as prepare."""
    import ray

    from raygan.data.distributed import _run_tasks

    cluster = start_two_nodes()
    started = time.perf_counter()
    pieces = [BurnTask(i) for i in range(int(tasks))]
    _run_tasks(pieces, burn, int(workers), "burn", False, seconds=float(task_s))
    seconds = time.perf_counter() - started
    ray.shutdown()
    cluster.shutdown()
    return {"tasks": int(tasks), "task_s": float(task_s), "workers": int(workers),
            "seconds": round(seconds, 2)}  # fmt: skip


def child_tokenize(corpus: str, kind: str) -> dict:
    """The tokenizer alone: encode_batch over the corpus in 1 MiB blocks, on one thread."""
    os.environ["RAYON_NUM_THREADS"] = "1"  # read when tokenizers starts its pool
    from raygan.data.tokenizer import train_tokenizer

    text = Path(corpus).read_text(encoding="utf-8").splitlines()
    blocks = [text[i : i + 20_000] for i in range(0, len(text), 20_000)]
    tok = train_tokenizer(kind, iter(blocks), vocab_size=None, min_frequency=1)
    started = time.perf_counter()
    for block in blocks:
        tok.encode_batch(block, add_special_tokens=False)
    seconds = time.perf_counter() - started
    return {"kind": kind, "encode_mb_per_s": round(Path(corpus).stat().st_size / 1e6 / seconds, 2)}


def write_rows(out: str, rows: int, *, max_len: int = 20, vocab: int = 5000) -> None:
    """A prepared directory whose train split is `rows` random fixed-length rows in shards of
    100,000 (test: 1,000 rows): a tiny random-oracle corpus's manifest with these shards."""
    import hashlib

    import pyarrow as pa
    import pyarrow.parquet as pq

    from raygan.data.layout import SHARD_SCHEMA
    from raygan.data.prepare import prepare_oracle

    prepare_oracle(out, oracle="random", num_samples=1, num_test=1, vocab_size=vocab,
                   max_len=max_len, progress=False)  # fmt: skip
    manifest = json.loads(Path(out, "manifest.json").read_text())
    rng = np.random.default_rng(0)
    for split, n in (("train", rows), ("test", 1000)):
        shards = []
        for start in range(0, n, 100_000):
            count, name = min(100_000, n - start), f"{split}-{start // 100_000:05d}.parquet"
            tokens = rng.integers(0, vocab, size=count * max_len, dtype=np.int32)
            offsets = pa.array(np.arange(0, count * max_len + 1, max_len, dtype=np.int32))
            table = pa.Table.from_arrays(
                [pa.ListArray.from_arrays(offsets, pa.array(tokens)),
                 pa.array(np.full(count, max_len, dtype=np.int32))], schema=SHARD_SCHEMA,
            )  # fmt: skip
            pq.write_table(table, Path(out, name), compression="zstd")
            sha = hashlib.sha256(Path(out, name).read_bytes()).hexdigest()
            shards.append({"file": name, "rows": count, "sha256": sha})
        manifest["splits"][split] = {"rows": n, "shards": shards}
    Path(out, "manifest.json").write_text(json.dumps(manifest))


def child_reader(out: str, reader: str, batch: int, max_batches: int) -> dict:
    from raygan.data.read import RankBatches, StreamBatches

    started = time.perf_counter()
    kind = StreamBatches if reader == "stream" else RankBatches
    batches = iter(kind(out, batch_size_per_rank=batch, seed=0))
    next(batches)
    first_s = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(max_batches):
        next(batches)
    seconds = time.perf_counter() - started
    return {
        "reader": reader,
        "first_batch_s": round(first_s, 3),
        "rows_per_s": round(max_batches * batch / seconds),
        "rss_peak_getrusage_mb": round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
        ),
    }


def child_read(out: str, batch: int, world_size: int, max_batches: int) -> dict:
    from raygan.data.read import RankBatches

    started = time.perf_counter()
    batches = RankBatches(out, batch_size_per_rank=batch, world_size=world_size, seed=0)
    load_s = time.perf_counter() - started
    started, rows = time.perf_counter(), 0
    for step, (tokens_BT, _) in enumerate(batches):
        rows += tokens_BT.shape[0]
        if step + 1 >= max_batches:
            break
    seconds = time.perf_counter() - started
    return {
        "rows_in_split": len(batches.rows),
        "load_s": round(load_s, 2),
        "batch_size_per_rank": batch,
        "world_size": world_size,
        "batches": step + 1,
        "rows_per_s": round(rows / seconds),
        "rss_peak_getrusage_mb": round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
        ),
    }


def run_child(*args: str) -> dict:
    """Run this script as a child (fresh process: its peak RSS is its own) and parse its JSON."""
    cmd = [sys.executable, __file__, "--child", *args]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode:
        sys.exit(f"child {' '.join(args[:1])} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(results: list[dict]) -> str:
    rows = [
        "| input MB | lines | wall s | lines/s | MB/s | peak RSS MB (getrusage) | peak RSS MB (sampled) "
        "| RankBatches load s | RankBatches rows/s | read RSS MB |",
        "|---" * 10 + "|",
    ]
    for r in results:
        p, q = r["prepare"], r["read"]
        rows.append(
            f"| {r['input_mb']:.0f} | {p['lines']:,} | {p['seconds']:.1f} | {p['lines_per_s']:,} "
            f"| {p['mb_per_s']:.2f} | {p['rss_peak_getrusage_mb']:.0f} "
            f"| {p['rss_peak_sampled_mb']:.0f} | {q['load_s']:.2f} | {q['rows_per_s']:,} "
            f"| {q['rss_peak_getrusage_mb']:.0f} |"
        )
    return "\n".join(rows)


def scaling_table(scaling: dict) -> str:
    rows = [
        f"Scaling on {scaling['input_mb']:.0f} MB (MB/s; per core: divided by the cores in use, "
        "for one process by its CPU-seconds):",
        "",
        "| tokenizer | encode_batch alone, 1 thread | one process | one process, 1 thread "
        "| 1 Ray worker | 2 Ray workers (2 nodes x 1 CPU) | 2 workers / 1 worker |",
        "|---" * 7 + "|",
    ]
    for kind, cells in scaling["kinds"].items():
        one, w1, w2 = (cells["prepare"][n] for n in ("0", "1", "2"))
        cells_one = [one, cells["prepare"].get("0-1")]  # the second: not in older reports
        one_process = " | ".join(
            f"{c['mb_per_s']:.2f} ({scaling['input_mb'] / c['driver_cpu_s']:.2f} per core)"
            if c else "—"
            for c in cells_one
        )
        rows.append(
            f"| {kind} | {cells['encode_mb_per_s']:.2f} | {one_process} "
            f"| {w1['mb_per_s']:.2f} | {w2['mb_per_s']:.2f} ({w2['mb_per_s'] / 2:.2f} per core) "
            f"| {w2['mb_per_s'] / w1['mb_per_s']:.2f}x |"
        )
    if ceiling := scaling.get("ceiling"):
        one, two = ceiling["1"], ceiling["2"]
        rows += ["", (
            f"Ray's own ceiling on these two nodes: {one['tasks']} tasks of {one['task_s']:.2f} "
            f"CPU-seconds each (pure Python, no I/O: the word cell's 1-worker time in equal "
            f"shares, one per piece) through prepare's task runner take {one['seconds']:.1f} s "
            f"on 1 worker and {two['seconds']:.1f} s on 2: "
            f"**{one['seconds'] / two['seconds']:.2f}x**, the most any prepare can gain here."
        )]  # fmt: skip
    return "\n".join(rows)


def reader_table(cells: list[dict]) -> str:
    rows = [
        "Training reader (one rank, batch 64, train split of N synthetic rows of 20 tokens):",
        "",
        "| rows | reader | first batch s | rows/s | peak RSS MB |",
        "|---|---|---|---|---|",
    ]
    for c in cells:
        rows.append(f"| {c['rows']:,} | {c['reader']} | {c['first_batch_s']:.2f} "
                    f"| {c['rows_per_s']:,} | {c['rss_peak_getrusage_mb']:.0f} |")  # fmt: skip
    return "\n".join(rows)


def render(report: dict) -> str:
    results = report["results"]
    peaks = [r["prepare"]["rss_peak_getrusage_mb"] for r in results]
    scaling = f"\n\n{scaling_table(report['scaling'])}" if report.get("scaling") else ""
    if report.get("reader"):
        scaling += f"\n\n{reader_table(report['reader'])}"
    return (
        f"{table(results)}\n\nPeak RSS of the largest over the smallest input: "
        f"{peaks[-1] / peaks[0]:.2f} (flat memory: prepare streams). Each measurement runs in a "
        f"fresh process; about 270 MB of it is importing torch.{scaling}\n\n"
        f"Command: `{report['command']}`"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes-mb", type=float, nargs="+", default=[30, 300])
    parser.add_argument("--vocab-words", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=64, help="RankBatches batch per rank")
    parser.add_argument("--max-batches", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scaling-mb", type=float, default=40, help="0: no scaling cells")
    parser.add_argument("--piece-mb", type=float, default=4, help="pieces of the scaling cells")
    parser.add_argument("--reader-rows", type=int, nargs="*", default=[1_000_000, 10_000_000])


def measure(args: argparse.Namespace) -> dict:
    sizes = [0.5] if args.smoke_test else args.sizes_mb
    results = []
    for megabytes in sizes:
        with tempfile.TemporaryDirectory(prefix="bench_prepare_") as tmp:
            corpus = Path(tmp) / "corpus.txt"
            started = time.perf_counter()
            write_corpus(corpus, megabytes, vocab_words=args.vocab_words, seed=args.seed)
            print(
                f"wrote {megabytes:g} MB in {time.perf_counter() - started:.1f} s", file=sys.stderr
            )
            out = str(Path(tmp) / "prepared")
            prepared = run_child("prepare", str(corpus), out)
            read = run_child("read", out, str(args.batch), "1", str(args.max_batches))
            results.append(
                {"input_mb": corpus.stat().st_size / 1e6, "prepare": prepared, "read": read}
            )
            print(json.dumps(results[-1]), file=sys.stderr)
    report = {"results": results}
    megabytes = 0.5 if args.smoke_test else args.scaling_mb
    if megabytes:
        report["scaling"] = scaling(megabytes, args)
    sizes = [20_000] if args.smoke_test else args.reader_rows
    if sizes:
        report["reader"] = readers(sizes, args)
    return report


def readers(sizes: list[int], args: argparse.Namespace) -> list[dict]:
    cells = []
    for rows in sizes:
        with tempfile.TemporaryDirectory(prefix="bench_reader_") as tmp:
            out = str(Path(tmp) / "data")
            write_rows(out, rows)
            for reader in ("memory", "stream"):
                batches = "200" if args.smoke_test else str(args.max_batches)
                cell = {"rows": rows, **run_child("reader", out, reader, "64", batches)}
                print(json.dumps(cell), file=sys.stderr)
                cells.append(cell)
    return cells


def scaling(megabytes: float, args: argparse.Namespace) -> dict:
    """Each tokenizer kind: its encode rate, then prepare by 1 process, 1 and 2 Ray workers."""
    from raygan.data.distributed import cut_pieces
    from raygan.data.prepare import _sources

    kinds = {}
    piece_mb = str(0.05 if args.smoke_test else args.piece_mb)
    with tempfile.TemporaryDirectory(prefix="bench_prepare_") as tmp:
        corpus = Path(tmp) / "corpus.txt"
        write_corpus(corpus, megabytes, vocab_words=args.vocab_words, seed=args.seed)
        for kind in ("word", "bpe", "char"):
            cells = run_child("tokenize", str(corpus), kind)
            cells["prepare"] = {}
            for workers in ("0", "0-1", "1", "2"):
                out = str(Path(tmp) / f"{kind}-{workers}")
                cell = run_child("prepare_ray", str(corpus), out, kind, workers, piece_mb)
                cells["prepare"][workers] = cell
                print(json.dumps(cell), file=sys.stderr)
            kinds[kind] = cells
        input_mb = corpus.stat().st_size / 1e6
        # prepare's own cut of this corpus: one burn task per piece
        tasks = len(cut_pieces(_sources([str(corpus)], None), int(float(piece_mb) * 1e6)))
    # the same number of tasks of the same CPU time as the word cell, doing nothing but compute
    task_s = kinds["word"]["prepare"]["1"]["seconds"] / tasks
    ceiling = {}
    for workers in ("1", "2"):
        ceiling[workers] = run_child("ray_ceiling", str(tasks), f"{task_s:.4f}", workers)
        print(json.dumps(ceiling[workers]), file=sys.stderr)
    return {"input_mb": input_mb, "piece_mb": float(piece_mb), "kinds": kinds,
            "ceiling": ceiling}  # fmt: skip


def child(argv: list[str]) -> None:
    """A measurement in this fresh process (run_child): its JSON on the last line of stdout."""
    kind, *rest = argv
    if kind == "prepare":
        result = child_prepare(*rest)
    elif kind == "prepare_ray":
        result = child_prepare_ray(*rest)
    elif kind == "ray_ceiling":
        result = child_ray_ceiling(*rest)
    elif kind == "tokenize":
        result = child_tokenize(*rest)
    elif kind == "reader":
        result = child_reader(rest[0], rest[1], int(rest[2]), int(rest[3]))
    else:
        result = child_read(rest[0], int(rest[1]), int(rest[2]), int(rest[3]))
    print(json.dumps(result))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2:])
    else:  # the children above import only what they measure
        from raygan.bench.harness import Benchmark, main

        bench = Benchmark(section="prepare", default_json="benchmarks/prepare.json",
                          measure=measure, render=render, add_arguments=add_arguments)  # fmt: skip
        sys.exit(main(bench, __doc__.split("\n\n")[0]))
