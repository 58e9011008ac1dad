"""The quality benchmark's outputs: the BENCHMARKS.md section and the plots, from the JSON alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from raygan.bench.quality import (
    BLEU_ORDERS,
    MOONSHOT,
    OVERLAP_N,
    PUBLISHED_COCO,
    PUBLISHED_ORACLE,
    SEQGAN_GOAL,
    SEQGAN_GOAL_SECONDS,
    placement_settings,
)
from raygan.core.frontier import pareto_front


def _pm(stat: dict[str, float] | None, digits: int = 3) -> str:
    if not stat or not stat.get("n"):
        return "—"
    if stat["n"] == 1:  # one seed has no spread to state
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def _per_seed(values: list[float] | None) -> str:
    return ", ".join(f"{v:+.3f}" for v in values) if values else "—"


def _yes(flag: bool | None) -> str:
    return "yes" if flag else "no"


def markdown(result: dict[str, Any]) -> str:
    """The BENCHMARKS.md section, generated from the JSON."""
    plan, lines = result["plan"], []
    trainer = placement_settings(plan["train_overrides"])
    workers = f"{trainer.num_workers} {'GPU' if trainer.use_gpu else 'CPU'} worker(s)"
    if "oracle" in result:
        lines += _oracle_markdown(result["oracle"], plan, workers)
    if "text" in result:
        lines += _text_markdown(result["text"], plan)
    lines += [f"![quality-diversity]({result.get('plot', 'quality.png')})", "",
              f"Command: `{result.get('command', '')}` ({result.get('machine', '')}, "
              f"{result.get('finished', '')}).", ""]  # fmt: skip
    if carried := result.get("carried_over"):
        lines += [f"Carried over from an earlier run of the same data, seeds and MLE runs "
                  f"(`{carried['command']}`, {carried['finished']}): "
                  f"{', '.join(carried['what'])}.", ""]  # fmt: skip
    return "\n".join(lines).rstrip()


def _oracle_markdown(o: dict, plan: dict, workers: str) -> list[str]:
    from raygan.bench.markdown import markdown_table

    seeds = ", ".join(map(str, plan["seeds"]))
    lines = [
        f"**Oracle** ({o['source']}; {plan['num_train']:,} training and {plan['num_test']:,} "
        f"held-out sequences, length {plan['max_len']}). Every model is `raygan train` on Ray "
        f"Train ({workers}), seeds {seeds}; final iterates at T=1, NLL_oracle on "
        f"{plan['eval_samples']:,} samples, NLL_test on all held-out sequences. MLE: the epoch "
        f"with the best held-out NLL of a {plan['mle_epochs']}-epoch run. **MLE's curve**: the "
        f"Pareto front of the temperature sweeps of that checkpoint, the last epoch and every "
        f"MLE checkpoint a recipe starts from (T = {', '.join(f'{t:g}' for t in plan['temperatures'])}). **Distance**: NLL_oracle "
        f"minus MLE's curve at the model's own NLL_test (negative: below the curve, better than "
        f"any temperature of any MLE epoch); **to start**: the same against the curve of the "
        f"checkpoint the run started from. The oracle scores its own held-out sequences at "
        f"{o['oracle_own_nll']:.3f}; {o['real_overlap']:.2%} of their {OVERLAP_N}-grams occur in "
        f"the training set (the natural rate: above it, a model copies).",
        "",
    ]
    rows = []
    for method, s in o["summary"].items():
        rows.append([
            method, s["n"], _pm(s["nll_oracle"]), _pm(s["nll_test"]), _pm(s["distance"]),
            _pm(s.get("distance_to_start")), _pm(s[f"train_{OVERLAP_N}grams"], 4),
            _pm(s.get("nll_oracle_novel")), _pm(s.get("novel_share"), 3),
            _pm(s.get("distance_novel")),
            _pm(s.get("d_after_pretraining"), 2), _pm(s.get("d_adversarial_mean"), 2),
            _pm(s.get("d_log_ratio"), 2), _pm(s.get("train_s_from_scratch"), 0), _goal_seconds(s),
        ])  # fmt: skip
    header = ["model", "seeds", "NLL_oracle", "NLL_test", "distance", "to start",
              f"train {OVERLAP_N}-grams", "NLL_oracle, novel", "novel share", "distance, novel",
              "D acc after pretrain", "D acc adversarial",
              "D ~ log-ratio", "train s from scratch", f"s to ≤ {SEQGAN_GOAL}"]  # fmt: skip
    lines += [markdown_table(header, rows), ""]
    lines += [
        "D acc: held-out accuracy (real test sequences vs fresh samples; pairwise for rsgan), "
        "after D pretraining and averaged over the adversarial evaluations. D ~ log-ratio: "
        "the final D's logit against log p_oracle(x) - log p_G(x) over G's samples at T=1 "
        "(Spearman; a D at its optimum scores 1, a D whose reward carries no information about "
        "where G is wrong 0). NLL_oracle, novel: NLL_oracle of the T=1 samples that hold no "
        f"{OVERLAP_N}-gram of the training set (novel share: their share of the samples), where "
        "a gain cannot come from reproducing training-set phrases; distance, novel: the "
        "distance of (NLL_test, NLL_oracle, novel) to MLE's curve drawn the same way (every "
        "temperature of its sweep scored over its own novel samples). Train s: training "
        "seconds from scratch (the MLE run's up to the recipe's start, then its own; "
        "evaluations and Ray start-up excluded). s to ≤ goal: per seed, the first evaluation "
        f"({plan['run_eval_samples']:,} samples) at or under {SEQGAN_GOAL} (— never).",
        "",
    ]
    if o["comparisons"]:
        rows = [[r, _per_seed(c["differences"]), _pm(c), _yes(c["adversarial"]),
                 _per_seed(c.get("nll_oracle_differences")),
                 _per_seed(c.get("nll_oracle_novel_differences")),
                 _per_seed(c.get("distance_novel_differences"))]
                for r, c in o["comparisons"].items()]  # fmt: skip
        lines += [
            "Each recipe against its constant control (distance minus the control's, per seed; "
            "adversarial = below 0 by more than 3 standard deviations of the differences), and "
            "its NLL_oracle minus the control's over all samples and over the novel ones, and "
            "its novel distance minus the control's:",
            "",
            markdown_table(["recipe", "per seed", "mean ± std", "adversarial",
                            "NLL_oracle vs control", "novel NLL_oracle vs control",
                            "novel distance vs control"], rows),
            "",
        ]  # fmt: skip
    lines += _matched_markdown(o, plan)
    t = o["targets"]
    if "reproduce" in t:
        r = t["reproduce"]
        lines.append(
            f"- Reproduce (`seqgan` ≤ {SEQGAN_GOAL} at T=1, mean of seeds, in ≤ "
            f"{SEQGAN_GOAL_SECONDS:.0f} s from scratch): {r['nll_oracle']:.3f} in "
            f"{r['train_s']:.0f} training seconds — **{'reached' if r['reached'] else 'not reached'}**."
        )
    if "adversarial" in t:
        names = ", ".join(f"`{n}`" for n in t["adversarial"]["recipes"]) or "none"
        lines.append(f"- Adversarial signal (a recipe beating its control by > 3σ): {names}.")
    names = ", ".join(f"`{n}`" for n in t["moonshot"]["recipes"]) or "none"
    lines.append(f"- Moonshot (a recipe ≥ {-MOONSHOT} nats below MLE's curve, beyond 3σ): {names}.")
    if "moonshot_novel" in t:
        names = ", ".join(f"`{n}`" for n in t["moonshot_novel"]["recipes"]) or "none"
        lines.append(f"- The same over novel samples (distance, novel; every seed scored): {names}.")
    if t.get("moonshot_matched"):
        at = "; ".join(f"at MLE's T={temp}: " + (", ".join(f"`{n}`" for n in names) or "none")
                       for temp, names in t["moonshot_matched"].items())  # fmt: skip
        lines.append(f"- The same on each recipe's own curve at matched NLL_test: {at}.")
    lines += [
        "",
        "Published NLL_oracle on this oracle: "
        + ", ".join(f"{k} {v:.3f}" for k, v in PUBLISHED_ORACLE.items())
        + " (SeqGAN, Yu et al. 2017; LeakGAN, Guo et al. 2018; RelGAN, Nie et al. 2019).",
        "",
    ]
    curve = o["seeds"][str(plan["seeds"][0])]["runs"]["mle"]["sweep"]
    lines += [
        f"MLE's sweep, seed {plan['seeds'][0]} (NLL_oracle / NLL_test): "
        + "; ".join(f"T={p['temperature']:g} {p['nll_oracle']:.3f} / {p['nll_test']:.3f}"
                    for p in curve) + ".",
        "",
    ]
    return lines


def _matched_markdown(o: dict, plan: dict) -> list[str]:
    """Each model's own temperature curve against MLE's at matched NLL_test (results from before
    these were measured have none: no table)."""
    from raygan.bench.markdown import markdown_table

    temps = list(dict.fromkeys(t for s in o["summary"].values() for t in s.get("matched", {})))
    if not temps:
        return []
    own = ", ".join(f"{t:g}" for t in plan["gan_temperatures"])
    rows = [[m, *(_pm(s["matched"].get(t)) for t in temps), _pm(s.get("lowest_nll_test_vs_mle"))]
            for m, s in o["summary"].items()]  # fmt: skip
    lines = [
        f"**Own curves at matched NLL_test.** Every model is also sampled at T = {own} on every "
        "seed; its own curve (the Pareto front of those points) minus MLE's curve, read at the "
        "NLL_test that MLE's best epoch has at T = " + ", ".join(temps) + " (negative: below, "
        "better; — where its sweep does not reach that NLL_test). Unlike the distance at T=1, "
        "this does not hang on where a model's T=1 point lands: near MLE's lowest NLL_test the "
        "curve is steep, and a small step left reads as far below. Lowest NLL_test: the lowest "
        "over its own sweep minus the lowest over MLE's curve (negative: it fits the held-out "
        "sequences better than any temperature of any MLE epoch).",
        "",
        markdown_table(["model", *(f"at MLE's T={t}" for t in temps), "lowest NLL_test"], rows),
        "",
    ]
    rows = []
    for r, c in o["comparisons"].items():
        figures = [(f"curve at MLE's T={t} NLL_test", m) for t, m in c.get("matched", {}).items()]
        if c.get("lowest_nll_test", {}).get("n"):
            figures.append(("lowest NLL_test", c["lowest_nll_test"]))
        rows += [[r, what, _per_seed(m["differences"]), _pm(m), _yes(m["adversarial"])]
                 for what, m in figures]  # fmt: skip
    if rows:
        lines += [
            "Each recipe against its constant control on these figures (recipe minus control, "
            "per seed; adversarial = below 0 by more than 3 standard deviations):",
            "",
            markdown_table(["recipe", "figure", "per seed", "mean ± std", "adversarial"], rows),
            "",
        ]
    return lines


def _goal_seconds(summary: dict) -> str:
    values = summary.get("seconds_to_goal")
    if values is None:  # SeqGAN's figure is on its own oracle only
        return "—"
    return ", ".join("—" if v is None else f"{v:.0f}" for v in values)


def _text_markdown(t: dict, plan: dict) -> list[str]:
    from raygan.bench.markdown import markdown_table

    seeds = list(dict.fromkeys(r["seed"] for r in t["runs"]))
    epochs = t.get("mle_best_epochs", [t["mle_best_epoch"]])
    if len(seeds) > 1:
        mle = (f"Seeds {', '.join(map(str, seeds))}; MLE: epochs {', '.join(map(str, epochs))} "
               f"of {t['mle_epochs']}, each seed's best held-out NLL; each recipe starts from its "
               f"seed's, and is measured against that seed's curve")  # fmt: skip
    else:
        mle = (f"MLE: epoch {epochs[0]} of {t['mle_epochs']}, the best held-out NLL; each recipe "
               f"starts from it")  # fmt: skip
    lines = [
        f"**Text** ({t['corpus']}; word tokens, vocab {t['vocab_size']:,}, max length "
        f"{t['max_len']}). {mle}. BLEU of {t['num_hypotheses']:,} samples at T=1 against "
        f"the {t['num_references']:,} test captions; Self-BLEU among the first "
        f"{t['self_bleu_sentences']:,}. FED: {t['fed_note']}.",
        "",
    ]
    header = ["model", *(f"BLEU-{n}" for n in BLEU_ORDERS),
              *(f"Self-BLEU-{n}" for n in BLEU_ORDERS), "NLL_test", "FED",
              "BLEU-4 over MLE's curve", "D acc adversarial"]  # fmt: skip
    rows = []
    for r in t["runs"]:
        d = r.get("d_accuracy", {})
        label = f"{r['method']} (ours, seed {r['seed']})" if len(seeds) > 1 else f"{r['method']} (ours)"
        rows.append([
            label, *(r[f"bleu{n}"] for n in BLEU_ORDERS),
            *(r[f"self_bleu{n}"] for n in BLEU_ORDERS), r["nll_test"],
            "—" if r.get("fed") is None else f"{r['fed']:.4f}",
            "—" if r.get("bleu4_over_curve") is None else f"{r['bleu4_over_curve']:+.4f}",
            f"{d['adversarial_mean']:.2f}" if "adversarial_mean" in d else "—",
        ])  # fmt: skip
    for name, scores in PUBLISHED_COCO.items():
        rows.append([f"{name} (published)", *scores, *["—"] * 8])
    lines += [markdown_table(header, rows), ""]
    if "summary" in t:
        lines += _text_seed_tables(t)
    temps = [p["temperature"] for p in next(iter(t["sweeps"].values()))]
    rows = [[m] + [f"{p['bleu4']:.3f} / {p['self_bleu4']:.3f}" for p in pts]
            for m, pts in t["sweeps"].items()]  # fmt: skip
    not_dominated = ", ".join(f"`{m}`" for m in t["not_dominated"]) or "none"
    lines += ["Temperature sweep (BLEU-4 / Self-BLEU-4):", "",
              markdown_table(["model"] + [f"T={x:g}" for x in temps], rows), "",
              f"Recipes whose T=1 point MLE's curve does not dominate: {not_dominated}.", ""]  # fmt: skip
    return lines


def _text_seed_tables(t: dict) -> list[str]:
    """Over seeds: each method's mean ± std, then each recipe against its constant control."""
    from raygan.bench.markdown import markdown_table

    rows = [[m, s["bleu4"]["n"], _pm(s["bleu4"]), _pm(s["self_bleu4"]), _pm(s["nll_test"]),
             _pm(s["fed"], 4), _pm(s["bleu4_over_curve"], 4), _pm(s["d_adversarial_mean"], 2)]
            for m, s in t["summary"].items()]  # fmt: skip
    lines = ["Over seeds (mean ± std):", "",
             markdown_table(["model", "seeds", "BLEU-4", "Self-BLEU-4", "NLL_test", "FED",
                             "BLEU-4 over MLE's curve", "D acc adversarial"], rows), ""]  # fmt: skip
    if t.get("comparisons"):
        rows = [[r, ", ".join(f"{d:+.4f}" for d in c["differences"]),
                 _pm(c, 4) if c["n"] else "—", _yes(c["adversarial"])]
                for r, c in t["comparisons"].items()]  # fmt: skip
        lines += ["Each recipe against its constant control (BLEU-4 over MLE's curve, recipe "
                  "minus control, per seed; adversarial = above 0 by more than 3 standard "
                  "deviations of the differences):", "",
                  markdown_table(["recipe", "per seed", "mean ± std", "adversarial"], rows), ""]  # fmt: skip
    return lines


