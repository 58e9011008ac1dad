"""`raygan train`: the per-worker loop under Ray Train (Train V2), DDP on G and D.

    raygan prepare --oracle random --num-samples 10000 --out data/
    raygan train --data data/ --out runs/a num_workers=2 estimator=rollout d_steps=3
    raygan train --data data/ --out runs/a           # the same command again resumes

RUN_DIR layout: run.json (resolved config and data), ray/ (Ray Train's checkpoints), tb/
(TensorBoard), final/ (the last checkpoint, exported atomically), summary.json. This is the only
module that calls ray.train.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import warnings
from typing import Any

from raygan.core.config import Config
from raygan.core.errors import RayganError
from raygan.data import storage
from raygan.run.checkpoint import (
    atomic_write_text,
    check_checkpoint,
    copy_checkpoint,
    load_checkpoint,
)
from raygan.run.loop import RunSpec, check_init_from

RUN_NAME = "raygan"
RESUME_TOLERANT_KEYS = {"trainer.fail_at_step", "placement.max_failures", "placement.log_level"}


def prepare_ddp(model):
    """Ray Train's DDP wrapping, with the gradients living in DDP's all-reduce buckets
    (`gradient_as_bucket_view`): no copy into the buckets and back on every step (two gloo
    processes on a CPU: 0.107 -> 0.097 s per 64-row MLE step; BENCHMARKS.md, training speed)."""
    import ray.train.torch

    return ray.train.torch.prepare_model(
        model, parallel_strategy_kwargs={"gradient_as_bucket_view": True}
    )


def train_loop_per_worker(run: RunSpec) -> dict[str, Any]:
    """Entry point on each Ray Train worker."""
    import ray
    import ray.train
    import ray.train.torch

    from raygan.run.console import console_for
    from raygan.run.loop import WorkerContext, train_loop

    context = ray.train.get_context()
    console = console_for(run.console, context.get_world_rank())

    def report(metrics: dict, checkpoint_dir: str | None) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(dict(metrics), checkpoint=checkpoint)  # [2] report (+ checkpoint)

    checkpoint = ray.train.get_checkpoint()  # [1] resume from the newest checkpoint, if any
    shown = console.warnings_shown() if console else contextlib.nullcontext()
    with shown, usable_checkpoint(checkpoint, warn=context.get_world_rank() == 0) as (restore_dir, bad):
        ctx = WorkerContext(
            rank=context.get_world_rank(),
            world_size=context.get_world_size(),
            device=ray.train.torch.get_device(),  # the worker's GPU, or the CPU
            report=report,
            restore_dir=restore_dir,
            prepare_model=prepare_ddp,  # [3] DDP across workers
            node_id=ray.get_runtime_context().get_node_id(),
            console=console,
        )
        summary = train_loop(run, ctx)
    if bad:  # the run summary keeps what the warning said
        summary["damaged_checkpoints"] = bad
    return summary


@contextlib.contextmanager
def usable_checkpoint(checkpoint, *, warn: bool):
    """(local directory, problems): the newest checkpoint that loads, Ray's newest or, where that
    one is damaged (truncated, failing its sha256), the newest good one beside it, with a warning
    naming the bad ones. (None, []) for a fresh run; RayganError when none of them loads. Every
    rank reads the same files in the same order, so all ranks resume from the same one."""
    if checkpoint is None:
        yield None, []
        return
    bad = []
    for candidate in _newest_first(checkpoint):
        with candidate.as_directory() as directory:
            try:
                check_checkpoint(directory)  # the loop loads the one chosen
            except RayganError as exc:
                bad.append(str(exc))
                continue
            if bad and warn:
                warnings.warn(
                    f"resuming from {candidate.path} instead: {'; '.join(bad)}", stacklevel=1
                )
            yield directory, bad
            return
    raise RayganError(f"no checkpoint of this run loads ({'; '.join(bad)}); --fresh starts over")


def _newest_first(checkpoint):
    """Ray's newest checkpoint, then the other checkpoint_* directories beside it, newest first
    (Ray names them by their time of writing)."""
    import pyarrow.fs as pafs
    import ray.train

    yield checkpoint
    fs, parent = checkpoint.filesystem, checkpoint.path.rstrip("/").rsplit("/", 1)[0]
    infos = fs.get_file_info(pafs.FileSelector(parent))
    siblings = sorted((i.path for i in infos if i.type == pafs.FileType.Directory
                       and i.base_name.startswith("checkpoint_")), reverse=True)  # fmt: skip
    for path in siblings:
        if path.rstrip("/") != checkpoint.path.rstrip("/"):
            yield ray.train.Checkpoint(path, filesystem=fs)


def resolve_config(data_dir: str, overrides: dict[str, Any]) -> Config:
    """Defaults <- YAML/key=value overrides <- the data manifest (vocab, max_len, special ids)."""
    from raygan.core.config import apply_overrides, flatten, resolve_key
    from raygan.data.read import load_manifest, model_config_kwargs

    config = apply_overrides(Config(), overrides)
    from_data = model_config_kwargs(load_manifest(data_dir))
    for key, asked in flatten(overrides).items():
        section, name = resolve_key(key)
        if section == "model" and name in from_data and str(asked) != str(from_data[name]):
            raise RayganError(
                f"model.{name}={asked} contradicts the data manifest in {data_dir} "
                f"({name}={from_data[name]})"
            )
    return apply_overrides(config, {f"model.{k}": v for k, v in from_data.items()})


def _check_run_dir(run_dir: str, run: RunSpec, fresh: bool) -> None:
    """A RUN_DIR holding another configuration is refused unless `fresh` clears it."""
    saved_path = storage.join(run_dir, "run.json")
    if not storage.is_file(saved_path):
        return
    if fresh:
        for name in ("ray", "tb", "final", "summary.json", "run.json", ".fail_at_step_fired"):
            storage.delete(storage.join(run_dir, name))
        return
    saved = json.loads(storage.read_text(saved_path))
    # Through Config: a run.json written before a key changed section compares by meaning.
    diffs = _diff(Config.from_dict(saved["config"]).to_dict(), run.config.to_dict())
    diffs -= RESUME_TOLERANT_KEYS
    if saved["data_dir"] != run.data_dir:
        diffs.add(f"data ({saved['data_dir']} -> {run.data_dir})")
    if diffs:
        raise RayganError(
            f"{run_dir} holds a run with a different configuration ({', '.join(sorted(diffs))}); "
            "use the same settings to resume, another --out, or --fresh to start over"
        )


def _diff(a: dict, b: dict) -> set[str]:
    return {
        f"{section}.{key}"
        for section in a.keys() | b.keys()
        for key in a.get(section, {}).keys() | b.get(section, {}).keys()
        if a.get(section, {}).get(key) != b.get(section, {}).get(key)
    }


def check_placement(cfg: Config) -> None:
    """Fail within seconds when the cluster cannot place the workers, instead of pending forever."""
    import ray

    t = cfg.placement
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    cpus = sum(n["Resources"].get("CPU", 0) for n in nodes)
    gpus = sum(n["Resources"].get("GPU", 0) for n in nodes)
    if t.use_gpu and gpus < t.num_workers:
        raise RayganError(
            f"use_gpu=true needs {t.num_workers} GPUs (one per worker); the cluster has {gpus:g}"
        )
    need = t.num_workers * t.cpus_per_worker
    if need > cpus:
        raise RayganError(
            f"num_workers={t.num_workers} x cpus_per_worker={t.cpus_per_worker:g} needs {need:g} CPUs; "
            f"the cluster has {cpus:g}"
        )
    if not any(n["Resources"].get("CPU", 0) >= t.cpus_per_worker for n in nodes):
        raise RayganError(
            f"no node has cpus_per_worker={t.cpus_per_worker:g} CPUs free to place a worker"
        )


def make_trainer(
    run: RunSpec,
    config: Config,
    *,
    storage_path: str,
    name: str,
    callbacks: list | None = None,
    resume_from_checkpoint=None,
):
    """The TorchTrainer for one run: `config.placement` sets workers, devices, checkpoint retention, retries.
    `resume_from_checkpoint` starts from another run's checkpoint (a PBT donor's) when `name`
    has none of its own."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from raygan.core.malloc import worker_env

    t = config.placement
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=run,
        scaling_config=ray.train.ScalingConfig(
            num_workers=t.num_workers,
            use_gpu=t.use_gpu,
            resources_per_worker={"CPU": t.cpus_per_worker},
        ),
        torch_config=TorchConfig(backend="nccl" if t.use_gpu else "gloo"),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage_path,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=t.keep_checkpoints),
            failure_config=ray.train.FailureConfig(max_failures=t.max_failures),
            logging_config=ray.train.LoggingConfig(log_level=t.log_level),
            callbacks=callbacks or None,
            worker_runtime_env={"env_vars": worker_env()},  # raygan.core.malloc
        ),
        resume_from_checkpoint=resume_from_checkpoint,
    )


