"""The quality benchmark, through the real trainer: every model is a `raygan train` run (Ray Train).

    python scripts/bench_quality.py --oracle-path ../shared/data/seqgan_oracle/target_params.npz \
        --coco ../shared/data/image_coco --out bench_out/quality --json benchmarks/quality.json

- Oracle (SeqGAN's, or a seeded random one): per seed, an MLE run, then one adversarial run per
  estimator starting from that seed's MLE checkpoint (`init_from`). Each final checkpoint is scored
  at temperature 1: NLL_oracle (quality: G's samples under the oracle) and NLL_test (coverage: the
  held-out oracle samples under G). Mean +- std over seeds; the CPU wall time of every run.
- Text (COCO captions): an MLE run and one adversarial run; BLEU-2..5 of G's samples against the
  test split, Self-BLEU-2..5 among them, NLL_test, and FED when an embedding model loads offline.
- Quality-diversity (Caccia et al., ICLR 2020): MLE and the best GAN at several softmax temperatures;
  the GAN's curve is "dominated" when every one of its points is matched or beaten on both axes by
  a point of MLE's curve (its points joined by straight lines).

Runs live under OUT/runs/NAME; a run already finished is reused, an unfinished one resumes, so an
interrupted benchmark continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from raygan.errors import RayganError
from raygan.evaluate import PRESETS  # the adversarial settings per estimator, after the papers
from raygan.evaluate import PUBLISHED as PUBLISHED_ORACLE  # NLL_oracle, SeqGAN oracle, length 20

# COCO captions BLEU-2..5 (RelGAN, Nie et al. ICLR 2019, Table 2; RelGAN with beta_max 100).
PUBLISHED_COCO = {"MLE": (0.731, 0.497, 0.305, 0.189), "RelGAN(100)": (0.849, 0.687, 0.502, 0.331)}
ORACLE_GOAL = 7.0
COCO_GOAL = (0.85, 0.69, 0.50, 0.33)
BLEU_ORDERS = (2, 3, 4, 5)


@dataclasses.dataclass
class QualityPlan:
    out: str
    """Working directory: prepared data and every run."""
    oracle: bool = True
    """Run the oracle benchmark."""
    oracle_path: str | None = None
    """SeqGAN's target_params.npz; None: a seeded random oracle (`oracle_vocab`, `max_len`)."""
    text_train: str | None = None
    """Text benchmark training file (one sentence per line); None skips the text benchmark."""
    text_test: str | None = None
    seeds: tuple[int, ...] = (0, 1, 2)
    methods: tuple[str, ...] = ("gumbel", "rollout", "dense")
    num_train: int = 10_000
    num_test: int = 10_000
    oracle_vocab: int = 5000
    max_len: int = 20
    mle_steps: int = 3120  # 20 epochs of 156 batches of 64
    d_pretrain_steps: int = 100
    adv_steps: dict[str, int] = dataclasses.field(
        default_factory=lambda: {"gumbel": 300, "rollout": 30, "dense": 300}
    )
    eval_samples: int = 10_000
    temperatures: tuple[float, ...] = (0.6, 0.8, 1.0, 1.2, 1.4)
    text_method: str = "gumbel"
    text_max_len: int = 40
    text_mle_steps: int = 2340  # 15 epochs
    text_adv_steps: int = 200
    text_hypotheses: int = 5000
    text_self_bleu: int = 1000
    fed_model: str | None = None
    """A sentence-transformers model name or path, loaded offline (local files only)."""
    train_overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Extra `key=value` settings for every run (model sizes, num_workers, ...)."""

    def check(self) -> None:
        unknown = [m for m in (*self.methods, self.text_method) if m not in PRESETS]
        if unknown:
            raise RayganError(f"unknown method {unknown[0]}; valid: {', '.join(PRESETS)}")
        missing = [m for m in self.methods if m not in self.adv_steps]
        if missing:
            raise RayganError(f"no adversarial step budget for {', '.join(missing)}")
        if not self.seeds:
            raise RayganError("at least one seed is needed")
        if any(t <= 0 for t in self.temperatures) or 1.0 not in self.temperatures:
            raise RayganError("temperatures must be > 0 and include 1.0")
        for path in (self.oracle_path, self.text_train, self.text_test):
            if path and not Path(path).is_file():
                raise RayganError(f"{path}: no such file")
        if bool(self.text_train) != bool(self.text_test):
            raise RayganError("the text benchmark needs both a training and a test file")
        if not self.oracle and not self.text_train:
            raise RayganError("nothing to run: the oracle benchmark is off and no text files given")


def run_quality(plan: QualityPlan, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Prepare, train every run (reusing finished ones), score, and return the JSON result."""
    from raygan.ray_env import ensure_ray

    plan.check()
    ensure_ray()
    out = Path(plan.out)
    result: dict[str, Any] = {"plan": dataclasses.asdict(plan)}
    if plan.oracle:
        result["oracle"] = _oracle_benchmark(plan, out, log)
    if plan.text_train:
        result["text"] = _text_benchmark(plan, out, log)
    return result


