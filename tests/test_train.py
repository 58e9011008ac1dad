"""The trainer: DDP against the single-process reference, exact resume, failure recovery, placement.

Tests that start Ray share one 2-node cluster (conftest.ray_cluster); the rest run the per-worker
loop in this process at world size 1, which is the reference the distributed runs must equal.
"""

from __future__ import annotations

import contextlib
import json
import time

import pytest
import torch

from raygan.cli import main as cli_main
from raygan.core.config import recipe_names
from raygan.core.errors import RayganError
from raygan.run.checkpoint import load_checkpoint
from raygan.run.loop import RunSpec, WorkerContext, bleu_f, train_loop
from raygan.run.train import fit, resolve_config
from tests.conftest import TINY_TRAIN, prepare_tiny_text


def _reference(data_dir: str, overrides: dict, restore_dir=None, stop_after=None, run_dir=None):
    """Run the loop in this process (world size 1); returns {step: state} of every checkpoint."""
    config = resolve_config(data_dir, overrides)
    states: dict[int, dict] = {}

    def report(metrics, checkpoint_dir):
        state, _, _ = load_checkpoint(checkpoint_dir)
        states[metrics["step"]] = state
        if stop_after is not None and metrics["step"] >= stop_after:
            raise _Stop(checkpoint_dir)

    run = RunSpec(config=config, data_dir=data_dir, run_dir=run_dir)
    with contextlib.suppress(_Stop):
        train_loop(run, WorkerContext(report=report, restore_dir=restore_dir))
    return states


class _Stop(Exception):
    pass


def _assert_same_weights(a: dict, b: dict, atol: float) -> None:
    for net in ("generator", "discriminator"):
        for name, tensor in a[net].items():
            torch.testing.assert_close(tensor, b[net][name], atol=atol, rtol=0, msg=f"{net}.{name}")


