"""The adversarial objectives, each a small pure function of discriminator logits.

`real` and `fake` are logits of the same shape (one per sequence). Every function returns a scalar
to minimise. For `rsgan`, real[i] is paired with fake[i] (RelGAN's relativistic standard loss).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from raygan.core.sampler import rand_rows


def d_loss(kind: str, real: Tensor, fake: Tensor) -> Tensor:
    if kind == "standard":
        return F.softplus(-real).mean() + F.softplus(fake).mean()  # BCE(real, 1) + BCE(fake, 0)
    if kind == "rsgan":
        return F.softplus(-(real - fake)).mean()  # BCE(real - fake, 1)
    if kind == "hinge":
        return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()
    if kind == "wgan-gp":
        return fake.mean() - real.mean()  # the penalty is added by gradient_penalty()
    raise ValueError(f"unknown loss {kind!r}")


def g_loss(kind: str, real: Tensor, fake: Tensor) -> Tensor:
    if kind == "standard":
        return F.softplus(-fake).mean()  # non-saturating: BCE(fake, 1)
    if kind == "rsgan":
        return F.softplus(-(fake - real)).mean()  # BCE(fake - real, 1)
    if kind in ("hinge", "wgan-gp"):
        return -fake.mean()
    raise ValueError(f"unknown loss {kind!r}")


def gradient_penalty(disc, real_BTV: Tensor, fake_BTV: Tensor, generator=None) -> Tensor:
    """WGAN-GP: (||grad_x D(x)||_2 - 1)^2 at random interpolates of real and fake one-hots."""
    alpha_B11 = rand_rows(generator, real_BTV.shape[0], 1, 1, device=real_BTV.device)
    mixed_BTV = (alpha_B11 * real_BTV + (1 - alpha_B11) * fake_BTV).requires_grad_(True)
    _, seq_B = disc(mixed_BTV)
    (grad_BTV,) = torch.autograd.grad(seq_B.sum(), mixed_BTV, create_graph=True)
    return ((grad_BTV.flatten(1).norm(dim=1) - 1.0) ** 2).mean()