# -- training ------------------------------------------------------------------------------------
RUN_DEFAULTS = {
    "num_workers": 1,
    "eval_samples": 1000,
    "checkpoint_every": 1000,
    "keep_checkpoints": 1,
}


def trainer_settings(train_overrides: dict[str, Any]):
    """The trainer section (workers, GPU, ...) every run resolves from these settings;
    RayganError naming a key `raygan train` does not know or a value of the wrong type."""
    from raygan.config import Config, apply_overrides

    return apply_overrides(Config(), {**RUN_DEFAULTS, **train_overrides}).trainer


def _train(plan: QualityPlan, data_dir: Path, name: str, overrides: dict, log) -> dict[str, Any]:
    """One `raygan train` run into OUT/runs/NAME; a finished run is reused with its recorded time."""
    from raygan.checkpoint import atomic_write_text
    from raygan.train import fit

    run_dir = Path(plan.out) / "runs" / name
    record = run_dir / "bench_run.json"
    settings = {**RUN_DEFAULTS, **plan.train_overrides, **overrides}
    if record.is_file():
        done = json.loads(record.read_text())
        if done["settings"] == settings:
            log(f"{name}: reusing the finished run in {run_dir}")
            return done
    log(f"{name}: raygan train {' '.join(f'{k}={v}' for k, v in settings.items())}")
    started = time.perf_counter()
    summary = fit(str(data_dir), str(run_dir), settings, log=lambda _: None)
    done = {
        "name": name,
        "settings": settings,
        "run_dir": str(run_dir),
        "checkpoint": summary["final_checkpoint"],
        "steps": summary["final_step"],
        "wall_s": time.perf_counter() - started,
        "loop_wall_s": summary.get("wall_s"),
        "last_eval": summary.get("final_metrics", {}),
    }
    atomic_write_text(record, json.dumps(done, indent=2, default=str))  # marks the run finished
    log(f"{name}: {done['steps']} steps in {done['wall_s']:.0f} s")
    return done


def _gan_overrides(method: str, seed: int, adv_steps: int, d_pretrain: int, init_from: str) -> dict:
    return {
        **PRESETS[method],
        "seed": seed,
        "init_from": init_from,
        "mle_steps": 0,
        "d_pretrain_steps": d_pretrain,
        "adv_steps": adv_steps,
        "eval_every": adv_steps + d_pretrain,
    }


