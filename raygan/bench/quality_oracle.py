"""The oracle half of the quality benchmark (raygan.bench.quality describes the protocol): MLE's curve
per seed, every recipe and its constant control, scored on the frontier, with time curves."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from raygan.bench.quality import (
    MOONSHOT,
    OVERLAP_N,
    SEQGAN_GOAL,
    SEQGAN_GOAL_SECONDS,
    QualityPlan,
    ScoreCache,
    _sweep,
    beats,
    best_checkpoint,
    control_name,
    d_accuracy,
    finite_or_none,
    mean_std,
    mle_run_settings,
    recipe_start,
    train,
)
from raygan.core.errors import RayganError
from raygan.core.frontier import curve_gap, frontier_distance, pareto_front


def oracle_benchmark(plan: QualityPlan, out: Path, log) -> dict[str, Any]:
    from raygan.core.config import Config, apply_overrides
    from raygan.core.metrics import (
        d_log_ratio_correlation,
        mean_token_nll,
        nll_test,
        novel_rows,
        sample_tokens,
        training_overlap,
    )
    from raygan.data.prepare import prepare_oracle
    from raygan.data.read import load_manifest, load_oracle, read_split

    data_dir = out / "oracle_data"
    if not (data_dir / "manifest.json").is_file():
        prepare_oracle(
            str(data_dir), oracle="seqgan" if plan.oracle_path else "random",
            oracle_path=plan.oracle_path, vocab_size=None if plan.oracle_path else plan.oracle_vocab,
            max_len=plan.max_len, num_samples=plan.num_train, num_test=plan.num_test, progress=False,
        )  # fmt: skip
    oracle = load_oracle(str(data_dir))
    test_NT, test_len_N = read_split(str(data_dir), "test")
    train_rows = read_split(str(data_dir), "train")[0].tolist()

    cache = ScoreCache(out / "scores.json")

    def score(checkpoint: str, temperature: float, seed: int) -> dict[str, float]:
        key = f"oracle+novel {checkpoint} T={temperature:g} n={plan.eval_samples} seed={seed}"
        return cache.get(key, lambda: _score(checkpoint, temperature, seed))

    def _score(checkpoint: str, temperature: float, seed: int) -> dict[str, float]:
        import torch

        from raygan.run.checkpoint import load_generator

        gen, _, _ = load_generator(checkpoint)
        samples = sample_tokens(gen, plan.eval_samples, seed=seed + 11, temperature=temperature)
        rows = samples.tokens_BT.tolist()
        # the samples that hold no training 4-gram, where a gain cannot come from copying
        keep_B = torch.tensor(novel_rows(rows, train_rows, n=OVERLAP_N))
        scores = {
            "temperature": temperature,
            "nll_oracle": nll_oracle_of(oracle, samples),
            "nll_test": nll_test(gen, test_NT, test_len_N, temperature=temperature),
            "nll_oracle_novel": mean_token_nll(oracle, samples.tokens_BT[keep_B])
            if keep_B.any() else None,
            "novel_share": keep_B.float().mean().item(),
        }  # fmt: skip
        if temperature == 1.0:
            overlap = training_overlap(rows, train_rows, n=OVERLAP_N)
            scores[f"train_{OVERLAP_N}grams"] = overlap[f"train_{OVERLAP_N}grams"]
            scores["copied"] = overlap["copied"]
        return scores

    def d_signal(checkpoint: str, seed: int) -> float:
        """The run's final D against the truth: its logit's rank correlation with the oracle's
        log-ratio over G's samples (the samples of its T=1 score)."""
        key = f"oracle-d {checkpoint} n={plan.eval_samples} seed={seed}"
        return cache.get(key, lambda: {"d_log_ratio": _d_signal(checkpoint, seed)})["d_log_ratio"]

    def _d_signal(checkpoint: str, seed: int) -> float:
        from raygan.run.checkpoint import load_discriminator

        disc, gen, _ = load_discriminator(checkpoint)
        samples = sample_tokens(gen, plan.eval_samples, seed=seed + 11)
        return d_log_ratio_correlation(disc, gen, oracle, samples)

    batch = apply_overrides(Config(), plan.train_overrides).schedule.batch_size
    steps_per_epoch = load_manifest(str(data_dir))["splits"]["train"]["rows"] // batch
    real_overlap = training_overlap(test_NT.tolist(), train_rows, n=OVERLAP_N)
    seeds: dict[str, dict[str, Any]] = {}  # by str(seed): the JSON's keys
    for seed in plan.seeds:
        seeds[str(seed)] = _seed(plan, data_dir, seed, steps_per_epoch, score, d_signal, log)
    methods = ["mle", *plan.recipes]
    if plan.controls:
        methods += [control_name(r) for r in plan.recipes]
    return {
        "source": "seqgan" if plan.oracle_path else f"random (vocab {plan.oracle_vocab})",
        "oracle_own_nll": nll_test(oracle, test_NT, test_len_N),
        "real_overlap": real_overlap[f"train_{OVERLAP_N}grams"],
        "steps_per_epoch": steps_per_epoch,
        "seeds": seeds,
        "summary": {m: _summary(seeds, m, SEQGAN_GOAL if plan.oracle_path else None)
                    for m in methods},
        "comparisons": {r: _versus_control(seeds, r) for r in plan.recipes if plan.controls},
        "targets": _targets(plan, seeds),
    }


