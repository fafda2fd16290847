"""The model package format (docs/model-package.md) as one set of pydantic models: training builds a
`Manifest` and writes it, the service parses manifest.json into one, and docs/manifest.schema.json is
generated from it (`python -m service.manifest > docs/manifest.schema.json`).

What a reader accepts is what the models say: the fields every package has are required, the ones older
packages lack have defaults, and fields the format does not know are kept as written (GET /models shows them).
Torch-free, and importing nothing else of the service: training imports it too.
"""

from __future__ import annotations

import json
import math
import re
from functools import cached_property
from typing import Annotated, Any, Literal, get_args

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

FormatVersion = Literal[1]
FORMAT_VERSION: FormatVersion = get_args(FormatVersion)[0]
MANIFEST = "manifest.json"
# Model names and version folders; whole names only (fullmatch: a trailing newline is not part of a name).
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]*")
VERSION_PATTERN = re.compile(r"[1-9][0-9]{0,17}")
GRAPH_ROLES = ("encoder", "decoder", "scorer")
ArchitectureKind = Literal["dense", "conv", "vae"]

Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


def graph_io(variational: bool) -> dict[str, tuple[list[str], list[str]]]:
    """The inputs and outputs the format requires of each graph, by role."""
    encoder_outputs = ["z", "z_logvar"] if variational else ["z"]
    return {
        "encoder": (["x"], encoder_outputs),
        "decoder": (["z"], ["x_hat"]),
        "scorer": (["x"], ["x_hat", "score", "sq_err"]),
    }


class PackageError(Exception):
    """A model package that breaks the format: the model is listed as unavailable with this reason."""


class _Part(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True, use_attribute_docstrings=True)


class Architecture(_Part):
    """What the graphs compute; the graphs themselves are all a reader needs to serve them."""

    kind: ArchitectureKind
    """`dense`, `conv` or `vae` (a VAE has a dense or conv body: `variational` is true and `body` says which)."""
    body: Literal["dense", "conv"]
    input_shape: list[PositiveInt] | None = None
    latent_dim: PositiveInt
    """Equals `latent.dim`."""
    variational: bool
    hidden: list[PositiveInt]
    """Dense hidden layer sizes, outermost first."""
    channels: list[PositiveInt]
    """Convolutional channels per stride-2 layer."""
    output_activation: Literal["sigmoid", "identity"]
    """The decoder's last activation, in normalised space: sigmoid keeps reconstructions inside [0, 1]."""
    loss: str | None = None
    beta: float | None = None
    """VAE: the weight of the KL term."""
    member_latents: list[PositiveInt] = []
    """An ensemble's members (the default for tables): each one's code size; empty for one autoencoder. `z`
    holds the members' codes side by side, so `latent.dim` is their sum."""
    member_features: list[list[NonNegativeInt]] = []
    """An ensemble's members: the feature indices each reads (the others are zeroed); empty for one autoencoder."""
    noise: NonNegativeFloat
    """Standard deviation of the Gaussian input noise used in training (denoising); 0 when off."""


class Input(_Part):
    """What one row is."""

    kind: Literal["image", "tabular"]
    """`image` (rows are H x W [x C] nested lists; PNG, JPEG and BMP uploads accepted) or `tabular`."""
    shape: list[PositiveInt] = Field(min_length=1, max_length=3)
    """S, the input shape without the batch axis: [D] for tables, [H, W] or [H, W, C] for images; equals the
    graphs' `x` shape."""
    dtype: Literal["float32"]
    feature_names: list[str] | None
    """Column names for tabular data from CSV / Parquet, else null."""


class Latent(_Part):
    """The distribution of codes, for /generate."""

    dim: PositiveInt
    """L, the latent size."""
    prior: Literal["standard_normal", "empirical"] | None = None
    """Where samples are drawn from: `standard_normal` (a VAE: N(0, I)) or `empirical` (N(mean, cov)). Packages
    without it follow that rule by `architecture.variational`."""
    mean: list[float]
    """Mean of `z` on the training rows."""
    cov: list[list[float]]
    """Covariance of `z` on the training rows: any model can generate samples from N(mean, cov)."""


class Preprocessing(_Part):
    """x_norm = (x - offset) / scale, folded into the graphs: clients send and receive raw values."""

    kind: str
    """How offset and scale were fitted on the training rows: `divide` (images: offset 0, scale 255, or 1 for
    data already in [0, 1]), `box` (tables, the default: offset = per-feature 12.5th percentile, scale = 87.5th -
    12.5th percentile, so the central 75% of training values maps onto [0, 1]; the decoder ends in a sigmoid,
    so reconstructions stay inside that box), `minmax` (offset = minimum, scale = max - min) or `standardise`
    (offset = mean, scale = standard deviation). Readers need only offset and scale and accept kinds they do not
    know: new kinds can appear within format version 1, as `box` did."""
    offset: list[float] = Field(min_length=1)
    """Broadcast against one row: 1 value (for all features) or one per feature."""
    scale: list[Annotated[float, Field(gt=0)]] = Field(min_length=1)
    """Broadcast against one row: 1 value (for all features) or one per feature. Image uploads and PNG answers
    map pixel p to p / 255 of the raw range."""
    description: str | None = None


