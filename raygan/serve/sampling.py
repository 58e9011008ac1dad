"""Sampling from a checkpoint, one request or a batch of them: `raygan sample` and the Serve
deployment (raygan.serve.app) share this path.

Shape legend: B=rows of a group of requests T=time P=prefix N=one request's rows.
A request's rows draw their random numbers from their own torch.Generator seeded by the request,
so its tokens do not depend on which other requests share the batch. Requests with the same
temperature, top-k, top-p and prefix length go through one batched LSTM pass
(`Generator.sample` with per-request `RowStreams`); `max_tokens` only trims, because a shorter
sample is a prefix of a longer one drawn from the same stream.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from raygan.core.config import Config
from raygan.core.errors import RayganError
from raygan.core.models import Generator
from raygan.core.sampler import RowStreams, lengths_from_tokens
from raygan.data.tokenizer import Codec

MAX_TEMPERATURE = 10.0  # beyond this, softmax(logits / T) is uniform for any trained model
SEED_LIMIT = 2**63  # torch.Generator.manual_seed takes any int64


@dataclass(frozen=True)
class ServedModel:
    """A generator with everything needed to turn requests into text."""

    generator: Generator
    codec: Codec
    config: Config
    meta: dict[str, Any]
    directory: str

    @property
    def max_len(self) -> int:
        return self.config.model.max_len

    def describe(self) -> dict[str, Any]:
        """{checkpoint, step, metric}: what a response says about the model that produced it.
        `metric` is the early-stopping monitor (held-out NLL by default) when the checkpoint has it."""
        name = self.config.trainer.monitor
        value = (self.meta.get("metrics") or {}).get(name)
        return {
            "checkpoint": self.directory,
            "step": self.meta.get("step"),
            "metric": {"name": name, "value": value},
        }


def load_model(path: str | Path) -> ServedModel:
    """Load a checkpoint dir (or a RUN_DIR's final/, a TUNE_DIR's best/) with its codec.

    `directory` is where it came from, one any node can load again: the absolute checkpoint
    directory, or the URI as given (not the local cache a URI is downloaded to)."""
    from raygan.data import storage
    from raygan.data.read import load_codec
    from raygan.run.checkpoint import load_generator, resolve_checkpoint_dir

    local = resolve_checkpoint_dir(path).resolve()
    gen, config, meta = load_generator(local)  # torch.load(weights_only=True)
    source = str(path) if storage.is_uri(path) else str(local)
    return ServedModel(gen, load_codec(str(local)), config, meta, source)


@dataclass(frozen=True, kw_only=True)
class SampleRequest:
    num: int
    """Rows to draw."""
    max_tokens: int
    """Tokens per row, the prefix included (rows of a text model are padded after EOS)."""
    seed: int
    """Seeds this request's own random stream."""
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    prefix_ids: tuple[int, ...] = ()
    """Forced first tokens of every row."""

    def group_key(self) -> tuple:
        """Requests with equal keys are sampled in one LSTM pass."""
        return (self.temperature, self.top_k, self.top_p, len(self.prefix_ids))


@dataclass(frozen=True)
class SampleResult:
    tokens: list[list[int]]
    """num rows of max_tokens ids each."""
    lengths: list[int]
    """Tokens of each row up to and including EOS (max_tokens when it has none)."""
    texts: list[str]
    """Decoded rows: stop at EOS, drop padding."""


def check_sampling(*, temperature: float, top_k: int, top_p: float) -> None:
    """RayganError naming the first setting outside its limits."""
    if not 0 < temperature <= MAX_TEMPERATURE:
        raise RayganError(f"temperature must be in (0, {MAX_TEMPERATURE:g}], got {temperature}")
    if top_k < 0:
        raise RayganError(f"top_k must be >= 0, got {top_k}")
    if not 0 < top_p <= 1:
        raise RayganError(f"top_p must be in (0, 1], got {top_p}")


def encode_prefix(model: ServedModel, text: str, max_tokens: int) -> tuple[list[int], list[str]]:
    """(prefix ids, the words that became the unknown token); RayganError naming `prefix` when
    it does not fit in `max_tokens`."""
    ids, unknown = model.codec.encode_with_unknown(text) if text.strip() else ([], [])
    if len(ids) > max_tokens:
        raise RayganError(
            f"prefix has {len(ids)} tokens; at most max_tokens={max_tokens} fit "
            f"(the model's max length is {model.max_len})"
        )
    return ids, unknown


def draw_seed() -> int:
    """A seed for a request that gave none; returned to the caller so it can reproduce."""
    return secrets.randbelow(2**31)


def sample_batch(model: ServedModel, requests: list[SampleRequest]) -> list[SampleResult]:
    """Sample every request; grouped by settings, each group in one batched pass."""
    results: list[SampleResult | None] = [None] * len(requests)
    groups: dict[tuple, list[int]] = {}
    for i, request in enumerate(requests):
        groups.setdefault(request.group_key(), []).append(i)
    for members in groups.values():
        for i, result in zip(
            members, _sample_group(model, [requests[i] for i in members]), strict=True
        ):
            results[i] = result
    return results  # type: ignore[return-value]


def _sample_group(model: ServedModel, group: list[SampleRequest]) -> list[SampleResult]:
    first, cfg = group[0], model.config.model
    longest = max(r.max_tokens for r in group)
    assert longest <= cfg.max_len, f"max_tokens {longest} exceeds max_len {cfg.max_len}"
    streams = RowStreams(
        [torch.Generator().manual_seed(r.seed) for r in group], sizes=[r.num for r in group]
    )
    prefix_BP = None
    if first.prefix_ids:
        prefix_BP = torch.tensor([r.prefix_ids for r in group for _ in range(r.num)])
    samples = model.generator.sample(
        sum(r.num for r in group), generator=streams, temperature=first.temperature,
        top_k=first.top_k, top_p=first.top_p, prefix_BP=prefix_BP, max_len=longest,
    )  # fmt: skip
    results = []
    for r, tokens_NT in zip(group, samples.tokens_BT.split([r.num for r in group]), strict=True):
        tokens_NT = tokens_NT[:, : r.max_tokens]
        rows = tokens_NT.tolist()
        results.append(
            SampleResult(
                tokens=rows,
                lengths=lengths_from_tokens(tokens_NT, cfg.eos_id).tolist(),
                texts=[model.codec.decode(row) for row in rows],
            )
        )
    return results
