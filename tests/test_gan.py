"""Training steps: who changes what, gradient paths, rollout rewards, losses, MLE progress."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

from raygan.core.config import GANConfig
from raygan.core.errors import RayganError
from raygan.core.gan import (
    FakePool,
    adversarial_step,
    d_mle_step,
    d_step,
    discounted_returns,
    g_step,
    gumbel_beta,
    mle_step,
    rollout_rewards,
    without_dropout,
)
from raygan.core.losses import d_loss, g_loss
from raygan.core.metrics import (
    d_log_ratio_correlation,
    heldout_d_accuracy,
    nll_test,
    sample_tokens,
)
from raygan.core.models import Discriminator, Generator, Oracle, make_discriminator
from raygan.core.sampler import RowStreams, lengths_from_tokens
from tests.conftest import TINY


def _snapshot(model):
    return [p.detach().clone() for p in model.parameters()]


def _same(model, snapshot) -> bool:
    return all(torch.equal(p, q) for p, q in zip(model.parameters(), snapshot, strict=True))


def _setup(cfg, lr=1e-2):
    gen, disc = Generator(cfg), Discriminator(cfg)
    opt_g = torch.optim.Adam(gen.parameters(), lr=lr)
    opt_d = torch.optim.Adam(disc.parameters(), lr=lr)
    real = gen.sample(8, generator=torch.Generator().manual_seed(9))
    return gen, disc, opt_g, opt_d, real


@pytest.mark.parametrize("estimator", ["gumbel", "rollout", "dense"])
def test_d_step_leaves_g_and_g_step_leaves_d(tiny_cfg, estimator):
    cfg = GANConfig(estimator=estimator, rollout_num=3)
    gen, disc, opt_g, opt_d, real = _setup(tiny_cfg)
    g_before, d_before = _snapshot(gen), _snapshot(disc)
    stats = d_step(gen, disc, opt_d, real.tokens_BT, real.lengths_B, cfg=cfg, lr=1e-2)
    assert _same(gen, g_before) and not _same(disc, d_before)
    assert all(isinstance(v, float) for v in stats.values())
    d_after = _snapshot(disc)
    stats = g_step(gen, disc, opt_g, real.tokens_BT, real.lengths_B, cfg=cfg, lr=1e-2, beta=2.0)
    assert _same(disc, d_after) and not _same(gen, g_before)
    assert all(p.grad is None for p in disc.parameters())
    assert disc.training  # g_step restores D's mode
    assert set(stats) >= {"g_loss", "g_grad_norm"}


def test_gumbel_gradient_reaches_generator(tiny_cfg):
    gen, disc = Generator(tiny_cfg), Discriminator(tiny_cfg)
    soft_BTV, _ = gen(gumbel_beta=1.0, num=4, generator=torch.Generator().manual_seed(0))
    _, seq_B = disc(soft_BTV)
    seq_B.sum().backward()
    for name, p in gen.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_learning_rate_is_applied_every_call(tiny_cfg):
    gen, disc, opt_g, opt_d, real = _setup(tiny_cfg)
    cfg = GANConfig(rollout_num=2)
    d_step(gen, disc, opt_d, real.tokens_BT, real.lengths_B, cfg=cfg, lr=0.123)
    g_step(gen, disc, opt_g, real.tokens_BT, real.lengths_B, cfg=cfg, lr=0.0456)
    assert opt_d.param_groups[0]["lr"] == 0.123 and opt_g.param_groups[0]["lr"] == 0.0456


@pytest.mark.parametrize("loss", ["standard", "rsgan", "hinge"])
def test_d_loss_falls_on_a_fixed_batch(loss):
    cfg = GANConfig(estimator="rollout", loss=loss)
    gen, disc, _, opt_d, real = _setup(TINY, lr=1e-2)
    losses = []
    for _ in range(40):  # the same fake batch every time: same seed
        stats = d_step(
            gen,
            disc,
            opt_d,
            real.tokens_BT,
            cfg=cfg,
            lr=1e-2,
            generator=torch.Generator().manual_seed(1),
        )
        losses.append(stats["d_loss"])
    assert losses[-1] < 0.5 * losses[0]


def test_wgan_gp_d_step_on_soft_inputs():
    cfg = GANConfig(estimator="gumbel", loss="wgan-gp")
    gen, disc, _, opt_d, real = _setup(TINY)
    stats = d_step(gen, disc, opt_d, real.tokens_BT, cfg=cfg, lr=1e-3, beta=3.0)
    assert torch.isfinite(torch.tensor(stats["d_loss"]))
    with pytest.raises(ValueError, match=r"wgan-gp.*estimator must be 'gumbel'"):
        GANConfig(estimator="rollout", loss="wgan-gp")


def test_losses_have_the_right_sign_on_easy_cases():
    good_real, good_fake = torch.full((8,), 6.0), torch.full((8,), -6.0)
    for kind in ("standard", "rsgan", "hinge"):
        easy, hard = d_loss(kind, good_real, good_fake), d_loss(kind, good_fake, good_real)
        assert torch.isfinite(easy) and easy < 0.01 and hard > 5, kind
        fooled, caught = g_loss(kind, good_fake, good_real), g_loss(kind, good_real, good_fake)
        assert fooled < caught, kind
    assert d_loss("wgan-gp", good_real, good_fake) < 0 < d_loss("wgan-gp", good_fake, good_real)
    assert g_loss("wgan-gp", good_real, good_fake) > g_loss("wgan-gp", good_fake, good_real)


def test_rollout_completions_keep_their_prefix(tiny_cfg):
    gen = Generator(tiny_cfg)
    samples = gen.sample(5, generator=torch.Generator().manual_seed(0))
    completions = gen.rollout_completions(
        samples.tokens_BT, 4, generator=torch.Generator().manual_seed(1)
    )
    T = tiny_cfg.max_len
    assert completions.shape == (T - 1, 4, 5, T)
    for t in range(1, T):
        assert torch.equal(
            completions[t - 1, :, :, :t], samples.tokens_BT[None].expand(4, -1, -1)[:, :, :t]
        )
    # the sampled tails differ between rollouts (they are Monte-Carlo draws, not copies)
    assert not torch.equal(completions[0, 0], completions[0, 1])


def test_rollout_rewards_come_from_completions_of_that_prefix():
    """Regression test for the scrambled reshape in TextGAN-PyTorch: reward[b, t] must be the mean
    D score over the completions of row b's own prefix of t+1 tokens."""
    gen, disc = Generator(TINY), Discriminator(TINY).eval()
    samples = gen.sample(6, generator=torch.Generator().manual_seed(0))
    M, T = 5, TINY.max_len
    rewards_BT = rollout_rewards(gen, disc, samples, M, generator=torch.Generator().manual_seed(7))
    completions = gen.rollout_completions(
        samples.tokens_BT, M, generator=torch.Generator().manual_seed(7)
    )
    for b, t in itertools.product(range(6), range(T - 1)):
        rows = completions[t, :, b]  # (M, T): completions of prefix t+1 of row b
        assert torch.equal(rows[:, : t + 1], samples.tokens_BT[b, : t + 1].expand(M, -1))
        expected = torch.sigmoid(disc(rows)[1]).mean()
        torch.testing.assert_close(rewards_BT[b, t], expected)
    torch.testing.assert_close(rewards_BT[:, -1], torch.sigmoid(disc(samples.tokens_BT)[1]))