# -- oracle --------------------------------------------------------------------------------------
def _oracle_benchmark(plan: QualityPlan, out: Path, log) -> dict[str, Any]:
    from raygan.data import load_manifest, load_oracle, prepare_oracle, read_split

    data_dir = out / "oracle_data"
    if not (data_dir / "manifest.json").is_file():
        prepare_oracle(
            str(data_dir), oracle="seqgan" if plan.oracle_path else "random",
            oracle_path=plan.oracle_path, vocab_size=None if plan.oracle_path else plan.oracle_vocab,
            max_len=plan.max_len, num_samples=plan.num_train, num_test=plan.num_test, progress=False,
        )  # fmt: skip
    oracle = load_oracle(str(data_dir))
    test_NT, test_len_N = read_split(str(data_dir), "test")
    from raygan.metrics import nll_oracle, nll_test

    def score(checkpoint: str, temperature: float, seed: int) -> dict[str, float]:
        from raygan.checkpoint import load_generator

        gen, _, _ = load_generator(checkpoint)
        return {
            "temperature": temperature,
            "nll_oracle": nll_oracle(
                oracle, gen, num=plan.eval_samples, seed=seed + 11, temperature=temperature
            ),
            "nll_test": nll_test(gen, test_NT, test_len_N, temperature=temperature),
        }

    runs: list[dict] = []
    for seed in plan.seeds:
        mle = _train(plan, data_dir, f"oracle_mle_s{seed}", {
            "seed": seed, "mle_steps": plan.mle_steps, "d_pretrain_steps": 0, "adv_steps": 0,
            "eval_every": plan.mle_steps,
        }, log)  # fmt: skip
        runs.append({"method": "mle", "seed": seed, **mle, **score(mle["checkpoint"], 1.0, seed)})
        _log_scores(log, runs[-1])
        for method in plan.methods:
            overrides = _gan_overrides(
                method, seed, plan.adv_steps[method], plan.d_pretrain_steps, mle["checkpoint"]
            )
            gan = _train(plan, data_dir, f"oracle_{method}_s{seed}", overrides, log)
            runs.append(
                {"method": method, "seed": seed, **gan, **score(gan["checkpoint"], 1.0, seed),
                 "dynamics": _dynamics(gan["run_dir"])}
            )  # fmt: skip
            _log_scores(log, runs[-1])

    summary = {m: _mean_std(runs, m, ("nll_oracle", "nll_test", "wall_s")) for m in _methods(plan)}
    for method in plan.methods:  # paired with the same seed's MLE run: seed noise cancels
        summary[method]["change_vs_mle"] = {
            key: _mean_std(_paired(runs, method, key), method, ("delta",))["delta"]
            for key in ("nll_oracle", "nll_test")
        }
    best = (
        min(plan.methods, key=lambda m: summary[m]["nll_oracle"]["mean"]) if plan.methods else None
    )
    sweep_seed = plan.seeds[0]
    sweeps = {}
    for method in ["mle"] + ([best] if best else []):
        run = next(r for r in runs if r["method"] == method and r["seed"] == sweep_seed)
        sweeps[method] = [  # T=1 was scored with the run
            {k: run[k] for k in ("temperature", "nll_oracle", "nll_test")}
            if t == 1.0
            else score(run["checkpoint"], t, sweep_seed)
            for t in plan.temperatures
        ]
    points = {m: [(p["nll_test"], p["nll_oracle"]) for p in pts] for m, pts in sweeps.items()}
    dominated = _dominated(points[best], points["mle"]) if best else None
    goal = None
    if best:
        b, m = summary[best], summary["mle"]
        goal = {
            "method": best,
            "nll_oracle_mean": b["nll_oracle"]["mean"],
            "nll_oracle_reached": b["nll_oracle"]["mean"] <= ORACLE_GOAL,
            "nll_test_no_worse": b["nll_test"]["mean"] <= m["nll_test"]["mean"],
            "curve_not_dominated": not dominated,
        }
        goal["reached"] = all(
            goal[k] for k in ("nll_oracle_reached", "nll_test_no_worse", "curve_not_dominated")
        )
    return {
        "source": "seqgan" if plan.oracle_path else f"random (vocab {plan.oracle_vocab})",
        "manifest_vocab": load_manifest(str(data_dir))["vocab_size"],
        "oracle_own_nll": nll_test(oracle, test_NT, test_len_N),
        "runs": [_public(r) for r in runs],
        "summary": summary,
        "best_gan": best,
        "sweep_seed": sweep_seed,
        "sweeps": sweeps,
        "gan_curve_dominated": dominated,
        "goal": goal,
    }