@pytest.fixture(scope="module")
def gumbel_run(ray_cluster, oracle_data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("gumbel") / "run"
    summary = fit(
        oracle_data, str(run_dir), {**TINY_TRAIN, "estimator": "gumbel"}, log=lambda *_: None
    )
    return run_dir, summary


def test_ddp_gumbel_equals_one_process(gumbel_run, oracle_data):
    run_dir, summary = gumbel_run
    total = TINY_TRAIN["mle_steps"] + TINY_TRAIN["d_pretrain_steps"] + TINY_TRAIN["adv_steps"]
    assert summary["final_step"] == total
    reference = _reference(oracle_data, {**TINY_TRAIN, "estimator": "gumbel"})[total]
    distributed, _, _ = load_checkpoint(run_dir / "final")
    _assert_same_weights(distributed, reference, atol=1e-5)
    # the weights moved: equality is not two untrained copies
    initial = _reference(oracle_data, {**TINY_TRAIN, "mle_steps": 0, "d_pretrain_steps": 0,
                                       "adv_steps": 0, "estimator": "gumbel"})  # fmt: skip
    assert not initial  # a zero-step run reports nothing
    assert (run_dir / "tb").is_dir() and any((run_dir / "tb").iterdir())


def test_workers_land_on_two_nodes(gumbel_run):
    _, summary = gumbel_run
    assert len(summary["worker_nodes"]) == 2
    assert len(set(summary["worker_nodes"])) == 2


def test_ddp_dense_reinforce_equals_one_process(ray_cluster, oracle_data, tmp_path):
    overrides = {**TINY_TRAIN, "estimator": "dense"}
    summary = fit(oracle_data, str(tmp_path / "run"), overrides, log=lambda *_: None)
    reference = _reference(oracle_data, overrides)[summary["final_step"]]
    distributed, _, _ = load_checkpoint(tmp_path / "run" / "final")
    _assert_same_weights(distributed, reference, atol=1e-5)
    torch.testing.assert_close(
        distributed["baseline_T"], reference["baseline_T"], atol=1e-5, rtol=0
    )


@pytest.fixture(scope="module")
def sharded_oracle(tmp_path_factory) -> str:
    """conftest's oracle corpus in 8 shards of 32 rows (one row group each)."""
    from raygan.data.prepare import prepare_oracle

    out = tmp_path_factory.mktemp("sharded") / "data"
    prepare_oracle(str(out), oracle="random", num_samples=256, num_test=64, vocab_size=30,
                   max_len=8, shard_rows=32, seed=0, progress=False)  # fmt: skip
    return str(out)


def test_the_reader_streams_when_the_split_outgrows_its_buffer(sharded_oracle):
    from raygan.run.loop import BatchStream

    common = {"rank": 0, "world_size": 1, "batch_size": 8, "seed": 0, "reader": "auto"}
    assert BatchStream(sharded_oracle, buffer_rows=100, **common).reader == "stream"
    assert BatchStream(sharded_oracle, buffer_rows=256, **common).reader == "memory"


@pytest.mark.slow
def test_ddp_with_the_streaming_reader_equals_one_process_across_a_kill(
    ray_cluster, sharded_oracle, tmp_path
):
    """Windows of two shards (buffer 40 rows), 2 workers, 32 steps an epoch, a worker killed
    once step 32 (the end of epoch 0) is done: the run resumes from step 30's checkpoint, two
    batches before the epoch ends, crosses into epoch 1 again and ends with the weights of one
    uninterrupted process that streams the same order."""
    overrides = {**TINY_TRAIN, "estimator": "dense", "reader": "stream",
                 "reader_buffer_rows": 40, "mle_steps": 40, "fail_at_step": 32,
                 "max_failures": 2}  # fmt: skip
    run_dir = tmp_path / "run"
    summary = fit(sharded_oracle, str(run_dir), overrides, log=lambda *_: None)
    assert (run_dir / ".fail_at_step_fired").read_text() == "32"
    assert summary["reader"] == "stream" and summary["final_step"] == 45
    reference = _reference(sharded_oracle, {**overrides, "fail_at_step": -1})[45]
    distributed, _, _ = load_checkpoint(run_dir / "final")
    _assert_same_weights(distributed, reference, atol=1e-5)
    in_memory = _reference(sharded_oracle, {**overrides, "fail_at_step": -1, "reader": "memory"})
    with pytest.raises(AssertionError):  # the streamed order is not RankBatches' order
        _assert_same_weights(in_memory[45], reference, atol=1e-5)


@pytest.mark.slow
def test_killed_worker_resumes_from_checkpoint(ray_cluster, oracle_data, tmp_path):
    """A worker SIGKILLed at step 5 (the last checkpoint was step 3): the group restarts from it and
    ends with the exact step count and the same weights as an uninterrupted run."""
    overrides = {**TINY_TRAIN, "estimator": "rollout", "fail_at_step": 5, "max_failures": 2}
    run_dir = tmp_path / "run"
    summary = fit(oracle_data, str(run_dir), overrides, log=lambda *_: None)
    assert (run_dir / ".fail_at_step_fired").read_text() == "5"
    total = TINY_TRAIN["mle_steps"] + TINY_TRAIN["d_pretrain_steps"] + TINY_TRAIN["adv_steps"]
    assert summary["final_step"] == total
    final, _, meta = load_checkpoint(run_dir / "final")
    assert meta["step"] == total
    reference = _reference(oracle_data, {**overrides, "fail_at_step": -1})[total]
    _assert_same_weights(final, reference, atol=1e-5)

    # the same command on the same RUN_DIR resumes at the end: nothing is trained again
    again = fit(oracle_data, str(run_dir), overrides, log=lambda *_: None)
    assert again["final_step"] == total

    # the final checkpoint serves `raygan sample`
    assert cli_main(["sample", "--checkpoint", str(run_dir), "-n", "3", "--seed", "1"]) == 0


@pytest.mark.slow
def test_lost_node_resumes_from_checkpoint_on_a_replacement(ray_cluster, oracle_data, tmp_path):
    """The node holding the run's only worker (2 CPUs: no other node fits it) is removed after
    the first checkpoint and a replacement node joins, as an autoscaler would bring one: the
    run ends on the new node with the exact step count and an uninterrupted run's weights."""
    import threading

    import ray

    overrides = {**TINY_TRAIN, "estimator": "rollout", "num_workers": 1, "cpus_per_worker": 2,
                 "max_failures": 2, "mle_steps": 300, "checkpoint_every": 20, "eval_every": 100}  # fmt: skip
    total = overrides["mle_steps"] + overrides["d_pretrain_steps"] + overrides["adv_steps"]
    run_dir = tmp_path / "run"
    doomed = ray_cluster.add_node(num_cpus=2)
    replacement = None
    outcome: dict = {}

    def train():
        try:
            outcome["summary"] = fit(oracle_data, str(run_dir), overrides, log=lambda *_: None)
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=train)
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while not list((run_dir / "ray" / "raygan").glob("checkpoint_*")):
            assert time.monotonic() < deadline and thread.is_alive(), outcome
            time.sleep(0.05)
        saved = set((run_dir / "ray" / "raygan").glob("checkpoint_*"))
        ray_cluster.remove_node(doomed)
        removed_at, removed_wall, doomed = time.monotonic(), time.time(), None
        replacement = ray_cluster.add_node(num_cpus=2)
        thread.join(timeout=300)
        after = set((run_dir / "ray" / "raygan").glob("checkpoint_*")) - saved
        first = min((p.stat().st_mtime for p in after), default=float("nan")) - removed_wall
        print(f"node removed: the first checkpoint after it {first:.1f} s later, the run ended "
              f"{time.monotonic() - removed_at:.1f} s later")  # fmt: skip
    finally:
        thread.join(timeout=300)
        for node in (doomed, replacement):
            if node is not None:
                ray_cluster.remove_node(node)
        deadline = time.monotonic() + 60  # the next tests count on the session's two nodes
        while ray.cluster_resources().get("CPU") != 2 and time.monotonic() < deadline:
            time.sleep(0.2)
    assert "error" not in outcome, outcome
    summary = outcome["summary"]
    assert summary["final_step"] == total
    assert summary["worker_nodes"] == [replacement.node_id]  # not the removed node's
    final, _, _ = load_checkpoint(run_dir / "final")
    _assert_same_weights(final, _reference(oracle_data, overrides)[total], atol=1e-5)


