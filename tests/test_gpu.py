"""The GPU path: models and data on the worker's device, bf16 autocast, cuDNN's LSTM, NCCL.

Tests marked `gpu` need a CUDA device and are skipped without one; scripts/gpu_check.sh runs them
(`python -m pytest -m gpu`) with a 1-worker NCCL training run and the throughput benchmark. The
rest run everywhere. `use_gpu=true` on a cluster without GPUs failing fast with a clear message is
tests/test_train.py::test_use_gpu_without_gpu_is_a_clear_error.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import itertools
import math
import sys
from pathlib import Path

import pytest
import torch

from raygan.core.config import Config, GANConfig, apply_overrides
from raygan.core.gan import adversarial_step, mle_step
from raygan.core.models import Discriminator, Generator
from raygan.core.sampler import sample_categorical
from tests.conftest import TINY_TRAIN

REPO = Path(__file__).resolve().parents[1]
CUDA = torch.device("cuda")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def load_bench():
    """scripts/bench_gpu.py as a module (scripts/ is not a package)."""
    if "bench_gpu" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "bench_gpu", REPO / "scripts" / "bench_gpu.py"
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules["bench_gpu"] = module  # dataclasses resolve annotations through it
        spec.loader.exec_module(module)
    return sys.modules["bench_gpu"]


@contextlib.contextmanager
def exact_fp32():
    """No TF32 in cuBLAS or cuDNN, so CUDA and CPU results agree to fp32 rounding."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _finite(stats: dict) -> bool:
    return all(math.isfinite(v) for v in stats.values())


# -- everywhere ---------------------------------------------------------------------------------
@pytest.mark.parametrize("step", ["mle", "gumbel"])
def test_benchmark_flop_count_matches_torch(step):
    """bench_gpu's analytic FLOPs against torch's FlopCounterMode, on CPU with oneDNN off so the
    LSTM runs as plain matmuls the counter sees. Within 5%: the counter also sees the few
    matmuls the formula leaves out (a zero initial state needs no gradient)."""
    from torch.utils.flop_counter import FlopCounterMode

    bench = load_bench()
    size = bench.Size("t", vocab=64, max_len=6, g_dim=16, d_dim=24, batch=8, warmup=0, reps=1)
    run = bench.make_step(step, size, torch.device("cpu"))
    with torch.backends.mkldnn.flags(enabled=False), FlopCounterMode(display=False) as counter:
        run()
    assert bench.step_flops(step, size) == pytest.approx(counter.get_total_flops(), rel=0.05)


def test_use_gpu_selects_nccl_and_one_gpu_per_worker(tmp_path):
    from raygan.run.train import make_trainer

    for use_gpu, backend in ((True, "nccl"), (False, "gloo")):
        config = apply_overrides(Config(), {"use_gpu": use_gpu, "num_workers": 2})
        trainer = make_trainer(
            {"config": config.to_dict()}, config, storage_path=str(tmp_path), name="n"
        )
        assert trainer.backend_config.backend == backend
        assert trainer.scaling_config.use_gpu is use_gpu


# -- on a CUDA device -----------------------------------------------------------------------------
@pytest.mark.gpu
@needs_cuda
def test_one_worker_run_trains_on_the_gpu(oracle_data, tmp_path):
    """The per-worker loop at world size 1 with the worker's device set to CUDA (what Ray Train
    hands it with use_gpu=true): both models and every batch live there, bf16 autocast on."""
    from raygan.run.loop import BatchStream, RunSpec, WorkerContext, train_loop
    from raygan.run.train import resolve_config

    placed = []

    def prepare(model):  # stands in for raygan.run.train.prepare_ddp
        placed.append({p.device.type for p in model.parameters()})
        return model

    overrides = {**TINY_TRAIN, "num_workers": 1, "use_gpu": True, "bf16": True}
    config = resolve_config(oracle_data, overrides)
    run = RunSpec(config=config, data_dir=oracle_data, run_dir=str(tmp_path / "run"))
    summary = train_loop(run, WorkerContext(device=CUDA, prepare_model=prepare))
    assert placed == [{"cuda"}, {"cuda"}]  # G, then D
    assert summary["steps"] == config.schedule.total_steps
    assert all(math.isfinite(v) for v in summary["final_metrics"].values() if isinstance(v, float))
    tokens_BT, lengths_B = next(BatchStream(oracle_data, rank=0, world_size=1, batch_size=8,
                                            seed=0, device=CUDA))  # fmt: skip
    assert tokens_BT.device.type == lengths_B.device.type == "cuda"


