"""`raygan tune`: population-based training (PBT) over the G/D balance, on Ray Tune.

    raygan tune --space tune_spaces/pbt_oracle.yaml --data data/ --out tunes/a --trials 4
    raygan tune --space tune_spaces/pbt_oracle.yaml --data data/ --out tunes/a   # resumes
    raygan sample --checkpoint tunes/a/best

The search space file is described in raygan.run.tune_space. TUNE_DIR layout: tune.json (the space,
data and overrides), ray/ (Tune's experiment: per-trial results, checkpoints, Tune's own
TensorBoard files, pbt_global.txt), trials/<trial_id>/tb (the loop's TensorBoard per trial),
results.json and results.md (per trial: metric, config, exploit lineage), metric.png, best/.

Two kinds of trial run the same loop (raygan.run.loop.train_loop). With num_workers=1 the loop runs
inside the trial's own process, holding cpus_per_worker CPUs. With num_workers>1 the trial holds
no CPU itself and launches a TorchTrainer (DDP over N workers) whose reports a Train callback
forwards to Tune. Either way, a restored checkpoint is loaded first and the trial's own (possibly
mutated) hyperparameters are applied after it (raygan.run.loop re-applies the learning rates after
loading the optimizers and reads d_steps from its config at every step).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import threading
import uuid
import warnings
from pathlib import Path
from typing import Any, ClassVar

from raygan.core.errors import RayganError
from raygan.data import storage
from raygan.run.checkpoint import META_FILE, atomic_write_text, copy_checkpoint
from raygan.run.loop import RunSpec, check_init_from
from raygan.run.tune_space import SearchSpace, load_space

EXPERIMENT = "pbt"
DRIVER_RESOURCE = {"memory": 64 * 1024**2}
"""What a distributed trial's own process reserves: its workers hold the CPUs. A placement group
bundle cannot be empty, and a CPU fraction would keep a whole-CPU worker off that node."""


# ---------------------------------------------------------------- the trial


def tune_trial(hparams: dict[str, Any], *, setup: dict[str, Any]) -> None:
    """One PBT member: the train loop with the space's fixed keys plus this trial's hyperparameters."""
    import ray.tune

    from raygan.run.train import resolve_config

    trial_id = ray.tune.get_context().get_trial_id()
    config = resolve_config(setup["data_dir"], {**setup["fixed"], **hparams})
    frontier = setup.get("frontier")
    run = RunSpec(
        config=config,
        data_dir=setup["data_dir"],
        run_dir=storage.join(setup["tune_dir"], "trials", trial_id),
        checkpoint_meta={"trial_id": trial_id},
        frontier=tuple(map(tuple, frontier)) if frontier else None,
    )
    checkpoint = ray.tune.get_checkpoint()  # [1] our own (resume) or a donor's (PBT exploit)
    if config.placement.num_workers == 1:
        _run_in_process(run, checkpoint, trial_id)
    else:
        with checkpoint.as_directory() if checkpoint else contextlib.nullcontext() as directory:
            restored = _restored_from(directory, trial_id)
        _run_distributed(run, config, checkpoint, restored, trial_id)


def _restored_from(directory: str | None, trial_id: str) -> dict[str, Any]:
    """Where a restarted trial starts: the checkpoint's writer, step and data position."""
    if directory is None:
        return {}
    meta = json.loads((Path(directory) / META_FILE).read_text())
    donor = meta.get("trial_id", trial_id)
    return {
        "restored_from": donor,
        "restored_step": meta["step"],
        "restored_batches": meta["metrics"].get("batches_consumed", 0),
        "exploit": donor != trial_id,
    }