@pytest.mark.slow
def test_damaged_newest_checkpoint_resumes_from_the_previous_one(ray_cluster, oracle_data, tmp_path):
    """A finished run whose newest checkpoint is truncated: the same command again resumes from
    the newest good one, trains the steps since, and ends exactly where an uninterrupted run does."""
    overrides = {**TINY_TRAIN, "estimator": "rollout"}
    run_dir = tmp_path / "run"
    fit(oracle_data, str(run_dir), overrides, log=lambda *_: None)
    newest = sorted(p for p in (run_dir / "ray" / "raygan").glob("checkpoint_*") if p.is_dir())[-1]
    state = newest / "state.pt"
    state.write_bytes(state.read_bytes()[:1000])
    summary = fit(oracle_data, str(run_dir), overrides, log=lambda *_: None)
    total = TINY_TRAIN["mle_steps"] + TINY_TRAIN["d_pretrain_steps"] + TINY_TRAIN["adv_steps"]
    assert summary["final_step"] == total
    (damaged,) = summary["damaged_checkpoints"]
    assert newest.name in damaged and "is damaged" in damaged
    final, _, _ = load_checkpoint(run_dir / "final")
    _assert_same_weights(final, _reference(oracle_data, overrides)[total], atol=1e-5)


def test_too_many_workers_fail_within_seconds(ray_cluster, oracle_data, tmp_path, capsys):
    started = time.monotonic()
    code = cli_main(["train", "--data", oracle_data, "--out", str(tmp_path / "r"), "num_workers=3"])
    assert code == 2
    assert time.monotonic() - started < 30
    assert (
        "num_workers=3 x cpus_per_worker=1 needs 3 CPUs; the cluster has 2"
        in capsys.readouterr().err
    )


def test_use_gpu_without_gpu_is_a_clear_error(ray_cluster, oracle_data, tmp_path, capsys):
    code = cli_main(["train", "--data", oracle_data, "--out", str(tmp_path / "r"), "use_gpu=true"])
    assert code == 2
    assert (
        "use_gpu=true needs 2 GPUs (one per worker); the cluster has 0" in capsys.readouterr().err
    )


