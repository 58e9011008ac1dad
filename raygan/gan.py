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

from raygan.config import GANConfig
from raygan.errors import RayganError
from raygan.losses import d_loss, g_loss, gradient_penalty
from raygan.models import Rng, length_mask, lengths_from_tokens, log_probs, unwrap

Reduce = Callable[[Tensor], Tensor]  # e.g. an all-reduce mean across DDP ranks


def gumbel_beta(step: int, total_steps: int, max_beta: float, schedule: str) -> float:
    """RelGAN's inverse temperature: 1 at step 0, `max_beta` at `total_steps`."""
    frac = min(max(step, 0) / max(total_steps, 1), 1.0)
    if schedule == "exp":
        return max_beta**frac
    if schedule == "linear":
        return 1.0 + (max_beta - 1.0) * frac
    raise ValueError(f"unknown gumbel_anneal schedule {schedule!r}")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def _update(model: nn.Module, optimizer, loss: Tensor, *, lr: float, grad_clip: float) -> float:
    """Backward, clip, step; returns the gradient norm before clipping."""
    set_lr(optimizer, lr)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip or float("inf"))
    optimizer.step()
    return float(norm)


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
    logits_BTV = gen(tokens_BT)
    targets_BT = tokens_BT
    if lengths_B is not None:  # padding is ignored by the loss, not counted in the mean
        padding_BT = length_mask(lengths_B, tokens_BT.shape[1], tokens_BT) == 0
        targets_BT = tokens_BT.masked_fill(padding_BT, -100)
    loss = F.cross_entropy(
        logits_BTV.flatten(0, 1).float(), targets_BT.flatten(), ignore_index=-100
    )
    norm = _update(gen, optimizer, loss, lr=lr, grad_clip=grad_clip)
    return {"mle_loss": float(loss.detach()), "g_grad_norm": norm}


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
) -> dict[str, float]:
    """One discriminator update on real vs freshly generated sequences; G is untouched.

    Real and fake go through D in one concatenated forward (one DDP reduction per step).
    """
    check_batch(real_BT, unwrap(disc).cfg)
    disc.train()
    B = real_BT.shape[0]
    fake, fake_lengths_B = fake_batch(gen, B, cfg, beta=beta, generator=generator)
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
) -> dict[str, float]:
    """One generator update with `cfg.estimator`; D's parameters and gradients are left as they were.

    `baseline_T` (dense only) is the moving-average reward baseline per position, updated in place;
    `reduce_mean` averages batch statistics across DDP ranks so every rank keeps the same baseline.
    """
    check_batch(real_BT, unwrap(gen).cfg)
    gen.train()
    try:
        with _no_sync(disc), without_dropout(disc):
            if cfg.estimator == "gumbel":
                stats = _g_gumbel(gen, disc, real_BT, real_lengths_B, cfg, beta, generator)
            elif cfg.estimator == "rollout":
                stats = _g_rollout(gen, disc, real_BT.shape[0], cfg, generator)
            else:
                stats = _g_dense(
                    gen, disc, real_BT.shape[0], cfg, generator, baseline_T, reduce_mean
                )
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


def _g_rollout(gen, disc, num, cfg, generator) -> dict:
    """SeqGAN: reward of token t = mean D score of `rollout_num` completions of the prefix ending at t."""
    samples = unwrap(gen).sample(num, generator=generator)
    rewards_BT = rollout_rewards(gen, disc, samples, cfg.rollout_num, generator=generator)
    mask_BT = length_mask(samples.lengths_B, samples.tokens_BT.shape[1], samples.tokens_BT)
    logp_BT = log_probs(gen, samples.tokens_BT, samples.z_BZ)
    loss = -(logp_BT * rewards_BT * mask_BT).sum() / mask_BT.sum()
    return {"loss": loss, "reward_mean": float((rewards_BT * mask_BT).sum() / mask_BT.sum())}


@torch.no_grad()
def rollout_rewards(gen, disc, samples, num_rollouts: int, *, generator=None) -> Tensor:
    """(B, T) rewards: column t < T-1 from completions of prefix t+1, the last from D(x) itself."""
    bare = unwrap(gen)
    tokens_BT = samples.tokens_BT
    B, T = tokens_BT.shape
    completions = bare.rollout_completions(
        tokens_BT, num_rollouts, z_BZ=samples.z_BZ, generator=generator
    )  # (T-1, M, B, T)
    flat_RT = completions.reshape(-1, T)
    _, seq_R = disc(flat_RT, _lengths(bare, flat_RT))
    partial_TmB = torch.sigmoid(seq_R).view(T - 1, num_rollouts, B).mean(1)  # (T-1, B)
    _, full_B = disc(tokens_BT, samples.lengths_B)
    return torch.cat([partial_TmB.T, torch.sigmoid(full_B)[:, None]], dim=1)


def _g_dense(gen, disc, num, cfg, generator, baseline_T, reduce_mean) -> dict:
    """ScratchGAN: discounted returns of D's per-step log-probabilities minus a moving baseline."""
    samples = unwrap(gen).sample(num, generator=generator)
    tokens_BT = samples.tokens_BT
    mask_BT = length_mask(samples.lengths_B, tokens_BT.shape[1], tokens_BT)
    with torch.no_grad():
        prefix_BT, _ = disc(tokens_BT, samples.lengths_B)
        returns_BT = discounted_returns(F.logsigmoid(prefix_BT) * mask_BT, cfg.dense_gamma)
        batch_mean_T = (returns_BT * mask_BT).sum(0) / mask_BT.sum(0).clamp(min=1)
        if reduce_mean is not None:
            batch_mean_T = reduce_mean(batch_mean_T)
        if baseline_T is None:
            baseline_T = batch_mean_T.clone()
        advantage_BT = returns_BT - baseline_T
        baseline_T.mul_(cfg.baseline_decay).add_((1 - cfg.baseline_decay) * batch_mean_T)
    logp_BT = log_probs(gen, tokens_BT, samples.z_BZ)
    loss = -(logp_BT * advantage_BT * mask_BT).sum() / mask_BT.sum()
    return {"loss": loss, "reward_mean": float((returns_BT * mask_BT).sum() / mask_BT.sum())}


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
) -> dict[str, float]:
    """`d_steps` discriminator updates, then one generator update; `real_batches` yields
    (tokens_BT, lengths_B) and is advanced d_steps + 1 times. Returns the last value of each stat."""
    stats: dict[str, float] = {}
    for _ in range(d_steps):
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
        )
    )
    return stats