@pytest.mark.parametrize("experts", [1, 2])
@pytest.mark.parametrize("reward", ["prob", "logit"])
def test_a_log_ratio_ds_rollout_rewards_are_forward_on_the_same_completions(
    tiny_cfg, experts, reward
):
    """A log_ratio D scores rollouts as they are drawn; the rewards must be what its forward
    gives on `rollout_completions` from the same streams, EOS and padding included."""
    cfg = dataclasses.replace(tiny_cfg, d_form="log_ratio", d_experts=experts)
    gen = Generator(cfg)
    disc = make_discriminator(cfg, gen)
    with torch.no_grad():  # phi away from G, and EOS early enough that prefixes hold it
        for p in disc.parameters():
            p.add_(0.3 * torch.randn_like(p))
        if cfg.variable_length:
            gen.head.bias[cfg.eos_id] += 2.0
    samples = gen.sample(6, generator=torch.Generator().manual_seed(0))
    M, T = 3, cfg.max_len
    rewards_BT = rollout_rewards(
        gen, disc, samples, M, generator=torch.Generator().manual_seed(7), reward=reward
    )
    completions = gen.rollout_completions(
        samples.tokens_BT, M, generator=torch.Generator().manual_seed(7)
    ).reshape(-1, T)
    of = torch.sigmoid if reward == "prob" else (lambda x: x)
    with torch.no_grad():
        seq_TmMB = disc(completions, lengths_from_tokens(completions, cfg.eos_id))[1]
        full_B = disc(samples.tokens_BT, samples.lengths_B)[1]
    expected_BT = torch.cat([of(seq_TmMB).view(T - 1, M, -1).mean(1).T, of(full_B)[:, None]], 1)
    torch.testing.assert_close(rewards_BT, expected_BT, atol=1e-5, rtol=1e-5)
    if cfg.variable_length:  # the case that needs the masking: some prefixes already ended
        assert (samples.lengths_B < T - 1).any()
    assert expected_BT.std() > 0.05  # D's rewards differ between prefixes: not a trivial match


