"""`python -m training fit|evaluate ...`: the command line over training.pipeline and training.evaluate."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training.config import FitConfig

EXIT_BAD_INPUT = 2
EXIT_EXPORT_FAILED = 3
EXIT_INTERRUPTED = 130


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return values


def _seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not seeds or any(s < 0 for s in seeds):
        raise argparse.ArgumentTypeError(f"seeds must be non-negative integers, got {text!r}")
    return seeds


def _image_size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected H x W, like 28x28, got {text!r}") from None
    if height < 1 or width < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return height, width


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    fit = commands.add_parser(
        "fit",
        help="train an autoencoder and export it as a model package",
        description="Train an autoencoder on a data file and write models/<name>/<version>/.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    data = fit.add_argument_group("data")
    data.add_argument(
        "--data",
        type=Path,
        required=True,
        help="IDX (gz or raw), .npz, .npy, .csv or .parquet; or a folder of PNG/JPEG/BMP images, labelled by "
        "their first-level subfolders when there are any",
    )
    data.add_argument("--label-column", help="CSV/Parquet column holding labels (never a feature)")
    data.add_argument(
        "--image-size", type=_image_size, help="folders of images: H x W rows, e.g. 28x28 (default: the most common)"
    )
    data.add_argument(
        "--image-channels",
        type=int,
        choices=(1, 3),
        help="folders of images: 1 (grey) or 3 (RGB); default: most files'",
    )
    data.add_argument("--normal-label", help="train only on rows with this label (one-class setting)")
    data.add_argument("--val-fraction", type=float, default=0.1, help="share of rows held out for validation")
    data.add_argument(
        "--scaling",
        choices=["box", "minmax", "standardise"],
        help="tables: box (default: q12.5..q87.5 onto [0, 1], reconstructions bounded to it; best for anomaly "
        "scores), minmax or standardise (faithful reconstructions of the tails)",
    )

    out = fit.add_argument_group("output")
    out.add_argument("--name", required=True, help="model name: lower case, digits, . _ -")
    out.add_argument("--version", type=int, help="package version (default: the next integer)")
    out.add_argument("--models-dir", type=Path, default=Path("models"), help="the model repository")
    out.add_argument("--replace", action="store_true", help="overwrite an existing version")

    model = fit.add_argument_group("model (defaults chosen from the data)")
    model.add_argument(
        "--arch",
        choices=["dense", "conv", "vae"],
        help="conv for images (dense under 2,000 training images), dense otherwise",
    )
    model.add_argument("--vae-body", choices=["dense", "conv"], help="the layers inside a VAE")
    model.add_argument("--latent", type=int, help="latent size (16 for images; features/3 for tables)")
    model.add_argument(
        "--hidden", type=_int_list, help="dense hidden sizes, e.g. 256,128 (128 under 2,000 training images)"
    )
    model.add_argument("--channels", type=_int_list, help="conv channels per stride-2 layer, e.g. 32,64")
    model.add_argument(
        "--loss",
        choices=["mse", "bce", "huber"],
        help="mse (the score's own error; images), huber (robust to the anomalies among the rows; tables), or "
        "bce (inputs in [0, 1])",
    )
    model.add_argument(
        "--members",
        type=int,
        help="tables: dense autoencoders in one ensemble model, codes of 1 to --latent units, each reading a "
        "random half of the features (default 10 without --arch, else 1: a single autoencoder)",
    )
    model.add_argument(
        "--noise",
        type=float,
        help="denoising: std of input noise, normalised (0.02 tables; images 0, 0.5 under 2,000 training images)",
    )
    model.add_argument("--beta", type=float, default=1.0, help="VAE: weight of the KL term")

    train = fit.add_argument_group("training")
    train.add_argument("--epochs", type=int, help="60 for tables; images: at least 1500 steps, 30 to 200")
    train.add_argument("--batch-size", type=int, default=128)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--weight-decay", type=float, help="Adam's L2 penalty (1e-4 for tables, 0 for images)")
    train.add_argument("--patience", type=int, help="early stopping: epochs without improvement (5, or 10 past 30)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    train.add_argument("--threshold-quantile", type=float, default=0.99, help="of normal validation scores")
    train.add_argument("--quiet", action="store_true", help="no progress output, only the summary")
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
        sub.add_argument("--out", type=Path, default=Path("reports/evaluation"), help="where JSON and PNG go")
        sub.add_argument("--epochs", type=int, help="override the recipe's epochs (quick checks only)")
        sub.add_argument("--device", help="cpu or cuda (default: cuda when available)")
        sub.add_argument("--quiet", action="store_true", help="no progress bar, only the table")
        if name == "tabular":
            sub.add_argument(
                "--seeds",
                type=_seeds,
                default=(0, 1, 2),
                help="the autoencoder's seeds: the first is compared with the baselines, all give its spread",
            )


def config_from_args(args: argparse.Namespace) -> FitConfig:
    return FitConfig(
        data=args.data,
        name=args.name,
        models_dir=args.models_dir,
        version=args.version,
        replace=args.replace,
        label_column=args.label_column,
        normal_label=args.normal_label,
        image_size=args.image_size,
        image_channels=args.image_channels,
        scaling=args.scaling,
        val_fraction=args.val_fraction,
        arch=args.arch,
        vae_body=args.vae_body,
        latent=args.latent,
        hidden=args.hidden,
        channels=args.channels,
        loss=args.loss,
        members=args.members,
        noise=args.noise,
        beta=args.beta,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        patience=args.patience,
        seed=args.seed,
        device=args.device,
        threshold_quantile=args.threshold_quantile,
        progress=not args.quiet,
    )


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
    # Imported late so `--help` and argument errors answer without loading torch.
    from training.data import DataError
    from training.export import ExportParityError

    try:
        if args.command == "evaluate":
            _evaluate(args)
        elif args.command == "calibrate":
            from training.calibrate import add_quantiles

            quantiles = add_quantiles(args.package, args.data)
            print(f"{args.package}: percentile curve of {len(quantiles)} points added to manifest.json")
        else:
            from training.pipeline import fit

            fit(config_from_args(args))
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ExportParityError as err:
        print(f"error: export failed the parity gate, no package written: {err}", file=sys.stderr)
        return EXIT_EXPORT_FAILED
    except KeyboardInterrupt:
        print("interrupted: no package written", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def _evaluate(args: argparse.Namespace) -> None:
    from training.evaluate import EvalConfig, run

    config = EvalConfig(out=args.out, epochs=args.epochs, device=args.device, progress=not args.quiet)
    if args.protocol == "tabular":
        config.seeds = args.seeds
    paths = args.data if isinstance(args.data, list) else [args.data]
    run(args.protocol, paths, config)
