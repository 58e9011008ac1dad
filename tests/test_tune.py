"""`raygan tune`: space files, PBT exploits on a real local Ray cluster, outputs, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from raygan.cli import main
from raygan.core.config import Config, apply_overrides
from raygan.core.errors import RayganError
from raygan.run.tune_space import METRICS, load_space

REPO = Path(__file__).resolve().parents[1]
SPACES = sorted((REPO / "tune_spaces").glob("*.yaml"))

# Tiny trials: 2 MLE steps, 1 D step, 9 adversarial steps; a report every 2 steps. The last
# report (step 12) falls on a perturbation point, where PBT must not act.
TINY_FIXED = {
    "batch_size": 8, "mle_steps": 2, "d_pretrain_steps": 1, "adv_steps": 9, "eval_samples": 32,
    "g_embed_dim": 8, "g_hidden_dim": 8, "d_embed_dim": 8, "d_hidden_dim": 8, "d_dropout": 0.0,
    "loss": "standard", "rng_streams": 2,
}  # fmt: skip
TINY_SPACE = {
    "metric": "nll_oracle",
    "mode": "min",
    "trials": 2,
    "perturbation_interval": 4,
    "report_every": 2,
    "quantile_fraction": 0.5,  # with 2 trials: the worse one copies the better one
    "resample_probability": 0.0,
    "synch": True,  # every decision waits for both trials, so exploits happen on schedule
    "fixed": TINY_FIXED,
    "search": {
        "g_lr": {"loguniform": [1.0e-3, 1.0e-1]},
        "d_lr_ratio": {"loguniform": [0.1, 10.0]},
        "d_steps": {"randint": [1, 3]},
    },
}


def _space_file(tmp_path: Path, space: dict, name: str = "space.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(space))
    return str(path)


def _reports(tune_dir: Path) -> dict[str, list[dict]]:
    """Every report per trial id, in order, from Tune's result.json files."""
    out: dict[str, list[dict]] = {}
    for path in sorted((tune_dir / "ray" / "pbt").glob("*/result.json")):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if rows:
            out[rows[0]["trial_id"]] = rows
    return out


def _checkpoints_by_writer(tune_dir: Path) -> dict[str, dict[int, tuple[dict, dict]]]:
    """(meta, config) of every checkpoint under Tune's trial dirs, by writer trial id and step.
    Not result.json: synchronous PBT can pause a trial between its report's checkpoint being
    registered and the report being logged, and a clone may start from that checkpoint."""
    out: dict[str, dict[int, tuple[dict, dict]]] = {}
    for path in (tune_dir / "ray" / "pbt").glob("*/checkpoint_*/checkpoint.json"):
        meta = json.loads(path.read_text())
        config = json.loads((path.parent / "config.json").read_text())
        out.setdefault(meta["trial_id"], {})[meta["step"]] = (meta, config)
    return out


# ---------------------------------------------------------------- space files


@pytest.mark.parametrize("path", SPACES, ids=[p.name for p in SPACES])
def test_every_shipped_space_loads(path):
    raw = yaml.safe_load(path.read_text())
    kind = next(k for k, metrics in METRICS.items() if raw["metric"] in metrics)
    space = load_space(path, data_kind=kind)
    # Every key is a config field, and both ends of every range make a valid config.
    config = apply_overrides(Config(), space.trial_overrides())
    for dist in space.search.values():
        for value in dist.args:
            apply_overrides(config, {dist.key: value})
    assert set(space.param_space()) == set(space.search)
    scheduler = space.scheduler()
    assert set(scheduler._hyperparam_mutations) == set(space.search)


