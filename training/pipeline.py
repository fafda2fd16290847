"""One training run from data file to model package: load, split, train, export, check, calibrate, write."""

from __future__ import annotations

import platform
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version as installed_version
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.manifest import (
    FORMAT_VERSION,
    MANIFEST,
    Input,
    Latent,
    Libraries,
    Manifest,
    Metrics,
    Parity,
    Score,
    Training,
    TrainingData,
)
from training import report
from training.config import FitConfig
from training.data import Dataset, load_dataset, normal_mask
from training.distributed import World, join
from training.errors import DataError
from training.export import (
    PARITY_ATOL,
    PARITY_ROWS,
    PARITY_RTOL,
    check_parity,
    export_graphs,
    graph_specs,
    score_definition,
    served_scores,
)
from training.metrics import (
    LatentMoments,
    Threshold,
    auroc_if_enough,
    calibrate_threshold,
    describe_calibration,
    feature_shares,
    pca_scores,
    score_quantiles,
)
from training.models import Autoencoder, ModelSpec, build_model, save_checkpoint
from training.package import check_name, choose_version, file_hashes, write_json
from training.recipes import Normalisation, fit_normalisation, model_spec, resolve_training
from training.trainer import STILL_FALLING, History, Rows, Trainer, TrainerConfig, pick_device, set_seed


@dataclass
class Split:
    """Row indices of each part of the data, and what is known about which rows are anomalies."""

    train: np.ndarray
    val: np.ndarray
    val_normal: np.ndarray  # the validation rows the threshold is calibrated on
    val_is_anomaly: np.ndarray | None  # per validation row, when labels say so
    left_out: int = 0  # training-part rows not trained on, and why
    left_out_because: str | None = None
    anomalous: np.ndarray | None = None  # every row labelled anomalous, when labels say so

    @property
    def normal(self) -> np.ndarray:
        """Every normal row: the training rows and the normal validation rows."""
        return np.union1d(self.train, self.val_normal)

    @property
    def val_is_normal(self) -> np.ndarray:
        """Per validation row, whether it is one of val_normal."""
        return np.isin(self.val, self.val_normal)


def fit(config: FitConfig) -> Path:
    """Trains one model and writes its package; returns the package folder. The training goes through
    training.estimator.AutoencoderDetector, as `fit(X)` in Python does. Under torchrun every rank trains
    (training.distributed) and rank 0 alone exports and writes."""
    from training.estimator import AutoencoderDetector  # it builds on train() and write_package() below

    world = join()
    try:
        if not world.is_main:
            config = config.model_copy(update={"progress": False})
        check_name(config.name)
        data = load_dataset(config.data, config.label_column, config.image_size, config.image_channels)
        if world.is_main:
            _warn_of_label_like_features(data, config)
        version = choose_version(config.models_dir, config.name, config.version, config.replace)
        destination = config.models_dir / config.name / str(version)
        detector = AutoencoderDetector._from_config(config)
        manifest = detector._fit_dataset(data, config, version, world)
        if manifest is not None:
            # choose_version has settled whether an existing version may be replaced.
            detector.save(destination, replace=True)
            print(summary(manifest, destination), flush=True)
        world.barrier()
        return destination
    finally:
        world.close()


@dataclass
class Trained:
    """A trained model and all that its package is written from."""

    config: FitConfig  # resolved: every choice the data made is filled in
    data: Dataset
    split: Split
    norm: Normalisation
    model: Autoencoder
    history: History


def train(config: FitConfig, data: Dataset, world: World | None = None) -> Trained:
    """Splits the rows, chooses the recipe from the data and trains it (on every rank under torchrun)."""
    split = split_rows(data, config)
    config = resolve_training(config, data, len(split.train))
    norm, model, history = train_model(config, data, split, world)
    return Trained(config, data, split, norm, model, history)


def train_model(
    config: FitConfig, data: Dataset, split: Split, world: World | None = None
) -> tuple[Normalisation, Autoencoder, History]:
    """The recipe chosen from the data, trained on the split's training rows: what `fit` exports and
    what `python -m training evaluate` measures. `config` has been through `resolve_training`."""
    world = world or World()
    norm = fit_normalisation(data, split.train, config.scaling)
    spec = model_spec(config, data)
    set_seed(config.seed)
    model = build_model(spec)
    device = world.device(pick_device(config.device))
    ranks = f", {world.size} processes ({world.backend})" if world.distributed else ""
    _say(config, f"training {spec.kind} on {len(split.train)} rows of shape {list(data.shape)} ({device}{ranks})")
    trainer = Trainer(model, _trainer_config(config, device), world)
    train = Rows(data.x, split.train, norm.offset, norm.scale)
    history = trainer.fit(train, norm.apply_to_rows(data.x, split.val_normal))
    return norm, model, history