class _Reporter:
    """ray.tune.report with the restore facts attached to the first report after a (re)start."""

    # Every report carries the keys, so that progress.csv (whose header is the first report's
    # keys) keeps them.
    NONE: ClassVar[dict[str, Any]] = {
        "restored_from": "",
        "restored_step": -1,
        "restored_batches": -1,
        "exploit": False,
    }

    def __init__(self, restored: dict[str, Any]):
        self.pending = dict(restored)

    def __call__(self, metrics: dict[str, Any], checkpoint) -> None:
        import ray.tune

        metrics = {**metrics, **self.NONE, **self.pending}
        self.pending = {}
        ray.tune.report(metrics, checkpoint=checkpoint)  # [2] report (+ checkpoint) to Tune


def _run_in_process(run: RunSpec, checkpoint, trial_id: str) -> None:
    """The loop in this trial's process. A damaged checkpoint (truncated, failing its sha256) is
    skipped for the newest good one beside it, with a warning, as `raygan train` does."""
    import ray.tune
    import torch

    from raygan.run.loop import WorkerContext, train_loop
    from raygan.run.train import as_train_checkpoint, usable_checkpoint

    # With use_gpu, Tune gave this trial one GPU (CUDA_VISIBLE_DEVICES names it).
    device = torch.device("cuda" if run.config.placement.use_gpu else "cpu")
    with usable_checkpoint(as_train_checkpoint(checkpoint), warn=True) as (restore_dir, _):
        reporter = _Reporter(_restored_from(restore_dir, trial_id))

        def report(metrics: dict, checkpoint_dir: str | None) -> None:
            ckpt = ray.tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
            reporter(metrics, ckpt)

        train_loop(run, WorkerContext(device=device, report=report, restore_dir=restore_dir))


def _run_distributed(run, config, checkpoint, restored, trial_id: str) -> None:
    import ray.tune
    from ray.util.queue import Empty, Queue

    from raygan.run.train import as_train_checkpoint, forward_reports_callback, make_trainer

    reports, acks = Queue(actor_options={"num_cpus": 0}), Queue(actor_options={"num_cpus": 0})
    donor = as_train_checkpoint(checkpoint)
    train_storage = storage.join(run.run_dir, "train")
    trainer = make_trainer(
        run,
        config,
        storage_path=train_storage,
        # A fresh name per (re)start: a reused name would resume that run's own last checkpoint
        # instead of the donor's.
        name=f"segment-{uuid.uuid4().hex[:8]}",
        callbacks=[forward_reports_callback(reports, acks)],
        resume_from_checkpoint=donor,
    )
    outcome: dict[str, Any] = {}
    fit_thread = threading.Thread(target=lambda: outcome.update(result=trainer.fit()), daemon=True)
    fit_thread.start()
    reporter = _Reporter(restored)
    while fit_thread.is_alive() or not reports.empty():
        try:
            metrics, path = reports.get(timeout=1.0)
        except Empty:
            continue
        ckpt = ray.tune.Checkpoint(path=path[0], filesystem=path[1]) if path else None
        reporter(metrics, ckpt)
        acks.put(True)
    fit_thread.join()
    result = outcome.get("result")
    if result is None or result.error:
        raise RayganError(
            f"trial {trial_id}: distributed training failed: {result and result.error}"
        )
    storage.delete(train_storage)  # Tune holds copies of what it needs


# ---------------------------------------------------------------- the search