def carry_over(current: dict, plan: QualityPlan, earlier: dict) -> tuple[dict, QualityPlan]:
    """`current`'s oracle results with the recipes only `earlier` (a previous result of this
    benchmark) ran, and their controls, added seed by seed; summaries, comparisons and targets
    recomputed over all of them. Refused unless every seed's MLE curve is the same in both
    (the same data and MLE runs: their distances were measured against it)."""
    if earlier.get("source") != current["source"]:
        raise RayganError(f"carried-over oracle results are on {earlier.get('source')}, "
                          f"this run's on {current['source']}")  # fmt: skip
    runs_of = {seed: s["runs"] for seed, s in earlier["seeds"].items()}
    added = [name for name in next(iter(runs_of.values()), {}) if name != "mle"
             and name.split("/")[0] not in plan.recipes]  # fmt: skip
    for seed, s in current["seeds"].items():
        theirs = earlier["seeds"].get(seed)
        if theirs is None:
            raise RayganError(f"seed {seed} is not among the carried-over results' seeds "
                              f"({', '.join(earlier['seeds'])})")  # fmt: skip
        if not _same_points(theirs["envelope"], s["envelope"]):
            raise RayganError(f"seed {seed}: MLE's curve differs from the carried-over results' "
                              "(other data or MLE runs), so their distances do not compare")  # fmt: skip
        s["runs"].update({name: theirs["runs"][name] for name in added})
    recipes = (*[n for n in added if "/" not in n], *plan.recipes)
    order = ["mle", *(n for r in recipes for n in (r, control_name(r)))]
    for s in current["seeds"].values():  # the table's order: each recipe, then its control
        s["runs"] = {n: s["runs"][n] for n in order if n in s["runs"]}
    merged = dataclasses.replace(plan, recipes=recipes)
    seeds = current["seeds"]
    goal = SEQGAN_GOAL if plan.oracle_path else None
    methods = ["mle", *(n for n in next(iter(seeds.values()))["runs"] if n != "mle")]
    current.update(
        summary={m: _summary(seeds, m, goal) for m in methods},
        comparisons={r: _versus_control(seeds, r) for r in recipes if plan.controls},
        targets=_targets(merged, seeds),
        carried_over=added,
    )
    return current, merged


def _same_points(a: list, b: list, tol: float = 1e-9) -> bool:
    return len(a) == len(b) and all(
        abs(x - y) <= tol for p, q in zip(a, b, strict=True) for x, y in zip(p, q, strict=True)
    )


def nll_oracle_of(oracle, samples) -> float:
    from raygan.core.metrics import mean_token_nll

    return mean_token_nll(oracle, samples.tokens_BT)