def test_discounted_returns():
    rewards = torch.tensor([[1.0, 2.0, 3.0]])
    gamma = 0.5
    expected = torch.tensor([[1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3.0]])
    torch.testing.assert_close(discounted_returns(rewards, gamma), expected)


def test_dense_baseline_moves_towards_batch_returns():
    cfg = GANConfig(estimator="dense", reward="log_prob", reward_baseline="ema", baseline_decay=0.5)
    gen, disc, opt_g, _, real = _setup(TINY)
    baseline_T = torch.zeros(TINY.max_len)
    g_step(gen, disc, opt_g, real.tokens_BT, cfg=cfg, lr=1e-3, baseline_T=baseline_T)
    assert (baseline_T < 0).all()  # returns of log-sigmoid rewards are negative


def test_unset_baseline_takes_the_first_batch_mean():
    cfg = GANConfig(estimator="dense", reward="prob", reward_baseline="ema", baseline_decay=0.9)
    gen, disc, opt_g, _, real = _setup(TINY)
    baseline_T = torch.full((TINY.max_len,), float("nan"))
    g_step(gen, disc, opt_g, real.tokens_BT, cfg=cfg, lr=1e-3, baseline_T=baseline_T)
    # the first batch's mean, not 0.9 x NaN: the returns of rewards in (0, 1) are positive
    assert torch.isfinite(baseline_T).all() and (baseline_T > 0).all()


