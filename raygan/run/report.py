"""`raygan report RUN_DIR|TUNE_DIR`: report.md and its plots, from what a run or a search wrote.

    raygan report runs/a        # learning curves, phases, early stops, samples -> runs/a/report.md
    raygan report tunes/a       # the trials' metric with exploits, the best config -> tunes/a/report.md

A run's report reads its TensorBoard events (tb/), run.json and summary.json; `raygan train`
writes it at the end. A search's report reads results.json, results.md and metric.png.
"""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path
from typing import Any

from raygan.core.errors import RayganError
from raygan.data import storage
from raygan.run.checkpoint import atomic_write_text

# (file, title, [(TensorBoard tag, label)]): the panels of a run's report; a panel none of whose
# curves the run logged is left out (an MLE-only run has no D panel).
PANELS = (
    ("curve_quality.png", "Held-out quality", [
        ("eval/nll_oracle", "NLL_oracle"), ("eval/nll_test", "NLL_test"), ("eval/bleu4", "BLEU-4"),
        ("eval/self_bleu4", "Self-BLEU-4")]),
    ("curve_discriminator.png", "D's held-out accuracy (real test rows vs fresh samples)", [
        ("eval/d_acc", "accuracy"), ("eval/d_acc_real", "on real"), ("eval/d_acc_fake", "on fake"),
        ("eval/d_auc", "AUC")]),
    ("curve_losses.png", "Training losses", [
        ("mle/mle_loss", "MLE loss"), ("adversarial/g_loss", "G loss"),
        ("d_pretrain/d_loss", "D loss (pretraining)"), ("adversarial/d_loss", "D loss")]),
    ("curve_gradients.png", "G's gradient norm and the Gumbel inverse temperature", [
        ("mle/g_grad_norm", "G grad norm (MLE)"), ("adversarial/g_grad_norm", "G grad norm"),
        ("adversarial/beta", "beta")]),
)  # fmt: skip
RIGHT_AXIS = {"BLEU-4", "Self-BLEU-4", "beta"}
SAMPLE_STEPS = 4  # evaluations whose samples the report shows (first, last and evenly between)
SAMPLES_SHOWN = 5


def write_report(path: str) -> str:
    """report.md (and its PNGs) in a RUN_DIR or TUNE_DIR; returns the report's path."""
    path = storage.absolute(path)
    if storage.is_file(storage.join(path, "run.json")):
        return write_run_report(path)
    if storage.is_file(storage.join(path, "tune.json")):
        return write_tune_report(path)
    raise RayganError(
        f"{path} is neither a RUN_DIR (no run.json) nor a TUNE_DIR (no tune.json): "
        "give the --out of `raygan train` or `raygan tune`"
    )


def write_run_report(run_dir: str) -> str:
    run = json.loads(storage.read_text(storage.join(run_dir, "run.json")))
    summary_path = storage.join(run_dir, "summary.json")
    summary = json.loads(storage.read_text(summary_path)) if storage.is_file(summary_path) else {}
    scalars, texts = _events(storage.join(run_dir, "tb"))
    schedule = run["config"]["schedule"]
    boundaries = [(schedule["mle_steps"], "D pretraining"),
                  (schedule["mle_steps"] + schedule["d_pretrain_steps"], "adversarial")]  # fmt: skip
    stops = [(h["step"], h["early_stop"]) for h in summary.get("early_stops", [])]
    lines = [f"# Run report: {run_dir}", "", _run_overview(run, summary), ""]
    lines += ["## Curves", "", _phase_note(schedule, stops), ""]
    for name, title, curves in PANELS:
        present = [(tag, label) for tag, label in curves if scalars.get(tag)]
        if not present:
            continue
        png = plot_curves({label: scalars[tag] for tag, label in present}, title=title,
                          boundaries=boundaries, stops=[s for s, _ in stops])  # fmt: skip
        storage.write_bytes(storage.join(run_dir, name), png)
        lines += [f"### {title}", "", f"![{title}]({name})", ""]
    lines += _samples_section(texts.get("samples", []))
    report = storage.join(run_dir, "report.md")
    atomic_write_text(report, "\n".join(lines).rstrip() + "\n")
    return report


def _events(logdir: str) -> tuple[dict, dict]:
    from raygan.run.events import read_events

    if not storage.is_uri(logdir):
        return read_events(logdir) if Path(logdir).is_dir() else ({}, {})
    with tempfile.TemporaryDirectory(prefix="raygan-report-") as tmp:
        if storage.file_type(logdir) != storage.pafs.FileType.Directory:
            return {}, {}
        return read_events(storage.download_dir(logdir, Path(tmp) / "tb"))


