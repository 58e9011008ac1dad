"""The `raygan` command line; the only module that reads sys.argv.

raygan prepare --input corpus.txt --out data/           # text -> tokenizer + Parquet shards
raygan prepare --oracle random --num-samples 10000 --out data/
raygan train --data data/ --out runs/a num_workers=2 estimator=rollout d_steps=3
raygan train --data data/ --out runs/b --recipe seqgan  # a shipped recipe (`raygan recipes`)
raygan tune --space tune_spaces/pbt_oracle.yaml --data data/ --out tunes/a init_from=runs/a/final
raygan sample --checkpoint runs/a -n 5 --temperature 0.8
raygan serve --checkpoint tunes/a/best --port 8000      # HTTP on 127.0.0.1 (Ray Serve); Ctrl-C stops
raygan generate --url http://127.0.0.1:8000 -n 3 --prefix "a man"
raygan evaluate oracle --oracle-path target_params.npz  # MLE + each estimator, one process
raygan report runs/a                                    # report.md + plots of a run or a search

Every command takes --verbose: Ray's own logs on the console instead of a progress bar.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from raygan import __version__
from raygan.core.errors import RayganError
from raygan.core.malloc import keep_freed_memory


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="benchmarks and metrics")
    what = p.add_subparsers(dest="what", required=True)
    o = what.add_parser(
        "oracle",
        help="synthetic-oracle benchmark in one process: MLE, then each adversarial estimator",
        description="MLE pretraining then gumbel/rollout/dense adversarial training on an oracle, "
        "printing NLL_oracle and NLL_test per phase and the wall time.",
    )
    from raygan.run.oracle_benchmark import add_oracle_arguments

    add_oracle_arguments(o)
    o.add_argument("--out", help="write the results as JSON here")
    o.set_defaults(run=_run_evaluate)


def _run_evaluate(args) -> int:
    from raygan.run.oracle_benchmark import benchmark_from_args, run_oracle_benchmark, write_result

    bench = benchmark_from_args(args)
    result = run_oracle_benchmark(bench)
    if args.out:
        write_result(result, args.out)
        print(f"wrote {args.out}")
    return 0


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="adversarial training on Ray Train (DDP); re-running resumes",
        description="MLE pretraining then adversarial training on Ray Train workers. Every config "
        "key can be set in --config YAML or as key=value (bare or section.key), e.g. "
        "num_workers=2 estimator=rollout d_steps=3 adv_steps=500.",
    )
    p.add_argument("--data", required=True, help="directory written by `raygan prepare`")
    p.add_argument("--out", required=True, help="RUN_DIR: checkpoints, TensorBoard, final/")
    p.add_argument(
        "--recipe",
        help="start from a shipped recipe (`raygan recipes` lists them); --config and "
        "key=value override its keys",
    )
    p.add_argument("--config", help="YAML file of config keys (nested sections or flat keys)")
    p.add_argument("--fresh", action="store_true", help="discard a previous run in RUN_DIR")
    p.add_argument("--no-report", action="store_true", help="skip RUN_DIR/report.md at the end")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.set_defaults(run=_run_train)


def _overrides(args) -> dict:
    """--recipe, then --config, then key=value: each later one overrides the earlier ones."""
    from raygan.core.config import parse_key_values, recipe_path

    overrides: dict = {}
    if getattr(args, "recipe", None):
        recipe_path(args.recipe)  # an unknown name fails here, listing the valid ones
        overrides["recipe"] = args.recipe
    if getattr(args, "config", None):
        overrides.update(load_yaml_overrides(args.config))
    overrides.update(parse_key_values(args.overrides))
    return overrides


def _run_train(args) -> int:
    from raygan.run.console import summary_line
    from raygan.run.train import fit

    summary = fit(args.data, args.out, _overrides(args), fresh=args.fresh, report=not args.no_report)
    print(f"done: {summary['steps']} steps in {summary['wall_s']:.1f} s; "
          + summary_line(summary["final_metrics"]))  # fmt: skip
    for early in summary["early_stops"]:
        print(f"  early stop at step {early['step']}: {early['early_stop']}")
    print(f"final checkpoint: {summary.get('final_checkpoint', '-')}")
    print(f"summary: {storage_join(args.out, 'summary.json')}")
    if summary.get("report"):
        print(f"report: {summary['report']}")
    print(f"next: raygan sample --checkpoint {args.out} -n 5   |   "
          f"tensorboard --logdir {storage_join(args.out, 'tb')}")  # fmt: skip
    return 0


def storage_join(*parts: str) -> str:
    from raygan.data import storage

    return storage.join(storage.absolute(parts[0]), *parts[1:])


def _add_report(sub) -> None:
    p = sub.add_parser(
        "report",
        help="report.md and PNG curves of a run (RUN_DIR) or a search (TUNE_DIR)",
        description="A run: learning curves (NLL_oracle or BLEU, NLL_test, D held-out accuracy, "
        "G and D loss, G grad norm, beta) with phases and early stops marked, and samples at a "
        "few steps, from its TensorBoard events. A search: the trials' metric with exploits and "
        "the best configuration.",
    )
    p.add_argument("path", metavar="RUN_DIR|TUNE_DIR")
    p.set_defaults(run=_run_report)


def _run_report(args) -> int:
    from raygan.run.report import write_report

    print(f"report: {write_report(args.path)}")
    return 0


def _add_tune(sub) -> None:
    p = sub.add_parser(
        "tune",
        help="population-based training over the G/D balance (Ray Tune); re-running resumes",
        description="PBT over the search space file's keys (e.g. g_lr, d_lr_ratio, d_steps); "
        "writes results.md, metric.png, TensorBoard logs and the best checkpoint to TUNE_DIR/best. "
        "key=value overrides apply to every trial, e.g. init_from=runs/a/final mle_steps=0.",
    )
    p.add_argument("--space", required=True, help="search space YAML (see tune_spaces/)")
    p.add_argument("--data", required=True, help="directory written by `raygan prepare`")
    p.add_argument("--out", required=True, help="TUNE_DIR")
    p.add_argument("--trials", type=int, help="population size (default: the space's `trials`)")
    p.add_argument(
        "--scheduler",
        choices=("pbt", "none"),
        default="pbt",
        help="none: the same trials with fixed configurations (the baseline PBT is measured against)",
    )
    p.add_argument("--fresh", action="store_true", help="discard a previous search in TUNE_DIR")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config keys for every trial")
    p.set_defaults(run=_run_tune)


def _run_tune(args) -> int:
    from raygan.core.config import parse_key_values
    from raygan.run.tune import run_tune

    summary = run_tune(
        args.space, args.data, args.out, trials=args.trials, scheduler=args.scheduler,
        overrides=parse_key_values(args.overrides), fresh=args.fresh,
    )  # fmt: skip
    from raygan.data import storage

    print(storage.read_text(storage.join(args.out, "results.md")), end="")
    print(f"best checkpoint: {summary['best']['checkpoint']}")
    print(f"report: {summary['report']}")
    return 0


def load_yaml_overrides(path: str) -> dict:
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise RayganError(f"config file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise RayganError(f"config file {path} must hold a mapping of config keys")
    from raygan.core.config import Config

    try:
        Config.from_dict(data)  # an unknown key is named, with the close valid ones
    except RayganError as exc:
        raise RayganError(f"config file {path}: {exc}") from None
    return data


def _add_sample(sub) -> None:
    p = sub.add_parser("sample", help="print decoded samples from a checkpoint")
    p.add_argument(
        "--checkpoint",
        required=True,
        help="checkpoint dir, or a RUN_DIR (final/) or TUNE_DIR (best/)",
    )
    p.add_argument("-n", "--num", type=int, default=5)
    p.add_argument("--prefix", default=None, help="text the samples start with")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=_run_sample)


def _run_sample(args) -> int:
    from raygan.serve.sampling import (
        SampleRequest,
        check_sampling,
        encode_prefix,
        load_model,
        sample_batch,
    )

    if args.num < 1:
        raise RayganError(f"-n must be >= 1, got {args.num}")
    check_sampling(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    model = load_model(args.checkpoint)
    ids, unknown = encode_prefix(model, args.prefix or "", model.max_len)
    if unknown:
        print(f"# unknown words mapped to the unknown token: {', '.join(unknown)}", file=sys.stderr)
    request = SampleRequest(
        num=args.num, max_tokens=model.max_len, seed=args.seed, temperature=args.temperature,
        top_k=args.top_k, top_p=args.top_p, prefix_ids=tuple(ids),
    )  # fmt: skip
    [result] = sample_batch(model, [request])
    for text in result.texts:
        print(text)
    return 0


def _add_serve(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a checkpoint over HTTP: Ray Serve + FastAPI, dynamic batching",
        description="POST /generate {n, max_tokens, temperature, top_k, top_p, prefix, seed}, "
        "GET /healthz, GET /metadata. Runs until Ctrl-C, then shuts Serve down. Running it "
        "again against the same Serve (RAY_ADDRESS) swaps the checkpoint without failing requests.",
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        help="checkpoint dir, or a RUN_DIR (final/) or TUNE_DIR (best/)",
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind; 0.0.0.0 opens it to the network"
    )
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--replicas", type=int, help="fixed replica count (default: autoscale from 1 to 2)"
    )
    p.add_argument("--num-cpus", type=float, default=1.0, help="CPUs reserved per replica")
    p.add_argument(
        "--max-batch-size",
        type=int,
        default=32,
        help="requests per batched pass; 1 turns batching off",
    )
    p.add_argument(
        "--proxy",
        choices=("haproxy", "python"),
        help="HTTP ingress of a Ray started here: haproxy (default where installed; 4x the "
        "requests/s on 2 CPUs, retries a request whose replica died; its stats and metrics "
        "ports listen on 127.0.0.1 unless RAYGAN_SERVE_STATS_HOST says otherwise) or python "
        "(Serve's classic proxy). A joined cluster keeps what its nodes started with.",
    )
    p.add_argument(
        "--max-queued",
        type=int,
        default=32,
        help="requests a replica queues past the ones it is sampling; more get an immediate "
        "503 with Retry-After (-1: no limit)",
    )
    p.set_defaults(run=_run_serve)


def _run_serve(args) -> int:
    import time

    from raygan.run.ray_env import PROXY_VAR
    from raygan.serve.app import shutdown_server, start_server

    if not 0 < args.port < 65536:
        raise RayganError(f"--port must be in [1, 65535], got {args.port}")
    if args.replicas is not None and args.replicas < 1:
        raise RayganError(f"--replicas must be >= 1, got {args.replicas}")
    if args.num_cpus < 0 or args.max_batch_size < 1:
        raise RayganError(
            f"--num-cpus must be >= 0 and --max-batch-size >= 1; got {args.num_cpus}, {args.max_batch_size}"
        )
    if args.max_queued < -1:
        raise RayganError(f"--max-queued must be >= -1, got {args.max_queued}")
    if args.proxy:
        os.environ[PROXY_VAR] = args.proxy
    url = start_server(
        args.checkpoint, host=args.host, port=args.port, replicas=args.replicas,
        num_cpus=args.num_cpus, max_batch_size=args.max_batch_size,
        max_queued_requests=args.max_queued,
    )  # fmt: skip
    print(
        f"serving {args.checkpoint} at {url}: POST /generate, GET /healthz, GET /metadata",
        flush=True,
    )
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("shutting Serve down", file=sys.stderr)
        shutdown_server()
    return 0


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="ask a running `raygan serve` for samples")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="where `raygan serve` listens")
    p.add_argument("-n", "--num", type=int, default=1)
    p.add_argument(
        "--max-tokens",
        type=int,
        help="tokens per sample, prefix included (default: the model's max)",
    )
    p.add_argument("--prefix", default="", help="text the samples start with")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, help="reproducible samples (default: the server draws one)")
    p.add_argument("--json", action="store_true", help="print the whole response as JSON")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the answer")
    p.set_defaults(run=_run_generate)


def _run_generate(args) -> int:
    from raygan.serve.client import generate

    response = generate(
        args.url, n=args.num, max_tokens=args.max_tokens, temperature=args.temperature,
        top_k=args.top_k, top_p=args.top_p, prefix=args.prefix, seed=args.seed,
        timeout=args.timeout,
    )  # fmt: skip
    if args.json:
        print(json.dumps(response, indent=2))
        return 0
    for text in response["samples"]:
        print(text)
    if response["unknown_words"]:
        unknown = ", ".join(response["unknown_words"])
        print(f"# unknown words mapped to the unknown token: {unknown}", file=sys.stderr)
    model = response["model"]
    print(f"# seed {response['seed']}; {model['checkpoint']} step {model['step']}", file=sys.stderr)
    return 0


def _add_config(sub) -> None:
    p = sub.add_parser(
        "config",
        help="print the training config (defaults, or resolved for --data) as YAML for --config",
    )
    p.add_argument("--data", help="resolve vocab, max_len and special ids from this prepared data")
    p.add_argument("--recipe", help="resolve a shipped recipe (`raygan recipes`)")
    p.add_argument("--config", help="YAML file of config keys, applied over the recipe")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.set_defaults(run=_run_config)


def _add_recipes(sub) -> None:
    p = sub.add_parser(
        "recipes",
        help="the shipped training recipes, one line each (raygan train --recipe NAME)",
        description="Each recipe is a YAML of ordinary config keys inside the package; "
        "`raygan config --recipe NAME` prints what it resolves to.",
    )
    p.set_defaults(run=_run_recipes)


def _run_recipes(args) -> int:
    from raygan.core.config import recipe_names, recipe_summary

    names = recipe_names()
    width = max(map(len, names), default=0)
    for name in names:
        print(f"{name:<{width}}  {recipe_summary(name)}")
    return 0


def _run_config(args) -> int:
    import yaml

    from raygan.core.config import Config, apply_overrides

    overrides = _overrides(args)
    if args.data:
        from raygan.run.train import resolve_config

        config = resolve_config(args.data, overrides)
    else:
        config = apply_overrides(Config(), overrides)
    print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="the whole pipeline on a shipped corpus (COCO captions): prepare -> train (2 Ray "
        "workers) -> tune (PBT) -> serve -> generated sentences",
    )
    p.add_argument("--out", default="demo_out", help="where data, run and checkpoints go")
    p.add_argument("--smoke-test", action="store_true", help="a few steps of each stage")
    p.set_defaults(run=_run_demo)


def _run_demo(args) -> int:
    from raygan.demo import run_demo

    run_demo(args.out, smoke_test=args.smoke_test)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raygan", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"raygan {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_prepare(sub)
    _add_train(sub)
    _add_tune(sub)
    _add_sample(sub)
    _add_serve(sub)
    _add_generate(sub)
    _add_evaluate(sub)
    _add_config(sub)
    _add_recipes(sub)
    _add_demo(sub)
    _add_report(sub)
    for command in sub.choices.values():
        command.add_argument(
            "--verbose", action="store_true",
            help="Ray's own logs on the console (also RAYGAN_VERBOSE=1), instead of a progress bar",
        )  # fmt: skip
    return parser


def _add_prepare(sub) -> None:
    from raygan.data.cli import add_prepare_arguments

    p = sub.add_parser(
        "prepare",
        help="text or oracle samples -> tokenizer + Parquet shards + manifest.json",
        description="Turn UTF-8 text (one sentence per line) or oracle samples into Parquet shards.",
    )
    add_prepare_arguments(p)
    p.set_defaults(run=_run_prepare)


def _run_prepare(args) -> int:
    from raygan.data.cli import run_prepare

    return run_prepare(args)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    keep_freed_memory()  # the commands that sample or train in this process: see raygan.core.malloc
    if getattr(args, "verbose", False):
        from raygan.run.console import set_verbose

        set_verbose(True)
    try:
        return args.run(args)
    except RayganError as exc:
        print(f"raygan: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("raygan: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
