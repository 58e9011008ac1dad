"""One training step each: MLE, discriminator, and the generator under three estimators.

Pure PyTorch: every step takes the models (bare or DDP-wrapped), their optimizer, a batch and the
hyperparameters PBT may change (learning rates are set on the optimizer at every call), and returns
a dict of floats. Gradient-carrying passes go through `model(...)` so DDP can synchronise them;
sampling without gradient uses the bare module.

Shape legend: B=batch T=time V=vocab M=rollouts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from raygan.core.config import GANConfig
from raygan.core.errors import RayganError
from raygan.core.losses import d_loss, g_loss, gradient_penalty
from raygan.core.models import LogRatioDiscriminator, length_mask, log_probs, unwrap
from raygan.core.sampler import Rng, RowStreams, lengths_from_tokens

Reduce = Callable[[Tensor], Tensor]  # e.g. an all-reduce mean across DDP ranks


def gumbel_beta(step: int, total_steps: int, max_beta: float, schedule: str) -> float:
    """RelGAN's inverse temperature: 1 at step 0, `max_beta` at `total_steps` and after."""
    frac = min(max(step, 0) / max(total_steps, 1), 1.0)
    if schedule == "exp":
        return max_beta**frac
    if schedule == "linear":
        return 1.0 + (max_beta - 1.0) * frac
    raise ValueError(f"unknown gumbel_anneal schedule {schedule!r}")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def _update(
    model: nn.Module, optimizer, loss: Tensor, *, lr: float, grad_clip: float, parts=None
) -> float:
    """Backward, clip, step; returns the gradient norm before clipping. With `parts` (modules
    of `model`), each is clipped on its own and the largest norm is returned."""
    set_lr(optimizer, lr)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    norm = max(
        float(torch.nn.utils.clip_grad_norm_(part.parameters(), grad_clip or float("inf")))
        for part in (parts or [model])
    )
    optimizer.step()
    return norm


def _no_sync(model: nn.Module):
    """DDP's no_sync() when wrapped: D's gradients from a G step must not be all-reduced."""
    return model.no_sync() if hasattr(model, "no_sync") else contextlib.nullcontext()


@contextlib.contextmanager
def without_dropout(model: nn.Module):
    """Train mode with every dropout rate at 0: rewards and G's gradient see D without dropout
    noise, as in eval mode, while cuDNN's LSTM still runs a backward pass through D (it refuses
    one in eval mode). The rates are restored afterwards."""
    rates = [(m, m.p) for m in model.modules() if isinstance(m, nn.Dropout)]
    rates += [(m, m.dropout) for m in model.modules() if isinstance(m, nn.RNNBase)]
    model.train()
    try:
        for module, _ in rates:
            setattr(module, "p" if isinstance(module, nn.Dropout) else "dropout", 0.0)
        yield model
    finally:
        for module, rate in rates:
            setattr(module, "p" if isinstance(module, nn.Dropout) else "dropout", rate)


def check_batch(tokens_BT: Tensor, cfg) -> None:
    """A batch must match the model it trains: `max_len` columns and ids below `vocab_size`."""
    if tokens_BT.dim() != 2 or tokens_BT.shape[1] != cfg.max_len:
        raise RayganError(
            f"batch has shape {tuple(tokens_BT.shape)}; expected (batch, max_len={cfg.max_len})"
        )
    if tokens_BT.numel() and (int(tokens_BT.max()) >= cfg.vocab_size or int(tokens_BT.min()) < 0):
        raise RayganError(
            f"batch holds token id {int(tokens_BT.max())}; expected ids in [0, vocab_size={cfg.vocab_size})"
        )


# -- MLE ---------------------------------------------------------------------------------------
def mle_step(
    gen: nn.Module,
    optimizer: torch.optim.Optimizer,
    tokens_BT: Tensor,
    lengths_B: Tensor | None = None,
    *,
    lr: float,
    grad_clip: float = 5.0,
) -> dict[str, float]:
    """Teacher-forced maximum likelihood on a batch; padding excluded from the mean."""
    check_batch(tokens_BT, unwrap(gen).cfg)
    gen.train()
    loss = _teacher_forced_nll(gen(tokens_BT), tokens_BT, lengths_B)
    norm = _update(gen, optimizer, loss, lr=lr, grad_clip=grad_clip)
    return {"mle_loss": float(loss.detach()), "g_grad_norm": norm}


