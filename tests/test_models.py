"""Generator, Discriminator and Oracle: shapes, determinism, masking, the SeqGAN oracle."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from raygan.core import sampler
from raygan.core.config import ModelConfig
from raygan.core.errors import RayganError
from raygan.core.metrics import mean_token_nll, sample_tokens, sequence_nll
from raygan.core.models import Discriminator, Generator, Oracle, make_discriminator
from raygan.core.sampler import filter_logits, sample_categorical
from tests.conftest import TINY, TINY_TEXT, seqgan_oracle_path


def test_shapes(tiny_cfg):
    gen, disc = Generator(tiny_cfg), Discriminator(tiny_cfg)
    B, T, V = 5, tiny_cfg.max_len, tiny_cfg.vocab_size
    samples = gen.sample(B, generator=torch.Generator().manual_seed(0))
    assert samples.tokens_BT.shape == (B, T) and samples.lengths_B.shape == (B,)
    assert gen(samples.tokens_BT).shape == (B, T, V)
    soft_BTV, hard_BT = gen(gumbel_beta=2.0, num=B, generator=torch.Generator().manual_seed(0))
    assert soft_BTV.shape == (B, T, V) and hard_BT.shape == (B, T)
    torch.testing.assert_close(soft_BTV.sum(-1), torch.ones(B, T))
    prefix_BT, seq_B = disc(samples.tokens_BT, samples.lengths_B)
    assert prefix_BT.shape == (B, T) and seq_B.shape == (B,)


def test_discriminator_soft_one_hot_equals_ids(tiny_cfg):
    disc = Discriminator(tiny_cfg).eval()
    tokens_BT = torch.randint(0, tiny_cfg.vocab_size, (4, tiny_cfg.max_len))
    by_ids = disc(tokens_BT)
    by_one_hot = disc(F.one_hot(tokens_BT, tiny_cfg.vocab_size).float())
    torch.testing.assert_close(by_ids, by_one_hot)


def test_discriminator_sequence_logit_ignores_padding():
    disc = Discriminator(TINY_TEXT).eval()
    tokens_BT = torch.tensor([[5, 6, 2, 0, 0, 0]])
    lengths_B = torch.tensor([3])
    noisy_BT = tokens_BT.clone()
    noisy_BT[0, 3:] = torch.tensor([7, 8, 9])
    _, seq = disc(tokens_BT, lengths_B)
    _, seq_noisy = disc(noisy_BT, lengths_B)
    torch.testing.assert_close(seq, seq_noisy)
    prefix_BT, _ = disc(tokens_BT, lengths_B)
    assert torch.equal(seq, prefix_BT[:, 2])


def test_same_seed_same_samples(tiny_cfg):
    gen = Generator(tiny_cfg)
    a = gen.sample(16, generator=torch.Generator().manual_seed(3))
    b = gen.sample(16, generator=torch.Generator().manual_seed(3))
    c = gen.sample(16, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a.tokens_BT, b.tokens_BT)
    assert not torch.equal(a.tokens_BT, c.tokens_BT)


def test_variable_length_samples_pad_after_eos():
    gen = Generator(TINY_TEXT)
    with torch.no_grad():  # make EOS likely so most rows end early
        gen.head.bias[TINY_TEXT.eos_id] = 3.0
    s = gen.sample(64, generator=torch.Generator().manual_seed(0))
    assert (s.lengths_B < TINY_TEXT.max_len).any()
    for row, length in zip(s.tokens_BT.tolist(), s.lengths_B.tolist(), strict=True):
        if length < TINY_TEXT.max_len or row[length - 1] == TINY_TEXT.eos_id:
            assert row[length - 1] == TINY_TEXT.eos_id
            assert TINY_TEXT.eos_id not in row[: length - 1]
        assert all(tok == TINY_TEXT.pad_id for tok in row[length:])


def test_nll_excludes_padding():
    gen = Generator(TINY_TEXT)
    tokens_BT = torch.tensor([[5, 6, 2, 0, 0, 0], [7, 2, 0, 0, 0, 0]])
    lengths_B = torch.tensor([3, 2])
    other_BT = tokens_BT.clone()
    other_BT[:, 4:] = 9
    a = mean_token_nll(gen, tokens_BT, lengths_B)
    assert a == pytest.approx(mean_token_nll(gen, other_BT, lengths_B), abs=1e-12)
    by_hand = gen.token_nll(tokens_BT, lengths_B).sum() / 5
    assert a == pytest.approx(float(by_hand), rel=1e-6)


def test_latent_code_changes_samples():
    cfg = dataclasses.replace(TINY, z_dim=4)
    gen = Generator(cfg)
    s = gen.sample(8, generator=torch.Generator().manual_seed(0))
    assert s.z_BZ.shape == (8, 4)
    z_a, z_b = gen.draw_z(8), gen.draw_z(8)
    a = gen.sample(8, generator=torch.Generator().manual_seed(0), z_BZ=z_a)
    again = gen.sample(8, generator=torch.Generator().manual_seed(0), z_BZ=z_a)
    b = gen.sample(8, generator=torch.Generator().manual_seed(0), z_BZ=z_b)
    assert torch.equal(a.tokens_BT, again.tokens_BT)
    assert not torch.equal(a.tokens_BT, b.tokens_BT)
    logits_z = gen(s.tokens_BT, z_BZ=s.z_BZ)
    logits_0 = gen(s.tokens_BT)
    assert not torch.allclose(logits_z, logits_0)


def test_prefix_is_kept():
    gen = Generator(TINY)
    prefix_BP = torch.tensor([[3, 4], [5, 6]])
    s = gen.sample(2, prefix_BP=prefix_BP, generator=torch.Generator().manual_seed(0))
    assert torch.equal(s.tokens_BT[:, :2], prefix_BP)
    with pytest.raises(RayganError, match="prefix has 7 tokens; max_len is 6"):
        gen.sample(1, prefix_BP=torch.zeros(1, 7, dtype=torch.long))


def test_top_k_one_and_tiny_top_p_are_greedy():
    logits_BV = torch.tensor([[0.1, 2.0, -1.0, 1.9], [3.0, 0.0, 0.0, 2.9]])
    for kwargs in ({"top_k": 1}, {"top_p": 1e-6}):
        filtered = filter_logits(logits_BV, **kwargs)
        draws = torch.stack([sample_categorical(filtered) for _ in range(50)])
        assert (draws == logits_BV.argmax(-1)).all()
    top2 = filter_logits(logits_BV, top_k=2)
    assert torch.isinf(top2).sum(-1).tolist() == [2, 2]


def test_sample_categorical_matches_probabilities():
    probs_V = torch.tensor([0.5, 0.0, 0.2, 0.3])
    logits_BV = probs_V.log().expand(200_000, -1)
    draws = sample_categorical(logits_BV, torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=4).float() / draws.numel()
    assert freq[1] == 0
    torch.testing.assert_close(freq, probs_V, atol=5e-3, rtol=0)


def test_random_oracle_is_seeded():
    a = Oracle.random(vocab_size=30, max_len=7, seed=1)
    b = Oracle.random(vocab_size=30, max_len=7, seed=1)
    c = Oracle.random(vocab_size=30, max_len=7, seed=2)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(a.head.weight, c.head.weight)
    assert not any(p.requires_grad for p in a.parameters())


def test_seqgan_oracle_own_samples_score_5_75():
    oracle = Oracle.from_seqgan_file(seqgan_oracle_path())
    samples = sample_tokens(oracle, 10_000, seed=0)
    assert mean_token_nll(oracle, samples.tokens_BT) == pytest.approx(5.75, abs=0.05)


def test_seqgan_oracle_step_matches_source_equations():
    """One step by the SOURCE.md equations in numpy equals the torch LSTM cell we map it to."""
    path = seqgan_oracle_path()
    p = dict(np.load(path))
    oracle = Oracle.from_seqgan_file(path)
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    x, h, c = p["embedding"][[0, 17]], np.zeros((2, 32)), np.zeros((2, 32))
    i = sig(x @ p["Wi"] + h @ p["Ui"] + p["bi"])
    f = sig(x @ p["Wf"] + h @ p["Uf"] + p["bf"])
    o = sig(x @ p["Wog"] + h @ p["Uog"] + p["bog"])
    c = f * c + i * np.tanh(x @ p["Wc"] + h @ p["Uc"] + p["bc"])
    logits = (o * np.tanh(c)) @ p["Wo"] + p["bo"]
    ours, _ = oracle._step(torch.tensor([0, 17]), None, None)
    np.testing.assert_allclose(ours.numpy(), logits, rtol=1e-4, atol=1e-4)


def test_oracle_file_with_wrong_arrays_is_rejected(tmp_path):
    good = {
        "embedding": np.zeros((10, 4), np.float32),
        "Wo": np.zeros((3, 10), np.float32),
        "bo": np.zeros(10, np.float32),
    }
    for w, u, b in (
        ("Wi", "Ui", "bi"),
        ("Wf", "Uf", "bf"),
        ("Wog", "Uog", "bog"),
        ("Wc", "Uc", "bc"),
    ):
        good.update(
            {w: np.zeros((4, 3), np.float32), u: np.zeros((3, 3), np.float32), b: np.zeros(3)}
        )
    np.savez(tmp_path / "ok.npz", **good)
    assert Oracle.from_seqgan_file(tmp_path / "ok.npz").cfg.vocab_size == 10

    missing = {k: v for k, v in good.items() if k != "Uf"}
    np.savez(tmp_path / "missing.npz", **missing)
    with pytest.raises(RayganError, match=r"'Uf' is missing \(expected shape \(3, 3\)\)"):
        Oracle.from_seqgan_file(tmp_path / "missing.npz")

    np.savez(tmp_path / "shape.npz", **{**good, "Wo": np.zeros((3, 11), np.float32)})
    with pytest.raises(RayganError, match=r"'Wo' has shape \(3, 11\), expected \(3, 10\)"):
        Oracle.from_seqgan_file(tmp_path / "shape.npz")

    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(RayganError, match=r"junk\.npz is not a readable \.npz"):
        Oracle.from_seqgan_file(tmp_path / "junk.npz")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"vocab_size": 0}, "vocab_size must be > 0, got 0"),
        ({"eos_id": 2}, "eos_id and pad_id must be set together"),
        ({"start_id": 12}, r"start_id must be in \[0, vocab_size=12\), got 12"),
        ({"d_dropout": 1.5}, r"d_dropout must be in \[0, 1\), got 1.5"),
    ],
)
def test_bad_model_config_names_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(TINY, **kwargs)


def test_discriminator_rejects_wrong_vocab_soft_inputs():
    disc = Discriminator(TINY)
    with pytest.raises(RayganError, match="soft inputs have 13 classes; vocab_size is 12"):
        disc(torch.zeros(2, TINY.max_len, 13))


def test_model_config_default_is_seqgan_size():
    cfg = ModelConfig()
    assert (cfg.vocab_size, cfg.max_len, cfg.g_embed_dim, cfg.g_hidden_dim) == (5000, 20, 32, 32)


def test_row_streams_split_a_batch_like_data_parallel_workers(tiny_cfg):
    """One process drawing 2B rows from streams [s0, s1] equals two workers drawing B from each."""
    from raygan.core.sampler import RowStreams

    gen = Generator(dataclasses.replace(tiny_cfg, z_dim=3))
    streams = lambda *seeds: RowStreams([torch.Generator().manual_seed(s) for s in seeds])  # noqa: E731
    whole = gen.sample(8, generator=streams(10, 11))
    halves = [gen.sample(4, generator=streams(seed)) for seed in (10, 11)]
    assert torch.equal(whole.tokens_BT, torch.cat([h.tokens_BT for h in halves]))
    soft, _ = gen(gumbel_beta=2.0, num=8, generator=streams(10, 11))
    soft_halves = [gen(gumbel_beta=2.0, num=4, generator=streams(s))[0] for s in (10, 11)]
    torch.testing.assert_close(soft, torch.cat(soft_halves))
    with pytest.raises(RayganError, match="7 rows cannot be split into 2 equal random streams"):
        gen.sample(7, generator=streams(1, 2))


def test_row_streams_split_rollouts_like_data_parallel_workers():
    from raygan.core.sampler import RowStreams

    gen = Generator(TINY)
    tokens_BT = gen.sample(8, generator=torch.Generator().manual_seed(0)).tokens_BT
    streams = lambda *seeds: RowStreams([torch.Generator().manual_seed(s) for s in seeds])  # noqa: E731
    whole = gen.rollout_completions(tokens_BT, 3, generator=streams(5, 6))  # (T-1, M, B, T)
    halves = [
        gen.rollout_completions(tokens_BT[i * 4 : (i + 1) * 4], 3, generator=streams(seed))
        for i, seed in enumerate((5, 6))
    ]
    assert torch.equal(whole, torch.cat(halves, dim=2))


@pytest.mark.parametrize("streams", [None, [3], [1, 4, 2]])
def test_rand_steps_draws_what_successive_row_draws_would(streams):
    """`sample` draws a pass's uniforms at once: it relies on a (steps, n) draw being the next
    steps*n numbers of each stream in order, as `steps` draws of n are."""
    from raygan.core.sampler import RowStreams, rand_rows, rand_steps

    def rng():
        if streams is None:
            return torch.Generator().manual_seed(3)
        return RowStreams([torch.Generator().manual_seed(s) for s in range(len(streams))], streams)

    rows = 5 if streams is None else sum(streams)
    one_by_one = rng()
    expected = torch.stack([rand_rows(one_by_one, rows) for _ in range(7)])
    assert torch.equal(rand_steps(rng(), 7, rows), expected)


def test_hand_written_lstm_cell_matches_nn_lstm(tiny_cfg):
    gen = Generator(dataclasses.replace(tiny_cfg, z_dim=3, g_layers=2))
    tokens_B, z_BZ = torch.tensor([1, 4, 2]), torch.randn(3, 3)
    with torch.no_grad():
        weights, ours, theirs = sampler.cell_weights(gen), None, None
        for _ in range(4):
            ours = sampler.cell_advance(gen, weights, tokens_B, z_BZ, ours)
            theirs = gen.advance(tokens_B, z_BZ, theirs)
            for a, b in zip(ours, theirs, strict=True):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_large_samples_take_nn_lstm_and_agree_with_the_cell(tiny_cfg, monkeypatch):
    """Up to CELL_MAX_ROWS rows `sample` steps the hand-written cell, beyond it nn.LSTM: the same
    seed gives the same tokens either way."""
    gen = Generator(tiny_cfg)
    calls = []
    gen.lstm.register_forward_hook(lambda *_: calls.append(1))
    cell = gen.sample(64, generator=torch.Generator().manual_seed(9)).tokens_BT
    assert not calls
    monkeypatch.setattr(sampler, "CELL_MAX_ROWS", 8)
    lstm = gen.sample(64, generator=torch.Generator().manual_seed(9)).tokens_BT
    assert len(calls) == tiny_cfg.max_len
    assert torch.equal(cell, lstm)


def test_log_ratio_d_is_phi_minus_the_live_g_per_prefix():
    cfg = dataclasses.replace(TINY_TEXT, d_form="log_ratio")
    torch.manual_seed(0)
    gen = Generator(cfg)
    disc = make_discriminator(cfg, gen).eval()
    samples = gen.sample(20, generator=torch.Generator().manual_seed(1))
    tokens_BT, lengths_B = samples.tokens_BT, samples.lengths_B
    assert lengths_B.min() < cfg.max_len  # some padding to ignore
    prefix_BT, seq_B = disc(tokens_BT, lengths_B)
    expected_B = sequence_nll(gen, tokens_BT, lengths_B) - sequence_nll(
        disc.lm, tokens_BT, lengths_B
    )
    torch.testing.assert_close(seq_B.double(), expected_B, atol=1e-4, rtol=0)
    disc.chunk = 7  # scored in chunks that do not divide the batch: the same logits
    torch.testing.assert_close(disc(tokens_BT, lengths_B), (prefix_BT, seq_B))
    first_B = sequence_nll(gen, tokens_BT[:, :1]) - sequence_nll(disc.lm, tokens_BT[:, :1])
    torch.testing.assert_close(prefix_BT[:, 0].double(), first_B, atol=1e-4, rtol=0)
    # D's parameters and state are phi's alone: its optimizer and checkpoint never hold G
    assert all(name.startswith("lm.") for name in disc.state_dict())
    assert not {id(p) for p in disc.parameters()} & {id(p) for p in gen.parameters()}
    with torch.no_grad():  # G moves: the logit follows the live G
        gen.head.bias.add_(torch.linspace(-2, 2, cfg.vocab_size))
    assert not torch.allclose(disc(tokens_BT, lengths_B)[1], seq_B)
    disc.init_from_generator(gen)  # phi := G: chance everywhere
    assert disc(tokens_BT, lengths_B)[0].abs().max() < 1e-5
    with pytest.raises(RayganError, match="token ids"):
        disc(F.one_hot(tokens_BT, cfg.vocab_size).float())


def test_a_mixture_phi_scores_the_mean_of_its_experts_likelihoods_per_prefix():
    cfg = dataclasses.replace(TINY_TEXT, d_form="log_ratio", d_experts=3)
    torch.manual_seed(0)
    gen = Generator(cfg)
    disc = make_discriminator(cfg, gen).eval()
    samples = gen.sample(20, generator=torch.Generator().manual_seed(1))
    tokens_BT, lengths_B = samples.tokens_BT, samples.lengths_B
    prefix_BT, seq_B = disc(tokens_BT, lengths_B)

    def mixture(tokens, lengths=None):  # log mean_k p_k(x), from each expert's own likelihood
        nll_KB = torch.stack([sequence_nll(lm, tokens, lengths) for lm in disc.experts])
        return torch.logsumexp(-nll_KB, 0) - math.log(3)

    expected_B = mixture(tokens_BT, lengths_B) + sequence_nll(gen, tokens_BT, lengths_B)
    torch.testing.assert_close(seq_B.double(), expected_B, atol=1e-4, rtol=0)
    for t in (1, 4):  # a prefix's logit is the mixture's likelihood of that prefix
        prefix = (tokens_BT[:, :t], lengths_B.clamp(max=t))  # ended rows keep their whole logit
        expected = mixture(*prefix) + sequence_nll(gen, *prefix)
        torch.testing.assert_close(prefix_BT[:, t - 1].double(), expected, atol=1e-4, rtol=0)
    assert len({float(lm.head.weight.detach().sum()) for lm in disc.experts}) == 3  # own initialisations
    assert {name.split(".")[0] for name in disc.state_dict()} == {"lm", "more"}
    assert disc(tokens_BT, lm=True).shape == (3, 20, cfg.max_len, cfg.vocab_size)
    disc.init_from_generator(gen)  # every expert := G: chance everywhere
    assert disc(tokens_BT, lengths_B)[0].abs().max() < 1e-5


def test_phi_dropout_acts_while_d_trains_and_never_where_d_scores():
    """phi_dropout regularises phi's language models in D's training steps; D's logit where it
    is read (rewards: without_dropout; metrics: eval) is the same D's without dropout, and the
    checkpoint layout is unchanged."""
    from raygan.core.gan import rollout_rewards, without_dropout

    cfg = dataclasses.replace(TINY_TEXT, d_form="log_ratio", d_experts=2, phi_dropout=0.5)
    torch.manual_seed(0)
    gen = Generator(cfg)
    disc = make_discriminator(cfg, gen)
    plain = make_discriminator(dataclasses.replace(cfg, phi_dropout=0.0), gen)
    assert disc.state_dict().keys() == plain.state_dict().keys()
    plain.load_state_dict(disc.state_dict())
    samples = gen.sample(12, generator=torch.Generator().manual_seed(1))
    tokens_BT, lengths_B = samples.tokens_BT, samples.lengths_B
    trained = disc.train()(tokens_BT, lengths_B)[1]
    assert not torch.allclose(trained, disc(tokens_BT, lengths_B)[1])  # dropout draws differ
    expected = plain.eval()(tokens_BT, lengths_B)[1]
    torch.testing.assert_close(disc.eval()(tokens_BT, lengths_B)[1], expected)
    with without_dropout(disc), torch.no_grad():
        torch.testing.assert_close(disc(tokens_BT, lengths_B)[1], expected)
        rewards_BT = rollout_rewards(gen, disc, samples, 3, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        plain_BT = rollout_rewards(gen, plain, samples, 3, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(rewards_BT, plain_BT)
    assert disc.lm.dropout.p == 0.5  # restored after scoring
    assert isinstance(gen.dropout, torch.nn.Identity)  # G itself never drops


def test_log_ratio_d_refuses_what_has_no_likelihood():
    from raygan.core.config import Config

    with pytest.raises(RayganError, match="z_dim"):
        dataclasses.replace(TINY, d_form="log_ratio", z_dim=2)
    with pytest.raises(RayganError, match="estimator=gumbel"):
        Config.from_dict({"d_form": "log_ratio", "estimator": "gumbel"})
    with pytest.raises(RayganError, match="d_form must be one of classifier, log_ratio"):
        dataclasses.replace(TINY, d_form="ratio")
    with pytest.raises(RayganError, match=r"d_experts=2 mixes D's language models.*d_experts=1"):
        dataclasses.replace(TINY, d_experts=2)
    with pytest.raises(RayganError, match=r"phi_dropout=0.3 regularises .* d_dropout is the class"):
        dataclasses.replace(TINY, phi_dropout=0.3)
    with pytest.raises(RayganError, match=r"phi_dropout must be in \[0, 1\), got 1.0"):
        dataclasses.replace(TINY, d_form="log_ratio", phi_dropout=1.0)
    with pytest.raises(RayganError, match=r"d_mle_steps=5 trains D's language model.*set d_mle_s"):
        Config.from_dict({"d_mle_steps": 5})  # the classifier has no likelihood to maximise
