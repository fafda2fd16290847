"""The one error a batch job reports: what went wrong, naming the file and row where there is one."""

from __future__ import annotations


class BatchError(Exception):
    """A job that cannot go on: bad flags, a model that cannot load, or bad input (its file and row)."""


class RowError(ValueError):
    """Bad input in a table the core was given: `row` is the row's index in that table (the engine that
    read it knows which file and row of the dataset that is)."""

    def __init__(self, row: int, why: str) -> None:
        super().__init__(row, why)
        self.row, self.why = row, why

    def __str__(self) -> str:
        return f"row {self.row}: {self.why}"
