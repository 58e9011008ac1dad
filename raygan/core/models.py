"""Generator, the two discriminators and Oracle: plain PyTorch, no distribution, no I/O beyond
the oracle file.

Shape legend: B=batch T=time V=vocab E=embed H=hidden L=layers Z=latent P=prefix R=rollout rows.
A sequence holds `max_len` tokens; G is fed `start_id` at t=0 and token t-1 at step t. Variable-length
corpora end each sequence with EOS and pad after it; every loss and metric masks the padding.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from raygan.core import sampler
from raygan.core.config import ModelConfig
from raygan.core.errors import RayganError
from raygan.core.sampler import Rng, Samples, State, gumbel_noise, rand_rows


def unwrap(model: nn.Module) -> nn.Module:
    """The bare module behind a DistributedDataParallel wrapper (or the module itself)."""
    return getattr(model, "module", model)


def length_mask(lengths_B: Tensor | None, max_len: int, like: Tensor) -> Tensor:
    """(B, T) float mask, 1 where position < length; all ones when lengths are None."""
    if lengths_B is None:
        return torch.ones(like.shape[0], max_len, dtype=torch.float32, device=like.device)
    positions_T = torch.arange(max_len, device=lengths_B.device)
    return (positions_T[None, :] < lengths_B[:, None]).float()


def log_probs(
    gen: nn.Module, tokens_BT: Tensor, z_BZ: Tensor | None = None, temperature: float = 1.0
) -> Tensor:
    """log p(token_t | tokens_<t), (B, T), computed by calling `gen` itself: a DDP-wrapped
    generator then synchronises the gradient; a bare one works the same. `temperature` scores
    under the distribution that sampling at that temperature draws from."""
    logits_BTV = gen(tokens_BT, z_BZ=z_BZ).float()
    if temperature != 1.0:
        logits_BTV = logits_BTV / temperature
    nll = F.cross_entropy(logits_BTV.flatten(0, 1), tokens_BT.flatten(), reduction="none")
    return -nll.view_as(tokens_BT)


class Generator(nn.Module):
    """Embedding -> LSTM -> vocab logits, with an optional per-sequence latent z at every step."""

    def __init__(self, cfg: ModelConfig, *, dropout: float = 0.0):
        super().__init__()
        self.cfg = cfg
        # Teacher-forced training only (forward), on the embeddings and LSTM outputs: phi's
        # models in a log_ratio D (phi_dropout). G itself has none; sampling never drops.
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.embed = nn.Embedding(cfg.vocab_size, cfg.g_embed_dim)
        self.lstm = nn.LSTM(
            cfg.g_embed_dim + cfg.z_dim, cfg.g_hidden_dim, num_layers=cfg.g_layers, batch_first=True
        )
        self.head = nn.Linear(cfg.g_hidden_dim, cfg.vocab_size)
        if cfg.g_init_std > 0:
            with torch.no_grad():
                for p in self.parameters():
                    p.normal_(0.0, cfg.g_init_std)

    # -- building blocks -------------------------------------------------------------------
    def draw_z(self, num: int, generator: Rng = None) -> Tensor | None:
        if self.cfg.z_dim == 0:
            return None
        return rand_rows(
            generator, num, self.cfg.z_dim, device=self.head.weight.device, normal=True
        )

    def inputs(self, emb_BTE: Tensor, z_BZ: Tensor | None) -> Tensor:
        if z_BZ is None:
            return emb_BTE
        return torch.cat([emb_BTE, z_BZ[:, None, :].expand(-1, emb_BTE.shape[1], -1)], dim=-1)

    def _step(self, tokens_B: Tensor, z_BZ: Tensor | None, state: State | None):
        out_B1H, state = self.lstm(self.inputs(self.embed(tokens_B)[:, None, :], z_BZ), state)
        return self.head(out_B1H[:, 0]), state  # (B, V)

    def advance(self, tokens_B: Tensor, z_BZ: Tensor | None, state: State | None) -> State:
        """Feed one token per row; the vocab projection is left to whoever needs it."""
        return self.lstm(self.inputs(self.embed(tokens_B)[:, None, :], z_BZ), state)[1]

    def start_tokens(self, num: int) -> Tensor:
        return torch.full(
            (num,), self.cfg.start_id, dtype=torch.long, device=self.head.weight.device
        )

    # -- differentiable paths (called through forward, so DDP sees them) ----------------------
    def forward(
        self,
        tokens_BT: Tensor | None = None,
        *,
        z_BZ: Tensor | None = None,
        gumbel_beta: float | None = None,
        num: int | None = None,
        generator: Rng = None,
    ):
        """Teacher-forced logits (B, T, V) for `tokens_BT`; or, with `gumbel_beta`, a Gumbel rollout.

        The Gumbel rollout (RelGAN) returns `(soft_BTV, tokens_BT)`: soft one-hots
        softmax(beta * (logits + g)) that carry gradient, and the hard argmax tokens fed back.
        """
        if gumbel_beta is not None:
            assert num is not None, "a Gumbel rollout needs num"
            return self._gumbel_rollout(num, gumbel_beta, z_BZ, generator)
        if self.cfg.z_dim and z_BZ is None:
            z_BZ = torch.zeros(tokens_BT.shape[0], self.cfg.z_dim, device=tokens_BT.device)
        inputs_BT = torch.cat([self.start_tokens(tokens_BT.shape[0])[:, None], tokens_BT[:, :-1]], dim=1)
        out_BTH, _ = self.lstm(self.inputs(self.dropout(self.embed(inputs_BT)), z_BZ))
        return self.head(self.dropout(out_BTH))  # (B, T, V)

    def _gumbel_rollout(self, num, beta, z_BZ, generator):
        if self.cfg.z_dim and z_BZ is None:
            z_BZ = self.draw_z(num, generator)
        tokens_B, state = self.start_tokens(num), None
        soft, hard = [], []
        finished_B = torch.zeros(num, dtype=torch.bool, device=tokens_B.device)
        for _ in range(self.cfg.max_len):
            logits_BV, state = self._step(tokens_B, z_BZ, state)
            perturbed_BV = logits_BV + gumbel_noise(*logits_BV.shape, generator, logits_BV.device)
            tokens_B = perturbed_BV.argmax(-1)
            soft_BV = F.softmax(beta * perturbed_BV, dim=-1)
            if self.cfg.variable_length:  # after EOS the input is a constant PAD one-hot
                tokens_B = tokens_B.masked_fill(finished_B, self.cfg.pad_id)
                pad_BV = F.one_hot(tokens_B, self.cfg.vocab_size).to(soft_BV.dtype)
                soft_BV = torch.where(finished_B[:, None], pad_BV, soft_BV)
                finished_B = finished_B | (tokens_B == self.cfg.eos_id)
            soft.append(soft_BV)
            hard.append(tokens_B)
        return torch.stack(soft, 1), torch.stack(hard, 1)  # (B, T, V), (B, T)

    # -- sampling (no gradient): raygan.core.sampler's engine ---------------------------------
    def sample(self, num: int, **options) -> Samples:
        """Draw `num` sequences (options: generator, temperature, top_k, top_p, prefix_BP, max_len,
        z_BZ); see raygan.core.sampler.sample."""
        return sampler.sample(self, num, **options)

    def rollout_completions(self, tokens_BT: Tensor, num_rollouts: int, **options) -> Tensor:
        """(T-1, M, B, T) Monte-Carlo completions of every proper prefix (options: z_BZ,
        generator); see raygan.core.sampler.rollout_completions."""
        return sampler.rollout_completions(self, tokens_BT, num_rollouts, **options)

    @torch.no_grad()
    def token_nll(
        self,
        tokens_BT: Tensor,
        lengths_B: Tensor | None = None,
        *,
        temperature: float = 1.0,
        chunk: int = 32,
    ) -> Tensor:
        """Per-token negative log-likelihood (B, T), zero on padding; z at its prior mean.

        Scores `chunk` sequences at a time so the (chunk*T, V) logits stay in cache.
        """
        nll_BT = torch.cat(
            [-log_probs(self, part, temperature=temperature) for part in tokens_BT.split(chunk)]
        )
        return nll_BT * length_mask(lengths_B, tokens_BT.shape[1], tokens_BT)


class Discriminator(nn.Module):
    """Embedding (ids, or soft one-hots @ embedding matrix) -> LSTM -> a logit for every prefix."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_embed_dim)
        self.lstm = nn.LSTM(
            cfg.d_embed_dim,
            cfg.d_hidden_dim,
            num_layers=cfg.d_layers,
            batch_first=True,
            dropout=cfg.d_dropout if cfg.d_layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(cfg.d_dropout)
        self.head = nn.Linear(cfg.d_hidden_dim, 1)

    @torch.no_grad()
    def init_from_generator(self, gen: Generator) -> None:
        """Copy G's embedding and LSTM into D (Caccia et al. start D from the MLE language model):
        D then begins with features that already model the data; its head starts fresh."""
        _check_sizes_match(gen.cfg, self.cfg)
        self.embed.load_state_dict(gen.embed.state_dict())
        self.lstm.load_state_dict(gen.lstm.state_dict())

    def forward(self, inputs: Tensor, lengths_B: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """inputs: token ids (B, T) or soft one-hots (B, T, V).

        Returns (prefix_logits_BT, seq_logit_B): the logit after each prefix (dense rewards) and
        the logit at the last real token of each sequence.
        """
        if inputs.dtype in (torch.long, torch.int32, torch.int64):
            emb_BTE = self.embed(inputs)
        else:
            if inputs.shape[-1] != self.cfg.vocab_size:
                raise RayganError(
                    f"soft inputs have {inputs.shape[-1]} classes; vocab_size is {self.cfg.vocab_size}"
                )
            emb_BTE = inputs @ self.embed.weight  # (B, T, V) @ (V, E)
        out_BTH, _ = self.lstm(self.dropout(emb_BTE))
        prefix_BT = self.head(self.dropout(out_BTH))[..., 0]
        if lengths_B is None:
            return prefix_BT, prefix_BT[:, -1]
        return prefix_BT, prefix_BT.gather(1, (lengths_B - 1)[:, None])[:, 0]


def _check_sizes_match(g: ModelConfig, d: ModelConfig) -> None:
    mismatched = [
        f"{name}: G {gv} vs D {dv}"
        for name, gv, dv in (
            ("embed_dim", g.g_embed_dim, d.d_embed_dim),
            ("hidden_dim", g.g_hidden_dim, d.d_hidden_dim),
            ("layers", g.g_layers, d.d_layers),
        )
        if gv != dv
    ]
    if mismatched or g.z_dim:
        what = ", ".join(mismatched) if mismatched else f"G has z_dim={g.z_dim}"
        raise RayganError(
            f"d_init=generator needs D's sizes equal to G's and z_dim=0 ({what}); set "
            "d_embed_dim/d_hidden_dim/d_layers to G's or d_init=fresh"
        )


class LogRatioDiscriminator(nn.Module):
    """D as a density ratio: the logit after each prefix is sum_t log p_phi(x_t | x_<t) -
    log p_G(x_t | x_<t), phi a language model of D's sizes, G the live generator.

    Trained with the standard loss this is noise-contrastive estimation with G as the noise
    distribution (Gutmann & Hyvarinen 2010): the optimum is p_phi = p_data, where the logit is
    log p_data(x) - log p_G(x), the optimal D's. G's term is exact and costs D nothing to learn,
    so D's ranking of G's own samples comes from phi's likelihood rather than from features a
    classifier must discover. G is held outside the module's parameters (D's optimizer, state
    and DDP reduction are phi's alone) and scored without gradient.

    With `d_experts` K > 1, phi is the equal mixture of K such language models from their own
    initialisations, p_phi(x) = mean_k p_k(x), scored exactly per prefix: log p_phi(x_<=t) =
    logsumexp_k log p_k(x_<=t) - log K. `lm` is the first of them and `more` holds the rest, so
    a one-model D keeps its checkpoint layout.
    """

    def __init__(self, cfg: ModelConfig, gen: Generator):
        super().__init__()
        self.cfg = cfg
        lm_cfg = dataclasses.replace(
            cfg, g_embed_dim=cfg.d_embed_dim, g_hidden_dim=cfg.d_hidden_dim,
            g_layers=cfg.d_layers, z_dim=0,
        )  # fmt: skip
        self.lm = Generator(lm_cfg, dropout=cfg.phi_dropout)
        self.more = nn.ModuleList(
            Generator(lm_cfg, dropout=cfg.phi_dropout) for _ in range(cfg.d_experts - 1)
        )
        self._gen = (gen,)  # a tuple: not a submodule, so not in D's parameters or state
        self.chunk = 32  # rows scored at a time (a rollout step scores (T-1) x M x B of them)

    @property
    def experts(self) -> list[Generator]:
        return [self.lm, *self.more]

    @property
    def head(self) -> nn.Linear:
        """phi's output layer: where D's outputs live (the metrics read its device)."""
        return self.lm.head

    @torch.no_grad()
    def init_from_generator(self, gen: Generator) -> None:
        """phi := G (same sizes needed): D's logit starts at 0 everywhere, chance."""
        _check_sizes_match(gen.cfg, self.cfg)
        for lm in self.experts:
            lm.load_state_dict(gen.state_dict())

    def forward(
        self, tokens_BT: Tensor, lengths_B: Tensor | None = None, *, lm: bool = False
    ) -> tuple[Tensor, Tensor] | Tensor:
        """(prefix_logits_BT, seq_logit_B), as Discriminator's; token ids only.

        With `lm`, every expert's teacher-forced next-token logits (K, B, T, V) instead: the
        call D's maximum-likelihood pretraining (`d_mle_steps`) makes through a DDP wrapper."""
        if lm:
            return torch.stack([expert(tokens_BT) for expert in self.experts])
        if tokens_BT.is_floating_point():
            raise RayganError("d_form=log_ratio scores token ids; it got soft one-hots")
        g_BT, phi_KBT = self.prefix_log_likelihoods(tokens_BT, lengths_B)
        prefix_BT = self.logit(g_BT, phi_KBT)
        return prefix_BT, prefix_BT[:, -1]

    def prefix_log_likelihoods(
        self, tokens_BT: Tensor, lengths_B: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """(g_BT, phi_KBT): log-likelihood of each prefix under G (without gradient) and under
        each expert, constant after a sequence's end."""
        parts = tokens_BT.split(self.chunk)  # (chunk*T, V) logits stay in cache: ~3x faster
        mask_BT = length_mask(lengths_B, tokens_BT.shape[1], tokens_BT)
        with torch.no_grad():
            g_BT = (torch.cat([log_probs(self._gen[0], part) for part in parts]) * mask_BT).cumsum(1)
        phi_KBT = torch.stack(
            [torch.cat([log_probs(expert, part) for part in parts]) for expert in self.experts]
        )
        return g_BT, (phi_KBT * mask_BT).cumsum(2)

    def logit(self, g: Tensor, phi_K: Tensor) -> Tensor:
        """log p_phi - log p_G from G's log-likelihoods and the experts' (stacked first)."""
        return phi_K.logsumexp(0) - math.log(len(self.experts)) - g

    @torch.no_grad()
    def rollout_logits(
        self, gen: Generator, samples: Samples, num_rollouts: int, *, generator: Rng = None
    ) -> tuple[Tensor, Tensor]:
        """D's logit of every rollout completion of `samples` by `gen` (T-1, M, B), and of each
        whole sample (B): the same numbers as scoring `gen.rollout_completions(...)` (the same
        draws) with forward, at a fraction of its cost. Each completion's log-likelihoods are
        its prefix's, read once per sample, plus its tail's, summed while the tail is drawn
        (`sampler.scored_rollout_completions`), so no completion is teacher-forced again
        through G and every expert."""
        g_BT, phi_KBT = self.prefix_log_likelihoods(samples.tokens_BT, samples.lengths_B)
        _, tail_SkMB = sampler.scored_rollout_completions(
            gen, samples.tokens_BT, num_rollouts, self.experts, z_BZ=samples.z_BZ,
            generator=generator,
        )  # fmt: skip
        g_TmMB = g_BT[:, :-1].T[:, None, :] + tail_SkMB[0]  # prefix t+1 of row b, then its tail
        phi_KTmMB = phi_KBT[:, :, :-1].transpose(1, 2)[:, :, None, :] + tail_SkMB[1:]
        return self.logit(g_TmMB, phi_KTmMB), self.logit(g_BT[:, -1], phi_KBT[:, :, -1])


def make_discriminator(cfg: ModelConfig, gen: Generator) -> nn.Module:
    """The D that `cfg.d_form` names; a log_ratio D scores sequences with `gen` (the bare G)."""
    return LogRatioDiscriminator(cfg, gen) if cfg.d_form == "log_ratio" else Discriminator(cfg)


# -- the oracle ---------------------------------------------------------------------------------
SEQGAN_ORACLE = {"vocab_size": 5000, "max_len": 20, "embed_dim": 32, "hidden_dim": 32}
_GATES = (
    ("i", "Wi", "Ui", "bi"),
    ("f", "Wf", "Uf", "bf"),
    ("g", "Wc", "Uc", "bc"),
    ("o", "Wog", "Uog", "bog"),
)


class Oracle(Generator):
    """A fixed random LSTM language model that defines the synthetic benchmark's true distribution.

    Its step is exactly SeqGAN's target LSTM (../shared/data/SOURCE.md), which is torch's LSTM
    cell with gates ordered (i, f, g, o): `from_seqgan_file` only re-lays the arrays.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.requires_grad_(False)

    @classmethod
    def random(
        cls,
        *,
        vocab_size: int = 5000,
        max_len: int = 20,
        embed_dim: int = 32,
        hidden_dim: int = 32,
        seed: int = 0,
    ) -> Oracle:
        """A seeded oracle with SeqGAN's N(0, 1) initialisation; needs no file."""
        oracle = cls(_oracle_config(vocab_size, max_len, embed_dim, hidden_dim))
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in oracle.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))
            oracle.lstm.bias_hh_l0.zero_()  # SeqGAN's cell has one bias per gate
        return oracle

    @classmethod
    def from_seqgan_file(cls, path: str | Path) -> Oracle:
        arrays = _load_oracle_arrays(Path(path))
        V, E = arrays["embedding"].shape
        H = arrays["Ui"].shape[0]
        oracle = cls(_oracle_config(V, SEQGAN_ORACLE["max_len"], E, H))
        t = {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in arrays.items()}
        with torch.no_grad():
            oracle.embed.weight.copy_(t["embedding"])
            oracle.lstm.weight_ih_l0.copy_(torch.cat([t[w].T for _, w, _, _ in _GATES]))
            oracle.lstm.weight_hh_l0.copy_(torch.cat([t[u].T for _, _, u, _ in _GATES]))
            oracle.lstm.bias_ih_l0.copy_(torch.cat([t[b] for _, _, _, b in _GATES]))
            oracle.lstm.bias_hh_l0.zero_()
            oracle.head.weight.copy_(t["Wo"].T)
            oracle.head.bias.copy_(t["bo"])
        return oracle


def _oracle_config(vocab_size: int, max_len: int, embed_dim: int, hidden_dim: int) -> ModelConfig:
    return ModelConfig(
        vocab_size=vocab_size, max_len=max_len, g_embed_dim=embed_dim, g_hidden_dim=hidden_dim
    )


def _load_oracle_arrays(path: Path) -> dict[str, np.ndarray]:
    """Read the SeqGAN oracle npz, checking every array's name and shape against the others."""
    if not path.is_file():
        raise RayganError(f"oracle file {path} does not exist")
    try:
        with np.load(path) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as exc:  # zip or pickle errors: the file is not an npz
        raise RayganError(f"oracle file {path} is not a readable .npz: {exc}") from None
    if "embedding" not in arrays or arrays["embedding"].ndim != 2:
        found = arrays["embedding"].shape if "embedding" in arrays else "missing"
        raise RayganError(
            f"oracle file {path}: array 'embedding' must be (vocab, embed), found {found}"
        )
    V, E = arrays["embedding"].shape
    H = arrays["Ui"].shape[0] if "Ui" in arrays and arrays["Ui"].ndim == 2 else E
    expected = {"embedding": (V, E), "Wo": (H, V), "bo": (V,)}
    for _, w, u, b in _GATES:
        expected.update({w: (E, H), u: (H, H), b: (H,)})
    for name, shape in expected.items():
        found = arrays[name].shape if name in arrays else None
        if found is None:
            raise RayganError(
                f"oracle file {path}: array {name!r} is missing (expected shape {shape})"
            )
        if tuple(found) != shape:
            raise RayganError(
                f"oracle file {path}: array {name!r} has shape {tuple(found)}, expected {shape}"
            )
    return arrays