def _run_overview(run: dict, summary: dict) -> str:
    from raygan.core.config import Config
    from raygan.run.train import describe

    lines = [describe(Config.from_dict(run["config"]), run["run_dir"]), f"data: {run['data_dir']}"]
    if summary:
        lines.append(
            f"{summary.get('steps', '?')} steps in {summary.get('wall_s', 0):.1f} s "
            f"({summary.get('train_s', 0):.1f} s training); final checkpoint: "
            f"{summary.get('final_checkpoint', '-')}"
        )
        final = {k: v for k, v in summary.get("final_metrics", {}).items()
                 if isinstance(v, int | float) and k not in ("step", "train_s")}  # fmt: skip
        if final:
            lines += ["", "| final metric | value |", "|---|---|"]
            lines += [f"| {k} | {v:.4g} |" for k, v in final.items()]
    else:
        lines.append("no summary.json yet: the run has not finished (the curves are what it logged)")
    return "\n".join(lines[:2]) + "\n\n" + "\n".join(lines[2:])


def _phase_note(schedule: dict, stops: list[tuple[int, str]]) -> str:
    m, d, a = schedule["mle_steps"], schedule["d_pretrain_steps"], schedule["adv_steps"]
    phases = [(name, first, size) for name, first, size in
              (("MLE", 0, m), ("D pretraining", m, d), ("adversarial", m + d, a)) if size]  # fmt: skip
    note = "Phases (dashed lines): " + ", ".join(
        f"{name} steps {first + 1}-{first + size}" for name, first, size in phases
    ) + "."
    if stops:
        note += " Early stops (red dotted lines): " + "; ".join(
            f"step {step}: {reason}" for step, reason in stops
        ) + "."
    return note


def _samples_section(samples: list[tuple[int, str]]) -> list[str]:
    if not samples:
        return []
    picks = sorted({round(i * (len(samples) - 1) / max(SAMPLE_STEPS - 1, 1))
                    for i in range(SAMPLE_STEPS)})  # fmt: skip
    lines = ["## Samples", "", "G's samples at the evaluation of each step (the evaluation's seed)."]
    for index in picks:
        step, text = samples[index]
        shown = [s for s in text.split("\n\n") if s.strip()][:SAMPLES_SHOWN]
        lines += ["", f"### step {step}", "", "```text", *shown, "```"]
    return [*lines, ""]


def plot_curves(curves: dict[str, list[tuple[int, float]]], *, title: str,
                boundaries=(), stops=()) -> bytes:  # fmt: skip
    """One panel: each curve over training steps, phase boundaries dashed, early stops dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    # Curves on another scale than the first (BLEU in [0, 1] beside NLL in nats, beta beside a
    # gradient norm) get the right-hand axis.
    right = ax.twinx() if any(label in RIGHT_AXIS for label in curves) else None
    lines = []
    for index, (label, points) in enumerate(curves.items()):
        steps, values = zip(*points, strict=True)
        axis = right if right is not None and label in RIGHT_AXIS else ax
        lines += axis.plot(steps, values, label=label, color=f"C{index}",
                           marker="." if len(points) < 30 else None)  # fmt: skip
    last = max(step for points in curves.values() for step, _ in points)
    for step, name in boundaries:
        if 0 < step < last:
            ax.axvline(step, color="gray", linestyle="--", linewidth=1)
            ax.text(step, 0.98, f" {name}", transform=ax.get_xaxis_transform(), fontsize=7,
                    va="top", rotation=90, color="gray")  # fmt: skip
    for step in stops:
        ax.axvline(step, color="red", linestyle=":", linewidth=1.2)
    ax.set_xlabel("training step")
    if right is not None:
        right.set_ylabel(", ".join(label for label in curves if label in RIGHT_AXIS), fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.legend(handles=lines, fontsize=8)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    return png.getvalue()


def write_tune_report(tune_dir: str) -> str:
    results_path = storage.join(tune_dir, "results.json")
    if not storage.is_file(results_path):
        raise RayganError(f"{tune_dir} has no results.json: the search has not finished")
    results: dict[str, Any] = json.loads(storage.read_text(results_path))
    best = results["best"]
    lines = [f"# Search report: {tune_dir}", "",
             f"{len(results['trials'])} trials, metric {results['metric']} ({results['mode']}), "
             f"{results['exploits']} exploits.", "",
             f"Best: trial {best['trial_id']}, {results['metric']} {best['metric']:.4f} at step "
             f"{best['step']}; its checkpoint: {best['checkpoint']} (`raygan serve --checkpoint "
             f"{best['checkpoint']}`).", "", "Its configuration:", "", "```yaml",
             *(f"{k}: {v}" for k, v in best["config"].items()), "```", "",
             "## Trials", ""]  # fmt: skip
    if storage.is_file(storage.join(tune_dir, "results.md")):
        lines += [storage.read_text(storage.join(tune_dir, "results.md")).rstrip(), ""]
    if storage.is_file(storage.join(tune_dir, "metric.png")):
        lines += [f"![{results['metric']} per trial; triangles: exploits](metric.png)", ""]
    report = storage.join(tune_dir, "report.md")
    atomic_write_text(report, "\n".join(lines))
    return report