@pytest.mark.gpu
@needs_cuda
def test_bf16_autocast_steps_are_finite(tiny_cfg):
    from raygan.run.loop import _autocast

    config = apply_overrides(Config(), {"bf16": True})
    torch.manual_seed(0)
    gen, disc = Generator(tiny_cfg).to(CUDA), Discriminator(tiny_cfg).to(CUDA)
    opt_mle, opt_g, opt_d = (torch.optim.Adam(m.parameters(), lr=1e-3) for m in (gen, gen, disc))
    rng = torch.Generator(device=CUDA).manual_seed(0)
    real_BT = gen.sample(16, generator=rng).tokens_BT
    batches = itertools.repeat((real_BT, None))
    with _autocast(config, CUDA):
        assert gen(real_BT).dtype == torch.bfloat16  # autocast is on
        stats = mle_step(gen, opt_mle, real_BT, lr=1e-3)
        stats |= adversarial_step(
            gen, disc, opt_g, opt_d, batches, cfg=GANConfig(estimator="gumbel"), g_lr=1e-3,
            d_lr=1e-3, d_steps=1, generator=rng,
        )  # fmt: skip
    assert _finite(stats), stats
    for p in itertools.chain(gen.parameters(), disc.parameters()):
        assert p.dtype == torch.float32 and torch.isfinite(p).all()


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_lstm_runs_on_cudnn(tiny_cfg, precision):
    bench = load_bench()
    gen = Generator(tiny_cfg).to(CUDA)
    tokens_BT = torch.randint(0, tiny_cfg.vocab_size, (8, tiny_cfg.max_len), device=CUDA)

    def forward_backward():
        with bench.autocast(precision, CUDA):
            gen(tokens_BT).float().sum().backward()

    ops = bench.lstm_ops(forward_backward)
    assert bench.lstm_path(ops) == "cuDNN", ops


@pytest.mark.gpu
@needs_cuda
def test_sampling_on_gpu_matches_cpu_in_fp32(tiny_cfg):
    torch.manual_seed(0)
    cpu = Generator(tiny_cfg).eval()
    gpu = copy.deepcopy(cpu).to(CUDA)
    tokens_BT = torch.randint(0, tiny_cfg.vocab_size, (32, tiny_cfg.max_len))
    with exact_fp32(), torch.no_grad():
        torch.testing.assert_close(
            gpu(tokens_BT.to(CUDA)).cpu(), cpu(tokens_BT), atol=1e-5, rtol=1e-5
        )
        # top_k=1 leaves one token per step: the draw no longer depends on the random stream,
        # so both devices must decode the same rows (up to a near-tie flipped by rounding).
        greedy_cpu = cpu.sample(64, top_k=1, generator=torch.Generator().manual_seed(0))
        greedy_gpu = gpu.sample(64, top_k=1, generator=torch.Generator(device=CUDA).manual_seed(0))
        same_rows = (greedy_cpu.tokens_BT == greedy_gpu.tokens_BT.cpu()).all(1).float().mean()
        assert same_rows >= 0.95
        # The same uniforms draw the same tokens from the same logits.
        logits_BV = cpu(tokens_BT)[:, -1]
        u_B = torch.rand(logits_BV.shape[0], generator=torch.Generator().manual_seed(1))
        drawn_cpu = sample_categorical(logits_BV, u_B=u_B)
        drawn_gpu = sample_categorical(logits_BV.to(CUDA), u_B=u_B.to(CUDA)).cpu()
        assert (drawn_cpu == drawn_gpu).float().mean() >= 0.95