# -- in-process: no Ray -------------------------------------------------------------------------
def test_resume_is_exact(oracle_data, tmp_path):
    overrides = {**TINY_TRAIN, "num_workers": 1, "estimator": "rollout", "d_dropout": 0.25,
                 "checkpoint_every": 4}  # fmt: skip
    total = TINY_TRAIN["mle_steps"] + TINY_TRAIN["d_pretrain_steps"] + TINY_TRAIN["adv_steps"]
    straight = _reference(oracle_data, overrides)[total]
    stopped: list[str] = []
    config = resolve_config(oracle_data, overrides)

    def stop_at_first(metrics, checkpoint_dir):
        import shutil

        keep = tmp_path / "ckpt"
        shutil.copytree(checkpoint_dir, keep)
        stopped.append(str(keep))
        raise _Stop(checkpoint_dir)

    run = RunSpec(config=config, data_dir=oracle_data, run_dir=None)
    with pytest.raises(_Stop):
        train_loop(run, WorkerContext(report=stop_at_first))
    first_half, _, meta = load_checkpoint(stopped[0])
    assert meta["step"] == 4
    resumed = _reference(oracle_data, overrides, restore_dir=stopped[0])[total]
    _assert_same_weights(resumed, straight, atol=0)
    assert not torch.equal(
        first_half["generator"]["head.weight"], straight["generator"]["head.weight"]
    )


def test_run_dir_with_another_config_is_refused(ray_cluster, oracle_data, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config = resolve_config(oracle_data, TINY_TRAIN)
    (run_dir / "run.json").write_text(
        json.dumps(RunSpec(config=config, data_dir=oracle_data, run_dir=str(run_dir)).to_json())
    )
    args = ["train", "--data", oracle_data, "--out", str(run_dir)]
    args += [f"{k}={v}" for k, v in {**TINY_TRAIN, "d_steps": 3}.items()]
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert "holds a run with a different configuration (gan.d_steps)" in err
    assert "--fresh" in err


def test_unknown_config_key_names_close_keys(oracle_data, tmp_path, capsys):
    code = cli_main(["train", "--data", oracle_data, "--out", str(tmp_path / "r"), "dsteps=3"])
    assert code == 2
    assert "unknown config key 'dsteps'; did you mean d_steps" in capsys.readouterr().err


def test_manifest_values_cannot_be_contradicted(oracle_data):
    with pytest.raises(
        RayganError, match=r"model.vocab_size=99 contradicts the data manifest .*vocab_size=30"
    ):
        resolve_config(oracle_data, {"vocab_size": 99})


def test_init_from_checkpoint_with_other_vocab_is_refused(oracle_data, tmp_path):
    from raygan.data.prepare import prepare_oracle

    other = tmp_path / "other"
    prepare_oracle(str(other), oracle="random", num_samples=64, num_test=16, vocab_size=40,
                   max_len=8, seed=1, progress=False)  # fmt: skip
    states = _reference(str(other), {**TINY_TRAIN, "num_workers": 1, "mle_steps": 3,
                                     "d_pretrain_steps": 0, "adv_steps": 0})  # fmt: skip
    assert states
    from raygan.run.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "ckpt", state=states[3], config=resolve_config(str(other), TINY_TRAIN),
                    meta={"step": 3}, data_dir=str(other))  # fmt: skip
    with pytest.raises(
        RayganError, match="has vocab_size=40, but the data's manifest has vocab_size=30"
    ):
        _reference(
            oracle_data, {**TINY_TRAIN, "num_workers": 1, "init_from": str(tmp_path / "ckpt")}
        )


def test_init_from_another_discriminator_needs_d_pretraining(oracle_data, tmp_path):
    """A checkpoint's D of another form or size cannot be loaded: the run's D starts fresh.
    Going straight to adversarial steps on it is refused (before Ray starts, in `fit`, and in
    the loop); pretraining it, or a control that ignores D, is fine."""
    from raygan.run.checkpoint import save_checkpoint

    mle = {**TINY_TRAIN, "num_workers": 1, "mle_steps": 3, "d_pretrain_steps": 0, "adv_steps": 0}
    states = _reference(oracle_data, mle)
    save_checkpoint(tmp_path / "ckpt", state=states[3], config=resolve_config(oracle_data, mle),
                    meta={"step": 3}, data_dir=oracle_data)  # fmt: skip
    start = {**TINY_TRAIN, "num_workers": 1, "init_from": str(tmp_path / "ckpt"), "mle_steps": 0,
             "d_form": "log_ratio", "d_pretrain_steps": 0, "adv_steps": 2}  # fmt: skip
    message = (r"holds another discriminator \(d_form=classifier; this config: d_form=log_ratio\)"
               r", and d_pretrain_steps=0")  # fmt: skip
    with pytest.raises(RayganError, match=message):
        fit(oracle_data, str(tmp_path / "run"), start, log=lambda *_: None)
    assert not (tmp_path / "run" / "run.json").exists()  # refused before anything was written
    with pytest.raises(RayganError, match=message):
        _reference(oracle_data, start)
    for fine in ({"d_pretrain_steps": 1}, {"estimator": "constant"}, {"d_form": "classifier"}):
        steps = fine.get("d_pretrain_steps", 0) + start["adv_steps"]
        assert max(_reference(oracle_data, {**start, **fine})) == steps  # trained to the end