def run_tune(
    space_path: str,
    data_dir: str,
    tune_dir: str,
    *,
    trials: int | None = None,
    overrides: dict[str, Any] | None = None,
    fresh: bool = False,
    scheduler: str = "pbt",
    log=print,
    progress: bool = True,
) -> dict[str, Any]:
    """Run (or resume) a search into `tune_dir`; returns the summary written to results.json,
    with the path of the report.md written beside it. `progress`: one bar over all trials.

    scheduler="none" runs the same trials without exploit/explore: the fixed-configuration
    baseline PBT is compared against."""
    from raygan.data.read import load_manifest, verify
    from raygan.run.ray_env import ensure_ray

    data_dir, out = storage.absolute(data_dir), storage.absolute(tune_dir)
    verify(data_dir)
    space = load_space(space_path, data_kind=load_manifest(data_dir)["kind"])
    space = space.with_overrides(_absolute_paths(overrides or {}), trials=trials)
    config = space.trial_config(data_dir)  # every fixed key resolved before any trial starts
    if config.trainer.init_from:
        check_init_from(config)
    request = {"space": space.to_dict(), "data_dir": data_dir, "scheduler": scheduler}
    _check_tune_dir(out, request, fresh)
    atomic_write_text(storage.join(out, "tune.json"), json.dumps(request, indent=2))
    frontier = _frontier(space, config, data_dir, out, log)

    # Tune warns when frequent checkpoints force experiment snapshots: expected at small sizes.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    ensure_ray()
    max_concurrent = _trials_that_fit(config)
    log(
        f"tune: {space.trials} trials of {config.schedule.total_steps} steps, "
        f"{max_concurrent} at a time, metric {space.metric} ({space.mode}), scheduler {scheduler}"
    )
    from raygan.run.console import verbose

    callbacks = []
    if progress and not verbose():
        from raygan.run.console import tune_console

        callbacks.append(tune_console(space.trials, config.schedule.total_steps, space.metric,
                                      space.mode))  # fmt: skip
    shown = 2 if verbose() else 0  # Tune's own output: each trial's reports, in verbose mode
    tuner = _make_tuner(space, data_dir, out, config, max_concurrent, scheduler, frontier,
                        shown, callbacks)  # fmt: skip
    with warnings.catch_warnings():
        # Tune suggests reusing trial actors under PBT; an exploit here restarts the trial's
        # process instead (a few seconds, small next to a perturbation interval), which also
        # gives each restart clean state.
        warnings.filterwarnings("ignore", message="Consider boosting PBT performance")
        grid = tuner.fit()
    errors = [r.error for r in grid if r.error]
    if errors:
        raise RayganError(f"{len(errors)} of {len(grid)} trials failed; the first: {errors[0]}")
    summary = summarize(grid, space, out)
    from raygan.run.report import write_tune_report

    summary["report"] = write_tune_report(out)
    log(f"best: trial {summary['best']['trial_id']} {space.metric}={summary['best']['metric']:.4f}")
    return summary


FRONTIER_TEMPERATURES = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 1.0, 1.05, 1.1, 1.2, 1.3, 1.5)


def _frontier(space: SearchSpace, config, data_dir: str, out: str, log) -> list | None:
    """For metric frontier_distance: MLE's curve, the starting checkpoint (init_from) sampled
    over FRONTIER_TEMPERATURES, computed once before any trial and kept in TUNE_DIR/frontier.json.
    A trial is then ranked by how far below the curve it has moved: sharpening, which lowers
    NLL_oracle alone, moves along the curve or above it and cannot win."""
    if space.metric != "frontier_distance":
        return None
    path = storage.join(out, "frontier.json")
    if storage.is_file(path):
        return json.loads(storage.read_text(path))["points"]
    if not config.trainer.init_from:
        raise RayganError(
            f"{space.source}: metric frontier_distance is measured against the starting "
            "checkpoint's temperature curve: set init_from=CHECKPOINT"
        )
    from raygan.run.checkpoint import load_generator
    from raygan.run.loop import temperature_curve

    gen, _, _ = load_generator(config.trainer.init_from)
    log(f"tune: MLE's curve from {config.trainer.init_from} at {len(FRONTIER_TEMPERATURES)} temperatures")
    points = temperature_curve(data_dir, config, gen, FRONTIER_TEMPERATURES)
    record = {"checkpoint": config.trainer.init_from, "temperatures": FRONTIER_TEMPERATURES,
              "points": points, "eval_samples": config.schedule.eval_samples}  # fmt: skip
    atomic_write_text(path, json.dumps(record, indent=2))
    return points


def _absolute_paths(overrides: dict[str, Any]) -> dict[str, Any]:
    """Trials run in their own working directories: a checkpoint path must not be relative."""
    from raygan.core.config import flatten, resolve_key
    from raygan.run.checkpoint import resolve_checkpoint_dir

    out = {}
    for key, value in flatten(overrides).items():
        if resolve_key(key)[1] == "init_from" and value not in (None, "", "none", "None"):
            value = str(resolve_checkpoint_dir(value).resolve())
        out[key] = value
    return out