class FalsePositiveRate(_Part):
    """A new normal row's chance of scoring above the threshold. The threshold is an order statistic of `rows`
    exchangeable scores, so that chance follows a Beta distribution whatever the scores' own distribution."""

    expected: float = Field(ge=0, le=1)
    low: float = Field(ge=0, le=1)
    high: float = Field(ge=0, le=1)
    confidence: float = Field(gt=0, lt=1)


class Calibration(_Part):
    """How the threshold was chosen."""

    method: Literal["quantile"]
    quantile: float = Field(gt=0, lt=1)
    split: str
    """Which rows were scored: `validation` (the normal validation rows, scored by the model itself) or
    `out_of_fold` (every normal row, each scored by a refit that never saw it: when the validation split
    holds too few normal rows)."""
    rows: PositiveInt
    """Normal rows scored."""
    normal_label: str | None
    """The label of normal rows when one was given, else null (every row not labelled anomalous)."""
    folds: PositiveInt | None = None
    """`out_of_fold`: how many refits scored the rows."""
    false_positive_rate: FalsePositiveRate | None = None
    """How often a new normal row lands above the threshold, with the uncertainty `rows` leaves."""


class Score(_Part):
    """The anomaly score: a row is an anomaly when `score > threshold`."""

    definition: str
    """In words: the mean over features of the squared error in normalised space (an ensemble: the mean of
    its members' scores)."""
    threshold: float
    """Calibrated on validation rows that are normal: the `calibration.quantile` of their scores."""
    calibration: Calibration
    quantiles: list[float] | None = None
    """The same normal validation scores at evenly spaced probabilities from 0 to 1 (1,001 points, or every
    score when there are fewer rows), non-decreasing. A score's percentile is read off by linear interpolation
    (0 below the first, 100 above the last). Packages without it serve no percentiles."""
    feature_shares: list[NonNegativeFloat] | None = None
    """Tables: each feature's share of a normal validation row's squared error, averaged over those rows (they
    sum to 1): the reference score monitoring compares the live rows' shares with, to name the features that
    drifted. Null for images and for packages written before it."""

    @field_validator("quantiles")
    @classmethod
    def _a_curve(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and (len(value) < 2 or not np.all(np.isfinite(value)) or np.any(np.diff(value) < 0)):
            raise ValueError("score.quantiles must be at least two finite, non-decreasing numbers")
        return value

    @cached_property
    def _curve(self) -> tuple[np.ndarray, np.ndarray]:
        assert self.quantiles is not None
        return np.asarray(self.quantiles), np.linspace(0.0, 100.0, len(self.quantiles))

    def percentiles(self, scores: np.ndarray) -> np.ndarray | None:
        """Each score's percentile (0 to 100) among the normal validation scores; None when the package
        predates the quantiles."""
        if self.quantiles is None:
            return None
        quantiles, percent = self._curve
        return np.interp(scores, quantiles, percent).astype(np.float32)


class Graph(_Part):
    """One ONNX graph of the package: its file and tensor names (see `graph_io` for what each role needs)."""

    file: str
    inputs: list[str]
    outputs: list[str]


class Parity(_Part):
    """The export gate: onnxruntime against PyTorch, passed when every output satisfies
    |ort - torch| <= atol + rtol * |torch|."""

    rows: PositiveInt
    """Validation rows compared."""
    atol: float
    rtol: float
    max_abs_diff: dict[str, float]
    """The largest |ort - torch| per graph output (`<role>.<output>`)."""


class TrainingData(_Part):
    """What the model was trained on."""

    file: str
    sha256: Sha256
    rows_total: NonNegativeInt
    rows_train: NonNegativeInt
    rows_val: NonNegativeInt
    rows_train_left_out: NonNegativeInt = 0
    """Rows of the training part not trained on (labelled anomalous, or not the normal label)."""
    left_out_because: str | None = None
    features: int | list[str] | None = None
    """The feature names, or the number of values per row when the data has no names."""
    normal_label: str | None = None
    label_column: str | None = None


class Training(_Part):
    """How the package was made."""

    data: TrainingData
    config: dict[str, Any]
    """Every setting of the run, chosen defaults included (training.config.FitConfig)."""
    device: str
    epochs_run: NonNegativeInt
    best_epoch: NonNegativeInt | None = None
    seconds: NonNegativeFloat | None = None
    warnings: list[str] = Field(default_factory=list)
    """What the run noticed that a user should know, e.g. that validation loss was still falling at the end."""


class Metrics(_Part):
    """Measured on the validation rows, in normalised space."""

    train_loss: float | None
    val_loss: float | None
    val_mse: float
    """Mean score of the normal validation rows."""
    pca_val_mse: float
    """PCA's, with as many components as the model's latent (an ensemble's: its widest member's), fitted on the
    training rows in the same normalised space."""
    auroc: float | None
    """AUROC of the score on validation rows when their labels are known (anomaly: a label other than the normal
    label, or label 1 when no normal label was given) and hold enough rows of each class; else null."""
    auroc_note: str | None = None
    """Why `auroc` is null, or which rows it was measured on."""


class Libraries(_Part):
    """Versions of what trained and exported the package (others, like scikit-learn, may follow)."""

    python: str
    torch: str
    onnx: str
    onnxruntime: str
    numpy: str


class Manifest(_Part):
    """manifest.json: what a model package holds and how to serve it."""

    model_config = ConfigDict(title=f"Model package manifest, format_version {FORMAT_VERSION}")

    format_version: FormatVersion
    """A reader refuses any other value."""
    name: str = Field(pattern=f"^{NAME_PATTERN.pattern}$")
    """Equals the package's folder name (models/<name>/<version>/)."""
    version: PositiveInt
    """Equals the package's version folder."""
    created_at: str
    """When the package was written (ISO 8601)."""
    architecture: Architecture
    input: Input
    latent: Latent
    preprocessing: Preprocessing
    loss: Literal["mse", "bce", "huber"]
    """The training reconstruction loss: `mse`, `huber` (delta 0.5 in normalised units) or `bce` (inputs scaled
    into [0, 1]). The score is a squared error whatever the loss."""
    score: Score
    graphs: dict[str, Graph] = Field(json_schema_extra={"required": list(GRAPH_ROLES)})
    """The three graphs by role: `encoder`, `decoder` and `scorer`."""
    parity: Parity
    training: Training
    metrics: Metrics
    libraries: Libraries
    files: dict[str, Sha256]
    """The sha256 of every file in the package except manifest.json."""

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        dim = self.latent.dim
        if self.architecture.latent_dim != dim:
            raise ValueError(f"architecture.latent_dim {self.architecture.latent_dim} != latent.dim {dim}")
        if len(self.latent.mean) != dim or any(len(row) != dim for row in self.latent.cov):
            raise ValueError(f"latent.mean must have {dim} values and latent.cov be {dim} x {dim}")
        if self.input.kind == "image" and len(self.input.shape) not in (2, 3):
            raise ValueError(f"an image input has shape [H, W] or [H, W, C], not {self.input.shape}")
        names = self.input.feature_names
        if names is not None and (len(names) != self.features or len(set(names)) != len(names)):
            raise ValueError(f"input.feature_names must name each of the {self.features} features once")
        for name in ("offset", "scale"):
            size = len(getattr(self.preprocessing, name))
            if size not in (1, self.features):
                raise ValueError(f"preprocessing.{name} has {size} values: need 1 or {self.features}")
        missing = [role for role in GRAPH_ROLES if role not in self.graphs]
        if missing:
            raise ValueError(f"graphs {missing} are missing")
        return self

    @property
    def row_shape(self) -> tuple[int, ...]:
        return tuple(self.input.shape)

    @property
    def features(self) -> int:
        return math.prod(self.input.shape)

    @property
    def prior(self) -> str:
        """Where /generate draws latents from; older manifests without `latent.prior` follow the doc's rule."""
        if self.latent.prior is not None:
            return self.latent.prior
        return "standard_normal" if self.architecture.variational else "empirical"

    def normalisation(self) -> tuple[np.ndarray, np.ndarray]:
        """offset and scale, shaped to broadcast against a batch of rows."""
        return _per_row(self.preprocessing.offset, self.row_shape), _per_row(self.preprocessing.scale, self.row_shape)


def _per_row(values: list[float], row_shape: tuple[int, ...]) -> np.ndarray:
    return np.asarray(values, dtype=np.float32).reshape(row_shape if len(values) > 1 else (1,))


def parse_manifest(raw: Any, name: str, version: int) -> Manifest:
    """Validates one manifest.json against the format and the folder it was found in."""
    if not isinstance(raw, dict):
        raise PackageError("manifest.json is not a JSON object")
    if raw.get("format_version") != FORMAT_VERSION:
        raise PackageError(f"format_version {raw.get('format_version')!r} is not {FORMAT_VERSION}")
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'manifest'}: {e['msg']}" for e in exc.errors())
        raise PackageError(f"manifest.json: {problems}") from None
    if (manifest.name, manifest.version) != (name, version):
        raise PackageError(
            f"manifest names {manifest.name}/{manifest.version}, but the package lives in {name}/{version}"
        )
    return manifest


def json_schema() -> dict[str, Any]:
    """docs/manifest.schema.json: the JSON Schema of `Manifest`, as a reader validates it."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **_unwrapped(Manifest.model_json_schema())}


def _unwrapped(schema: Any) -> Any:
    """The schema with each description on one line (the docstrings it comes from wrap at the code's width)."""
    if isinstance(schema, list):
        return [_unwrapped(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    return {
        key: " ".join(value.split()) if key == "description" and isinstance(value, str) else _unwrapped(value)
        for key, value in schema.items()
    }


if __name__ == "__main__":
    print(json.dumps(json_schema(), indent=2))