def d_mle_step(
    disc: nn.Module,
    optimizer: torch.optim.Optimizer,
    tokens_BT: Tensor,
    lengths_B: Tensor | None = None,
    *,
    lr: float,
    grad_clip: float = 5.0,
) -> dict[str, float]:
    """Teacher-forced maximum likelihood of a log_ratio D's language model phi on real rows;
    with d_experts > 1 each expert takes its own MLE step (its own loss's gradient, clipped on
    its own), so each becomes a model of the data rather than a specialised component.

    phi's optimum under D's own (noise-contrastive) loss is p_data too, which MLE reaches with
    no negatives and a full-softmax gradient per token: `d_mle_steps` start D pretraining here."""
    check_batch(tokens_BT, unwrap(disc).cfg)
    disc.train()
    losses_K = torch.stack(
        [_teacher_forced_nll(logits_BTV, tokens_BT, lengths_B)
         for logits_BTV in disc(tokens_BT, lm=True)]
    )  # fmt: skip
    norm = _update(disc, optimizer, losses_K.sum(), lr=lr, grad_clip=grad_clip,
                   parts=unwrap(disc).experts)  # fmt: skip
    return {"d_mle_loss": float(losses_K.detach().mean()), "d_grad_norm": norm}


def _teacher_forced_nll(logits_BTV: Tensor, tokens_BT: Tensor, lengths_B: Tensor | None) -> Tensor:
    """Mean cross-entropy per real token; padding is ignored, not counted in the mean."""
    targets_BT = tokens_BT
    if lengths_B is not None:
        padding_BT = length_mask(lengths_B, tokens_BT.shape[1], tokens_BT) == 0
        targets_BT = tokens_BT.masked_fill(padding_BT, -100)
    return F.cross_entropy(
        logits_BTV.flatten(0, 1).float(), targets_BT.flatten(), ignore_index=-100
    )


# -- discriminator -----------------------------------------------------------------------------
def fake_batch(gen: nn.Module, num: int, cfg: GANConfig, *, beta: float, generator=None):
    """G's samples as D sees them: soft one-hots for `gumbel`, token ids otherwise (no gradient)."""
    bare = unwrap(gen)
    with torch.no_grad():
        if cfg.estimator == "gumbel":
            soft_BTV, tokens_BT = bare(gumbel_beta=beta, num=num, generator=generator)
            return soft_BTV, _lengths(bare, tokens_BT)
        samples = bare.sample(num, generator=generator)
    return samples.tokens_BT, samples.lengths_B


class FakePool:
    """D pretraining's negatives (SeqGAN's rounds): G's samples drawn once per round, then
    served a batch at a time in a seeded order, wrapping around.

    Each random stream owns `rows_per_stream` pool rows and contributes `batch_per_stream` rows
    to every batch, so workers holding disjoint streams together serve the batch one process
    holding all of them serves (the same layout as the training batch's rows).
    """

    def __init__(
        self,
        gen: nn.Module,
        cfg: GANConfig,
        *,
        rows_per_stream: int,
        batch_per_stream: int,
        streams: RowStreams,
        round_index: int,
    ):
        if cfg.estimator == "gumbel":
            raise RayganError(
                "d_pretrain_pool holds token samples, but estimator=gumbel trains D on soft "
                "one-hots; set d_pretrain_pool=0 (fresh soft samples every step)"
            )
        self.round_index = round_index
        self.rows, self.per_batch = rows_per_stream, batch_per_stream
        n = len(streams.generators)
        samples = unwrap(gen).sample(n * rows_per_stream, generator=streams)
        self.tokens_SPT = samples.tokens_BT.view(n, rows_per_stream, -1)
        self.lengths_SP = samples.lengths_B.view(n, rows_per_stream)
        order = [torch.randperm(rows_per_stream, generator=g, device=g.device)
                 for g in streams.generators]  # fmt: skip
        self.order_SP = torch.stack(order).to(self.tokens_SPT.device)

    def batch(self, k: int) -> tuple[Tensor, Tensor]:
        """The fakes of the round's k-th step (k counts from the start of D pretraining)."""
        offsets_b = torch.arange(k * self.per_batch, (k + 1) * self.per_batch) % self.rows
        rows_Sb = self.order_SP[:, offsets_b.to(self.order_SP.device)]
        tokens = torch.stack([t[r] for t, r in zip(self.tokens_SPT, rows_Sb, strict=True)])
        lengths = torch.stack([n[r] for n, r in zip(self.lengths_SP, rows_Sb, strict=True)])
        return tokens.flatten(0, 1), lengths.flatten()


