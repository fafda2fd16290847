"""The training command lines, generated from FitConfig and EvalConfig: a flag per field, with its help and default."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from training.cli import build_parser, config_from_args, eval_config_from_args
from training.config import EvalConfig, FitConfig

REQUIRED = ["fit", "--data", "rows.csv", "--name", "m"]


def _fit_parser() -> argparse.ArgumentParser:
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices["fit"]


def _flags() -> list[argparse.Action]:
    return [a for a in _fit_parser()._actions if a.dest != "help"]


def test_each_field_is_one_flag_with_help() -> None:
    flags = _flags()
    assert sorted(a.dest for a in flags) == sorted(FitConfig.model_fields)
    for action in flags:
        assert action.help, f"{action.option_strings} has no help"
        assert action.help.count("(default:") <= 1, action.help
        assert "(default: None)" not in action.help


def test_help_shows_each_value_default_once(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["fit", "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for flag, default in [("--batch-size", 128), ("--lr", 0.001), ("--seed", 0), ("--models-dir", "models")]:
        assert f"(default: {default})" in text.split(flag, 2)[2].split(" --", 1)[0]
    assert "--quiet Progress output while training; --quiet turns it off" in text
    assert "(default: cuda when available)" in text and "(default: None)" not in text


def test_without_flags_the_config_is_fitconfigs_defaults() -> None:
    parsed = config_from_args(build_parser().parse_args(REQUIRED))
    assert parsed == FitConfig(data=Path("rows.csv"), name="m")


def test_flags_reach_their_fields() -> None:
    flags = [
        *("--hidden", "256,128", "--channels", "8", "--image-size", "28x32", "--image-channels", "3"),
        *("--arch", "vae", "--vae-body", "conv", "--lr", "0.01", "--batch-size", "64", "--seed", "7"),
        *("--version", "4", "--replace", "--quiet", "--models-dir", "elsewhere", "--normal-label", "0"),
    ]
    config = config_from_args(build_parser().parse_args([*REQUIRED, *flags]))
    assert (config.hidden, config.channels, config.image_size, config.image_channels) == ([256, 128], [8], (28, 32), 3)
    assert (config.arch, config.vae_body, config.lr, config.batch_size, config.seed) == ("vae", "conv", 0.01, 64, 7)
    assert (config.version, config.replace, config.progress) == (4, True, False)
    assert (config.models_dir, config.normal_label) == (Path("elsewhere"), "0")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--hidden", "64,0"], "argument --hidden: sizes must be positive, got '64,0'"),
        (["--image-size", "28"], "argument --image-size: expected H x W, like 28x28, got '28'"),
        (["--image-channels", "2"], "argument --image-channels: invalid choice: 2 (choose from 1, 3)"),
        (["--lr", "fast"], "argument --lr: invalid float value: 'fast'"),
        ([], "the following arguments are required: --data, --name"),
    ],
)
def test_bad_flags_exit_2_naming_the_flag(flags: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["fit", *flags] if not flags else [*REQUIRED, *flags]
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(args)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def _evaluate_parser(protocol: str) -> argparse.ArgumentParser:
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    evaluate = commands.choices["evaluate"]
    protocols = next(a for a in evaluate._actions if isinstance(a, argparse._SubParsersAction))
    return protocols.choices[protocol]


def test_evaluate_flags_are_evalconfigs_fields() -> None:
    tabular = {a.dest for a in _evaluate_parser("tabular")._actions} - {"help", "data"}
    mnist = {a.dest for a in _evaluate_parser("mnist")._actions} - {"help", "data"}
    assert tabular == set(EvalConfig.model_fields) and mnist == tabular - {"seeds"}  # MNIST has one seed
    args = build_parser().parse_args(["evaluate", "tabular", "--data", "a.npz"])
    assert eval_config_from_args(args) == EvalConfig()
    args = build_parser().parse_args(["evaluate", "tabular", "--data", "a.npz", "--seeds", "3,4", "--quiet"])
    assert (eval_config_from_args(args).seeds, eval_config_from_args(args).progress) == ((3, 4), False)
