"""Training's own errors. Each carries the exit status `python -m training` ends with and prints its message
as one line, no traceback: the user can act on it."""

from __future__ import annotations

EXIT_BAD_INPUT = 2
EXIT_EXPORT_FAILED = 3
EXIT_INTERRUPTED = 130


class TrainingError(Exception):
    """A run that cannot go on; no package is written."""

    exit_code = EXIT_BAD_INPUT
    headline = ""  # what failed, before the message, where the message alone would not say it

    def explain(self) -> str:
        return f"{self.headline}: {self}" if self.headline else str(self)


class DataError(TrainingError):
    """Bad input data or flags: the message names the file and, where there is one, the column or flag."""


class ExportParityError(TrainingError):
    """onnxruntime disagrees with PyTorch: the export is wrong."""

    exit_code = EXIT_EXPORT_FAILED
    headline = "export failed the parity gate, no package written"
