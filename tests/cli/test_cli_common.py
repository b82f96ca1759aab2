"""Config fields as flags: every field of every pipeline config has its flag with the field's help,
flags given override the chosen preset, the rest keep it; every command's --help works."""
import dataclasses
import typing

import pytest

from emofast.cli import build_parser, main
from emofast.cli.common import config_from_args
from emofast.pipelines import CircuitsConfig, DemoConfig, DirectionsConfig, DiscoverConfig


def parse(*argv):
    return build_parser().parse_args([str(a) for a in argv])


@pytest.mark.parametrize("command, config", [("demo", DemoConfig), ("discover", DiscoverConfig),
                                             ("directions", DirectionsConfig)])
def test_every_field_has_a_flag_with_its_help(command, config, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for f in dataclasses.fields(config):
        default_true = typing.get_type_hints(config)[f.name] is bool and f.default is True
        flag = ("--no-" if default_true else "--") + f.name.replace("_", "-")
        assert flag in text, flag
        assert " ".join(f.metadata["help"].split())[:30] in text, f.name


def test_circuits_config_fields_have_help_too():
    for f in dataclasses.fields(CircuitsConfig):
        assert f.metadata.get("help"), f.name


def test_flags_override_the_preset_and_nothing_else():
    args = parse("demo", "--full", "--max-new-tokens", 7, "--grid", "0.1,0.2,1.5;0.3,0.4,2",
                 "--scale", "abs")
    cfg = config_from_args(args, DemoConfig, DemoConfig.full())
    assert cfg == dataclasses.replace(DemoConfig.full(), max_new_tokens=7, scale="abs",
                                      grid=((0.1, 0.2, 1.5), (0.3, 0.4, 2.0)))
    assert config_from_args(parse("demo"), DemoConfig, DemoConfig()) == DemoConfig()
    cfg = config_from_args(parse("discover", "--emotions", "anger", "fear,disgust", "--k-max", 8),
                           DiscoverConfig, DiscoverConfig())
    assert cfg.emotions == ("anger", "fear", "disgust") and cfg.k_max == 8
    cfg = config_from_args(parse("directions", "--train", "basic4", "--out", "x", "--sites",
                                 "L1.resid_post", "L2.resid_post", "--pool", "last"),
                           DirectionsConfig)
    assert cfg.sites == ("L1.resid_post", "L2.resid_post") and cfg.pool == "last"


def test_bad_flags_are_refused_early(capsys):
    with pytest.raises(SystemExit):
        parse("demo", "--scale", "log")                      # a Literal field: choices
    with pytest.raises(SystemExit):
        parse("demo", "--max-new-tokens", "many")
    assert main(["demo", "--n-test-skeletons", "0", "--quiet"]) == 2   # __post_init__
    assert "n_test_skeletons must be an integer >= 1" in capsys.readouterr().err
    assert main(["directions", "--out", "x", "--quiet"]) == 2
    assert "--train is required" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["demo", "directions", "steer", "sweep", "discover", "judge"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0 and "usage: emofast" in capsys.readouterr().out


def test_python_dash_m_runs_the_command():
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-m", "emofast.cli", "sweep", "--help"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "usage: emofast sweep" in done.stdout