def split_rows(data: Dataset, config: FitConfig) -> Split:
    if not 0.0 < config.val_fraction < 1.0:
        raise DataError(f"--val-fraction must be in (0, 1), got {config.val_fraction}")
    rows = len(data.x)
    order = np.random.default_rng(config.seed).permutation(rows)
    n_val = max(1, round(rows * config.val_fraction))
    train, val = np.sort(order[n_val:]), np.sort(order[:n_val])
    normal = normal_mask(data, config.normal_label)
    left_out, because = 0, None
    if normal is not None:
        left_out = int((~normal[train]).sum())
        because = (
            f"label is not {config.normal_label!r}" if config.normal_label is not None else "labelled anomalous (1)"
        )
        train = train[normal[train]]
    if len(train) < 2:
        raise DataError(f"{data.source}: only {len(train)} training rows after the split; need at least 2")
    val_normal = val if normal is None else val[normal[val]]
    if len(val_normal) == 0:
        raise DataError(f"{data.source}: no normal rows in the validation split; raise --val-fraction")
    val_is_anomaly, anomalous = (None, None) if normal is None else (~normal[val], np.flatnonzero(~normal))
    return Split(train, val, val_normal, val_is_anomaly, left_out, because, anomalous)


def _trainer_config(config: FitConfig, device: str) -> TrainerConfig:
    return TrainerConfig(
        epochs=config.epochs or 0,
        batch_size=config.batch_size,
        lr=config.lr,
        patience=config.patience or 0,
        noise=config.noise or 0.0,
        weight_decay=config.weight_decay or 0.0,
        seed=config.seed,
        trim=config.trim or 0.0,
        device=device,
        progress=config.progress,
    )


def write_package(folder: Path, trained: Trained, version: int, world: World | None = None) -> Manifest:
    """Exports, checks and calibrates `trained` into `folder` (a staging folder: training.package) as
    package `version`; returns its manifest."""
    config, data, split, norm, model, history = (
        trained.config, trained.data, trained.split, trained.norm, trained.model, trained.history
    )  # fmt: skip
    world = world or World()
    spec = model.spec
    graphs = graph_specs(model, norm)
    x_val = data.x[split.val]
    _say(config, f"exporting encoder, decoder and scorer to ONNX in {folder}")
    export_graphs(graphs, folder, x_val, spec.latent_dim)
    parity = check_parity(graphs, folder, x_val, spec.latent_dim)
    save_checkpoint(model, folder / "checkpoint.pt", norm.offset, norm.scale)

    # Calibrate on the exported scorer, so the threshold fits exactly the score the service computes.
    scores = run_graph(folder, "scorer.onnx", "score", x_val)
    is_normal = split.val_is_normal
    calibration = _calibration_scores(trained, scores[is_normal])
    threshold = calibrate_threshold(calibration.scores, config.threshold_quantile, calibration.split, calibration.folds)
    auroc_value, auroc_note = _auroc(trained, folder, scores, calibration)
    metrics = Metrics(
        train_loss=history.train_loss[history.best_epoch - 1] if history.best_epoch else None,
        val_loss=min(history.val_loss) if history.val_loss else None,
        val_mse=float(scores[is_normal].mean()),
        pca_val_mse=float(
            pca_scores(
                norm.apply_to_rows(data.x, _pca_rows(split.train)),
                norm.apply_to_rows(data.x, split.val[is_normal]),
                spec.widest_code,
            ).mean()
        ),
        auroc=auroc_value,
        auroc_note=auroc_note,
    )
    # A chunk of codes at a time: the codes of every training row can be most of the size of the data.
    moments = LatentMoments()
    for z in graph_chunks(folder, "encoder.onnx", "z", data.x, split.train):
        moments.add(z)
    latent_mean, latent_cov = moments.result()
    latent = Latent(
        dim=spec.latent_dim,
        prior="standard_normal" if spec.variational else "empirical",
        mean=latent_mean,
        cov=latent_cov,
    )

    used = _data_used(data, split, config)
    report_body = {
        "history": vars(history),
        "metrics": metrics.model_dump(mode="json"),
        "data": used.model_dump(mode="json"),
        "distributed": {"world_size": world.size, "backend": world.backend},
        "config": config.to_json(),
    }
    write_json(folder / "report.json", report_body)
    _draw_pictures(folder, config.name, data, x_val, norm, spec, history, latent)
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        name=config.name,
        version=version,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        architecture=spec.architecture(noise=config.noise or 0.0),
        input=Input(kind=data.kind, shape=list(data.shape), dtype="float32", feature_names=data.feature_names),
        latent=latent,
        preprocessing=norm.preprocessing(),
        loss=spec.loss,
        score=Score(
            definition=score_definition(spec),
            threshold=threshold.value,
            calibration=threshold.calibration(config.normal_label),
            # A score's percentile among the normal validation scores (the service interpolates).
            quantiles=score_quantiles(calibration.scores),
            # Where the error of normal rows lies, feature by feature: what monitoring compares live rows with.
            feature_shares=(
                feature_shares(run_graph(folder, "scorer.onnx", "sq_err", x_val[is_normal]))
                if data.kind == "tabular"
                else None
            ),
        ),
        graphs={role: graph.manifest_entry() for role, graph in graphs.items()},
        parity=Parity(rows=min(PARITY_ROWS, len(x_val)), atol=PARITY_ATOL, rtol=PARITY_RTOL, max_abs_diff=parity),
        training=Training(
            data=used,
            config=config.to_json(),
            device=pick_device(config.device),
            epochs_run=history.epochs_run,
            best_epoch=history.best_epoch,
            seconds=round(history.seconds, 2),
            warnings=_warnings(trained, threshold),
        ),
        metrics=metrics,
        libraries=Libraries(**_library_versions()),
        files=file_hashes(folder),
    )
    write_json(folder / MANIFEST, manifest.model_dump(mode="json"))
    return manifest