def _methods(plan: QualityPlan) -> list[str]:
    return ["mle", *plan.methods]


def _mean_std(runs: list[dict], method: str, keys: tuple[str, ...]) -> dict[str, Any]:
    mine = [r for r in runs if r["method"] == method]
    out: dict[str, Any] = {"n": len(mine)}
    for key in keys:
        values = [r[key] for r in mine]
        out[key] = {
            "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        }
    return out


DYNAMICS = ("d_real_acc", "d_fake_acc", "d_loss", "g_loss", "g_grad_norm")


def _dynamics(run_dir: str) -> dict[str, dict[str, float]]:
    """D's accuracy on real and fake, the losses and G's gradient norm, averaged over the first
    and the last quarter of the adversarial steps (from the run's TensorBoard events): the
    evidence for what held a GAN back (D winning outright, G's gradient vanishing, ...)."""
    from raygan.report import read_scalars

    scalars = read_scalars(Path(run_dir) / "tb")
    out = {}
    for key in DYNAMICS:
        values = [v for _, v in scalars.get(f"adversarial/{key}", [])]
        if values:
            q = max(1, len(values) // 4)
            out[key] = {
                "first": statistics.fmean(values[:q]),
                "last": statistics.fmean(values[-q:]),
            }
    return out


def _paired(runs: list[dict], method: str, key: str) -> list[dict]:
    mle = {r["seed"]: r[key] for r in runs if r["method"] == "mle"}
    return [
        {"method": method, "delta": r[key] - mle[r["seed"]]} for r in runs if r["method"] == method
    ]


def _public(run: dict) -> dict:
    return {k: v for k, v in run.items() if k not in ("last_eval",)}


def _log_scores(log, run: dict) -> None:
    scores = "  ".join(
        f"{k} {run[k]:.4f}"
        for k in ("nll_oracle", "nll_test", *(f"bleu{n}" for n in BLEU_ORDERS))
        if k in run
    )
    log(f"{run['name']}: {scores}")


def _dominated(curve: list[tuple[float, float]], reference: list[tuple[float, float]]) -> bool:
    """Whether every point of `curve` is matched or beaten on both axes (lower is better) by some
    point of the piecewise-linear `reference` curve (its points in the given order)."""
    segments = list(itertools.pairwise(reference)) or [(reference[0], reference[0])]
    return all(any(_segment_dominates(a, b, p) for a, b in segments) for p in curve)


def _segment_dominates(a, b, point, eps: float = 1e-12) -> bool:
    """Is there t in [0, 1] with a + t(b - a) <= point on both coordinates?"""
    low, high = 0.0, 1.0
    for start, end, bound in zip(a, b, point, strict=True):
        slope = end - start
        if abs(slope) < eps:
            if start > bound + eps:
                return False
            continue
        t = (bound - start) / slope  # the coordinate equals the bound at t
        if slope > 0:
            high = min(high, t)
        else:
            low = max(low, t)
    return low <= high + eps


# -- text ----------------------------------------------------------------------------------------
def _text_benchmark(plan: QualityPlan, out: Path, log) -> dict[str, Any]:
    from raygan.bleu import BleuReference, self_bleu
    from raygan.checkpoint import load_generator
    from raygan.data import load_codec, load_manifest, prepare_text, read_split
    from raygan.loop import _trim
    from raygan.metrics import nll_test, sample_tokens

    data_dir = out / "text_data"
    if not (data_dir / "manifest.json").is_file():
        prepare_text(
            [plan.text_train], str(data_dir), tokenizer="word", max_len=plan.text_max_len,
            test_inputs=[plan.text_test], progress=False,
        )  # fmt: skip
    manifest = load_manifest(str(data_dir))
    codec = load_codec(str(data_dir))
    eos = manifest["eos_id"]
    test_NT, test_len_N = read_split(str(data_dir), "test")
    refs = _trim(test_NT, test_len_N, eos)
    reference = BleuReference(refs, max_n=max(BLEU_ORDERS))
    seed = plan.seeds[0]

    def score(checkpoint: str, temperature: float, full: bool) -> dict[str, Any]:
        gen, _, _ = load_generator(checkpoint)
        samples = sample_tokens(gen, plan.text_hypotheses, seed=seed + 11, temperature=temperature)
        hyps = _trim(samples.tokens_BT, samples.lengths_B, eos)
        bleu = reference.bleu(hyps, BLEU_ORDERS)
        selfb = self_bleu(hyps[: plan.text_self_bleu], BLEU_ORDERS)
        scores: dict[str, Any] = {"temperature": temperature}
        scores.update({f"bleu{n}": bleu[n] for n in BLEU_ORDERS})
        scores.update({f"self_bleu{n}": selfb[n] for n in BLEU_ORDERS})
        scores["nll_test"] = nll_test(gen, test_NT, test_len_N, temperature=temperature)
        if full:
            texts = [codec.decode(row) for row in samples.tokens_BT.tolist()]
            references = [
                codec.decode(row[: int(n)])
                for row, n in zip(test_NT.tolist(), test_len_N.tolist(), strict=True)
            ]
            scores["fed"], scores["fed_note"] = fed(texts, references, plan.fed_model)
            scores["samples"] = texts[:5]
        return scores

    mle = _train(plan, data_dir, f"text_mle_s{seed}", {
        "seed": seed, "mle_steps": plan.text_mle_steps, "d_pretrain_steps": 0, "adv_steps": 0,
        "eval_every": plan.text_mle_steps,
    }, log)  # fmt: skip
    gan = _train(
        plan, data_dir, f"text_{plan.text_method}_s{seed}",
        _gan_overrides(plan.text_method, seed, plan.text_adv_steps, plan.d_pretrain_steps, mle["checkpoint"]),
        log,
    )  # fmt: skip
    runs, sweeps = [], {}
    for method, run in (("mle", mle), (plan.text_method, gan)):
        runs.append(
            {"method": method, "seed": seed, **_public(run), **score(run["checkpoint"], 1.0, True)}
        )
        if method != "mle":
            runs[-1]["dynamics"] = _dynamics(run["run_dir"])
        _log_scores(log, runs[-1])
        sweeps[method] = [
            score(run["checkpoint"], t, False) for t in plan.temperatures if t != 1.0
        ] + [{k: v for k, v in runs[-1].items() if k in _SWEEP_KEYS}]
        sweeps[method].sort(key=lambda p: p["temperature"])
    points = {m: [(p["self_bleu4"], -p["bleu4"]) for p in pts] for m, pts in sweeps.items()}
    dominated = _dominated(points[plan.text_method], points["mle"])
    g, m = runs[1], runs[0]
    goal = {
        "method": plan.text_method,
        "bleu": [g[f"bleu{n}"] for n in BLEU_ORDERS],
        "bleu_reached": all(
            g[f"bleu{n}"] >= t for n, t in zip(BLEU_ORDERS, COCO_GOAL, strict=True)
        ),
        "nll_test_no_worse": g["nll_test"] <= m["nll_test"],
    }
    goal["reached"] = goal["bleu_reached"] and goal["nll_test_no_worse"]
    name = Path(plan.text_train).name
    return {
        "corpus": "COCO captions" if name == "image_coco.txt" else name,
        "vocab_size": manifest["vocab_size"],
        "max_len": manifest["max_len"],
        "num_references": len(refs),
        "num_hypotheses": plan.text_hypotheses,
        "self_bleu_sentences": min(plan.text_self_bleu, plan.text_hypotheses),
        "runs": runs,
        "sweeps": sweeps,
        "gan_curve_dominated": dominated,
        "goal": goal,
    }


_SWEEP_KEYS = {"temperature", "nll_test", *(f"bleu{n}" for n in BLEU_ORDERS),
               *(f"self_bleu{n}" for n in BLEU_ORDERS)}  # fmt: skip


def fed(texts: list[str], references: list[str], model: str | None) -> tuple[float | None, str]:
    """Fréchet Embedding Distance (de Masson d'Autume et al., 2019) between sentence embeddings of
    `texts` and `references`; (None, why) when no embedding model can be loaded offline."""
    if not model:
        return None, "no --fed-model given"
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return None, "needs the optional extra raygan[fed] (sentence-transformers), not installed"
    try:
        encoder = SentenceTransformer(model, local_files_only=True)
    except Exception as exc:  # any loading failure means "not available offline"
        return None, f"embedding model {model} did not load offline ({type(exc).__name__})"
    a = encoder.encode(texts, batch_size=256, convert_to_numpy=True)
    b = encoder.encode(references, batch_size=256, convert_to_numpy=True)
    return frechet_distance(a, b), f"sentence-transformers {model}"


def frechet_distance(a_ND: np.ndarray, b_MD: np.ndarray) -> float:
    """|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between Gaussians fitted to the rows.

    tr((S_a S_b)^(1/2)) is the sum of the square roots of the eigenvalues of the symmetric
    A^(1/2) S_b A^(1/2) (A = S_a), which avoids a non-symmetric matrix square root.
    """
    a_ND, b_MD = np.asarray(a_ND, np.float64), np.asarray(b_MD, np.float64)
    if a_ND.ndim != 2 or b_MD.ndim != 2 or a_ND.shape[1] != b_MD.shape[1]:
        raise ValueError(
            f"need two (rows, dim) arrays of one dim, got {a_ND.shape} and {b_MD.shape}"
        )
    if len(a_ND) < 2 or len(b_MD) < 2:
        raise ValueError("need at least 2 rows on each side to estimate a covariance")
    mu_a, mu_b = a_ND.mean(0), b_MD.mean(0)
    cov_a, cov_b = (
        np.atleast_2d(np.cov(a_ND, rowvar=False)),
        np.atleast_2d(np.cov(b_MD, rowvar=False)),
    )
    w, v = np.linalg.eigh(cov_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    middle = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    trace_root = np.sqrt(np.clip(middle, 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root)


# -- plot and tables -----------------------------------------------------------------------------
def plot(result: dict[str, Any], path: str | Path) -> None:
    """Quality-diversity curves: NLL_oracle against NLL_test (oracle), BLEU-4 against Self-BLEU-4
    (text), one line per model through its temperatures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [k for k in ("oracle", "text") if k in result]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.8), squeeze=False)
    for ax, kind in zip(axes[0], panels, strict=True):
        x_key, y_key = ("nll_test", "nll_oracle") if kind == "oracle" else ("self_bleu4", "bleu4")
        for method, points in result[kind]["sweeps"].items():
            xs, ys = [p[x_key] for p in points], [p[y_key] for p in points]
            ax.plot(xs, ys, marker="o", label=method)
            for p, x, y in zip(points, xs, ys, strict=True):
                ax.annotate(
                    f"{p['temperature']:g}",
                    (x, y),
                    textcoords="offset points",
                    xytext=(4, 4),
                    fontsize=8,
                )
        if kind == "oracle":
            ax.set(xlabel="NLL_test (lower: more coverage)", ylabel="NLL_oracle (lower: better samples)",
                   title="Oracle: quality vs diversity over temperature")  # fmt: skip
        else:
            ax.set(xlabel="Self-BLEU-4 (lower: more diverse)", ylabel="BLEU-4 (higher: closer to test)",
                   title="Text: quality vs diversity over temperature")  # fmt: skip
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pm(stat: dict[str, float], digits: int = 3) -> str:
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def markdown(result: dict[str, Any]) -> str:
    """The BENCHMARKS.md section, generated from the JSON."""
    from raygan.report import markdown_table

    plan, lines = result["plan"], []
    batch = plan["train_overrides"].get("batch_size", 64)
    trainer = trainer_settings(plan["train_overrides"])
    workers = f"{trainer.num_workers} {'GPU' if trainer.use_gpu else 'CPU'} worker(s)"
    if "oracle" in result:
        o = result["oracle"]
        lines += [
            f"**Oracle** ({o['source']}; {plan['num_train']:,} training and {plan['num_test']:,} "
            f"held-out samples, length {plan['max_len']}, batch {batch}). Every row is `raygan train` on "
            f"Ray Train ({workers}) with seeds {', '.join(map(str, plan['seeds']))}; GAN runs start "
            f"from the same seed's MLE run ({plan['mle_steps']:,} MLE steps), then "
            f"{plan['d_pretrain_steps']} D pretraining steps and the adversarial steps shown. "
            f"NLL_oracle on {plan['eval_samples']:,} samples at temperature 1; NLL_test on the "
            f"held-out samples. The oracle scores its own held-out samples at {o['oracle_own_nll']:.3f}.",
            "",
        ]
        rows = []
        for method, s in o["summary"].items():
            steps = plan["mle_steps"] if method == "mle" else plan["adv_steps"][method]
            rows.append([method, steps, s["n"], _pm(s["nll_oracle"]), _pm(s["nll_test"]),
                         _pm(s["wall_s"], 0)])  # fmt: skip
        lines += [
            markdown_table(
                ["method", "steps", "seeds", "NLL_oracle", "NLL_test", "wall s per run"], rows
            ),
            "",
        ]
        lines += _dynamics_table(o["runs"], o["summary"])
        lines += [
            "Published NLL_oracle on this oracle: "
            + ", ".join(f"{k} {v:.3f}" for k, v in PUBLISHED_ORACLE.items())
            + " (SeqGAN, Yu et al. 2017; LeakGAN, Guo et al. 2018; RelGAN, Nie et al. 2019).",
            "",
        ]
        if o["sweeps"]:
            lines += [f"Temperature sweep (seed {o['sweep_seed']}; NLL_oracle / NLL_test):", ""]
            temps = [p["temperature"] for p in next(iter(o["sweeps"].values()))]
            rows = [
                [m] + [f"{p['nll_oracle']:.3f} / {p['nll_test']:.3f}" for p in pts]
                for m, pts in o["sweeps"].items()
            ]
            lines += [markdown_table(["model"] + [f"T={t:g}" for t in temps], rows), ""]
        if o["goal"]:
            g = o["goal"]
            lines += [
                f"Goal (NLL_oracle ≤ {ORACLE_GOAL} at T=1, NLL_test no worse than MLE, curve not "
                f"dominated by MLE's): best GAN `{g['method']}` {g['nll_oracle_mean']:.3f} — "
                + ("**reached**" if g["reached"] else "**not reached**")
                + f" (NLL_oracle ≤ {ORACLE_GOAL}: {_yes(g['nll_oracle_reached'])}, NLL_test no worse: "
                f"{_yes(g['nll_test_no_worse'])}, not dominated: {_yes(g['curve_not_dominated'])}).",
                "",
            ]
    if "text" in result:
        t = result["text"]
        lines += [
            f"**Text** ({t['corpus']}; word tokens, vocab {t['vocab_size']:,}, max length {t['max_len']}; "
            f"MLE {plan['text_mle_steps']:,} steps, `{plan['text_method']}` {plan['text_adv_steps']} "
            f"adversarial steps from it). BLEU of {t['num_hypotheses']:,} samples at T=1 against the "
            f"{t['num_references']:,} test captions; Self-BLEU among the first "
            f"{t['self_bleu_sentences']:,} samples.",
            "",
        ]
        header = ["model", *(f"BLEU-{n}" for n in BLEU_ORDERS), *(f"Self-BLEU-{n}" for n in BLEU_ORDERS),
                  "NLL_test", "FED", "wall s"]  # fmt: skip
        rows = []
        for r in t["runs"]:
            rows.append([f"{r['method']} (ours)", *(r[f"bleu{n}"] for n in BLEU_ORDERS),
                         *(r[f"self_bleu{n}"] for n in BLEU_ORDERS), r["nll_test"],
                         "—" if r["fed"] is None else f"{r['fed']:.3f}", f"{r['wall_s']:.0f}"])  # fmt: skip
        for name, scores in PUBLISHED_COCO.items():
            rows.append([f"{name} (published)", *scores, *["—"] * 4, "—", "—", "—"])
        lines += [markdown_table(header, rows), ""]
        dyn = t["runs"][1].get("dynamics", {})
        if dyn:
            lines += [
                f"`{t['runs'][1]['method']}` adversarial dynamics (first → last quarter): "
                + ", ".join(
                    f"{key} {dyn[key]['first']:.3g} → {dyn[key]['last']:.3g}"
                    for key in DYNAMICS if key in dyn
                )
                + ".",
                "",
            ]  # fmt: skip
        note = t["runs"][0]["fed_note"]
        lines += [f"FED: {note}. Published rows: RelGAN (Nie et al., ICLR 2019), Table 2.", ""]
        temps = [p["temperature"] for p in next(iter(t["sweeps"].values()))]
        rows = [
            [m] + [f"{p['bleu4']:.3f} / {p['self_bleu4']:.3f}" for p in pts]
            for m, pts in t["sweeps"].items()
        ]
        lines += ["Temperature sweep (BLEU-4 / Self-BLEU-4):", "",
                  markdown_table(["model"] + [f"T={x:g}" for x in temps], rows), ""]  # fmt: skip
        g = t["goal"]
        lines += [
            f"Goal (BLEU-2..5 ≥ {'/'.join(f'{x:.2f}' for x in COCO_GOAL)}, NLL_test no worse than MLE): "
            + ("**reached**" if g["reached"] else "**not reached**")
            + f" (`{g['method']}` BLEU-2..5 {'/'.join(f'{x:.3f}' for x in g['bleu'])}; NLL_test no worse: "
            f"{_yes(g['nll_test_no_worse'])}); GAN curve dominated by MLE's: {_yes(t['gan_curve_dominated'])}.",
            "",
        ]
    lines += [f"![quality-diversity]({result.get('plot', 'quality.png')})", "",
              f"Command: `{result.get('command', '')}` ({result.get('machine', '')}, {result.get('finished', '')})."]  # fmt: skip
    return "\n".join(lines)


def _dynamics_table(runs: list[dict], summary: dict) -> list[str]:
    """Per GAN: the change from its own seed's MLE run, and D's accuracy and G's gradient norm
    in the first and last quarter of the adversarial steps (means over seeds)."""
    from raygan.report import markdown_table

    def moved(method: str, key: str) -> str:
        mine = [
            r["dynamics"][key]
            for r in runs
            if r["method"] == method and key in r.get("dynamics", {})
        ]
        if not mine:
            return "—"
        first = statistics.fmean(d["first"] for d in mine)
        last = statistics.fmean(d["last"] for d in mine)
        return f"{first:.3g} → {last:.3g}"

    rows = [
        [method, _pm(stats["change_vs_mle"]["nll_oracle"]), _pm(stats["change_vs_mle"]["nll_test"]),
         moved(method, "d_real_acc"), moved(method, "d_fake_acc"), moved(method, "g_grad_norm")]
        for method, stats in summary.items() if "change_vs_mle" in stats
    ]  # fmt: skip
    if not rows:
        return []
    header = ["method", "Δ NLL_oracle vs own MLE", "Δ NLL_test vs own MLE", "D acc real",
              "D acc fake", "G grad norm"]  # fmt: skip
    return [
        "Change from each seed's own MLE run, and the adversarial dynamics (first → last quarter "
        "of the adversarial steps, means over seeds; D accuracy = share of real scored real, of "
        "fake scored fake):",
        "",
        markdown_table(header, rows),
        "",
    ]


def _yes(flag: bool | None) -> str:
    return "yes" if flag else "no"


def finite(result: dict[str, Any]) -> bool:
    """Whether every number in the result is finite (a well-formed benchmark JSON)."""

    def walk(value) -> bool:
        if isinstance(value, float):
            return math.isfinite(value)
        if isinstance(value, dict):
            return all(walk(v) for v in value.values())
        if isinstance(value, list | tuple):
            return all(walk(v) for v in value)
        return True

    return walk(result)
