r"""Errors of the data layer: user-facing, with the file, the row or column and what was
expected."""
from __future__ import annotations


class DataError(ValueError):
    r"""A dataset card or data file that cannot be used as it is."""


class MissingFilesError(DataError):
    r"""Files a dataset card names are absent from the data folder."""