def test_early_stopping_rules():
    from raygan.run.loop import EarlyStopping

    stall = EarlyStopping("nll_test", patience=2, threshold=0.0)
    assert stall.update({"nll_test": 5.0, "nll_train": 5.0}, "mle") is None
    assert stall.update({"nll_test": 4.0, "nll_train": 4.0}, "mle") is None
    assert stall.update({"nll_test": 4.0, "nll_train": 4.0}, "mle") is None
    assert "has not improved for 2 evaluations (best 4.0000)" in stall.update(
        {"nll_test": 4.1, "nll_train": 4.0}, "mle"
    )

    overfit = EarlyStopping("nll_test", patience=2, threshold=0.0)
    for test, train in ((5.0, 5.0), (4.0, 4.5), (4.1, 4.4)):  # one rise so far
        assert overfit.update({"nll_test": test, "nll_train": train}, "mle") is None
    assert "overfitting" in overfit.update({"nll_test": 4.2, "nll_train": 4.3}, "mle")
    both_rise = EarlyStopping("nll_test", patience=2, threshold=0.0)
    for test, train in ((5.0, 5.0), (4.0, 4.5), (4.1, 4.6)):
        assert both_rise.update({"nll_test": test, "nll_train": train}, "mle") is None
    assert "has not improved" in both_rise.update({"nll_test": 4.2, "nll_train": 4.7}, "mle")

    g_loss = EarlyStopping("g_loss", patience=0, threshold=0.5)
    assert g_loss.update({"g_loss": 0.4}, "mle") is None  # only in the adversarial phase
    assert "under the threshold 0.5" in g_loss.update({"g_loss": 0.4}, "adversarial")

    off = EarlyStopping("nll_test", patience=0, threshold=0.0)
    assert all(off.update({"nll_test": 9.0 + i, "nll_train": 1.0}, "mle") is None for i in range(5))


def test_early_stop_ends_the_phase_and_is_recorded(oracle_data):
    """With patience 1 and a tiny learning rate, MLE stalls: the loop jumps to the next phase and
    the summary records the reason and step."""
    overrides = {**TINY_TRAIN, "num_workers": 1, "mle_steps": 40, "eval_every": 4, "patience": 1,
                 "mle_lr": 1e-9, "checkpoint_every": 100}  # fmt: skip
    config = resolve_config(oracle_data, overrides)
    run = RunSpec(config=config, data_dir=oracle_data, run_dir=None)
    summary = train_loop(run, WorkerContext())
    total = 40 + TINY_TRAIN["d_pretrain_steps"] + TINY_TRAIN["adv_steps"]
    assert summary["steps"] == total
    (stop,) = [h for h in summary["early_stops"] if h["phase"] == "mle"]
    assert stop["step"] == 8 and "has not improved" in stop["early_stop"]


def test_text_corpus_trains_and_reports_bleu(tmp_path):
    """The variable-length path end to end in one process: EOS/PAD batches, BLEU-4 and
    Self-BLEU-4 against the held-out split, decoded samples."""
    data = prepare_tiny_text(tmp_path, num_lines=240)
    overrides = {**TINY_TRAIN, "num_workers": 1, "estimator": "rollout"}
    config = resolve_config(data, overrides)
    assert config.model.eos_id is not None and config.model.max_len == 10
    run = RunSpec(config=config, data_dir=data, run_dir=str(tmp_path / "run"))
    summary = train_loop(run, WorkerContext())
    metrics = summary["final_metrics"]
    assert 0.0 <= metrics["bleu4"] <= 1.0 and 0.0 <= metrics["self_bleu4"] <= 1.0
    assert metrics["bleu_f4"] == pytest.approx(bleu_f(metrics["bleu4"], metrics["self_bleu4"]))
    assert "nll_oracle" not in metrics and metrics["nll_test"] > 0
    assert (tmp_path / "run" / "tb").is_dir()