def _lengths(gen: nn.Module, tokens_BT: Tensor) -> Tensor:
    return lengths_from_tokens(tokens_BT, gen.cfg.eos_id)


def _as_input(tokens_BT: Tensor, like: Tensor) -> Tensor:
    """Real token ids in the form of `like`: one-hots when the fakes are soft."""
    if like.is_floating_point():
        return F.one_hot(tokens_BT, like.shape[-1]).to(like.dtype)
    return tokens_BT


def d_step(
    gen: nn.Module,
    disc: nn.Module,
    optimizer: torch.optim.Optimizer,
    real_BT: Tensor,
    real_lengths_B: Tensor | None = None,
    *,
    cfg: GANConfig,
    lr: float,
    beta: float = 1.0,
    generator: Rng = None,
    fakes: tuple[Tensor, Tensor] | None = None,
) -> dict[str, float]:
    """One discriminator update on real vs G's sequences; G is untouched.

    The fakes are drawn fresh from G unless `fakes` = (tokens_BT, lengths_B) gives them (a
    batch of D pretraining's pool). Real and fake go through D in one concatenated forward (one
    DDP reduction per step).
    """
    check_batch(real_BT, unwrap(disc).cfg)
    disc.train()
    B = real_BT.shape[0]
    if fakes is None:
        fakes = fake_batch(gen, B, cfg, beta=beta, generator=generator)
    fake, fake_lengths_B = fakes
    real = _as_input(real_BT, fake)
    if real_lengths_B is None:
        real_lengths_B = torch.full((B,), real_BT.shape[1], dtype=torch.long, device=real_BT.device)
    _, seq_2B = disc(torch.cat([real, fake]), torch.cat([real_lengths_B, fake_lengths_B]))
    real_B, fake_B = seq_2B[:B], seq_2B[B:]
    loss = d_loss(cfg.loss, real_B, fake_B)
    if cfg.loss == "wgan-gp":
        loss = loss + cfg.gp_weight * gradient_penalty(disc, real, fake, generator)
    norm = _update(disc, optimizer, loss, lr=lr, grad_clip=cfg.grad_clip)
    return {
        "d_loss": float(loss.detach()),
        "d_real_acc": float((real_B > 0).float().mean()),
        "d_fake_acc": float((fake_B < 0).float().mean()),
        "d_grad_norm": norm,
    }


# -- generator ---------------------------------------------------------------------------------
def g_step(
    gen: nn.Module,
    disc: nn.Module,
    optimizer: torch.optim.Optimizer,
    real_BT: Tensor,
    real_lengths_B: Tensor | None = None,
    *,
    cfg: GANConfig,
    lr: float,
    beta: float = 1.0,
    generator: Rng = None,
    baseline_T: Tensor | None = None,
    reduce_mean: Reduce | None = None,
    world_size: int = 1,
) -> dict[str, float]:
    """One generator update with `cfg.estimator`; D's parameters and gradients are left as they were.

    `baseline_T` (reward_baseline=ema) is the moving-average reward baseline per position,
    updated in place (NaN until the first batch sets it; without it, the batch's own mean is
    the baseline: baseline_decay=0 with no state to carry); `reduce_mean` averages batch
    statistics across DDP ranks so every rank keeps the same baseline. `world_size` scales a
    summed REINFORCE loss so that DDP's gradient mean equals one process's sum.
    """
    check_batch(real_BT, unwrap(gen).cfg)
    gen.train()
    try:
        with _no_sync(disc), without_dropout(disc):
            if cfg.estimator == "gumbel":
                stats = _g_gumbel(gen, disc, real_BT, real_lengths_B, cfg, beta, generator)
            else:
                pg = _PolicyGradient(cfg, baseline_T, reduce_mean, world_size)
                stats = _g_reinforce(gen, disc, real_BT.shape[0], cfg, generator, pg)
        loss = stats.pop("loss")
        stats["g_grad_norm"] = _update(gen, optimizer, loss, lr=lr, grad_clip=cfg.grad_clip)
    finally:
        disc.zero_grad(set_to_none=True)
        disc.train()
    stats["g_loss"] = float(loss.detach())
    return stats