class _Untouchable(torch.nn.Module):
    """A discriminator that fails if anyone asks it anything."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, *args, **kwargs):
        raise AssertionError("the constant control consulted D")


def test_constant_control_moves_g_without_d():
    cfg = GANConfig(estimator="constant", constant_reward=0.5, d_steps=3, reward_baseline=None)
    gen, _, opt_g, _, _ = _setup(TINY)
    disc = _Untouchable()
    opt_d = torch.optim.Adam(disc.parameters(), lr=1e-2)
    before = _snapshot(gen)
    batches = iter([(torch.zeros(8, TINY.max_len, dtype=torch.long), None)])  # one batch only
    stats = adversarial_step(
        gen, disc, opt_g, opt_d, batches, cfg=cfg, g_lr=1e-2, d_lr=1e-2, d_steps=3,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert not _same(gen, before)  # a positive reward with no baseline raises G's own samples
    assert stats["reward_mean"] == pytest.approx(0.5) and "d_loss" not in stats


def test_a_constant_reward_minus_its_baseline_moves_nothing():
    cfg = GANConfig(estimator="constant", reward_baseline="ema")
    gen, _, opt_g, _, real = _setup(TINY)
    before = _snapshot(gen)
    baseline_T = torch.full((TINY.max_len,), float("nan"))
    g_step(gen, _Untouchable(), opt_g, real.tokens_BT, cfg=cfg, lr=1e-2, baseline_T=baseline_T)
    assert _same(gen, before)


def test_summed_loss_is_the_mean_times_the_tokens(tiny_cfg):
    gen, disc, _, _, real = _setup(tiny_cfg)
    losses = {}
    for reduction in ("mean", "sum"):
        cfg = GANConfig(estimator="rollout", rollout_num=2, pg_reduction=reduction)
        opt = torch.optim.SGD(gen.parameters(), lr=0.0)
        stats = g_step(gen, disc, opt, real.tokens_BT, cfg=cfg, lr=0.0,
                       generator=torch.Generator().manual_seed(3))  # fmt: skip
        losses[reduction] = stats["g_loss"]
    samples = gen.sample(8, generator=torch.Generator().manual_seed(3))
    tokens = float(samples.lengths_B.sum())  # padding is not a term of the sum
    assert losses["sum"] == pytest.approx(losses["mean"] * tokens, rel=1e-4)
    cfg = GANConfig(estimator="rollout", rollout_num=2, pg_reduction="sum")
    opt = torch.optim.SGD(gen.parameters(), lr=0.0)
    doubled = g_step(gen, disc, opt, real.tokens_BT, cfg=cfg, lr=0.0, world_size=2,
                     generator=torch.Generator().manual_seed(3))["g_loss"]  # fmt: skip
    assert doubled == pytest.approx(2 * losses["sum"], rel=1e-5)  # DDP averages: x world size


@pytest.mark.parametrize("reward", ["prob", "log_prob", "logit"])
def test_rollout_reward_of_the_whole_sequence_is_d_of_it(reward):
    gen, disc, _, _, _ = _setup(TINY)
    samples = gen.sample(5, generator=torch.Generator().manual_seed(1))
    rewards_BT = rollout_rewards(gen, disc, samples, 2, generator=torch.Generator(), reward=reward)
    with torch.no_grad():
        logit_B = disc(samples.tokens_BT, samples.lengths_B)[1]
    expected = {"prob": torch.sigmoid, "log_prob": torch.nn.functional.logsigmoid,
                "logit": lambda x: x}[reward](logit_B)  # fmt: skip
    torch.testing.assert_close(rewards_BT[:, -1], expected)


def test_gumbel_beta_schedules():
    assert gumbel_beta(0, 100, 1000.0, "exp") == 1.0
    assert gumbel_beta(100, 100, 1000.0, "exp") == pytest.approx(1000.0)
    assert gumbel_beta(50, 100, 100.0, "exp") == pytest.approx(10.0)
    assert gumbel_beta(50, 100, 101.0, "linear") == pytest.approx(51.0)
    assert gumbel_beta(500, 100, 101.0, "linear") == pytest.approx(101.0)


def test_mle_lowers_nll_test_on_oracle_samples():
    oracle = Oracle.random(vocab_size=20, max_len=8, seed=0)
    train = sample_tokens(oracle, 512, seed=1).tokens_BT
    test = sample_tokens(oracle, 256, seed=2).tokens_BT
    cfg = dataclasses.replace(TINY, vocab_size=20, max_len=8)
    gen = Generator(cfg)
    opt = torch.optim.Adam(gen.parameters(), lr=1e-2)
    before = nll_test(gen, test)
    for _ in range(3):
        for batch in train.split(32):
            mle_step(gen, opt, batch, lr=1e-2)
    assert nll_test(gen, test) < before - 0.3


def test_batches_that_do_not_match_the_model_are_refused():
    gen, disc, opt_g, opt_d, _ = _setup(TINY)
    with pytest.raises(RayganError, match=r"shape \(2, 7\); expected \(batch, max_len=6\)"):
        mle_step(gen, opt_g, torch.zeros(2, 7, dtype=torch.long), lr=1e-3)
    with pytest.raises(RayganError, match=r"token id 12; expected ids in \[0, vocab_size=12\)"):
        d_step(gen, disc, opt_d, torch.full((2, 6), 12), cfg=GANConfig(), lr=1e-3)


def test_mle_loss_ignores_padding():
    from tests.conftest import TINY_TEXT

    gen = Generator(TINY_TEXT)
    opt = torch.optim.SGD(gen.parameters(), lr=0.0)
    tokens_BT = torch.tensor([[5, 6, 2, 0, 0, 0], [7, 2, 0, 0, 0, 0]])
    lengths_B = torch.tensor([3, 2])
    expected = float(gen.token_nll(tokens_BT, lengths_B).sum() / 5)
    stats = mle_step(gen, opt, tokens_BT, lengths_B, lr=0.0)
    assert stats["mle_loss"] == pytest.approx(expected, rel=1e-5)


def test_g_step_sees_d_without_dropout_in_train_mode(tiny_cfg):
    """G's step scores with D's dropout off but D in train mode (cuDNN's LSTM has no backward in
    eval mode); D's rates and mode are restored afterwards."""
    cfg = dataclasses.replace(tiny_cfg, d_dropout=0.5, d_layers=2)
    disc = Discriminator(cfg)
    tokens_BT = torch.randint(0, cfg.vocab_size, (6, cfg.max_len))
    disc.eval()
    with torch.no_grad():
        expected = disc(tokens_BT)[1]
    with without_dropout(disc):
        assert disc.training and disc.lstm.training
        with torch.no_grad():
            torch.testing.assert_close(disc(tokens_BT)[1], expected)
    assert disc.dropout.p == 0.5 and disc.lstm.dropout == 0.5