def forward_reports_callback(reports, acks):
    """A Train callback (it runs in the Train controller) handing rank 0's report to a Tune
    trial through the `reports` queue (raygan.run.tune runs a distributed trial this way).

    It waits for the trial's acknowledgement on `acks`, i.e. until Tune has copied the
    checkpoint, so Train's checkpoint rotation can never delete one Tune has not taken yet."""
    import ray.train

    class ForwardReports(ray.train.UserCallback):
        def after_report(self, run_context, metrics, checkpoint):
            path = (checkpoint.path, checkpoint.filesystem) if checkpoint else None
            reports.put((metrics[0], path))
            acks.get(timeout=3600)

    return ForwardReports()


def as_train_checkpoint(checkpoint):
    """Tune's Checkpoint as Train's (the same storage, another class); None stays None."""
    import ray.train

    if checkpoint is None:
        return None
    return ray.train.Checkpoint(path=checkpoint.path, filesystem=checkpoint.filesystem)


def fit(
    data_dir: str,
    run_dir: str,
    overrides: dict[str, Any] | None = None,
    *,
    fresh: bool = False,
    log=print,
    progress: bool = True,
    report: bool = True,
) -> dict[str, Any]:
    """Train (or resume) into `run_dir`; returns the run summary. `progress`: a progress bar on
    stderr (not in verbose mode, where Ray's own logs are shown); `report`: write RUN_DIR/report.md
    and its plots at the end (raygan.run.report)."""
    from raygan.data.read import verify
    from raygan.run.console import TrainConsole, verbose
    from raygan.run.ray_env import ensure_ray

    data_dir, run_dir = storage.absolute(data_dir), storage.absolute(run_dir)
    verify(data_dir)
    config = resolve_config(data_dir, overrides or {})
    if config.trainer.init_from:
        check_init_from(config)
    run = RunSpec(config=config, data_dir=data_dir, run_dir=run_dir)
    _check_run_dir(run_dir, run, fresh)
    if verbose():
        log("resolved config:\n" + json.dumps(config.to_dict(), indent=2))
    log(describe(config, run_dir))
    atomic_write_text(storage.join(run_dir, "run.json"), json.dumps(run.to_json(), indent=2))

    ensure_ray()
    check_placement(config)
    with TrainConsole(config.schedule.total_steps, enabled=progress and not verbose()) as console:
        trainer = make_trainer(dataclasses.replace(run, console=console.name), config,
                               storage_path=storage.join(run_dir, "ray"), name=RUN_NAME)  # fmt: skip
        result = trainer.fit()
    if result.error:
        raise result.error
    summary = dict(result.return_value or {})
    if result.checkpoint is not None:
        final = storage.join(run_dir, "final")
        with result.checkpoint.as_directory() as directory:
            copy_checkpoint(directory, final)
            _, _, meta = load_checkpoint(directory)
        summary["final_checkpoint"] = final
        summary["final_step"] = meta["step"]
    atomic_write_text(
        storage.join(run_dir, "summary.json"), json.dumps(summary, indent=2, default=str)
    )
    if report:
        from raygan.run.report import write_run_report

        summary["report"] = write_run_report(run_dir)
    return summary


def describe(config: Config, run_dir: str) -> str:
    """One line: what this run will do and where (the full config goes to RUN_DIR/run.json)."""
    s, g, t = config.schedule, config.gan, config.placement
    phases = ", ".join(f"{name} {n}" for name, n in (("MLE", s.mle_steps),
                       ("D pretraining", s.d_pretrain_steps), (f"{g.estimator} adversarial", s.adv_steps)) if n)  # fmt: skip
    device = "GPU" if t.use_gpu else "CPU"
    return (f"train: {t.num_workers} {device} worker{'s' * (t.num_workers > 1)}, steps: {phases or 'none'}, "
            f"batch {s.batch_size} -> {run_dir} (config: run.json)")  # fmt: skip