def _g_gumbel(gen, disc, real_BT, real_lengths_B, cfg, beta, generator) -> dict:
    B = real_BT.shape[0]
    soft_BTV, tokens_BT = gen(gumbel_beta=beta, num=B, generator=generator)
    _, fake_B = disc(soft_BTV, _lengths(unwrap(gen), tokens_BT))
    with torch.no_grad():  # D's view of the real batch only shifts the relativistic loss
        _, real_B = disc(_as_input(real_BT, soft_BTV), real_lengths_B)
    return {"loss": g_loss(cfg.loss, real_B, fake_B), "beta": beta}


def _g_reinforce(gen, disc, num, cfg, generator, pg: _PolicyGradient) -> dict:
    """REINFORCE on `num` fresh samples of G: per-token rewards from the estimator, minus the
    baseline, times log G(token)."""
    samples = unwrap(gen).sample(num, generator=generator)
    tokens_BT = samples.tokens_BT
    mask_BT = length_mask(samples.lengths_B, tokens_BT.shape[1], tokens_BT)
    if cfg.estimator == "rollout":
        rewards_BT = rollout_rewards(
            gen, disc, samples, cfg.rollout_num, generator=generator, reward=cfg.reward
        )
    elif cfg.estimator == "dense":
        rewards_BT = dense_rewards(disc, samples, mask_BT, cfg)
    else:  # constant: the control; D is not consulted
        rewards_BT = torch.full_like(mask_BT, cfg.constant_reward)
    advantage_BT = pg.advantage(rewards_BT, mask_BT)
    logp_BT = log_probs(gen, tokens_BT, samples.z_BZ)
    loss = pg.loss(logp_BT, advantage_BT, mask_BT)
    return {"loss": loss, "reward_mean": float((rewards_BT * mask_BT).sum() / mask_BT.sum())}


class _PolicyGradient:
    """The REINFORCE loss shared by the rollout, dense and constant estimators: an optional
    per-position moving-average baseline, and a mean or (SeqGAN) summed reduction."""

    def __init__(self, cfg: GANConfig, baseline_T, reduce_mean, world_size: int):
        self.cfg, self.baseline_T = cfg, baseline_T
        self.reduce_mean, self.world_size = reduce_mean, world_size

    @torch.no_grad()
    def advantage(self, rewards_BT: Tensor, mask_BT: Tensor) -> Tensor:
        if self.cfg.reward_baseline is None:
            return rewards_BT
        batch_mean_T = (rewards_BT * mask_BT).sum(0) / mask_BT.sum(0).clamp(min=1)
        if self.reduce_mean is not None:
            batch_mean_T = self.reduce_mean(batch_mean_T)
        baseline_T = self.baseline_T
        if baseline_T is None:
            return rewards_BT - batch_mean_T
        if torch.isnan(baseline_T).all():  # the first batch sets it: no spurious first push
            baseline_T.copy_(batch_mean_T)
        advantage_BT = rewards_BT - baseline_T
        decay = self.cfg.baseline_decay
        baseline_T.mul_(decay).add_((1 - decay) * batch_mean_T)
        return advantage_BT

    def loss(self, logp_BT: Tensor, advantage_BT: Tensor, mask_BT: Tensor) -> Tensor:
        total = -(logp_BT * advantage_BT * mask_BT).sum()
        if self.cfg.pg_reduction == "sum":
            # DDP averages the ranks' gradients: each rank's sum times W is the global sum.
            return total * self.world_size
        return total / mask_BT.sum()