def test_bleu_f_punishes_either_failure():
    """Tune's text metric: harmonic mean of BLEU and 1 - Self-BLEU."""
    assert bleu_f(0.5, 0.5) == pytest.approx(0.5)
    assert bleu_f(0.9, 1.0) == 0.0  # fluent but collapsed: every sample the same
    assert bleu_f(0.0, 0.0) == 0.0  # diverse noise
    assert bleu_f(0.0, 1.0) == 0.0
    # A large gain in quality does not buy a collapse in diversity.
    assert bleu_f(0.6, 0.4) > bleu_f(0.9, 0.9)


# -- D pretraining, held-out D accuracy, recipes -------------------------------------------------
def _in_process(data_dir: str, overrides: dict) -> dict:
    config = resolve_config(data_dir, overrides)
    return train_loop(RunSpec(config=config, data_dir=data_dir, run_dir=None),
                      WorkerContext())  # fmt: skip


def test_d_pretraining_stops_once_d_is_accurate_on_held_out_data(oracle_data):
    overrides = {**TINY_TRAIN, "num_workers": 1, "estimator": "rollout", "mle_steps": 8,
                 "d_pretrain_steps": 600, "d_pretrain_until_acc": 0.7, "d_lr": 1e-2,
                 "adv_steps": 0, "eval_every": 20, "checkpoint_every": 1000}  # fmt: skip
    summary = _in_process(oracle_data, overrides)
    evals = {h["phase"]: h for h in summary["history"]}
    assert "d_acc" not in evals["mle"]  # D has not trained yet: nothing to score
    (stop,) = summary["early_stops"]
    assert stop["phase"] == "d_pretrain" and "reached d_pretrain_until_acc=0.7" in stop["early_stop"]
    assert stop["d_acc"] >= 0.7 and stop["step"] < 8 + 600
    assert {"d_acc_real", "d_acc_fake", "d_auc"} <= set(stop)
    assert summary["steps"] == 8 + 600  # the phase ended; the run is complete
    assert summary["train_s"] > 0 and all("train_s" in h for h in summary["history"])


def test_d_pretraining_has_its_own_evaluation_cadence(oracle_data):
    overrides = {**TINY_TRAIN, "num_workers": 1, "estimator": "rollout", "mle_steps": 4,
                 "d_pretrain_steps": 10, "d_pretrain_eval_every": 5, "adv_steps": 4,
                 "eval_every": 2, "checkpoint_every": 1000}  # fmt: skip
    steps = [(h["phase"], h["step"]) for h in _in_process(oracle_data, overrides)["history"]]
    assert steps == [("mle", 2), ("mle", 4), ("d_pretrain", 9), ("d_pretrain", 14),
                     ("adversarial", 16), ("adversarial", 18)]  # fmt: skip


def test_resume_inside_a_pool_round_is_exact(oracle_data, tmp_path):
    overrides = {**TINY_TRAIN, "num_workers": 1, "estimator": "rollout", "d_pretrain_steps": 6,
                 "d_pretrain_pool": 24, "d_pretrain_refresh": 4, "adv_steps": 2,
                 "checkpoint_every": 6}  # fmt: skip
    total = TINY_TRAIN["mle_steps"] + 6 + 2
    straight = _reference(oracle_data, overrides)[total]
    stopped = _reference(oracle_data, overrides, stop_after=6, run_dir=None)
    assert set(stopped) == {6}  # step 6 = the 2nd D pretraining step of the pool's first round
    keep = tmp_path / "ckpt"
    (keep / "x").mkdir(parents=True)
    from raygan.run.checkpoint import save_checkpoint

    config = resolve_config(oracle_data, overrides)
    directory = save_checkpoint(keep / "ckpt", state=stopped[6], config=config,
                                meta={"step": 6, "phase": "d_pretrain", "metrics": {}},
                                data_dir=oracle_data)  # fmt: skip
    resumed = _reference(oracle_data, overrides, restore_dir=str(directory))[total]
    _assert_same_weights(resumed, straight, atol=0)