def _seed(
    plan: QualityPlan, data_dir: Path, seed: int, steps_per_epoch: int, score, d_signal, log
) -> dict:
    """One seed: the MLE run and its curve, then every recipe and control, scored (a recipe's
    final D too: `d_signal`), each on MLE's curve over all samples and over novel ones."""
    mle = train(plan, data_dir, f"oracle_mle_s{seed}",
                mle_run_settings(plan, seed, steps_per_epoch, plan.mle_epochs), log)  # fmt: skip
    best, last = best_checkpoint(mle), mle["checkpoints"][-1]
    curves = {}  # start checkpoint -> its sweep

    def sweep(path: str) -> None:
        if path not in curves:
            at_one = score(path, 1.0, seed)
            curves[path] = {"step": mle_step_of(mle, path), "at_one": at_one,
                            "sweep": _sweep(lambda c, t, _: score(c, t, seed), path,
                                            plan.temperatures, at_one)}  # fmt: skip

    sweep(best["path"])
    sweep(last["path"])
    runs: dict[str, dict] = {
        "mle": {"step": best["step"], "checkpoint": best["path"], **curves[best["path"]]["at_one"],
                "sweep": curves[best["path"]]["sweep"],
                "time_curve": time_curve(mle, best["path"], {"history": []})}
    }
    for recipe in plan.recipes:
        settings, start = recipe_start(plan, data_dir, recipe, seed, mle)
        if start is not None:
            sweep(start)
        arms = [(recipe, settings)]
        if plan.controls:
            arms.append((control_name(recipe),
                         {**settings, "estimator": "constant", "d_pretrain_steps": 0}))  # fmt: skip
        for name, arm in arms:
            run = train(plan, data_dir, f"oracle_{name.replace('/', '-')}_s{seed}", arm, log)
            runs[name] = {
                "run_dir": run["run_dir"], "checkpoint": run["checkpoint"], "steps": run["steps"],
                "wall_s": run["wall_s"], "start": start, **score(run["checkpoint"], 1.0, seed),
                "d_accuracy": d_accuracy(run["history"], run["settings"]),
                "time_curve": time_curve(mle if start else None, start, run),
            }  # fmt: skip
            if name == recipe:  # the control never trains its D
                runs[name]["d_log_ratio"] = d_signal(run["checkpoint"], seed)
            runs[name]["sweep"] = _sweep(lambda c, t, _: score(c, t, seed), run["checkpoint"],
                                         plan.gan_temperatures, runs[name])  # fmt: skip
            log(f"oracle {name} seed {seed}: NLL_oracle {runs[name]['nll_oracle']:.4f} "
                f"NLL_test {runs[name]['nll_test']:.4f}")  # fmt: skip
    envelope = pareto_front((p["nll_test"], p["nll_oracle"]) for c in curves.values()
                            for p in c["sweep"])  # fmt: skip
    # the same curve and distance over the samples without a training 4-gram (MLE's own too)
    novel_envelope = pareto_front((p["nll_test"], p["nll_oracle_novel"]) for c in curves.values()
                                  for p in c["sweep"] if p.get("nll_oracle_novel") is not None)
    for run in runs.values():
        point = (run["nll_test"], run["nll_oracle"])
        run["distance"] = finite_or_none(frontier_distance(envelope, point))
        run["distance_novel"] = None if run.get("nll_oracle_novel") is None else finite_or_none(
            frontier_distance(novel_envelope, (run["nll_test"], run["nll_oracle_novel"])))
        start_curve = curves.get(run.get("start") or "")
        run["distance_to_start"] = None if start_curve is None else finite_or_none(
            frontier_distance(_points(start_curve["sweep"]), point))  # fmt: skip
        run["matched"] = matched_distances(run["sweep"], envelope, curves[best["path"]]["sweep"],
                                           plan.matched_temperatures)  # fmt: skip
        run["lowest_nll_test_vs_mle"] = min(p["nll_test"] for p in run["sweep"]) - envelope[0][0]
    return {
        "mle_run": {"run_dir": mle["run_dir"], "wall_s": mle["wall_s"], "train_s": mle["train_s"],
                    "best_step": best["step"], "last_step": last["step"],
                    "history": [_eval_point(h) for h in mle["history"]]},
        "curves": {str(c["step"]): c["sweep"] for c in curves.values()},  # by MLE step
        "envelope": envelope,
        "novel_envelope": novel_envelope,
        "runs": runs,
    }