def _streams(*seeds):
    return RowStreams([torch.Generator().manual_seed(s) for s in seeds])


def test_fake_pool_served_by_workers_equals_one_process(tiny_cfg):
    """Two ranks holding one stream each serve, side by side, the batch one process holding
    both streams serves: the layout the distributed D pretraining relies on."""
    gen = Generator(tiny_cfg)
    cfg = GANConfig(estimator="rollout")
    whole = FakePool(gen, cfg, rows_per_stream=10, batch_per_stream=4, streams=_streams(5, 6),
                     round_index=0)  # fmt: skip
    halves = [FakePool(gen, cfg, rows_per_stream=10, batch_per_stream=4, streams=_streams(s),
                       round_index=0) for s in (5, 6)]  # fmt: skip
    for k in (0, 1, 2, 7):  # 3 x 4 > 10 rows: the order wraps around
        tokens, lengths = whole.batch(k)
        parts = [h.batch(k) for h in halves]
        assert torch.equal(tokens, torch.cat([p[0] for p in parts]))
        assert torch.equal(lengths, torch.cat([p[1] for p in parts]))
    assert whole.batch(0)[0].shape == (8, tiny_cfg.max_len)
    assert not torch.equal(whole.batch(0)[0], whole.batch(1)[0])


def test_fake_pool_refuses_soft_gumbel_fakes():
    with pytest.raises(RayganError, match="d_pretrain_pool"):
        FakePool(Generator(TINY), GANConfig(estimator="gumbel"), rows_per_stream=4,
                 batch_per_stream=2, streams=_streams(0), round_index=0)  # fmt: skip


def test_d_step_trains_on_given_fakes():
    gen, disc, _, opt_d, real = _setup(TINY)
    cfg = GANConfig(estimator="rollout", loss="standard")
    fakes = gen.sample(8, generator=torch.Generator().manual_seed(2))
    a = d_step(gen, disc, opt_d, real.tokens_BT, cfg=cfg, lr=0.0,
               fakes=(fakes.tokens_BT, fakes.lengths_B))  # fmt: skip
    b = d_step(gen, disc, opt_d, real.tokens_BT, cfg=cfg, lr=0.0,
               fakes=(fakes.tokens_BT, fakes.lengths_B))  # fmt: skip
    assert a["d_loss"] == pytest.approx(b["d_loss"])  # the same fakes, not fresh draws


def test_d_initialised_from_g_copies_its_features():
    cfg = dataclasses.replace(TINY, d_embed_dim=TINY.g_embed_dim, d_hidden_dim=TINY.g_hidden_dim)
    gen, disc = Generator(cfg), Discriminator(cfg)
    disc.init_from_generator(gen)
    assert torch.equal(disc.embed.weight, gen.embed.weight)
    for name, value in gen.lstm.state_dict().items():
        assert torch.equal(disc.lstm.state_dict()[name], value)
    with pytest.raises(RayganError, match="d_init=generator needs D's sizes equal to G's"):
        Discriminator(dataclasses.replace(cfg, d_hidden_dim=16)).init_from_generator(gen)