def _check_tune_dir(out: str, request: dict, fresh: bool) -> None:
    saved = storage.join(out, "tune.json")
    if not storage.is_file(saved):
        return
    if fresh:
        names = ("ray", "trials", "best", "tune.json", "results.json", "results.md", "metric.png",
                 "frontier.json")  # fmt: skip
        for name in names:
            storage.delete(storage.join(out, name))
        return
    if json.loads(storage.read_text(saved)) != json.loads(json.dumps(request)):
        raise RayganError(
            f"{out} holds a search with another space, data or scheduler; use the same command "
            "to resume, another --out, or --fresh to start over"
        )


def _trials_that_fit(config) -> int:
    """How many trials run at once on this cluster; refuses a trial that can never be placed."""
    import ray

    from raygan.run.train import check_placement

    check_placement(config)
    t = config.placement
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    workers = sum(int(n.get("CPU", 0) // t.cpus_per_worker) for n in nodes)
    if t.use_gpu:
        workers = min(workers, int(sum(n.get("GPU", 0) for n in nodes)))
    return max(1, workers // t.num_workers)


def _make_tuner(space: SearchSpace, data_dir: str, out: str, config, max_concurrent, scheduler,
                frontier=None, shown: int = 0, callbacks=()):  # fmt: skip
    from ray import tune

    trainable = tune.with_parameters(
        tune_trial,
        setup={
            "data_dir": data_dir,
            "tune_dir": out,
            "fixed": space.trial_overrides(),
            "frontier": frontier,
        },
    )
    t = config.placement
    if t.num_workers == 1:
        resources = {"CPU": t.cpus_per_worker, "GPU": 1 if t.use_gpu else 0}
    else:
        resources = DRIVER_RESOURCE
    trainable = tune.with_resources(trainable, resources)
    experiment = storage.join(out, "ray", EXPERIMENT)
    if tune.Tuner.can_restore(experiment):
        return tune.Tuner.restore(experiment, trainable, resume_errored=True)
    return tune.Tuner(
        trainable,
        param_space=space.param_space(),
        tune_config=tune.TuneConfig(
            metric=space.metric,
            mode=space.mode,
            num_samples=space.trials,
            scheduler=space.scheduler() if scheduler == "pbt" else None,
            # PBT has no seed argument; the initial draws are seeded through the search algorithm.
            search_alg=tune.search.BasicVariantGenerator(
                random_state=config.schedule.seed, max_concurrent=max_concurrent
            ),
        ),
        run_config=tune.RunConfig(
            name=EXPERIMENT,
            storage_path=storage.join(out, "ray"),
            # All checkpoints by default: PBT restores a donor's checkpoint some seconds after
            # choosing it, and any rotation (even keeping the best 4 and the latest) can delete
            # it in between ("does not exist on storage anymore"). The score picks best/.
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=space.keep_checkpoints,
                checkpoint_score_attribute=space.metric,
                checkpoint_score_order=space.mode,
            ),
            failure_config=tune.FailureConfig(max_failures=t.max_failures),
            verbose=shown,
            callbacks=list(callbacks) or None,
        ),
    )


# ---------------------------------------------------------------- outputs


def summarize(grid, space: SearchSpace, out: str) -> dict[str, Any]:
    """results.json, results.md, metric.png and best/ from a finished ResultGrid."""
    from raygan.bench.markdown import markdown_table

    sign = 1 if space.mode == "min" else -1
    trials = [_trial_summary(result, space) for result in grid]
    trials.sort(key=lambda t: t["best_metric"] * sign)
    # The best kept checkpoint of any trial. Not grid.get_best_result: it ranks trials by what
    # Tune saw during this session, and a trial's metrics_dataframe (read back from its
    # progress file) can lack rows that one of its kept checkpoints was reported with.
    kept = [(value, result, ckpt) for result in grid for value, ckpt in _kept(result, space.metric)]
    _, best_result, best_ckpt = min(kept, key=lambda entry: sign * entry[0])
    with best_ckpt.as_directory() as directory:
        copy_checkpoint(directory, storage.join(out, "best"))
        meta = json.loads((Path(directory) / META_FILE).read_text())
    summary = {
        "metric": space.metric,
        "mode": space.mode,
        "best": {
            "trial_id": best_result.metrics["trial_id"],
            "metric": meta["metrics"][space.metric],
            "step": meta["step"],
            "checkpoint": storage.join(out, "best"),
            "config": {k: best_result.config[k] for k in space.search},
        },
        "trials": trials,
        "exploits": sum(len(t["lineage"]) for t in trials),
    }
    atomic_write_text(storage.join(out, "results.json"), json.dumps(summary, indent=2, default=str))
    rows = [
        {
            "trial": t["trial_id"],
            f"final {space.metric}": f"{t['final_metric']:.4f}",
            f"best {space.metric}": f"{t['best_metric']:.4f}",
            "steps": t["steps"],
            **{k: _fmt(v) for k, v in t["config"].items()},
            "exploits (step: donor)": ", ".join(f"{e['step']}: {e['donor']}" for e in t["lineage"])
            or "-",
        }
        for t in trials
    ]
    table = markdown_table(list(rows[0]), [list(r.values()) for r in rows])
    atomic_write_text(storage.join(out, "results.md"), table + "\n")
    storage.write_bytes(storage.join(out, "metric.png"), plot_metric(grid, space))
    return summary


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _kept(result, metric: str) -> list[tuple[float, Any]]:
    """(metric, checkpoint) of each checkpoint Tune kept for this trial that reported `metric`."""
    return [(m[metric], c) for c, m in result.best_checkpoints or () if m.get(metric) is not None]


def _trial_summary(result, space: SearchSpace) -> dict[str, Any]:
    df = result.metrics_dataframe
    values = df[space.metric].dropna()
    # The dataframe is read back from the trial's progress file; result.metrics (the last
    # report) and the kept checkpoints' metrics come from Tune itself, so they count too.
    kept = [value for value, _ in _kept(result, space.metric)]
    last = result.metrics or {}
    lineage = []
    if "exploit" in df:
        for _, row in df[df["exploit"].fillna(False).astype(bool)].iterrows():
            event = {"step": int(row["restored_step"]), "donor": row["restored_from"]}
            # A restart before the first own checkpoint (synch PBT pauses trials) restores the
            # same donor checkpoint again: the same exploit, not a new one.
            if not lineage or lineage[-1] != event:
                lineage.append(event)
    final = last.get(space.metric)
    final = values.iloc[-1] if final is None else final
    best = (min if space.mode == "min" else max)([*values.tolist(), *kept, final])
    return {
        "trial_id": last["trial_id"],
        "final_metric": float(final),
        "best_metric": float(best) if not math.isnan(best) else math.nan,
        "steps": max(int(df["step"].max()), int(last.get("step", 0))),
        "config": {k: result.config[k] for k in space.search},
        "lineage": lineage,
    }


def plot_metric(grid, space: SearchSpace) -> bytes:
    """The metric over training steps per trial; a marker where a trial took a donor's checkpoint."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for result in grid:
        df = result.metrics_dataframe.dropna(subset=[space.metric])
        (line,) = ax.plot(df["step"], df[space.metric], label=result.metrics["trial_id"])
        if "exploit" in df:
            hits = df[df["exploit"].fillna(False).astype(bool)]
            ax.scatter(hits["step"], hits[space.metric], marker="v", s=60, color=line.get_color(),
                       edgecolors="black", zorder=3)  # fmt: skip
    ax.set_xlabel("training step")
    ax.set_ylabel(space.metric)
    ax.set_title(f"PBT: {space.metric} per trial (triangles: exploit of a better trial)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    plt.close(fig)
    return png.getvalue()