def matched_distances(sweep: list[dict], envelope: list, mle_sweep: list[dict],
                      temperatures) -> dict[str, float | None]:
    """A model's own temperature curve against MLE's, by MLE temperature T: its curve minus
    MLE's curve at the NLL_test MLE's best epoch has at T (None where its sweep does not reach
    that NLL_test)."""
    at = {p["temperature"]: p["nll_test"] for p in mle_sweep}
    return {f"{t:g}": finite_or_none(curve_gap(_points(sweep), envelope, at[t]))
            for t in temperatures}  # fmt: skip


def _points(sweep: list[dict]) -> list[tuple[float, float]]:
    return [(p["nll_test"], p["nll_oracle"]) for p in sweep]


def mle_step_of(mle: dict, path: str) -> int:
    return next(c["step"] for c in mle["checkpoints"] if c["path"] == path)


def _eval_point(h: dict) -> dict:
    return {k: h[k] for k in ("step", "phase", "train_s", "nll_oracle", "nll_test") if k in h}


def time_curve(mle: dict | None, start: str | None, run: dict) -> list[dict]:
    """(training seconds, NLL_oracle) from scratch: the MLE run's evaluations up to the start
    checkpoint (the same computation), then the run's own, shifted by the MLE's seconds there."""
    points, offset = [], 0.0
    if mle is not None and start is not None:
        step = mle_step_of(mle, start)
        before = [h for h in mle["history"] if h["step"] <= step and "nll_oracle" in h]
        points = [{"step": h["step"], "train_s": h["train_s"], "nll_oracle": h["nll_oracle"],
                   "phase": "mle"} for h in before]  # fmt: skip
        offset, shift = (before[-1]["train_s"], step) if before else (0.0, 0)
    else:
        shift = 0
    for h in run["history"]:
        if "nll_oracle" in h:
            points.append({"step": h["step"] + shift, "train_s": h["train_s"] + offset,
                           "nll_oracle": h["nll_oracle"], "phase": h["phase"]})  # fmt: skip
    return points


def first_reach(curve: list[dict], goal: float) -> float | None:
    return next((p["train_s"] for p in curve if p["nll_oracle"] <= goal), None)


def _summary(seeds: dict[str, dict], method: str, goal: float | None) -> dict[str, Any]:
    runs = [s["runs"][method] for s in seeds.values() if method in s["runs"]]
    keys = ("nll_oracle", "nll_test", "distance", "distance_to_start", f"train_{OVERLAP_N}grams",
            "wall_s", "d_log_ratio", "nll_oracle_novel", "novel_share", "distance_novel")  # fmt: skip
    out: dict[str, Any] = {k: mean_std([r.get(k) for r in runs]) for k in keys}
    out["n"] = len(runs)
    out["lowest_nll_test_vs_mle"] = mean_std([r.get("lowest_nll_test_vs_mle") for r in runs])
    out["matched"] = {t: mean_std([r.get("matched", {}).get(t) for r in runs])
                      for t in _matched_keys(runs)}  # fmt: skip
    curves = [r.get("time_curve") or [] for r in runs]
    out["train_s_from_scratch"] = mean_std([c[-1]["train_s"] if c else None for c in curves])
    if goal is not None:
        out["seconds_to_goal"] = [first_reach(c, goal) for c in curves]
    if method != "mle":
        for key in ("after_pretraining", "adversarial_mean", "adversarial_last"):
            out[f"d_{key}"] = mean_std([r["d_accuracy"].get(key) for r in runs])
        out["d_key"] = runs[0]["d_accuracy"]["key"] if runs else None
    return out


