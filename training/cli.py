"""`python -m training fit|evaluate ...`: the command line over training.pipeline and training.evaluate."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from training.config import EvalConfig, FitConfig, Flag, sizes
from training.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, TrainingError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    fit = commands.add_parser(
        "fit",
        help="train an autoencoder and export it as a model package",
        description=FitConfig.__doc__,
    )
    add_flags(fit, FitConfig)
    _add_evaluate(commands)
    calibrate = commands.add_parser(
        "calibrate",
        help="add the percentile curve to a package written before packages stored one",
        description="Recompute a package's normal validation scores from the data it was trained on and store "
        "their quantiles (score.quantiles), which the service turns into a percentile per score.",
    )
    calibrate.add_argument("package", type=Path, help="the package folder, e.g. models/cardio/1")
    calibrate.add_argument("--data", type=Path, required=True, help="the data the package was trained on")
    return parser


MNIST_PROTOCOL = """\
Protocol: the IDX images (and labels) in DATA; the first 8,000 images train, the last 2,000 test, by
index, no shuffling. Reconstruction: the default image recipe at latent sizes 32 and 16, test MSE in
normalised space (x / 255) against PCA with as many components fitted on the same 8,000 images.
One-class: per digit, the default recipe trained on that digit's training images only; AUROC over all
2,000 test images, that digit normal, against PCA with as many components as the model's latent."""

TABULAR_PROTOCOL = """\
Protocol (ADBench): each .npz holds X and y (1 = anomaly). Stratified 70/30 split with seed 0
(sklearn train_test_split(X, y, test_size=0.3, stratify=y, random_state=0)); the default tabular recipe
is fitted without labels on the 70%, anomalies included, once per seed of --seeds (the first is the one
compared; all give the spread); AUROC of the score on the 30%. Baselines on
the same split: PCA with as many components as the model's latent on standardised features (score:
its reconstruction MSE), and scikit-learn's IsolationForest(random_state=0) on the raw features."""

COMMON_NOTE = """\
Models are trained by the same code as `fit` (recipe chosen from the data, early stopping on a 10%
validation split of the training rows) and scored as the exported scorer does: per-row mean squared
error in normalised space. Prints a table and writes <protocol>.json and <protocol>.png under --out."""


def _add_evaluate(commands: Any) -> None:
    evaluate = commands.add_parser(
        "evaluate",
        help="measure the default recipes against PCA and IsolationForest",
        description="Measure the default recipes against PCA and IsolationForest on a fixed protocol.",
    )
    protocols = evaluate.add_subparsers(dest="protocol", required=True)
    for name, protocol, data_help in (
        ("mnist", MNIST_PROTOCOL, "folder holding the MNIST IDX files (or the images file)"),
        ("tabular", TABULAR_PROTOCOL, ".npz files with X and y, or folders of them"),
    ):
        sub = protocols.add_parser(
            name,
            help=protocol.splitlines()[0],
            description=f"{protocol}\n\n{COMMON_NOTE}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        nargs = None if name == "mnist" else "+"
        sub.add_argument("--data", type=Path, required=True, nargs=nargs, help=data_help)
        add_flags(sub, EvalConfig, leave_out=("seeds",) if name == "mnist" else ())


def add_flags(parser: argparse.ArgumentParser, config: type[BaseModel], leave_out: tuple[str, ...] = ()) -> None:
    """A flag for each field of `config` (its training.config.Flag says where and how), with the field's
    docstring as its help and its default appended where it is a value, not a choice left to the data (None)."""
    groups: dict[str | None, Any] = {}
    for name, field in config.model_fields.items():
        if name in leave_out:
            continue
        flag = next(item for item in field.metadata if isinstance(item, Flag))
        if flag.group not in groups:
            groups[flag.group] = parser if flag.group is None else parser.add_argument_group(flag.group)
        option = flag.name or f"--{name.replace('_', '-')}"
        kind, choices = _kind(field.annotation)
        if kind is bool:
            action = "store_false" if field.default else "store_true"
            groups[flag.group].add_argument(option, dest=name, action=action, help=field.description)
        elif field.is_required():
            groups[flag.group].add_argument(
                option, dest=name, type=flag.parse or kind, required=True, help=field.description
            )
        else:
            shown = "" if field.default is None else f" (default: {_shown(field.default)})"
            groups[flag.group].add_argument(
                option,
                dest=name,
                type=flag.parse or (sizes if kind is list else kind),
                choices=choices,
                default=field.default,
                help=f"{field.description}{shown}",
            )


def _shown(value: Any) -> str:
    """A default as it would be typed on the command line."""
    return ",".join(map(str, value)) if isinstance(value, tuple | list) else str(value)


def _kind(annotation: Any) -> tuple[Any, list[Any] | None]:
    """The type a field's text is read as, and its choices when it is a Literal; None is left aside."""
    options = (
        [arg for arg in get_args(annotation) if arg is not type(None)]
        if get_origin(annotation) in (Union, UnionType)
        else [annotation]
    )
    kind = options[0]
    if get_origin(kind) is Literal:
        choices = list(get_args(kind))
        return type(choices[0]), choices
    return get_origin(kind) or kind, None


def flag_errors(err: ValidationError) -> str:
    """A config's validation errors in the command line's words: `--flag: what is wrong`."""
    return "; ".join(
        f"--{str(error['loc'][0]).replace('_', '-')}: {error['msg']}" if error["loc"] else error["msg"]
        for error in err.errors()
    )


def config_from_args(args: argparse.Namespace) -> FitConfig:
    return FitConfig(**{name: getattr(args, name) for name in FitConfig.model_fields})


def eval_config_from_args(args: argparse.Namespace) -> EvalConfig:
    return EvalConfig(**{name: getattr(args, name) for name in EvalConfig.model_fields if hasattr(args, name)})


TRAIN_EXTRA = ("torch", "onnx", "sklearn")
INSTALL_TRAIN = "make install-train (or: pip install -e '.[train]')"


def main(argv: Sequence[str] | None = None) -> int:
    # `make serve` installs the service alone. Checked before parsing, so every invocation (no arguments,
    # missing ones, --help) gets the one line that fixes it rather than a usage error it cannot act on.
    missing = [name for name in TRAIN_EXTRA if importlib.util.find_spec(name) is None]
    if missing:
        print(
            f"error: the training extra is not installed (missing: {', '.join(missing)}); run {INSTALL_TRAIN}",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    args = build_parser().parse_args(argv)
    try:
        if args.command == "evaluate":
            _evaluate(args)
        elif args.command == "calibrate":
            from training.calibrate import add_quantiles

            quantiles = add_quantiles(args.package, args.data)
            print(
                f"{args.package}: percentile curve of {len(quantiles)} points (and, for a table, the features' "
                "shares of the error) added to manifest.json"
            )
        else:
            from training.pipeline import fit

            fit(config_from_args(args))
    except TrainingError as err:
        print(f"error: {err.explain()}", file=sys.stderr)
        return err.exit_code
    except ValidationError as err:
        print(f"error: {flag_errors(err)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted: no package written", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def _evaluate(args: argparse.Namespace) -> None:
    from training.evaluate import run

    config = eval_config_from_args(args)
    paths = args.data if isinstance(args.data, list) else [args.data]
    run(args.protocol, paths, config)
