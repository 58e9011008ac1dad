"""The quality benchmark: its small mode end to end through Ray Train, and the pieces it relies on
(temperature-scaled NLL, the dominance test, the Fréchet distance), each against a reference."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from raygan.errors import RayganError
from raygan.metrics import mean_token_nll
from raygan.models import Generator
from raygan.quality import (
    DYNAMICS,
    QualityPlan,
    _dominated,
    _mean_std,
    finite,
    frechet_distance,
    markdown,
)
from raygan.report import read_scalars
from tests.conftest import TINY, TINY_WORDS

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _bench_module():
    spec = importlib.util.spec_from_file_location(
        "bench_quality", ROOT / "scripts/bench_quality.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_quality", module)
    spec.loader.exec_module(module)
    return module


def _run_small(tmp_path: Path, *extra: str) -> tuple[dict, Path, Path]:
    out = tmp_path / "out"
    json_path, png, md = tmp_path / "q.json", tmp_path / "q.png", tmp_path / "B.md"
    argv = ["--small", "--out", str(out), "--json", str(json_path), "--png", str(png)]
    rc = _bench_module().main([*argv, "--markdown", str(md), *extra])
    assert rc == 0
    return json.loads(json_path.read_text()), png, md


def test_small_mode_writes_json_png_and_table_from_json(ray_cluster, tmp_path):
    result, png, md = _run_small(tmp_path)
    oracle = result["oracle"]
    plan = result["plan"]
    assert finite(result)
    # One MLE run and one run per method for every seed, each with its own checkpoint and time.
    expected = {(m, s) for m in ("mle", *plan["methods"]) for s in plan["seeds"]}
    assert {(r["method"], r["seed"]) for r in oracle["runs"]} == expected
    for run in oracle["runs"]:
        assert Path(run["checkpoint"], "state.pt").is_file() and run["wall_s"] > 0
        if run["method"] != "mle":  # read back from the run's TensorBoard events
            assert set(run["dynamics"]) == set(DYNAMICS)
            assert all(0 <= run["dynamics"][k][e] <= 1 for k in ("d_real_acc", "d_fake_acc")
                       for e in ("first", "last"))  # fmt: skip
        steps = plan["mle_steps"] if run["method"] == "mle" else (
            plan["d_pretrain_steps"] + plan["adv_steps"][run["method"]]
        )  # fmt: skip
        assert run["steps"] == steps
    for method, stats in oracle["summary"].items():
        run = next(r for r in oracle["runs"] if r["method"] == method)
        assert stats["n"] == 1 and stats["nll_oracle"]["mean"] == run["nll_oracle"]
    # Sweeps: MLE and the best GAN at every temperature; T=1 is the seed's table value, and a
    # colder softmax gives samples the oracle likes better.
    assert set(oracle["sweeps"]) == {"mle", oracle["best_gan"]}
    for method, points in oracle["sweeps"].items():
        assert [p["temperature"] for p in points] == list(plan["temperatures"])
        at_one = next(p for p in points if p["temperature"] == 1.0)
        run = next(r for r in oracle["runs"] if r["method"] == method and r["seed"] == 0)
        assert at_one["nll_oracle"] == pytest.approx(run["nll_oracle"])
        assert points[0]["nll_oracle"] < points[-1]["nll_oracle"]
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 10_000
    # The BENCHMARKS.md section is generated from the JSON, numbers included.
    section = md.read_text()
    assert section == _expected_markdown(result)
    mle = oracle["summary"]["mle"]["nll_oracle"]
    assert f"{mle['mean']:.3f} ± {mle['std']:.3f}" in section

    # Running it again reuses the finished runs instead of training them again.
    again, _, _ = _run_small(tmp_path)
    assert [r["checkpoint"] for r in again["oracle"]["runs"]] == [
        r["checkpoint"] for r in oracle["runs"]
    ]
    assert [r["wall_s"] for r in again["oracle"]["runs"]] == [r["wall_s"] for r in oracle["runs"]]


def _expected_markdown(result: dict) -> str:
    return f"# Benchmarks\n\n<!-- BEGIN quality -->\n{markdown(result)}\n<!-- END quality -->\n"


def test_text_benchmark_scores_bleu_self_bleu_and_sweeps(ray_cluster, tmp_path):
    rng = np.random.default_rng(0)
    for name, n in (("train.txt", 400), ("test.txt", 100)):
        lines = [" ".join(rng.choice(TINY_WORDS, rng.integers(3, 9))) for _ in range(n)]
        (tmp_path / name).write_text("\n".join(lines) + "\n")
    result, _, _ = _run_small(
        tmp_path, "--seeds", "0", "--methods", "gumbel", "--skip-oracle",
        "--text-train", str(tmp_path / "train.txt"), "--text-test", str(tmp_path / "test.txt"),
    )  # fmt: skip
    text = result["text"]
    assert finite(result)
    assert [r["method"] for r in text["runs"]] == ["mle", "gumbel"]
    for run in text["runs"]:
        bleu = [run[f"bleu{n}"] for n in (2, 3, 4, 5)]
        assert all(0 < b <= 1 for b in bleu) and bleu == sorted(bleu, reverse=True)
        assert all(0 <= run[f"self_bleu{n}"] <= 1 for n in (2, 3, 4, 5))
        assert run["fed"] is None and run["fed_note"]
        assert run["method"] == "mle" or set(run["dynamics"]) == set(DYNAMICS)
        assert len(run["samples"]) == 5
    assert text["num_references"] == 100
    assert text["goal"]["bleu"] == [text["runs"][1][f"bleu{n}"] for n in (2, 3, 4, 5)]
    for points in text["sweeps"].values():
        assert [p["temperature"] for p in points] == list(result["plan"]["temperatures"])


def test_read_scalars_reads_tensorboardx_events_back(tmp_path):
    from tensorboardX import SummaryWriter

    writer = SummaryWriter(str(tmp_path))
    for step in range(1, 6):
        writer.add_text("samples", "a man", step)
        writer.add_scalar("adversarial/d_loss", step / 10, step)
    writer.close()
    got = read_scalars(tmp_path)
    assert got["adversarial/d_loss"] == [(s, pytest.approx(s / 10)) for s in range(1, 6)]
    assert set(got) == {"adversarial/d_loss"}
    # A file cut short mid-record (a crash) keeps the records before the cut.
    events = next(tmp_path.glob("events.out.tfevents.*"))
    events.write_bytes(events.read_bytes()[:-7])
    assert len(read_scalars(tmp_path)["adversarial/d_loss"]) == 4


def test_summary_is_the_mean_and_sample_std_over_seeds():
    values = [9.1, 8.7, 8.95]
    runs = [{"method": "gumbel", "x": v} for v in values] + [{"method": "mle", "x": 0.0}]
    stats = _mean_std(runs, "gumbel", ("x",))
    assert stats["n"] == 3
    assert stats["x"]["mean"] == pytest.approx(np.mean(values))
    assert stats["x"]["std"] == pytest.approx(np.std(values, ddof=1))


def test_temperature_scales_the_scored_distribution():
    gen = Generator(TINY)
    tokens_BT = torch.randint(0, TINY.vocab_size, (5, TINY.max_len))
    with torch.no_grad():
        logits_BTV = gen(tokens_BT)
    for t in (0.5, 1.0, 2.0):
        logp_BTV = F.log_softmax(logits_BTV / t, dim=-1)
        expected = -logp_BTV.gather(-1, tokens_BT[..., None]).mean()
        assert mean_token_nll(gen, tokens_BT, temperature=t) == pytest.approx(float(expected))


def test_dominance_uses_the_reference_curve_between_its_points():
    mle = [(3.0, 9.0), (1.0, 11.0)]  # (NLL_test, NLL_oracle) at two temperatures
    assert _dominated([(3.5, 9.5)], mle)  # worse than a point on both axes
    assert _dominated([(2.1, 10.1)], mle)  # beaten only by the segment between them
    assert not _dominated([(1.9, 9.9)], mle)  # below the segment: a better trade-off
    assert not _dominated([(3.5, 9.5), (0.5, 12.0)], mle)  # one point beyond MLE's reach
    assert _dominated([(3.0, 9.0)], mle)  # equal counts as matched


def test_frechet_distance_matches_the_gaussian_closed_form():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 2.0, (500, 1)), rng.normal(-0.5, 0.5, (400, 1))
    sa, sb = a.std(ddof=1), b.std(ddof=1)
    closed = (a.mean() - b.mean()) ** 2 + (sa - sb) ** 2  # 1-D: (mu_a-mu_b)^2 + (s_a-s_b)^2
    assert frechet_distance(a, b) == pytest.approx(closed, rel=1e-9)
    # Independent dimensions add up; the distance of a set to itself is 0.
    c, d = rng.normal(size=(300, 3)) * [1, 2, 3], rng.normal(size=(300, 3)) + np.array([1, 0, -1])
    assert frechet_distance(c, c) == pytest.approx(0.0, abs=1e-9)
    cov_c, cov_d = np.cov(c, rowvar=False), np.cov(d, rowvar=False)
    w, v = np.linalg.eigh(cov_c)
    root = (v * np.sqrt(w)) @ v.T
    trace_root = np.sqrt(np.linalg.eigvals(root @ cov_d @ root).real.clip(0)).sum()
    direct = ((c.mean(0) - d.mean(0)) ** 2).sum() + np.trace(cov_c + cov_d) - 2 * trace_root
    assert frechet_distance(c, d) == pytest.approx(direct, rel=1e-9)
    with pytest.raises(ValueError, match="one dim"):
        frechet_distance(c, a)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"methods": ("gumbel", "seqgan")}, "unknown method seqgan"),
        ({"temperatures": (0.5, 1.5)}, "include 1.0"),
        ({"temperatures": (0.0, 1.0)}, "> 0"),
        ({"seeds": ()}, "at least one seed"),
        ({"oracle_path": "/nonexistent/target_params.npz"}, "no such file"),
        ({"text_train": __file__}, "both a training and a test file"),
        ({"adv_steps": {"gumbel": 3}}, "no adversarial step budget for rollout, dense"),
        ({"oracle": False}, "nothing to run"),
    ],
)
def test_plan_refuses_bad_settings(changes, message):
    with pytest.raises(RayganError, match=message):
        QualityPlan(out="unused", **changes).check()


def test_script_reports_bad_arguments_without_a_trace(tmp_path, capsys):
    rc = _bench_module().main(["--out", str(tmp_path), "--adv-steps", "gumbel:3"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--adv-steps" in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("use_gpu", "not of the form key=value"),
        ("num_wrokers=2", "unknown config key 'num_wrokers'"),
    ],
)
def test_script_refuses_a_bad_train_setting_before_running(tmp_path, capsys, setting, message):
    rc = _bench_module().main(["--out", str(tmp_path), "--small", "--set", setting])
    assert rc == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not list(tmp_path.iterdir())


def test_finite_rejects_nan_anywhere():
    assert finite({"a": [1.0, {"b": 2.0}]})
    assert not finite({"a": [1.0, {"b": math.nan}]})
