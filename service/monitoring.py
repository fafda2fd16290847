"""Score monitoring: is a model still seeing the data it was calibrated on? (docs/monitoring.md)

Every score the service computes (service.dataplane.score, whatever the protocol) is binned by its percentile
among the package's normal validation scores (`score.quantiles`): on the data the threshold was calibrated
on, those percentiles are uniform, so the expected count of every bin is known. Each worker adds its rows'
bin counts, anomaly flags and, for tables, each feature's share of the squared error into fixed-size arrays
in a file of its own (one per model version and process, in a folder every worker shares: under
PROMETHEUS_MULTIPROC_DIR when set). Whoever reports (GET /models/{name}/monitoring, GET /metrics) reads every
worker's file and merges them, so counts are summed and the window is the service's, not one worker's.
Nothing is locked: each file has one writer, and a report read while a request is being recorded may miss
that request's rows.

The window (AE_MONITOR_WINDOW) is a ring of SLOTS slots per worker: the last N rows (a slot holds N / SLOTS
rows; the report merges every worker's newest slots until it has N rows) or the last T seconds (a slot covers
T / SLOTS seconds).

No prometheus_client here (service.metrics exports these numbers): service.settings imports this module, and
prometheus_client chooses where its values live (memory or the workers' files) once, when first imported,
which `python -m service` must only do after setting PROMETHEUS_MULTIPROC_DIR.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import mmap
import os
import re
import shutil
import tempfile
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from service.manifest import Manifest

# Rows are binned by their percentile on the reference curve: every whole percent, then 99.5 and 99.9.
# The KS statistic is read at these edges; the histogram and PSI use the coarser BUCKETS (a subset).
EDGES = (*range(1, 100), 99.5, 99.9)
_EDGE_LIST = [float(edge) for edge in EDGES]
_EDGE_ARRAY = np.asarray(EDGES, dtype=np.float64)
BINS = len(EDGES) + 1
BUCKETS = (10, 25, 50, 75, 90, 95, 99, 99.9)
_BUCKET_INDEX = np.array([EDGES.index(bucket) for bucket in BUCKETS])
# Expected share of each fine bin: the percentile edges' differences.
_REFERENCE_BINS = np.diff([0.0, *EDGES, 100.0]) / 100.0
_REFERENCE_BUCKETS = np.diff([0.0, *BUCKETS, 100.0]) / 100.0

PSI_WARNING, PSI_DRIFT = 0.1, 0.25
RATE_P_VALUE = 0.001  # the anomaly rate is off when its adjusted p-value is below this
RATE_DRIFT_RATIO = 3.0  # ... and drifted when it is also this many times the expected rate
# Fewer rows in the window: status no_data. PSI over 9 bands has noise of about 8 / rows: with 100 rows drawn
# from the reference itself a third of windows read warning, with 300 one in a thousand.
MIN_ROWS = 300
# Past this many rows, the p-values take the normal approximation (exact ones cost time and memory in
# proportion to the rows: 1.7 s for a window of ten million).
EXACT_ROWS = 100_000
BETA_GRID = 200_000
FEATURE_EXCESS = 0.1  # a feature is named when its share of the error is this much above its reference share
PSI_FLOOR = 1e-4  # an empty bin counts as this share (PSI's logarithm needs one)
SLOTS = 10
FEW_FEATURES = 12  # one row of at most this many features is added up in plain Python (faster), more with numpy
DEFAULT_WINDOW_TEXT = "1000"
STATUS_CODE = {"no_data": -1, "ok": 0, "warning": 1, "drift": 2}

Status = Literal["no_data", "ok", "warning", "drift"]

# Columns of a slot: key (the slot's time epoch, seconds windows), the time of its last row, rows, rows
# flagged, sum of percentiles, then BINS counts, then one share sum per feature (tables).
_KEY, _LAST, _ROWS, _FLAGGED, _PCT_SUM, _BINS = 0, 1, 2, 3, 4, 5
_FEATURES = _BINS + BINS


@dataclass(frozen=True)
class Window:
    """The last `rows` rows, or the last `seconds` seconds; neither: monitoring is off."""

    rows: int = 0
    seconds: float = 0.0

    @classmethod
    def parse(cls, text: str) -> Window:
        """`1000` (rows), `1000rows`, `300s`, `5m`, `1h`; `0`: off."""
        found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(rows?|s|m|h)?\s*", text.lower())
        if found is None:
            raise ValueError(f"a window is a number of rows (1000) or of seconds (300s, 5m, 1h), not {text!r}")
        number, unit = float(found[1]), found[2] or "rows"
        if unit.startswith("row"):
            if not number.is_integer():
                raise ValueError(f"a window of rows is a whole number, not {text!r}")
            if 0 < number < MIN_ROWS:
                raise ValueError(f"a window of rows holds at least {MIN_ROWS} (the statistics need them), not {text!r}")
            return cls(rows=int(number))
        return cls(seconds=number * {"s": 1, "m": 60, "h": 3600}[unit])

    @property
    def on(self) -> bool:
        return self.rows > 0 or self.seconds > 0

    def describe(self) -> dict[str, Any]:
        return {"rows": self.rows} if self.rows else {"seconds": self.seconds}


DEFAULT_WINDOW = Window.parse(DEFAULT_WINDOW_TEXT)


@dataclass(frozen=True)
class Reference:
    """What a model version's live scores are compared with, from its manifest."""

    name: str
    version: int
    expected_rate: float  # the share of normal rows above the threshold: 1 - calibration.quantile
    # The threshold is a quantile of `calibration.rows` scores, so the rate it really implies is uncertain:
    # Beta(rate_alpha, rate_beta), the share of new rows above that order statistic (any score distribution).
    rate_alpha: float
    rate_beta: float
    bucket_scores: list[float]  # the score at each of BUCKETS on the curve
    features: list[str] | None  # tables: the features' names
    feature_shares: np.ndarray | None  # tables: each feature's mean share of a normal row's squared error
    key: str  # name, version and a digest of the curve: a changed package starts new files

    @classmethod
    def of(cls, manifest: Manifest) -> Reference | None:
        """None when the package stores no curve: its scores have no percentiles to bin."""
        score = manifest.score
        if score.quantiles is None:
            return None
        curve = np.asarray(score.quantiles)
        bucket_scores = np.interp(BUCKETS, np.linspace(0, 100, len(curve)), curve).tolist()
        features, shares = None, None
        if manifest.input.kind == "tabular":
            features = manifest.input.feature_names or [str(i) for i in range(manifest.features)]
            stored = score.feature_shares
            shares = np.asarray(stored, dtype=np.float64) if stored is not None else None
        digest = hashlib.sha256(curve.tobytes() + str(score.threshold).encode()).hexdigest()[:12]
        key = f"{manifest.name}@{manifest.version}@{digest}"
        quantile, rows = score.calibration.quantile, score.calibration.rows
        position = quantile * (rows - 1)  # numpy's quantile: this far along the sorted scores, from 0
        return cls(
            manifest.name,
            manifest.version,
            1.0 - quantile,
            rows - position,
            position + 1,
            bucket_scores,
            features,
            shares,
            key,
        )


