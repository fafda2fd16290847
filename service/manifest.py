"""The reader's side of docs/model-package.md: manifest.json parsed into the facts the service uses.

Only what serving depends on is typed here; every other field is kept as written and shown by GET /models.
"""

from __future__ import annotations

import math
from functools import cached_property
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator, model_validator

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
GRAPH_ROLES = ("encoder", "decoder", "scorer")


class PackageError(Exception):
    """A model package that breaks the format: the model is listed as unavailable with this reason."""


class _Part(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class Architecture(_Part):
    kind: str
    variational: bool
    latent_dim: PositiveInt


class Input(_Part):
    kind: Literal["image", "tabular"]
    shape: list[PositiveInt] = Field(min_length=1)
    feature_names: list[str] | None = None


class Latent(_Part):
    dim: PositiveInt
    mean: list[float]
    cov: list[list[float]]
    prior: Literal["standard_normal", "empirical"] | None = None


class Preprocessing(_Part):
    offset: list[float] = Field(min_length=1)
    scale: list[float] = Field(min_length=1)


class Score(_Part):
    threshold: float
    quantiles: list[float] | None = None  # normal validation scores at evenly spaced probabilities 0..1

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
    file: str
    inputs: list[str]
    outputs: list[str]


class Manifest(_Part):
    format_version: int
    name: str
    version: PositiveInt
    architecture: Architecture
    input: Input
    latent: Latent
    preprocessing: Preprocessing
    score: Score
    graphs: dict[str, Graph]
    files: dict[str, str]

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