def test_shipped_spaces_search_the_balance():
    for path in SPACES:
        space = load_space(path)
        assert {"g_lr", "d_lr_ratio", "d_steps"} <= set(space.search), path.name
        assert space.search["d_steps"].mutation() == list(range(1, 6))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"search": {"g_lrr": {"loguniform": [1e-5, 1e-3]}}}, "unknown config key 'g_lrr'"),
        ({"fixed": {"estimatr": "gumbel"}}, "fixed.estimatr"),
        ({"perturbation_intervall": 4}, "unknown key 'perturbation_intervall'"),
        ({"search": {"g_lr": {"lognormal": [1e-5, 1e-3]}}}, "unknown distribution 'lognormal'"),
        ({"search": {"g_lr": {"loguniform": [1e-3, 1e-3]}}}, "is empty"),
        ({"search": {"g_lr": {"uniform": [0.1, 0.01]}}}, "is inverted"),
        ({"search": {"d_steps": {"randint": [5, 1]}}}, "search.d_steps"),
        ({"search": {"d_steps": {"uniform": [1, 5]}}}, "d_steps is an integer"),
        ({"search": {"g_lr": {"choice": []}}}, "non-empty list"),
        ({"metric": "bleu_f4", "mode": "max"}, "'bleu_f4' is not reported on oracle data"),
        ({"metric": "accuracy"}, "metric 'accuracy' is not reported"),
        ({"mode": "max"}, "mode must be min"),
        ({"report_every": 3}, "must divide perturbation_interval"),
        ({"quantile_fraction": 0.9}, "quantile_fraction"),
        ({"keep_checkpoints": 0}, "keep_checkpoints must be a positive integer"),
        ({"search": {"gumbel_max_temperature": {"uniform": [0.5, 10]}}}, "gumbel_max_temperature"),
    ],
)
def test_bad_space_is_named_before_any_trial(oracle_data, tmp_path, capsys, change, message):
    space = {**TINY_SPACE, **change}
    path = _space_file(tmp_path, space)
    started = time.perf_counter()
    code = main(["tune", "--space", path, "--data", oracle_data, "--out", str(tmp_path / "t")])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("raygan: error:")
    assert not (tmp_path / "t").exists()  # nothing was written, no trial was started
    assert time.perf_counter() - started < 10


def test_a_searched_key_cannot_be_overridden(oracle_data, tmp_path, capsys):
    path = _space_file(tmp_path, TINY_SPACE)
    argv = [
        "tune",
        "--space",
        path,
        "--data",
        oracle_data,
        "--out",
        str(tmp_path / "t"),
        "g_lr=0.1",
    ]
    assert main(argv) == 2
    assert "g_lr is searched" in capsys.readouterr().err


def test_missing_space_file_is_named(oracle_data, tmp_path):
    with pytest.raises(RayganError, match=r"nope\.yaml"):
        load_space(tmp_path / "nope.yaml")


# ---------------------------------------------------------------- PBT on a real cluster


@pytest.fixture(scope="module")
def pbt_run(ray_cluster, oracle_data, tmp_path_factory):
    from raygan.run.tune import run_tune

    tmp = tmp_path_factory.mktemp("pbt")
    tune_dir = tmp / "tune"
    summary = run_tune(
        _space_file(tmp, TINY_SPACE), oracle_data, str(tune_dir), log=lambda *_: None
    )
    return summary, tune_dir


def test_pbt_exploits_and_reapplies_the_mutated_hyperparameters(pbt_run):
    """The exploiting trial continues from the donor's step and data position, with its OWN
    learning rates in the optimizers and its OWN d_steps in the loop (the DCGAN-example bug)."""
    from raygan.run.loop import phase_of

    summary, tune_dir = pbt_run
    assert summary["exploits"] >= 1
    reports = _reports(tune_dir)
    written = _checkpoints_by_writer(tune_dir)
    assert len(reports) == 2
    checked = 0
    for trial_id, rows in reports.items():
        for row in rows:
            if not row["exploit"]:
                continue
            donor_id, restored_step = row["restored_from"], row["restored_step"]
            assert donor_id != trial_id and donor_id in reports
            # A checkpoint the donor wrote at that step, and the data position it recorded.
            donor_meta, donor_config = written[donor_id][restored_step]
            assert row["restored_batches"] == donor_meta["metrics"]["batches_consumed"]
            total = apply_overrides(Config(), TINY_FIXED).schedule.total_steps
            assert row["step"] == min(restored_step + TINY_SPACE["report_every"], total)
            # The config this trial runs with after the exploit is its own mutated one.
            own = row["config"]
            donor_hparams = {
                "g_lr": donor_config["gan"]["g_lr"],
                "d_lr_ratio": donor_config["gan"]["d_lr_ratio"],
                "d_steps": donor_config["gan"]["d_steps"],
            }
            assert own != pytest.approx(donor_hparams, rel=1e-9)
            assert row["lr_g"] == pytest.approx(own["g_lr"], rel=1e-12)
            assert row["lr_d"] == pytest.approx(own["g_lr"] * own["d_lr_ratio"], rel=1e-12)
            # D updates actually done since the restore follow this trial's d_steps.
            expected = 0
            tiny = apply_overrides(Config(), TINY_FIXED)
            for step in range(restored_step, row["step"]):
                phase = phase_of(step, tiny)[0]
                expected += own["d_steps"] + 1 if phase == "adversarial" else 1
            assert row["batches_consumed"] - row["restored_batches"] == expected
            checked += 1
    # A trial paused by synchronous PBT before its first own checkpoint restarts from the same
    # donor checkpoint again: one exploit, reported twice, listed once.
    assert checked >= summary["exploits"]


