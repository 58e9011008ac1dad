"""Command-line behaviour that needs no Ray: config files, errors as one line, help texts."""

from __future__ import annotations

import pytest

from raygan.cli import build_parser, load_yaml_overrides, main
from raygan.core.config import Config
from raygan.core.errors import RayganError


def test_config_yaml_round_trips(tmp_path, capsys):
    assert main(["config", "estimator=dense", "d_steps=2"]) == 0
    path = tmp_path / "c.yaml"
    path.write_text(capsys.readouterr().out)
    config = Config.from_dict(load_yaml_overrides(str(path)))
    assert config.gan.estimator == "dense" and config.gan.d_steps == 2
    assert config.model == Config().model


def test_yaml_with_unknown_key_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("gan:\n  d_stesp: 3\n")
    with pytest.raises(
        RayganError, match=r"bad.yaml: unknown config key 'gan.d_stesp'; did you mean"
    ):
        load_yaml_overrides(str(path))
    path.write_text("- a list\n")
    with pytest.raises(RayganError, match="must hold a mapping"):
        load_yaml_overrides(str(path))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["config", "d_steps=x"], "config key 'd_steps' expects int, got 'x'"),
        (
            ["config", "estimator=adam"],
            "estimator must be one of gumbel, rollout, dense, constant; got 'adam'",
        ),
        (["config", "novalue"], "override 'novalue' is not of the form key=value"),
        (["sample", "--checkpoint", "/nonexistent"], "/nonexistent holds no checkpoint"),
    ],
)
def test_user_errors_are_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("raygan: error: ") and message in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_every_subcommand_has_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) >= {"prepare", "train", "sample", "evaluate", "config", "demo"}
    for name, subparser in sub.choices.items():
        assert subparser.format_help(), name