def test_d_starts_from_g_when_d_init_is_generator(oracle_data):
    overrides = {**TINY_TRAIN, "num_workers": 1, "estimator": "rollout", "d_init": "generator",
                 "d_lr": 1e-9, "adv_steps": 0, "checkpoint_every": 100}  # fmt: skip
    total = TINY_TRAIN["mle_steps"] + TINY_TRAIN["d_pretrain_steps"]
    state = _reference(oracle_data, overrides)[total]
    g, d = state["generator"], state["discriminator"]
    torch.testing.assert_close(d["embed.weight"], g["embed.weight"], atol=1e-6, rtol=0)
    torch.testing.assert_close(d["lstm.weight_hh_l0"], g["lstm.weight_hh_l0"], atol=1e-6, rtol=0)
    fresh = _reference(oracle_data, {**overrides, "d_init": "fresh"})[total]["discriminator"]
    assert not torch.allclose(fresh["embed.weight"], g["embed.weight"], atol=1e-3)


def _recipe_at_test_size(name: str) -> dict:
    """A shipped recipe with the tiny nets and a few steps of each of its phases."""
    from raygan.core.config import load_recipe

    keys = load_recipe(name)
    return {
        "recipe": name, **TINY_TRAIN, "estimator": keys["estimator"], "loss": keys["loss"],
        "d_pretrain_steps": min(keys.get("d_pretrain_steps", 0), 3), "adv_steps": 3,
        "d_mle_steps": min(keys.get("d_mle_steps", 0), 2),
        "eval_every": 3, "d_steps": min(keys.get("d_steps", 1), 2),
        "d_pretrain_pool": 16 if keys.get("d_pretrain_pool") else 0, "d_pretrain_refresh": 2,
    }  # fmt: skip


@pytest.mark.parametrize("name", recipe_names())
def test_each_recipe_trains_on_two_workers_as_in_one_process(ray_cluster, oracle_data, tmp_path, name):
    """Every shipped recipe end to end on 2 Ray workers (its estimator, loss, reward, baseline,
    summed loss and D pool) equals the same run in one process."""
    overrides = _recipe_at_test_size(name)
    summary = fit(oracle_data, str(tmp_path / "run"), overrides, log=lambda *_: None)
    total = TINY_TRAIN["mle_steps"] + overrides["d_pretrain_steps"] + 3
    assert summary["final_step"] == total
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["config"]["schedule"]["recipe"] == name
    assert {"d_acc_real", "d_acc_fake", "d_acc", "d_auc"} <= set(summary["final_metrics"])
    reference = _reference(oracle_data, overrides)[total]
    distributed, _, _ = load_checkpoint(tmp_path / "run" / "final")
    if overrides["loss"] == "rsgan":
        # D's output bias has an analytically zero gradient under rsgan (it cancels in
        # real - fake): Adam turns float noise into lr-sized steps, which differ by process
        # count; G never sees the bias (it cancels there too).
        for state in (distributed, reference):
            state["discriminator"].pop("head.bias")
    _assert_same_weights(distributed, reference, atol=1e-5)
    if reference["baseline_T"] is not None:
        torch.testing.assert_close(distributed["baseline_T"], reference["baseline_T"], atol=1e-5,
                                   rtol=0)  # fmt: skip


def test_the_default_d_learns_within_its_budget(oracle_data):
    """Every GAN and D setting at its default (only the run's length and evaluation cadence
    set): D pretraining against a generator 5 epochs into MLE ends with D separating held-out
    real sequences from fresh samples (D's training batches come from the training split)."""
    from raygan.core.config import ScheduleConfig

    budget = ScheduleConfig().d_pretrain_steps
    overrides = {"num_workers": 1, "mle_steps": 20, "adv_steps": 0, "eval_every": budget // 4,
                 "eval_samples": 64, "checkpoint_every": 10_000}  # fmt: skip
    summary = _in_process(oracle_data, overrides)
    d_evals = [h for h in summary["history"] if h["phase"] == "d_pretrain"]
    assert d_evals[-1]["step"] == 20 + budget
    assert d_evals[-1]["d_acc"] >= 0.75, [round(h["d_acc"], 3) for h in d_evals]
    assert d_evals[-1]["d_auc"] >= 0.85