def test_a_trials_last_report_is_no_perturbation_point(pbt_run):
    """An exploit at a trial's last report would restart it from its donor's final checkpoint,
    where it trains no further: the trial would end as a copy of its donor, summarized under
    the donor's id and metrics. Every trial ends on its own last report instead."""
    summary, tune_dir = pbt_run
    reports = _reports(tune_dir)
    total = apply_overrides(Config(), TINY_FIXED).schedule.total_steps
    assert total % TINY_SPACE["perturbation_interval"] == 0  # the case under test
    assert sorted(t["trial_id"] for t in summary["trials"]) == sorted(reports)
    for trial in summary["trials"]:
        rows = reports[trial["trial_id"]]
        assert [row["final"] for row in rows] == [False] * (len(rows) - 1) + [True]
        assert rows[-1]["step"] == trial["steps"] == total
        assert trial["final_metric"] == rows[-1]["nll_oracle"]
        assert all(event["step"] < total for event in trial["lineage"])


def test_pbt_outputs(pbt_run, capsys):
    _, tune_dir = pbt_run
    results = json.loads((tune_dir / "results.json").read_text())
    assert results["best"]["metric"] == min(t["best_metric"] for t in results["trials"])
    assert any(t["lineage"] for t in results["trials"])
    table = (tune_dir / "results.md").read_text()
    assert "exploits (step: donor)" in table and len(table.splitlines()) == 2 + 2
    assert (tune_dir / "metric.png").read_bytes()[:4] == b"\x89PNG"
    for trial_id in (t["trial_id"] for t in results["trials"]):
        assert list((tune_dir / "trials" / trial_id / "tb").glob("events.out.tfevents.*"))
    # The export is a checkpoint `raygan sample` takes as is (and via TUNE_DIR).
    meta = json.loads((tune_dir / "best" / "checkpoint.json").read_text())
    assert meta["metrics"]["nll_oracle"] == results["best"]["metric"]
    for checkpoint in (tune_dir / "best", tune_dir):
        assert main(["sample", "--checkpoint", str(checkpoint), "-n", "3"]) == 0
        assert len(capsys.readouterr().out.splitlines()) == 3


def test_search_report_names_the_best_trial_and_its_config(pbt_run, capsys):
    summary, tune_dir = pbt_run
    assert summary["report"] == str(tune_dir / "report.md")
    (tune_dir / "report.md").unlink()
    assert main(["report", str(tune_dir)]) == 0  # `raygan report` rewrites it
    assert capsys.readouterr().out.strip() == f"report: {tune_dir / 'report.md'}"
    report = (tune_dir / "report.md").read_text()
    best = summary["best"]
    assert f"Best: trial {best['trial_id']}, nll_oracle {best['metric']:.4f}" in report
    for key, value in best["config"].items():
        assert f"{key}: {value}" in report
    assert "](metric.png)" in report and "exploits (step: donor)" in report


def test_rerun_of_a_finished_search_restores_it(pbt_run, oracle_data, tmp_path):
    from raygan.run.tune import run_tune

    summary, tune_dir = pbt_run
    space_path = json.loads((tune_dir / "tune.json").read_text())["space"]["source"]
    started = time.perf_counter()
    again = run_tune(space_path, oracle_data, str(tune_dir), log=lambda *_: None)
    assert again["best"] == summary["best"]
    assert time.perf_counter() - started < 30  # restored, not retrained
    other = _space_file(tmp_path, {**TINY_SPACE, "trials": 3})
    with pytest.raises(RayganError, match="another space"):
        run_tune(other, oracle_data, str(tune_dir), log=lambda *_: None)