class Recorder:
    """One model version's rows in one worker: adds them to its file. `record` is all a request pays."""

    def __init__(self, reference: Reference, window: Window, folder: Path) -> None:
        self.reference = reference
        self.window = window
        self.folder = folder
        self._columns = _FEATURES + (len(reference.features) if reference.features else 0)
        self._slot_rows = max(1, -(-window.rows // SLOTS)) if window.rows else 0
        self._slot_seconds = window.seconds / SLOTS
        self._pid = 0
        self._array = np.zeros((0, 0))
        self._flat = memoryview(b"").cast("d")
        self._slot = 1

    def record(self, percentiles: np.ndarray, is_anomaly: np.ndarray, sq_err: np.ndarray) -> None:
        if self._pid != os.getpid():  # opened in the process that writes (a fork gets a file of its own)
            self._open()
        n = len(percentiles)
        now = time.time()
        base = self._advance(n, now) * self._columns
        if n == 1:
            self._record_one(base, percentiles.item(), bool(is_anomaly.item()), sq_err)
        else:
            self._record_many(base, percentiles, is_anomaly, sq_err)
        self._flat[base + _LAST] = now

    def _record_one(self, base: int, percent: float, flagged: bool, sq_err: np.ndarray) -> None:
        # numpy's cost per call is most of what a one-row request pays here: one row goes through the plain
        # memoryview of the file, each update a fraction of a microsecond.
        flat = self._flat
        column = _BINS + bisect.bisect_left(_EDGE_LIST, percent)
        flat[base + column] += 1
        flat[column] += 1  # the totals are the file's first row (base 0)
        flat[base + _ROWS] += 1
        flat[_ROWS] += 1
        flat[_PCT_SUM] += percent
        if flagged:
            flat[base + _FLAGGED] += 1
            flat[_FLAGGED] += 1
        features = self._columns - _FEATURES
        if 0 < features <= FEW_FEATURES:
            errors = sq_err.reshape(-1).tolist()
            whole = sum(errors)
            if whole > 0:
                start = base + _FEATURES
                for i, error in enumerate(errors):
                    flat[start + i] += error / whole
        elif features:
            row = sq_err.reshape(-1)
            whole = float(row.sum())
            if whole > 0:
                shares = self._array.reshape(-1)[base + _FEATURES : base + self._columns]
                shares += row / whole

    def _record_many(self, base: int, percentiles: np.ndarray, is_anomaly: np.ndarray, sq_err: np.ndarray) -> None:
        slot, total = self._array.reshape(-1)[base : base + self._columns], self._array[0]
        counts = np.bincount(np.searchsorted(_EDGE_ARRAY, percentiles), minlength=BINS)
        flagged = np.count_nonzero(is_anomaly)
        slot[_BINS:_FEATURES] += counts
        total[_BINS:_FEATURES] += counts
        slot[_ROWS] += len(percentiles)
        total[_ROWS] += len(percentiles)
        slot[_FLAGGED] += flagged
        total[_FLAGGED] += flagged
        total[_PCT_SUM] += float(percentiles.sum())
        if self._columns > _FEATURES:
            slot[_FEATURES:] += _error_shares(sq_err)

    def _advance(self, n: int, now: float) -> int:
        """The slot this request's rows go into, cleared when a new one begins."""
        flat, base = self._flat, self._slot * self._columns
        if self._slot_rows:
            rows = flat[base + _ROWS]
            if rows == 0 or rows + n <= self._slot_rows:
                return self._slot
            key = flat[base + _KEY] + 1
        else:
            key = float(now // self._slot_seconds)
            if flat[base + _KEY] == key:
                return self._slot
        self._slot = self._slot % SLOTS + 1
        fresh = self._array[self._slot]
        fresh[:] = 0
        fresh[_KEY] = key
        return self._slot

    def _open(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{self.reference.key}@{os.getpid()}.mon"
        size = (1 + SLOTS) * self._columns * 8
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.ftruncate(descriptor, size)
            buffer = mmap.mmap(descriptor, size)
        finally:
            os.close(descriptor)
        self._array = np.ndarray((1 + SLOTS, self._columns), dtype=np.float64, buffer=buffer)
        self._array[:] = 0
        self._flat = memoryview(buffer).cast("d")
        self._pid, self._slot = os.getpid(), 1


def _error_shares(sq_err: np.ndarray) -> np.ndarray:
    """The sum over rows of each feature's share of its row's squared error (rows without error add none)."""
    parts = sq_err.reshape(len(sq_err), -1).astype(np.float64)
    totals = parts.sum(axis=1, keepdims=True)
    return np.divide(parts, totals, out=np.zeros_like(parts), where=totals > 0).sum(axis=0)


@dataclass(frozen=True)
class Merged:
    """Every worker's files of one model version: the window's slots and the totals since start."""

    slots: np.ndarray  # [k, columns], the window's slots, oldest first
    total: np.ndarray  # [columns]
    workers: int

    @property
    def window(self) -> np.ndarray:
        return self.slots.sum(axis=0) if len(self.slots) else np.zeros_like(self.total)


def merge(reference: Reference, window: Window, folder: Path, now: float) -> Merged:
    columns = _FEATURES + (len(reference.features) if reference.features else 0)
    arrays = []
    for path in folder.glob(f"{glob_escape(reference.key)}@*.mon"):
        try:
            array = np.fromfile(path, dtype=np.float64)
        except OSError:  # a file removed between the listing and the read
            continue
        if array.size == (1 + SLOTS) * columns:
            arrays.append(array.reshape(1 + SLOTS, columns))
    if not arrays:
        empty = np.zeros(columns)
        return Merged(np.zeros((0, columns)), empty, 0)
    total = np.sum([array[0] for array in arrays], axis=0)
    slots = np.concatenate([array[1:] for array in arrays])
    slots = slots[slots[:, _ROWS] > 0]
    newest_first = slots[np.argsort(-slots[:, _LAST], kind="stable")]
    if window.rows:
        # A slot starts in the window while fewer than `rows` newer rows precede it.
        before = np.cumsum(newest_first[:, _ROWS]) - newest_first[:, _ROWS]
        kept = newest_first[before < window.rows]
    else:
        kept = newest_first[newest_first[:, _LAST] >= now - window.seconds]
    return Merged(kept[::-1], total, len(arrays))


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


# --- statistics ----------------------------------------------------------------------------------------


def psi(observed: np.ndarray, expected: np.ndarray) -> float:
    """Population stability index: sum of (o - e) ln(o / e) over the bins, shares floored at PSI_FLOOR."""
    o = np.maximum(observed / max(observed.sum(), 1), PSI_FLOOR)
    e = np.maximum(expected, PSI_FLOOR)
    return float(np.sum((o - e) * np.log(o / e)))


def ks(bin_counts: np.ndarray) -> tuple[float, float]:
    """The Kolmogorov-Smirnov distance between the live percentiles and the uniform distribution the
    reference curve defines, read at the bin edges, and its asymptotic p-value (Stephens' correction)."""
    n = float(bin_counts.sum())
    if n == 0:
        return 0.0, 1.0
    live = np.cumsum(bin_counts)[:-1] / n
    distance = float(np.max(np.abs(live - _EDGE_ARRAY / 100.0)))
    root = math.sqrt(n)
    return distance, kolmogorov_sf((root + 0.12 + 0.11 / root) * distance)


def kolmogorov_sf(x: float) -> float:
    """P(K > x) of the Kolmogorov distribution."""
    if x < 0.2:
        return 1.0
    terms = sum((-1) ** (k - 1) * math.exp(-2 * k * k * x * x) for k in range(1, 101))
    return float(min(1.0, max(0.0, 2 * terms)))


def binomial_p_value(k: int, n: int, p: float) -> float:
    """Two-sided exact binomial test: the probability of a count at most as likely as k, out of n at rate p
    (the convention of scipy.stats.binomtest)."""
    if n == 0:
        return 1.0
    if p <= 0 or p >= 1:
        return 1.0 if k == round(p * n) else 0.0
    if n > EXACT_ROWS:
        return _normal_two_sided(k, n * p, n * p * (1 - p))
    i = np.arange(n)
    # log pmf by its ratios: pmf(i + 1) / pmf(i) = (n - i) / (i + 1) * p / (1 - p)
    return _two_sided(k, np.log((n - i) / (i + 1.0)) + math.log(p / (1 - p)))


def beta_binomial_p_value(k: int, n: int, alpha: float, beta: float) -> float:
    """Two-sided test of a count k out of n whose rate is itself uncertain, Beta(alpha, beta): the
    beta-binomial distribution, with the binomial test's convention."""
    if n == 0:
        return 1.0
    if n > EXACT_ROWS:
        return _beta_two_sided(k / n, alpha, beta)
    i = np.arange(n)
    # pmf(i + 1) / pmf(i) = (n - i) / (i + 1) * (i + alpha) / (n - i - 1 + beta)
    return _two_sided(k, np.log((n - i) / (i + 1.0)) + np.log((i + alpha) / (n - i - 1 + beta)))


def _normal_two_sided(k: int, mean: float, variance: float) -> float:
    if variance <= 0:
        return 1.0 if k == round(mean) else 0.0
    return math.erfc(abs(k - mean) / math.sqrt(2 * variance))


def _beta_two_sided(rate: float, alpha: float, beta: float) -> float:
    """The beta-binomial test for many rows: the count's own binomial noise is then small beside the rate's
    uncertainty, so the rate is tested against Beta(alpha, beta) itself, on a fine grid (the beta is skewed
    when calibrated on few rows: a normal approximation was off by half)."""
    grid = (np.arange(BETA_GRID) + 0.5) / BETA_GRID
    log_density = (alpha - 1) * np.log(grid) + (beta - 1) * np.log1p(-grid)
    top = float(log_density.max())
    rate = min(max(rate, grid[0]), grid[-1])
    at_rate = math.exp((alpha - 1) * math.log(rate) + (beta - 1) * math.log1p(-rate) - top)
    density = np.exp(log_density - top)
    return float(min(1.0, density[density <= at_rate * (1 + 1e-7)].sum() / density.sum()))


def _two_sided(k: int, log_ratios: np.ndarray) -> float:
    """The total probability of the counts no more likely than k, from the log ratios of consecutive pmfs."""
    log_pmf = np.concatenate([[0.0], np.cumsum(log_ratios)])
    pmf = np.exp(log_pmf - log_pmf.max())
    at_most = pmf <= pmf[k] * (1 + 1e-7)
    return float(min(1.0, pmf[at_most].sum() / pmf.sum()))


@dataclass(frozen=True)
class Verdict:
    status: Status
    reasons: list[str]


def judge(rows: int, psi_value: float, rate: float, expected: float, rate_p: float) -> Verdict:
    if rows < MIN_ROWS:
        return Verdict("no_data", [f"{rows} rows in the window; statistics need {MIN_ROWS}"])
    levels: list[tuple[Status, str]] = []
    if psi_value >= PSI_DRIFT:
        levels.append(("drift", f"PSI {psi_value:.3f} >= {PSI_DRIFT}"))
    elif psi_value >= PSI_WARNING:
        levels.append(("warning", f"PSI {psi_value:.3f} >= {PSI_WARNING}"))
    if rate_p < RATE_P_VALUE:
        far = rate >= RATE_DRIFT_RATIO * expected
        what = f"anomaly rate {rate:.4f} against {expected:.4f} expected (adjusted p = {rate_p:.2g})"
        levels.append(("drift" if far else "warning", what))
    if not levels:
        return Verdict("ok", [])
    worst = max(levels, key=lambda level: STATUS_CODE[level[0]])[0]
    return Verdict(worst, [reason for _, reason in levels])


def report(reference: Reference, window: Window, folder: Path, now: float | None = None) -> dict[str, Any]:
    """The monitoring answer of one model version: GET /models/{name}/monitoring."""
    merged = merge(reference, window, folder, time.time() if now is None else now)
    return summarise(reference, window, merged)


def summarise(reference: Reference, window: Window, merged: Merged) -> dict[str, Any]:
    live = merged.window
    rows, flagged = int(live[_ROWS]), int(live[_FLAGGED])
    bins = live[_BINS:_FEATURES]
    buckets = _coarse(bins)
    rate = flagged / rows if rows else 0.0
    rate_p = binomial_p_value(flagged, rows, reference.expected_rate)
    adjusted_p = beta_binomial_p_value(flagged, rows, reference.rate_alpha, reference.rate_beta)
    psi_value = psi(buckets, _REFERENCE_BUCKETS) if rows else 0.0
    distance, ks_p = ks(bins)
    verdict = judge(rows, psi_value, rate, reference.expected_rate, adjusted_p)
    return {
        "model": reference.name,
        "version": reference.version,
        "status": verdict.status,
        "reasons": verdict.reasons,
        "window": {
            **window.describe(),
            "rows_seen": rows,
            "since": float(merged.slots[0, _LAST]) if len(merged.slots) else None,
            "workers": merged.workers,
        },
        "anomaly_rate": {
            "observed": rate,
            "expected": reference.expected_rate,
            "flagged": flagged,
            "p_value": rate_p,
            "adjusted_p_value": adjusted_p,
        },
        "psi": psi_value,
        "ks": {"statistic": distance, "p_value": ks_p},
        "histogram": _histogram(reference, buckets),
        "series": [
            {"time": float(slot[_LAST]), "rows": int(slot[_ROWS]), "anomaly_rate": slot[_FLAGGED] / slot[_ROWS]}
            for slot in merged.slots
        ],
        "features": _features(reference, live),
        "totals": {"rows": int(merged.total[_ROWS]), "flagged": int(merged.total[_FLAGGED])},
        "thresholds": THRESHOLDS,
    }


THRESHOLDS = {
    "psi_warning": PSI_WARNING,
    "psi_drift": PSI_DRIFT,
    "anomaly_rate_adjusted_p_value": RATE_P_VALUE,
    "anomaly_rate_drift_ratio": RATE_DRIFT_RATIO,
    "min_rows": MIN_ROWS,
    "feature_excess": FEATURE_EXCESS,
}


def _coarse(bins: np.ndarray) -> np.ndarray:
    """Fine bin counts summed into the BUCKETS' bins (the last bin is above the highest bucket)."""
    cumulative = np.cumsum(bins)
    upto = np.concatenate([cumulative[_BUCKET_INDEX], [cumulative[-1]]])
    return np.diff(upto, prepend=0.0)


def _histogram(reference: Reference, buckets: np.ndarray) -> list[dict[str, Any]]:
    rows = buckets.sum()
    uppers: list[float | None] = [*reference.bucket_scores, None]
    percents: list[float | None] = [*map(float, BUCKETS), None]
    return [
        {
            "le_percentile": percent,
            "le_score": upper,
            "reference": float(expected),
            "live": float(count / rows) if rows else 0.0,
            "rows": int(count),
        }
        for percent, upper, expected, count in zip(percents, uppers, _REFERENCE_BUCKETS, buckets, strict=True)
    ]


def _features(reference: Reference, live: np.ndarray) -> dict[str, Any] | None:
    """Tables: each feature's mean share of the squared error over the window, against the normal validation
    rows' shares (packages that store them); the features whose share grew by FEATURE_EXCESS or more are
    named, largest growth first."""
    if reference.features is None:
        return None
    rows = live[_ROWS]
    shares = live[_FEATURES:] / rows if rows else np.zeros(len(reference.features))
    stored = reference.feature_shares
    if stored is None or len(stored) != len(shares):  # nothing to compare with: the largest shares first
        order = np.argsort(-shares, kind="stable")
        listed = [{"name": reference.features[i], "share": float(shares[i])} for i in order]
        return {"reference": None, "shares": listed, "drifted": None}
    excess = shares - stored
    order = np.argsort(-excess, kind="stable")
    listed = [
        {
            "name": reference.features[i],
            "share": float(shares[i]),
            "reference_share": float(stored[i]),
            "excess": float(excess[i]),
        }
        for i in order
    ]
    named = rows >= MIN_ROWS
    drifted = [reference.features[i] for i in order if named and excess[i] >= FEATURE_EXCESS]
    return {"reference": "score.feature_shares", "shares": listed, "drifted": drifted}


# --- one per app ---------------------------------------------------------------------------------------


class Monitoring:
    """The app's recorders (one per live model version), where their files go, and the Prometheus collector
    that reports them."""

    def __init__(self, window: Window, multiprocess_dir: str | None) -> None:
        self.window = window
        if multiprocess_dir:
            self.folder = Path(multiprocess_dir) / "monitoring"
        else:  # one process: a folder of its own, removed with it
            self.folder = Path(tempfile.mkdtemp(prefix="ae-monitoring-"))
            weakref.finalize(self, shutil.rmtree, self.folder, ignore_errors=True)
        self._recorders: weakref.WeakValueDictionary[str, Recorder] = weakref.WeakValueDictionary()

    def recorder(self, manifest: Manifest) -> Recorder | None:
        """The recorder of a model version (shared by the runtimes of one package); None when monitoring is
        off or the package stores no score curve."""
        reference = Reference.of(manifest) if self.window.on else None
        if reference is None:
            return None
        recorder = self._recorders.get(reference.key)
        if recorder is None:
            recorder = self._recorders[reference.key] = Recorder(reference, self.window, self.folder)
        return recorder

    def report(self, recorder: Recorder) -> dict[str, Any]:
        return report(recorder.reference, self.window, self.folder)

    def snapshots(self) -> Iterator[tuple[Reference, Totals, dict[str, Any]]]:
        """Every live model version's totals since start and its report, all workers merged (for /metrics)."""
        now = time.time()
        for recorder in sorted(self._recorders.values(), key=lambda recorder: recorder.reference.key):
            merged = merge(recorder.reference, self.window, self.folder, now)
            yield recorder.reference, Totals.of(merged.total), summarise(recorder.reference, self.window, merged)


@dataclass(frozen=True)
class Totals:
    """Rows scored since the service started, all workers: what Prometheus' counters and histogram show."""

    rows: int
    flagged: int
    percentile_sum: float
    buckets: list[tuple[str, float]]  # (le, rows at or below it), cumulative, ending with +Inf

    @classmethod
    def of(cls, total: np.ndarray) -> Totals:
        cumulative = np.cumsum(total[_BINS:_FEATURES])
        buckets = [(f"{bucket:g}", float(cumulative[i])) for bucket, i in zip(BUCKETS, _BUCKET_INDEX, strict=True)]
        return cls(
            int(total[_ROWS]), int(total[_FLAGGED]), float(total[_PCT_SUM]), [*buckets, ("+Inf", float(cumulative[-1]))]
        )