def _versus_control(seeds: dict[str, dict], recipe: str) -> dict[str, Any]:
    """Per seed: the recipe's frontier distance minus its control's (negative: D helped), and
    its NLL_oracle minus the control's over all samples and over those without a training
    4-gram (where a gain cannot come from training-set phrases), and its novel distance minus
    the control's."""
    def minus_control(key: str) -> list[float]:
        pairs = [(s["runs"][recipe].get(key), s["runs"][control_name(recipe)].get(key))
                 for s in seeds.values()]  # fmt: skip
        return [a - b for a, b in pairs if a is not None and b is not None]

    diffs = minus_control("distance")
    matched = {}  # the same on the recipe's own curve at matched NLL_test, by MLE temperature
    for t in _matched_keys([s["runs"][recipe] for s in seeds.values()]):
        pairs = [(s["runs"][recipe].get("matched", {}).get(t),
                  s["runs"][control_name(recipe)].get("matched", {}).get(t))
                 for s in seeds.values()]  # fmt: skip
        at_t = [a - b for a, b in pairs if a is not None and b is not None]
        matched[t] = {"differences": at_t, **mean_std(at_t), "adversarial": beats(at_t)}
    lowest = minus_control("lowest_nll_test_vs_mle")  # held-out fit, no oracle in it
    return {"differences": diffs, **mean_std(diffs), "adversarial": beats(diffs),
            "matched": matched,
            "lowest_nll_test": {"differences": lowest, **mean_std(lowest),
                                "adversarial": beats(lowest)},
            "nll_oracle_differences": minus_control("nll_oracle"),
            "nll_oracle_novel_differences": minus_control("nll_oracle_novel"),
            "distance_novel_differences": minus_control("distance_novel")}  # fmt: skip


def _targets(plan: QualityPlan, seeds: dict[str, dict]) -> dict[str, Any]:
    targets: dict[str, Any] = {}
    if "seqgan" in plan.recipes and plan.oracle_path:  # SeqGAN's figure is on its own oracle
        runs = [s["runs"]["seqgan"] for s in seeds.values()]
        mean = mean_std([r["nll_oracle"] for r in runs])["mean"]
        seconds = mean_std([r["time_curve"][-1]["train_s"] if r["time_curve"] else None
                            for r in runs])["mean"]  # fmt: skip
        reached = mean <= SEQGAN_GOAL and seconds is not None and seconds <= SEQGAN_GOAL_SECONDS
        targets["reproduce"] = {"nll_oracle": mean, "train_s": seconds, "reached": reached}
    if plan.controls:
        signal = {r: _versus_control(seeds, r)["adversarial"] for r in plan.recipes}
        targets["adversarial"] = {"recipes": [r for r, ok in signal.items() if ok]}
    for target, key in (("moonshot", "distance"), ("moonshot_novel", "distance_novel")):
        targets[target] = {"recipes": [r for r in plan.recipes if _far_below(
            [s["runs"][r].get(key) for s in seeds.values()])]}  # fmt: skip
    targets["moonshot_matched"] = {  # by MLE temperature: the recipe's own curve there
        t: [r for r in plan.recipes if _far_below([s["runs"][r].get("matched", {}).get(t)
                                                   for s in seeds.values()])]
        for t in _matched_keys([run for s in seeds.values() for run in s["runs"].values()])
    }  # fmt: skip
    return targets


def _matched_keys(runs: list[dict]) -> list[str]:
    """The MLE temperatures the runs' own curves were read at (none in results from before)."""
    return list(dict.fromkeys(t for r in runs for t in r.get("matched", {})))


def _far_below(distances: list[float | None]) -> bool:
    """The moonshot's rule: a mean distance at least MOONSHOT below MLE's curve, beyond 3σ."""
    stat = mean_std(distances)
    return bool(stat["n"] == len(distances) > 1 and stat["mean"] <= MOONSHOT
                and stat["mean"] + 3 * stat["std"] < 0)  # fmt: skip