def test_interrupted_search_resumes(ray_cluster, oracle_data, tmp_path):
    """SIGINT the `raygan tune` driver after its first checkpoint; the same command resumes the
    trials from their checkpoints (no trial reports a step twice) and finishes."""
    from raygan.run.tune import run_tune

    space = {**TINY_SPACE, "trials": 1, "synch": False, "fixed": {**TINY_FIXED, "adv_steps": 60}}
    path = _space_file(tmp_path, space)
    tune_dir = tmp_path / "tune"
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.address}
    cmd = [sys.executable, "-m", "raygan.cli", "tune", "--space", path, "--data", oracle_data,
           "--out", str(tune_dir)]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not list((tune_dir / "ray" / "pbt").glob("*/checkpoint_000001")):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    [rows] = _reports(tune_dir).values()
    interrupted_at = rows[-1]["step"]
    assert interrupted_at < 63  # 2 MLE + 1 D + 60 adversarial steps: stopped before the end

    summary = run_tune(path, oracle_data, str(tune_dir), log=lambda *_: None)
    [rows] = _reports(tune_dir).values()
    steps = [r["step"] for r in rows]
    assert steps[-1] == 63 and summary["trials"][0]["steps"] == 63
    resumed = [r for r in rows if r["restored_step"] >= 0]
    assert resumed and not resumed[0]["exploit"]  # its own checkpoint, not a donor's
    assert resumed[0]["restored_step"] >= 2  # it went on from a checkpoint, not from step 0
    assert resumed[0]["step"] == resumed[0]["restored_step"] + TINY_SPACE["report_every"]


@pytest.mark.slow
def test_distributed_trial_equals_single_process_trial(ray_cluster, oracle_data, tmp_path):
    """num_workers=2 runs each trial as a TorchTrainer (DDP); same seed => the same numbers."""
    from raygan.run.tune import run_tune

    space = {
        **TINY_SPACE, "trials": 1, "synch": False,
        "search": {"g_lr": {"choice": [0.01]}, "d_lr_ratio": {"choice": [2.0]},
                   "d_steps": {"choice": [2]}},
    }  # fmt: skip
    path = _space_file(tmp_path, space)
    finals = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        summary = run_tune(path, oracle_data, str(out), overrides={"num_workers": workers},
                           scheduler="none", log=lambda *_: None)  # fmt: skip
        [trial] = summary["trials"]
        assert trial["steps"] == apply_overrides(Config(), TINY_FIXED).schedule.total_steps
        finals[workers] = trial["final_metric"]
        assert (out / "best" / "state.pt").is_file()
    assert finals[2] == pytest.approx(finals[1], abs=1e-5)


def test_d_lr_ratio_sets_the_discriminator_lr():
    assert apply_overrides(Config(), {"g_lr": 2e-4, "d_lr_ratio": 3}).gan.disc_lr == pytest.approx(
        6e-4
    )
    assert apply_overrides(Config(), {"d_lr": 5e-4}).gan.disc_lr == 5e-4  # no ratio: d_lr itself
    with pytest.raises(RayganError, match="d_lr_ratio must be > 0"):
        apply_overrides(Config(), {"d_lr_ratio": 0})


def _tiny_checkpoint(data_dir: str, out: Path) -> str:
    """An MLE checkpoint of the tiny nets, written by the loop in this process."""
    import shutil

    from raygan.run.loop import RunSpec, WorkerContext, train_loop
    from raygan.run.train import resolve_config

    config = resolve_config(data_dir, {**TINY_FIXED, "mle_steps": 8, "d_pretrain_steps": 0,
                                       "adv_steps": 0, "checkpoint_every": 8})  # fmt: skip

    def keep(metrics, checkpoint_dir):
        shutil.copytree(checkpoint_dir, out)

    train_loop(RunSpec(config=config, data_dir=data_dir, run_dir=None),
               WorkerContext(report=keep))  # fmt: skip
    return str(out)


