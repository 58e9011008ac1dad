"""Generator, Discriminator and Oracle: plain PyTorch, no distribution, no I/O beyond the oracle file.

Shape legend: B=batch T=time V=vocab E=embed H=hidden L=layers Z=latent P=prefix R=rollout rows.
A sequence holds `max_len` tokens; G is fed `start_id` at t=0 and token t-1 at step t. Variable-length
corpora end each sequence with EOS and pad after it; every loss and metric masks the padding.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from raygan.config import ModelConfig
from raygan.errors import RayganError
from raygan.malloc import keep_freed_memory

State = tuple[Tensor, Tensor]  # (h_LBH, c_LBH)


class RowStreams:
    """Random streams for a batch whose rows are split into consecutive groups.

    Group g's rows are drawn from its own torch.Generator, so a batch sampled by one process with
    streams [s0, s1] equals the concatenation of two workers' halves sampled with [s0] and [s1]:
    data-parallel training can then be checked number for number against one process. Groups are
    equal unless `sizes` says otherwise: a served batch gives each request its own seeded stream
    and its own number of rows, so a request draws the same numbers alone or batched.
    """

    def __init__(self, generators: list[torch.Generator], sizes: list[int] | None = None):
        assert generators, "RowStreams needs at least one generator"
        assert sizes is None or len(sizes) == len(generators), "one size per generator"
        self.generators = generators
        self.sizes = sizes

    def _sizes(self, rows: int) -> list[int]:
        groups = len(self.generators)
        if self.sizes is None:
            if rows % groups:
                raise RayganError(f"{rows} rows cannot be split into {groups} equal random streams")
            return [rows // groups] * groups
        assert sum(self.sizes) == rows, f"streams cover {sum(self.sizes)} rows, the draw has {rows}"
        return self.sizes

    def _draw(self, fn, rows: int, cols: tuple[int, ...], device) -> Tensor:
        sizes = self._sizes(rows)
        # A generator draws on its own device (a CPU-seeded request served on a GPU: the same
        # numbers as on the CPU), then the rows move to `device`.
        return torch.cat(
            [
                fn((size, *cols), generator=g, device=g.device).to(device)
                for g, size in zip(self.generators, sizes, strict=True)
            ]
        )

    def rand(self, rows: int, *cols: int, device=None) -> Tensor:
        return self._draw(torch.rand, rows, cols, device)

    def randn(self, rows: int, *cols: int, device=None) -> Tensor:
        return self._draw(torch.randn, rows, cols, device)

    def rand_steps(self, steps: int, rows: int, device=None) -> Tensor:
        """(steps, rows) uniforms: what `steps` calls of rand(rows) would draw, in one call per
        stream (a torch CPU generator's (steps, n) draw is its next steps*n numbers in order)."""
        return torch.cat(
            [
                torch.rand((steps, size), generator=g, device=g.device).to(device)
                for g, size in zip(self.generators, self._sizes(rows), strict=True)
            ],
            dim=1,
        )


Rng = torch.Generator | RowStreams | None


def rand_rows(rng: Rng, rows: int, *cols: int, device=None, normal: bool = False) -> Tensor:
    """(rows, *cols) uniform (or standard normal) draws from a generator or from row streams."""
    if isinstance(rng, RowStreams):
        return (rng.randn if normal else rng.rand)(rows, *cols, device=device)
    fn = torch.randn if normal else torch.rand
    if rng is None:
        return fn((rows, *cols), device=device)
    return fn((rows, *cols), generator=rng, device=rng.device).to(device)


def rand_steps(rng: Rng, steps: int, rows: int, device=None) -> Tensor:
    """(steps, rows) uniforms, row t equal to the t-th of `steps` successive rand_rows(rng, rows)
    draws (tests/test_models.py checks it): one call instead of one per step and stream."""
    if isinstance(rng, RowStreams):
        return rng.rand_steps(steps, rows, device=device)
    if rng is None:
        return torch.rand((steps, rows), device=device)
    return torch.rand((steps, rows), generator=rng, device=rng.device).to(device)


@dataclass
class Samples:
    tokens_BT: Tensor  # int64, padded with pad_id after EOS
    lengths_B: Tensor  # int64, tokens up to and including EOS (max_len when no EOS)
    z_BZ: Tensor | None


def unwrap(model: nn.Module) -> nn.Module:
    """The bare module behind a DistributedDataParallel wrapper (or the module itself)."""
    return getattr(model, "module", model)


def length_mask(lengths_B: Tensor | None, max_len: int, like: Tensor) -> Tensor:
    """(B, T) float mask, 1 where position < length; all ones when lengths are None."""
    if lengths_B is None:
        return torch.ones(like.shape[0], max_len, dtype=torch.float32, device=like.device)
    positions_T = torch.arange(max_len, device=lengths_B.device)
    return (positions_T[None, :] < lengths_B[:, None]).float()


def lengths_from_tokens(tokens_BT: Tensor, eos_id: int | None) -> Tensor:
    """Length of each row up to and including its first EOS (T when it has none)."""
    B, T = tokens_BT.shape
    if eos_id is None:
        return torch.full((B,), T, dtype=torch.long, device=tokens_BT.device)
    is_eos_BT = tokens_BT == eos_id
    first_B = torch.where(is_eos_BT.any(1), is_eos_BT.float().argmax(1), T - 1)
    return first_B + 1


def filter_logits(logits_BV: Tensor, *, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Mask logits outside the top-k and outside the smallest set with cumulative prob >= top_p."""
    if top_k > 0 and top_k < logits_BV.shape[-1]:
        kth_B1 = torch.topk(logits_BV, top_k, dim=-1).values[:, -1:]
        logits_BV = logits_BV.masked_fill(logits_BV < kth_B1, float("-inf"))
    if top_p < 1.0:
        sorted_BV, order_BV = torch.sort(logits_BV, descending=True, dim=-1)
        cum_BV = sorted_BV.softmax(-1).cumsum(-1)
        drop_BV = cum_BV - sorted_BV.softmax(-1) >= top_p  # keep the token that crosses top_p
        sorted_BV = sorted_BV.masked_fill(drop_BV, float("-inf"))
        logits_BV = torch.full_like(logits_BV, float("-inf")).scatter(-1, order_BV, sorted_BV)
    return logits_BV


SAMPLE_CHUNK_ROWS = 64  # rows of (chunk, V) logits at a time: 1.25-2.8x faster than 512 on a CPU
CELL_MAX_ROWS = 2048  # up to this many rows `sample` steps the LSTM cell by hand (on a CPU)


def sample_categorical(
    logits_BV: Tensor, generator: Rng = None, *, u_B: Tensor | None = None
) -> Tensor:
    """One draw per row from softmax(logits), by inverse CDF: cumsum + binary search.

    Exactly the categorical distribution, and on CPU 6-14x faster than torch.multinomial
    at vocab 5000 (scripts/bench_train.py); -inf logits are never drawn.
    """
    probs_BV = torch.softmax(logits_BV.float(), dim=-1)
    cdf_BV = probs_BV.cumsum_(-1)
    if u_B is None:
        u_B = rand_rows(generator, cdf_BV.shape[0], device=cdf_BV.device)
    draw_B = torch.searchsorted(cdf_BV, u_B[:, None] * cdf_BV[:, -1:], right=True)[:, 0]
    return draw_B.clamp_(max=logits_BV.shape[-1] - 1)


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


def gumbel_noise(rows: int, cols: int, generator: Rng, device) -> Tensor:
    u = rand_rows(generator, rows, cols, device=device)
    return -torch.log(-torch.log(u + 1e-10) + 1e-10)


class Generator(nn.Module):
    """Embedding -> LSTM -> vocab logits, with an optional per-sequence latent z at every step."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        keep_freed_memory()  # every process that steps or samples a G: see raygan.malloc
        self.cfg = cfg
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

    def _inputs(self, emb_BTE: Tensor, z_BZ: Tensor | None) -> Tensor:
        if z_BZ is None:
            return emb_BTE
        return torch.cat([emb_BTE, z_BZ[:, None, :].expand(-1, emb_BTE.shape[1], -1)], dim=-1)

    def _step(self, tokens_B: Tensor, z_BZ: Tensor | None, state: State | None):
        out_B1H, state = self.lstm(self._inputs(self.embed(tokens_B)[:, None, :], z_BZ), state)
        return self.head(out_B1H[:, 0]), state  # (B, V)

    def _advance(self, tokens_B: Tensor, z_BZ: Tensor | None, state: State | None) -> State:
        """Feed one token per row; the vocab projection is left to whoever needs it."""
        return self.lstm(self._inputs(self.embed(tokens_B)[:, None, :], z_BZ), state)[1]

    def _cell_weights(self) -> list[tuple[Tensor, Tensor]]:
        """Per layer ([W_ih W_hh]^T, b_ih + b_hh): the LSTM as `_cell_advance` multiplies it."""
        lstm = self.lstm
        return [
            (
                torch.cat([getattr(lstm, f"weight_ih_l{k}"), getattr(lstm, f"weight_hh_l{k}")], 1)
                .t()
                .contiguous(),
                getattr(lstm, f"bias_ih_l{k}") + getattr(lstm, f"bias_hh_l{k}"),
            )
            for k in range(lstm.num_layers)
        ]

    def _cell_advance(self, weights, tokens_B: Tensor, z_BZ: Tensor | None, state: State | None):
        """`_advance` written out as LSTM cell arithmetic (gates i, f, g, o in nn.LSTM's order).

        The same numbers as nn.LSTM to float rounding (~1e-7); on a CPU one call costs 60-115 us
        at 1-32 rows against nn.LSTM's 190-260 us, which was over half of a one-row sampling step.
        From ~1,000 rows on nn.LSTM is as fast or faster, so the rollouts keep it.
        """
        x_BI = self._inputs(self.embed(tokens_B)[:, None, :], z_BZ)[:, 0]
        if state is None:
            zeros_LBH = x_BI.new_zeros(len(weights), x_BI.shape[0], self.cfg.g_hidden_dim)
            state = (zeros_LBH, zeros_LBH)
        hs, cs = [], []
        for layer, (w_IG, b_G) in enumerate(weights):
            gates_BG = torch.addmm(b_G, torch.cat([x_BI, state[0][layer]], 1), w_IG)
            i_BH, f_BH, g_BH, o_BH = gates_BG.chunk(4, 1)
            c_BH = torch.sigmoid(f_BH) * state[1][layer] + torch.sigmoid(i_BH) * torch.tanh(g_BH)
            x_BI = torch.sigmoid(o_BH) * torch.tanh(c_BH)
            hs.append(x_BI)
            cs.append(c_BH)
        return torch.stack(hs), torch.stack(cs)

    def _draw(self, h_BH, u_B, head_HV, temperature=1.0, top_k=0, top_p=1.0) -> Tensor:
        """Sample the next token from top-layer states and one uniform per row, projecting
        SAMPLE_CHUNK_ROWS rows at a time.

        `head_HV`: the head's weight transposed and contiguous, made once per sampling pass; on a
        CPU addmm with it beats nn.Linear's transposed view (2.3x at 1 row, 1.1x at 32)."""
        draws = []
        for h_CH, u_C in zip(
            h_BH.split(SAMPLE_CHUNK_ROWS), u_B.split(SAMPLE_CHUNK_ROWS), strict=True
        ):
            logits_CV = torch.addmm(self.head.bias, h_CH, head_HV).float()
            if temperature != 1.0:  # a division over (rows, V) is ~10% of a rollout step
                logits_CV = logits_CV / temperature
            if top_k or top_p < 1.0:
                logits_CV = filter_logits(logits_CV, top_k=top_k, top_p=top_p)
            draws.append(sample_categorical(logits_CV, u_B=u_C))
        return torch.cat(draws)

    def _start(self, num: int) -> Tensor:
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
        inputs_BT = torch.cat([self._start(tokens_BT.shape[0])[:, None], tokens_BT[:, :-1]], dim=1)
        out_BTH, _ = self.lstm(self._inputs(self.embed(inputs_BT), z_BZ))
        return self.head(out_BTH)  # (B, T, V)

    def _gumbel_rollout(self, num, beta, z_BZ, generator):
        if self.cfg.z_dim and z_BZ is None:
            z_BZ = self.draw_z(num, generator)
        tokens_B, state = self._start(num), None
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

    # -- sampling (no gradient) --------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self,
        num: int,
        *,
        generator: Rng = None,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        prefix_BP: Tensor | None = None,
        max_len: int | None = None,
        z_BZ: Tensor | None = None,
    ) -> Samples:
        """Draw `num` sequences; the first P tokens are forced to `prefix_BP` when given."""
        cfg = self.cfg
        T = max_len or cfg.max_len
        if temperature <= 0:
            raise RayganError(f"temperature must be > 0, got {temperature}")
        if prefix_BP is not None and prefix_BP.shape[1] > T:
            raise RayganError(f"prefix has {prefix_BP.shape[1]} tokens; max_len is {T}")
        if z_BZ is None:
            z_BZ = self.draw_z(num, generator)
        device = self.head.weight.device
        tokens_B, state = self._start(num), None
        out_BT = torch.empty(num, T, dtype=torch.long, device=device)
        finished_B = torch.zeros(num, dtype=torch.bool, device=device)
        head_HV = self.head.weight.t().contiguous()
        # On a GPU nn.LSTM's one cuDNN call beats the cell's few kernels; on a CPU the cell wins
        # up to ~1,000 rows and ties at 2,048 = 32 served requests of 64 rows, so a served request
        # always takes the same path, alone or batched.
        if device.type == "cpu" and num <= CELL_MAX_ROWS:
            weights = self._cell_weights()
            advance = lambda *args: self._cell_advance(weights, *args)  # noqa: E731
        else:
            advance = self._advance
        forced = 0 if prefix_BP is None else prefix_BP.shape[1]
        u_TB = rand_steps(generator, T - forced, num, device=device)  # draws of steps forced..T-1
        for t in range(T):
            state = advance(tokens_B, z_BZ, state)
            if t < forced:
                tokens_B = prefix_BP[:, t].to(device)
            else:
                tokens_B = self._draw(
                    state[0][-1], u_TB[t - forced], head_HV, temperature, top_k, top_p
                )
            if cfg.variable_length:
                tokens_B = tokens_B.masked_fill(finished_B, cfg.pad_id)
                finished_B = finished_B | (tokens_B == cfg.eos_id)
            out_BT[:, t] = tokens_B
        return Samples(out_BT, lengths_from_tokens(out_BT, cfg.eos_id), z_BZ)

    @torch.no_grad()
    def rollout_completions(
        self,
        tokens_BT: Tensor,
        num_rollouts: int,
        *,
        z_BZ: Tensor | None = None,
        generator: Rng = None,
    ) -> Tensor:
        """Monte-Carlo completions of every proper prefix, all in one batched pass (SeqGAN).

        Returns (T-1, M, B, T): `out[t-1, m, b]` keeps the first t tokens of row b and samples the
        rest. Rows are laid out prefix-major so that prefix t's rows start sampling at step t and
        the active rows at any step are one contiguous slice; the LSTM states after each prefix
        come from a single teacher-forced pass, so no prefix is re-read.
        """
        cfg, (B, T), M = self.cfg, tokens_BT.shape, num_rollouts
        chunk = M * B  # rows per prefix
        rows = (T - 1) * chunk
        prefix_states = self._prefix_states(tokens_BT, z_BZ)  # [t] = state after t tokens
        head_HV = self.head.weight.t().contiguous()
        out_RT = tokens_BT.repeat(M, 1).repeat(T - 1, 1)  # (R, T); row r holds row r % B
        h_LRH = torch.empty(cfg.g_layers, rows, cfg.g_hidden_dim, device=tokens_BT.device)
        c_LRH = torch.empty_like(h_LRH)
        z_RZ = None if z_BZ is None else z_BZ.repeat(M * (T - 1), 1)
        finished_R = torch.zeros(rows, dtype=torch.bool, device=tokens_BT.device)
        if cfg.variable_length:  # a prefix that already holds EOS is complete as it is
            eos_seen_BT = (tokens_BT == cfg.eos_id).cumsum(1) > 0
            finished_R = torch.cat([eos_seen_BT[:, t - 1].repeat(M) for t in range(1, T)])
        for t in range(1, T):  # sample position t for prefixes 1..t
            new = slice((t - 1) * chunk, t * chunk)
            h_LBH, c_LBH = prefix_states[t]
            h_LRH[:, new], c_LRH[:, new] = h_LBH.repeat(1, M, 1), c_LBH.repeat(1, M, 1)
            active = slice(0, t * chunk)
            # One uniform per active row, drawn as (B, t*M) so that batch row b's draws come from
            # b's random stream: a data-parallel worker then draws exactly its rows' numbers.
            u_R = rand_rows(generator, B, t * M, device=tokens_BT.device).T.reshape(-1)
            next_R = self._draw(h_LRH[-1, active], u_R, head_HV)
            if cfg.variable_length:
                next_R = next_R.masked_fill(finished_R[active], cfg.pad_id)
                finished_R[active] |= next_R == cfg.eos_id
            out_RT[active, t] = next_R
            if t < T - 1:
                state = (h_LRH[:, active].contiguous(), c_LRH[:, active].contiguous())
                z_active = None if z_RZ is None else z_RZ[active]
                h_LRH[:, active], c_LRH[:, active] = self._advance(next_R, z_active, state)
        return out_RT.view(T - 1, M, B, T)

    def _prefix_states(self, tokens_BT: Tensor, z_BZ: Tensor | None) -> list[State]:
        """[t] = LSTM state after reading start + the first t tokens, for t = 0..T-1."""
        tokens_B, state, states = self._start(tokens_BT.shape[0]), None, []
        for t in range(tokens_BT.shape[1]):
            state = self._advance(tokens_B, z_BZ, state)
            states.append(state)
            tokens_B = tokens_BT[:, t]
        return states

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
        g, d = gen.cfg, self.cfg
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