# Below this many normal validation rows a quantile of their scores says little (the 0.99 quantile of 20
# rows is their largest), so the threshold and the percentile curve come from out-of-fold scores of every
# normal row instead: each scored by a refit of the recipe that never saw it.
MIN_CALIBRATION_ROWS = 200
CALIBRATION_FOLDS = 5


@dataclass
class CalibrationScores:
    scores: np.ndarray  # normal scores the threshold and percentile curve are read from
    split: str  # "validation" or "out_of_fold"
    folds: int | None = None


def _calibration_scores(trained: Trained, val_normal_scores: np.ndarray) -> CalibrationScores:
    if len(val_normal_scores) >= MIN_CALIBRATION_ROWS:
        return CalibrationScores(val_normal_scores, "validation")
    rows = trained.split.normal
    folds = min(CALIBRATION_FOLDS, len(rows) // 2)
    if folds < 2:
        return CalibrationScores(val_normal_scores, "validation")
    _say(
        trained.config,
        f"calibrating out of fold: {len(val_normal_scores)} normal validation rows are fewer than "
        f"{MIN_CALIBRATION_ROWS}; {folds} refits score all {len(rows)} normal rows",
    )
    return CalibrationScores(out_of_fold_scores(trained, rows, folds), "out_of_fold", folds)


def out_of_fold_scores(trained: Trained, rows: np.ndarray, folds: int) -> np.ndarray:
    """The served score of each of `rows`, from a refit of the recipe on the other folds (at most as many
    rows as the model trained on). A refit runs the
    epochs the model itself chose (its best epoch) and keeps its last weights: choosing them by the held-out
    fold's loss would let that fold shape the model that scores it."""
    config = trained.config
    epochs = max(1, trained.history.best_epoch or trained.history.epochs_run)
    refit = config.model_copy(update={"epochs": epochs, "patience": epochs + 1, "progress": False})
    rng = np.random.default_rng(config.seed)
    parts = np.array_split(rng.permutation(rows), folds)
    scores = np.empty(len(trained.data.x))
    for held in parts:
        fit_rows = np.setdiff1d(rows, held)
        # No more rows than the model itself trained on (a large --val-fraction leaves it few): a refit
        # on more would score the held-out rows better than the model scores new ones.
        if len(fit_rows) > len(trained.split.train):
            fit_rows = rng.choice(fit_rows, len(trained.split.train), replace=False)
        fit_rows = np.sort(fit_rows)
        # Early stopping's loss is taken on the refit's own rows, never on the held-out fold.
        split = Split(fit_rows, fit_rows, fit_rows, None)
        norm, model, _ = train_model(refit, trained.data, split)
        scores[held] = served_scores(model, norm, trained.data.x[held])
    return scores[rows]


def _auroc(
    trained: Trained, folder: Path, val_scores: np.ndarray, calibration: CalibrationScores
) -> tuple[float | None, str | None]:
    """AUROC when labels say which rows are anomalies and there are enough of each. Out of fold, every row
    counts: normal rows by their out-of-fold scores, the anomalies (never trained on) by the model's own."""
    split = trained.split
    if split.val_is_anomaly is None or split.anomalous is None:
        return None, None
    if calibration.split == "validation":
        return auroc_if_enough(val_scores, split.val_is_anomaly, "validation rows")
    anomalous = run_graph(folder, "scorer.onnx", "score", trained.data.x[split.anomalous])
    scores = np.concatenate([calibration.scores, anomalous])
    is_anomaly = np.concatenate([np.zeros(len(calibration.scores), bool), np.ones(len(anomalous), bool)])
    return auroc_if_enough(scores, is_anomaly, "rows (normal ones scored out of fold)")


# PCA, the baseline the summary compares with, is fitted on at most this many training rows (a seeded
# sample): on a million rows its float64 copies would be the largest thing in memory.
PCA_MAX_ROWS = 100_000


def _pca_rows(train: np.ndarray) -> np.ndarray:
    if len(train) <= PCA_MAX_ROWS:
        return train
    return np.sort(np.random.default_rng(0).choice(train, PCA_MAX_ROWS, replace=False))


# Column names that usually hold labels rather than features.
LABEL_LIKE = {"label", "labels", "class", "target", "y", "is_anomaly", "anomaly", "outlier", "is_outlier"}


def _warn_of_label_like_features(data: Dataset, config: FitConfig) -> None:
    for name in data.feature_names or []:
        if name.strip().lower() in LABEL_LIKE:
            print(
                f"warning: column {name!r} is used as a feature but is named like a label; "
                f"if it is one, pass --label-column {name}",
                file=sys.stderr,
                flush=True,
            )


def _warnings(trained: Trained, threshold: Threshold) -> list[str]:
    return [*_few_rows_warning(threshold), *_still_falling_warning(trained)]


def _few_rows_warning(threshold: Threshold) -> list[str]:
    promised, fpr = 1.0 - threshold.quantile, threshold.false_positive_rate
    if fpr is None or fpr.expected <= 2 * promised:
        return []
    return [
        f"the threshold is the {threshold.quantile} quantile of only {threshold.rows} normal rows: it lets "
        f"through about {100 * fpr.expected:.2g}% of new normal rows, not {100 * promised:.2g}%; train on more "
        "normal rows for the promised rate"
    ]


def _still_falling_warning(trained: Trained) -> list[str]:
    config, history = trained.config, trained.history
    epochs, window = config.epochs or 0, config.patience or 1
    if not history.still_falling(epochs, window):
        return []
    fell = f"down more than {100 * STILL_FALLING:g}% over the last {window}"
    advice = (
        "the default stops there on purpose: on the ADBench tables more epochs ranked anomalies worse "
        "(docs/evaluation.md); raise --epochs for closer reconstructions"
        if trained.data.kind == "tabular" and trained.config.members and trained.config.members > 1
        else f"the model may be undertrained; try --epochs {2 * epochs}"
    )
    return [f"validation loss was still falling at the last epoch ({epochs}; {fell}): {advice}"]


def _data_used(data: Dataset, split: Split, config: FitConfig) -> TrainingData:
    """What the model was trained on, in the manifest and report.json: rows, what was left out and why,
    the features and the label column."""
    return TrainingData(
        file=data.source.name,
        sha256=data.sha256,
        rows_total=len(data.x),
        rows_train=len(split.train),
        rows_val=len(split.val),
        rows_train_left_out=split.left_out,
        left_out_because=split.left_out_because,
        features=data.feature_names if data.feature_names is not None else int(np.prod(data.shape)),
        normal_label=config.normal_label,
        label_column=config.label_column,
    )


def run_graph(folder: Path, file: str, output: str, x: np.ndarray) -> np.ndarray:
    """Runs an exported graph as the service will, over every row of `x`."""
    return np.concatenate(list(graph_chunks(folder, file, output, x)))


def graph_chunks(
    folder: Path, file: str, output: str, x: np.ndarray, rows: np.ndarray | None = None
) -> Iterator[np.ndarray]:
    """An exported graph's output over the rows `x[rows]` (all rows by default), one chunk of about 1,024
    rows at a time: only a chunk of the rows is ever gathered, and the caller decides what to keep."""
    session = ort.InferenceSession(str(folder / file), providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0].name
    if rows is None:
        rows = np.arange(len(x))
    for chunk in np.array_split(rows, max(1, len(rows) // 1024)):
        yield session.run([output], {feed: x[chunk]})[0]


def _draw_pictures(
    folder: Path,
    name: str,
    data: Dataset,
    x_val: np.ndarray,
    norm: Normalisation,
    spec: ModelSpec,
    history: History,
    latent: Latent,
) -> None:
    report.plot_losses(history, folder / "loss_curves.png", f"{name}: {spec.kind} autoencoder")
    if data.kind != "image":
        return
    # Pictures are drawn in normalised space, where image pixels lie in [0, 1].
    originals = x_val[:10]
    recon = run_graph(folder, "scorer.onnx", "x_hat", originals)
    report.plot_image_rows(
        [norm.apply(originals), norm.apply(recon)], ["original", "reconstructed"], folder / "reconstructions.png", name
    )
    rng = np.random.default_rng(0)
    if spec.variational:
        z = rng.standard_normal((10, spec.latent_dim))
    else:
        # From the training codes' mean and covariance, as the service's /generate does.
        z = rng.multivariate_normal(latent.mean, latent.cov, size=10, method="eigh")
    samples = run_graph(folder, "decoder.onnx", "x_hat", z.astype(np.float32))
    report.plot_image_rows([norm.apply(samples)], ["generated"], folder / "samples.png", f"{name}: samples")


def _library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("torch", "onnx", "onnxruntime", "numpy", "scikit-learn"):
        versions[package] = installed_version(package)
    return versions


def summary(manifest: Manifest, destination: Path) -> str:
    metrics, training = manifest.metrics, manifest.training
    auroc_text = (
        (metrics.auroc_note or "n/a") if metrics.auroc is None else f"{metrics.auroc:.4f} ({metrics.auroc_note})"
    )
    # Box-scaled reconstructions never leave the box, so their MSE is above PCA's by design.
    bounded = "; reconstructions are bounded to each feature's box" if manifest.preprocessing.kind == "box" else ""
    parity = max(manifest.parity.max_abs_diff.values())
    calibration = manifest.score.calibration
    size = sum(p.stat().st_size for p in destination.iterdir()) / 1e6
    return "\n".join(
        [
            f"model package {destination} ({size:.1f} MB)",
            f"  data           {_data_line(training.data)}",
            f"  architecture   {manifest.architecture.kind}, input {manifest.input.shape}, "
            f"latent {manifest.latent.dim}, loss {manifest.loss}",
            f"  epochs         {training.epochs_run} (best {training.best_epoch}), {training.seconds} s",
            f"  val MSE        {metrics.val_mse:.6f}  (PCA, same components: {metrics.pca_val_mse:.6f})" + bounded,
            f"  threshold      {manifest.score.threshold:.6f} ({describe_calibration(calibration)})",
            f"  AUROC          {auroc_text}",
            f"  parity         max |onnxruntime - torch| = {parity:.2e}",
            *(f"  warning        {warning}" for warning in training.warnings),
        ]
    )


def _data_line(used: TrainingData) -> str:
    names = used.features
    if isinstance(names, list):
        features = f"{len(names)} features ({', '.join(names[:6])}{', ...' if len(names) > 6 else ''})"
    else:
        features = f"{names} values per row"
    line = f"{used.rows_train} training rows of {used.rows_total}"
    if used.rows_train_left_out:
        line += f", {used.rows_train_left_out} left out ({used.left_out_because})"
    line += f"; {features}"
    return line + (f"; label column {used.label_column!r}" if used.label_column else "")


def _say(config: FitConfig, message: str) -> None:
    if config.progress:
        print(message, file=sys.stderr, flush=True)