def reward_of(logits: Tensor, kind: str) -> Tensor:
    """D's logit turned into a reward (GANConfig.reward)."""
    if kind == "prob":
        return torch.sigmoid(logits)
    if kind == "log_prob":
        return F.logsigmoid(logits)
    if kind == "logit":
        return logits
    raise ValueError(f"unknown reward {kind!r}")


@torch.no_grad()
def rollout_rewards(
    gen, disc, samples, num_rollouts: int, *, generator=None, reward: str = "prob"
) -> Tensor:
    """(B, T) rewards: column t < T-1 from completions of prefix t+1, the last from D(x) itself.

    A log_ratio D scores the completions as they are drawn (`LogRatioDiscriminator.rollout_logits`)
    instead of reading each one again: the same rewards, 5.7x faster for `nce` at COCO captions'
    shape and 2.3x at the SeqGAN oracle's (scripts/bench_rollout.py)."""
    bare, d = unwrap(gen), unwrap(disc)
    tokens_BT = samples.tokens_BT
    B, T = tokens_BT.shape
    if isinstance(d, LogRatioDiscriminator):
        seq_TmMB, full_B = d.rollout_logits(bare, samples, num_rollouts, generator=generator)
    else:
        completions = bare.rollout_completions(
            tokens_BT, num_rollouts, z_BZ=samples.z_BZ, generator=generator
        )  # (T-1, M, B, T)
        flat_RT = completions.reshape(-1, T)
        seq_TmMB = disc(flat_RT, _lengths(bare, flat_RT))[1].view(T - 1, num_rollouts, B)
        full_B = disc(tokens_BT, samples.lengths_B)[1]
    partial_TmB = reward_of(seq_TmMB, reward).mean(1)  # (T-1, B)
    return torch.cat([partial_TmB.T, reward_of(full_B, reward)[:, None]], dim=1)


@torch.no_grad()
def dense_rewards(disc, samples, mask_BT: Tensor, cfg: GANConfig) -> Tensor:
    """ScratchGAN: discounted returns of D's per-prefix rewards."""
    prefix_BT, _ = disc(samples.tokens_BT, samples.lengths_B)
    return discounted_returns(reward_of(prefix_BT, cfg.reward) * mask_BT, cfg.dense_gamma)


def discounted_returns(rewards_BT: Tensor, gamma: float) -> Tensor:
    """R_t = sum_{s >= t} gamma^(s-t) r_s."""
    returns_BT = torch.empty_like(rewards_BT)
    running_B = torch.zeros_like(rewards_BT[:, 0])
    for t in range(rewards_BT.shape[1] - 1, -1, -1):
        running_B = rewards_BT[:, t] + gamma * running_B
        returns_BT[:, t] = running_B
    return returns_BT


def adversarial_step(
    gen: nn.Module,
    disc: nn.Module,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    real_batches,
    *,
    cfg: GANConfig,
    g_lr: float,
    d_lr: float,
    d_steps: int,
    beta: float = 1.0,
    generator: Rng = None,
    baseline_T: Tensor | None = None,
    reduce_mean: Reduce | None = None,
    world_size: int = 1,
) -> dict[str, float]:
    """`d_steps` discriminator updates, then one generator update; `real_batches` yields
    (tokens_BT, lengths_B) and is advanced d_steps + 1 times (once under the constant control,
    which trains no D). Returns the last value of each stat."""
    stats: dict[str, float] = {}
    for _ in range(0 if cfg.estimator == "constant" else d_steps):
        tokens_BT, lengths_B = next(real_batches)
        stats.update(
            d_step(
                gen,
                disc,
                opt_d,
                tokens_BT,
                lengths_B,
                cfg=cfg,
                lr=d_lr,
                beta=beta,
                generator=generator,
            )
        )
    tokens_BT, lengths_B = next(real_batches)
    stats.update(
        g_step(
            gen,
            disc,
            opt_g,
            tokens_BT,
            lengths_B,
            cfg=cfg,
            lr=g_lr,
            beta=beta,
            generator=generator,
            baseline_T=baseline_T,
            reduce_mean=reduce_mean,
            world_size=world_size,
        )
    )
    return stats
