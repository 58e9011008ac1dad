"""Shipped recipes: each resolves to a valid config, overrides apply on top of it, bad names are
one-line errors, `raygan recipes` lists them, Tune can start from one."""

from __future__ import annotations

import pytest
import yaml

from raygan.cli import main
from raygan.core.config import Config, apply_overrides, load_recipe, recipe_names, recipe_summary
from raygan.core.errors import RayganError

PAPERS = {"seqgan", "relgan", "scratchgan"}


def test_the_papers_and_ours_are_shipped():
    assert set(recipe_names()) > PAPERS


@pytest.mark.parametrize("name", recipe_names())
def test_every_recipe_resolves_to_a_valid_config(name):
    keys = load_recipe(name)
    config = apply_overrides(Config(), {"recipe": name})
    assert config.schedule.recipe == name
    flat = {k: v for section in config.to_dict().values() for k, v in section.items()}
    for key, value in keys.items():
        assert flat[key] == pytest.approx(value) if isinstance(value, float) else flat[key] == value
    assert recipe_summary(name)  # `raygan recipes` has a line to print
    # the resolved config round-trips: the recipe's keys, then the explicit ones, give the same
    assert Config.from_dict(config.to_dict()) == config


def test_overrides_apply_on_top_of_the_recipe(tmp_path, capsys):
    config = apply_overrides(Config(), {"d_steps": 2, "recipe": "seqgan"})  # order is irrelevant
    assert config.gan.d_steps == 2 and config.gan.pg_reduction == "sum"
    path = tmp_path / "c.yaml"
    path.write_text("rollout_num: 3\n")
    assert main(["config", "--recipe", "seqgan", "--config", str(path), "adv_steps=7"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["schedule"]["recipe"] == "seqgan"
    assert printed["gan"]["rollout_num"] == 3 and printed["schedule"]["adv_steps"] == 7
    assert printed["gan"]["g_lr"] == load_recipe("seqgan")["g_lr"]
    cleared = apply_overrides(config, {"recipe": "none"})
    assert cleared.schedule.recipe == ""


def test_an_unknown_recipe_is_one_line_listing_the_valid_ones(capsys):
    assert main(["config", "--recipe", "seqgna"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown recipe 'seqgna'; valid recipes:" in err
    assert all(name in err for name in recipe_names())
    with pytest.raises(RayganError, match="unknown recipe"):
        apply_overrides(Config(), {"recipe": "../recipes/seqgan"})


def test_recipes_command_prints_one_line_each(capsys):
    assert main(["recipes"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == recipe_names()
    assert all(recipe_summary(line.split()[0]) in line for line in lines)


def test_a_tune_space_can_start_from_a_recipe(oracle_data, tmp_path):
    from raygan.run.tune_space import load_space

    space = tmp_path / "space.yaml"
    space.write_text(
        "metric: nll_oracle\nmode: min\nfixed:\n  recipe: seqgan\n  adv_steps: 4\n"
        "search:\n  g_lr: {loguniform: [1.0e-4, 1.0e-2]}\n"
    )
    config = load_space(space, data_kind="oracle").trial_config(oracle_data)
    assert config.schedule.recipe == "seqgan" and config.gan.pg_reduction == "sum"
    assert config.schedule.adv_steps == 4  # the space's own keys override the recipe


@pytest.mark.parametrize("name", recipe_names())
def test_every_recipes_constant_control_skips_d_pretraining(name):
    """The benchmarks' control: the recipe with a constant reward and d_pretrain_steps=0 (a
    recipe's d_mle_steps count inside D pretraining, so they stop with it)."""
    from raygan.run.loop import phase_of

    config = apply_overrides(Config(), {"recipe": name, "estimator": "constant",
                                        "d_pretrain_steps": 0})  # fmt: skip
    phases = {phase_of(step, config)[0] for step in range(config.schedule.total_steps)}
    assert "d_pretrain" not in phases and "adversarial" in phases
