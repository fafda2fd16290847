"""score.feature_shares (training.metrics.feature_shares): where normal rows' squared error lies, feature by
feature, the reference the service's monitoring names drifted features against."""

from __future__ import annotations

import numpy as np
import pytest

from training.metrics import feature_shares


def test_each_rows_shares_are_averaged() -> None:
    sq_err = np.array([[1.0, 3.0, 0.0], [2.0, 2.0, 4.0], [0.0, 0.0, 0.0]], dtype=np.float32)
    # The third row has no error: it has no shares to add, so it is left out.
    assert feature_shares(sq_err) == pytest.approx([(0.25 + 0.25) / 2, (0.75 + 0.25) / 2, (0 + 0.5) / 2])
    assert sum(feature_shares(sq_err)) == pytest.approx(1)


def test_rows_without_any_error_share_it_evenly() -> None:
    assert feature_shares(np.zeros((4, 5), dtype=np.float32)) == pytest.approx([0.2] * 5)