def plot(result: dict[str, Any], path: str | Path) -> None:
    """Left: every seed's (NLL_test, NLL_oracle) at T=1 with each seed's MLE curve; middle: the
    time curves (NLL_oracle against training seconds, seed 0); right: text (BLEU-4 against
    Self-BLEU-4 over temperature)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (["frontier", "time"] if "oracle" in result else []) + (
        ["text"] if "text" in result else [])  # fmt: skip
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 5), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        {"frontier": _frontier_panel, "time": _time_panel, "text": _text_panel}[panel](ax, result)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _colors(o: dict) -> dict[str, str]:
    """One colour per method, a recipe's control included (told apart by marker or line style),
    the same in every panel."""
    bases = dict.fromkeys(m.split("/")[0] for m in next(iter(o["seeds"].values()))["runs"])
    return {base: f"C{i % 10}" for i, base in enumerate(bases)}


def _frontier_panel(ax, result: dict) -> None:
    o = result["oracle"]
    colors = _colors(o)
    for i, (seed, s) in enumerate(o["seeds"].items()):
        xs, ys = zip(*s["envelope"], strict=True)
        ax.plot(xs, ys, color="black", alpha=0.5, lw=1, label="MLE's curve" if i == 0 else None)
        for method, run in s["runs"].items():  # a recipe and its control share a colour
            color = colors[method.split("/")[0]]
            marker = "x" if method.endswith("/constant") else "o"
            ax.scatter(run["nll_test"], run["nll_oracle"], color=color, marker=marker, s=30,
                       label=method if seed == next(iter(o["seeds"])) else None)  # fmt: skip
    seed, s = next(iter(o["seeds"].items()))
    for method, run in s["runs"].items():  # the first seed's own curves, thin
        if method != "mle" and len(run.get("sweep", [])) > 1:
            xs, ys = zip(*pareto_front((p["nll_test"], p["nll_oracle"]) for p in run["sweep"]),
                         strict=True)  # fmt: skip
            ax.plot(xs, ys, color=colors[method.split("/")[0]], lw=0.8, alpha=0.7,
                    ls="--" if method.endswith("/constant") else "-")  # fmt: skip
    if o["source"] == "seqgan":
        ax.axhline(SEQGAN_GOAL, color="grey", ls=":", lw=1, label=f"SeqGAN's {SEQGAN_GOAL}")
    ax.set(xlabel="NLL_test (lower: more coverage)", ylabel="NLL_oracle at T=1 (lower: better samples)",
           title=f"Oracle: every seed's T=1 point, MLE's curve per seed;\n"
                 f"thin: seed {seed}'s own temperature curves")  # fmt: skip
    ax.legend(fontsize=7)


def _time_panel(ax, result: dict) -> None:
    o = result["oracle"]
    seed, s = next(iter(o["seeds"].items()))
    colors = _colors(o)
    for method, run in s["runs"].items():
        curve = run.get("time_curve")
        if curve and method != "mle":  # MLE: its whole run, below
            color = colors[method.split("/")[0]]
            ax.plot([p["train_s"] for p in curve], [p["nll_oracle"] for p in curve], color=color,
                    marker=".", label=method, ls="--" if method.endswith("/constant") else "-")  # fmt: skip
    mle = s["mle_run"]["history"]
    ax.plot([h["train_s"] for h in mle], [h["nll_oracle"] for h in mle],
            color=colors.get("mle", "C0"), marker=".", label="mle")  # fmt: skip
    if o["source"] == "seqgan":
        ax.axhline(SEQGAN_GOAL, color="grey", ls=":", lw=1)
    ax.set(xlabel="training seconds from scratch", ylabel="NLL_oracle (evaluation samples)",
           title=f"Time to quality, seed {seed}")  # fmt: skip
    ax.legend(fontsize=7)


def _text_panel(ax, result: dict) -> None:
    colors = {}
    for method, points in result["text"]["sweeps"].items():
        xs, ys = [p["self_bleu4"] for p in points], [p["bleu4"] for p in points]
        (line,) = ax.plot(xs, ys, marker="o", label=method)
        colors[method] = line.get_color()
        for p, x, y in zip(points, xs, ys, strict=True):
            ax.annotate(f"{p['temperature']:g}", (x, y), textcoords="offset points",
                        xytext=(4, 4), fontsize=8)  # fmt: skip
    labelled = set()
    for run in result["text"]["runs"]:  # every seed's T=1 point; a control as a cross
        if run["method"] == "mle":
            continue
        label = f"{run['method']} at T=1, every seed"
        ax.scatter(run["self_bleu4"], run["bleu4"], s=45, zorder=3,
                   marker="x" if run["method"].endswith("/constant") else "s",
                   color=colors.get(run["method"].split("/")[0], "black"),
                   label=None if label in labelled else label)  # fmt: skip
        labelled.add(label)
    ax.set(xlabel="Self-BLEU-4 (lower: more diverse)", ylabel="BLEU-4 (higher: closer to test)",
           title="Text: quality vs diversity over temperature")  # fmt: skip
    ax.legend(fontsize=7)
