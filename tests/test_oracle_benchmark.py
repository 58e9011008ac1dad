"""The one-process oracle benchmark and the BENCHMARKS.md sections generated from its JSON."""

from __future__ import annotations

import json
import math

from raygan.bench.markdown import replace_section
from raygan.core.config import ModelConfig
from raygan.run.oracle_benchmark import OracleBenchmark, run_oracle_benchmark, write_result


def test_small_oracle_benchmark_runs_every_phase(tmp_path):
    bench = OracleBenchmark(
        num_train=256, num_test=128, batch_size=32, mle_epochs=4, eval_every_epochs=2,
        adv_steps=2, d_pretrain_steps=1, eval_samples=128,
        model=ModelConfig(vocab_size=40, max_len=6, g_embed_dim=16, g_hidden_dim=16),
    )  # fmt: skip
    result = run_oracle_benchmark(bench, log=lambda *_: None)
    names = [p["phase"] for p in result["phases"]]
    assert names[0] == "random init" and names[-3:][0].startswith("gumbel")
    assert [n.split()[0] for n in names[-3:]] == ["gumbel", "rollout", "dense"]
    for phase in result["phases"]:
        assert math.isfinite(phase["nll_oracle"]) and math.isfinite(phase["nll_test"])
    mle = next(p for p in result["phases"] if p["phase"] == "MLE epoch 4")
    assert mle["nll_test"] < result["phases"][0]["nll_test"] - 0.1
    write_result(result, tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text())["phases"][1]["steps"] == 2 * 8


def test_replace_section_keeps_the_rest(tmp_path):
    md = tmp_path / "B.md"
    md.write_text("# Benchmarks\n\nintro\n")
    replace_section(md, "a", "first")
    replace_section(md, "b", "second")
    replace_section(md, "a", "third")
    text = md.read_text()
    assert "intro" in text and "second" in text and "third" in text and "first" not in text
    assert text.index("third") < text.index("second")
