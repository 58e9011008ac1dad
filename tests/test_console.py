"""What a person sees: the demo's generated text, the console of `raygan train`, run reports.

The console tests run the CLI in a fresh process (its own local Ray, started quiet as a user's
is); the report tests read runs trained here on the session cluster."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from conftest import TINY_TRAIN, TINY_WORDS, prepare_tiny_text

from raygan.cli import main
from raygan.run.train import fit

PROGRESS = re.compile(r"\d+/\d+ \[\d\d:\d\d<\d\d:\d\d, +[\d.]+(step/s|s/step)")


@pytest.fixture(scope="module")
def console_run(tmp_path_factory):
    """`raygan train` on tiny text, then `raygan demo --smoke-test`, in one fresh process."""
    root = tmp_path_factory.mktemp("console")
    data = prepare_tiny_text(root, num_lines=200)
    keys = [f"{k}={v}" for k, v in TINY_TRAIN.items()]
    script = (
        "import sys; from raygan.cli import main\n"
        f"assert main(['train', '--data', {data!r}, '--out', {str(root / 'run')!r}, *{keys!r}]) == 0\n"
        f"sys.exit(main(['demo', '--smoke-test', '--out', {str(root / 'demo')!r}]))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAYGAN_VERBOSE")}
    env["RAY_TMPDIR"] = os.environ.get("RAY_TMPDIR", "/tmp")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=600, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return root, done.stdout, done.stderr


@pytest.mark.slow
def test_train_console_is_a_progress_bar_not_ray_internals(console_run):
    root, out, err = console_run
    console = out + err
    for internal in ("TrainingReport(", "PreemptionWatcher", "RayTrainWorker pid", "INFO worker.py"):
        assert internal not in console
    assert PROGRESS.search(err), err[-2000:]
    assert "mle: steps 1-4" in err and "adversarial: steps 6-9" in err
    assert re.search(r"^done: 9 steps in [\d.]+ s; .*NLL_test [\d.]+", out, re.M), out
    assert f"report: {root / 'run' / 'report.md'}" in out
    assert (root / "run" / "report.md").is_file()


@pytest.mark.slow
def test_demo_prints_sentences_of_the_shipped_corpus(console_run):
    from raygan.demo import PREFIXES, corpus_path

    root, out, _ = console_run
    from tokenizers import Tokenizer

    vocabulary = set(Tokenizer.from_file(str(root / "demo" / "data" / "tokenizer.json")).get_vocab())
    assert vocabulary >= {"a", "man", "sitting", "on", "bench"}  # the corpus's, not generated
    corpus = set(corpus_path().read_text().replace(".", " . ").split())
    # Ray's own "(raylet) Task ServeController.graceful_shutdown failed" can land here: Serve's
    # shutdown waits for its controller's death, which Ray reports on every driver.
    served = [line for line in out[out.index("[4/4] serve"):out.index("wrote ")].splitlines()[2:]
              if "(raylet)" not in line]  # fmt: skip
    plain = [line.strip() for line in served if not line.strip().startswith("[")]
    prefixed = [line.strip() for line in served if line.strip().startswith("[")]
    assert len(plain) == 5 and len(prefixed) == len(PREFIXES)
    for sentence in plain + [line.split("] ", 1)[1] for line in prefixed]:
        words = sentence.split()
        assert words and all(w in vocabulary for w in words), sentence
        assert sum(w in corpus for w in words) >= len(words) / 2, sentence
        assert any(w.isalpha() for w in words), sentence
    for prefix, line in zip(PREFIXES, prefixed, strict=True):
        assert line.startswith(f"[{prefix}] {prefix}")
    assert "next:" in out and "raygan serve --checkpoint" in out
    assert (root / "demo" / "run" / "report.md").is_file() and (root / "demo" / "tune" / "report.md").is_file()


@pytest.fixture(scope="module")
def gumbel_text_run(ray_cluster, tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    data = prepare_tiny_text(root, num_lines=200)
    settings = {**TINY_TRAIN, "estimator": "gumbel", "eval_every": 2}
    summary = fit(data, str(root / "run"), settings, log=lambda *_: None)
    return root / "run", summary


def test_run_report_has_the_named_curves_and_samples(gumbel_text_run):
    import matplotlib.image

    run_dir, summary = gumbel_text_run
    assert summary["report"] == str(run_dir / "report.md")
    report = (run_dir / "report.md").read_text()
    for panel in ("curve_quality.png", "curve_discriminator.png", "curve_losses.png",
                  "curve_gradients.png"):  # fmt: skip
        png = run_dir / panel
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        height, width, _ = matplotlib.image.imread(png).shape
        assert height > 100 and width > 100
        assert f"]({panel})" in report
    assert "Phases (dashed lines): MLE steps 1-4, D pretraining steps 5-5, adversarial steps 6-9." in report
    # Samples at the first and last evaluation, decoded to words of the corpus.
    steps = [int(s) for s in re.findall(r"^### step (\d+)$", report, re.M)]
    assert steps[0] == 2 and steps[-1] == 9 and len(steps) == 4
    block = report.split("### step 9", 1)[1].split("```text\n", 1)[1].split("```", 1)[0]
    assert block.strip() and set(block.split()) <= {*TINY_WORDS, "<unk>"}


def test_report_marks_early_stops_and_reads_a_run_again(gumbel_text_run, tmp_path, capsys):
    """`raygan report` on a copy of the run whose summary records an early stop."""
    import shutil

    from raygan.run.events import read_events

    run_dir, _ = gumbel_text_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("ray", "final"))
    summary = json.loads((copy / "summary.json").read_text())
    summary["early_stops"] = [{"step": 4, "early_stop": "nll_test stalled for 1 evaluations"}]
    (copy / "summary.json").write_text(json.dumps(summary))
    (copy / "report.md").unlink()
    assert main(["report", str(copy)]) == 0
    assert capsys.readouterr().out.strip() == f"report: {copy / 'report.md'}"
    report = (copy / "report.md").read_text()
    assert "Early stops (red dotted lines): step 4: nll_test stalled for 1 evaluations." in report
    scalars, _ = read_events(copy / "tb")
    assert [step for step, _ in scalars["adversarial/beta"]] == [6, 7, 8, 9]


def test_the_console_channel_lives_on_the_drivers_node_and_its_loss_is_not_the_runs(ray_cluster):
    """Losing a worker's node must not take the progress channel with it (Ray Train recovers the
    run, the console must not then fail it): the channel sits on the driver's node, and a channel
    lost anyway costs only progress lines."""
    import io

    import ray
    from ray.util.state import list_actors

    from raygan.run.console import TrainConsole

    driver_node = ray.get_runtime_context().get_node_id()
    for _ in range(4):  # unpinned, a zero-CPU actor lands on either of the session's two nodes
        with TrainConsole(10, file=io.StringIO()) as console:
            alive = [("name", "=", console.name), ("state", "=", "ALIVE")]
            # this session's cluster by its address: another Ray on the machine must not answer
            [channel] = list_actors(address=ray_cluster.address, filters=alive)
            assert channel.node_id == driver_node
    with TrainConsole(10, file=io.StringIO()) as console:
        ray.kill(ray.get_actor(console.name))  # as when its node is lost: leaving must not raise


def test_report_of_a_directory_that_is_neither_is_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("raygan: error: ") and "neither a RUN_DIR" in err and len(err.splitlines()) == 1


def test_verbose_flag_is_read_by_every_command(monkeypatch, tmp_path):
    from raygan.run.console import VERBOSE_VAR, verbose

    monkeypatch.delenv(VERBOSE_VAR, raising=False)
    assert not verbose()
    main(["report", "--verbose", str(tmp_path)])
    assert verbose()
    monkeypatch.setenv(VERBOSE_VAR, "0")
    assert not verbose()