def test_frontier_objective_is_measured_against_the_starting_checkpoint(
    ray_cluster, oracle_data, tmp_path
):
    from raygan.core.frontier import frontier_distance
    from raygan.run.tune import run_tune

    start = _tiny_checkpoint(oracle_data, tmp_path / "start")
    space = {**TINY_SPACE, "metric": "frontier_distance", "trials": 1, "synch": False,
             "fixed": {**TINY_FIXED, "recipe": "ratio", "mle_steps": 0, "d_pretrain_steps": 2,
                       "adv_steps": 4},
             "search": {"g_lr": {"choice": [0.01]}, "d_lr_ratio": {"choice": [1.0]},
                        "d_steps": {"choice": [1]}}}  # fmt: skip
    path = _space_file(tmp_path, space)
    with pytest.raises(RayganError, match="set init_from=CHECKPOINT"):
        run_tune(path, oracle_data, str(tmp_path / "no-start"), scheduler="none",
                 log=lambda *_: None)  # fmt: skip
    out = tmp_path / "t"
    summary = run_tune(path, oracle_data, str(out), overrides={"init_from": start},
                       scheduler="none", log=lambda *_: None)  # fmt: skip
    frontier = json.loads((out / "frontier.json").read_text())
    assert frontier["checkpoint"] == start and len(frontier["points"]) == len(frontier["temperatures"])
    [rows] = _reports(out).values()
    for row in rows:  # every report's objective is its own point against that curve
        point = (row["nll_test"], row["nll_oracle"])
        expected = frontier_distance([tuple(p) for p in frontier["points"]], point, extrapolate=True)
        assert row["frontier_distance"] == pytest.approx(expected)
    assert summary["metric"] == "frontier_distance"
    # Another start cannot reuse this curve: the search request holds init_from.
    other = _tiny_checkpoint(oracle_data, tmp_path / "other")
    with pytest.raises(RayganError, match="holds a search with another space"):
        run_tune(path, oracle_data, str(out), overrides={"init_from": other}, scheduler="none",
                 log=lambda *_: None)  # fmt: skip


def test_a_start_whose_d_the_trials_cannot_load_is_refused_before_ray(oracle_data, tmp_path):
    """Trials of a recipe with another D than the starting checkpoint's, told not to pretrain
    it, would train G against untrained Ds: refused with the checkpoint named, no trial run."""
    from raygan.run.tune import run_tune

    start = _tiny_checkpoint(oracle_data, tmp_path / "start")  # a classifier D
    space = {**TINY_SPACE, "trials": 1,
             "fixed": {**TINY_FIXED, "recipe": "nce", "mle_steps": 0, "adv_steps": 4}}  # fmt: skip
    path = _space_file(tmp_path, space)
    with pytest.raises(RayganError, match=f"init_from checkpoint {start} holds another discriminator"):
        run_tune(path, oracle_data, str(tmp_path / "t"), scheduler="none", log=lambda *_: None,
                 overrides={"init_from": start, "d_pretrain_steps": 0})  # fmt: skip
    assert not (tmp_path / "t" / "ray").exists()


def test_no_temperature_of_the_starting_mle_wins_the_frontier_objective(oracle_data, tmp_path):
    """The frontier objective scores every temperature of the starting MLE at 0 or above (on
    its own curve, or above it where dominated), measured as a trial's evaluation measures it,
    so no temperature knob can win it (NLL_oracle alone is won by sharpening)."""
    from raygan.core.frontier import frontier_distance
    from raygan.run.checkpoint import load_generator
    from raygan.run.loop import temperature_curve
    from raygan.run.train import resolve_config
    from raygan.run.tune import FRONTIER_TEMPERATURES

    start = _tiny_checkpoint(oracle_data, tmp_path / "start")
    gen, _, _ = load_generator(start)
    config = resolve_config(oracle_data, {**TINY_FIXED, "eval_samples": 64})
    curve = temperature_curve(oracle_data, config, gen, FRONTIER_TEMPERATURES)
    assert len(curve) == len(FRONTIER_TEMPERATURES)
    distances = [frontier_distance(curve, p, extrapolate=True) for p in curve]
    assert all(d >= -1e-9 for d in distances)  # on the curve, or above it where dominated
    assert min(distances) == pytest.approx(0.0, abs=1e-9)