def test_a_log_ratio_d_learns_the_optimal_ds_ranking_by_its_standard_loss():
    """Noise-contrastive estimation through d_step: 100 D steps against a fixed G on the tiny
    random oracle's sequences, and D separates held-out real from fresh fakes and ranks G's
    samples like the optimal D (log p_oracle - log p_G)."""
    oracle = Oracle.random(vocab_size=TINY.vocab_size, max_len=TINY.max_len, embed_dim=8,
                           hidden_dim=8, seed=3)  # fmt: skip
    cfg = dataclasses.replace(TINY, d_form="log_ratio")
    torch.manual_seed(0)
    gen = Generator(cfg)
    disc = make_discriminator(cfg, gen)
    optimizer = torch.optim.Adam(disc.parameters(), lr=1e-2)
    rng = torch.Generator().manual_seed(1)
    real_NT = sample_tokens(oracle, 4000, seed=4).tokens_BT
    before = d_log_ratio_correlation(disc, gen, oracle, sample_tokens(gen, 2000, seed=5))
    for _ in range(100):
        rows = torch.randint(0, real_NT.shape[0], (32,), generator=rng)
        d_step(gen, disc, optimizer, real_NT[rows], cfg=GANConfig(), lr=1e-2, generator=rng)
    after = d_log_ratio_correlation(disc, gen, oracle, sample_tokens(gen, 2000, seed=5))
    held_out = heldout_d_accuracy(disc, sample_tokens(oracle, 1000, seed=6).tokens_BT, None,
                                  sample_tokens(gen, 1000, seed=7).tokens_BT, None)  # fmt: skip
    assert after >= 0.7 and after > before + 0.2, (before, after)
    assert held_out["d_acc"] >= 0.85, held_out


@pytest.mark.parametrize("experts", [1, 2])
def test_d_mle_step_is_each_experts_maximum_likelihood_step_and_leaves_g_alone(experts):
    """D's MLE pretraining step on a log_ratio D is G's own mle_step applied to each of phi's
    experts: the mean of their losses, the same parameters after it (through D's forward, so
    DDP's wrapper sees it)."""
    cfg = dataclasses.replace(TINY, d_form="log_ratio", d_experts=experts)
    torch.manual_seed(0)
    gen = Generator(cfg)
    disc = make_discriminator(cfg, gen)
    twins = [Generator(cfg) for _ in disc.experts]
    for twin, lm in zip(twins, disc.experts, strict=True):
        twin.load_state_dict(lm.state_dict())
    g_before = _snapshot(gen)
    opt_d = torch.optim.Adam(disc.parameters(), lr=1e-2)
    opt_twins = [torch.optim.Adam(twin.parameters(), lr=1e-2) for twin in twins]
    real_BT = sample_tokens(Oracle.random(vocab_size=cfg.vocab_size, max_len=cfg.max_len,
                                          embed_dim=8, hidden_dim=8, seed=3), 64, seed=4).tokens_BT
    losses = []
    for batch in [*real_BT.split(16)] * 3:
        losses.append(d_mle_step(disc, opt_d, batch, lr=1e-2, grad_clip=0.05)["d_mle_loss"])
        expected = [mle_step(t, o, batch, lr=1e-2, grad_clip=0.05)["mle_loss"]
                    for t, o in zip(twins, opt_twins, strict=True)]  # each clipped on its own
        assert losses[-1] == pytest.approx(sum(expected) / experts, rel=1e-6)
    for twin, lm in zip(twins, disc.experts, strict=True):
        for name, value in twin.state_dict().items():
            torch.testing.assert_close(lm.state_dict()[name], value)
    assert losses[-1] < losses[0] - 0.1  # phi learned the rows
    assert all(torch.equal(a, b) for a, b in zip(g_before, _snapshot(gen), strict=True))
