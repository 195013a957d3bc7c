"""Numbers as text, both ways, fast: the OBJ and PLY readers and writers share it."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from e2e3d_provider.exceptions import RightSizeInputError


def format_rows(fmt: str, values: np.ndarray, block: int = 200_000) -> list[str]:
    """The rows of ``values`` formatted with ``fmt`` (one row's format), in blocks of ``block`` rows:
    ``str %`` over one tuple per block is the fastest formatting Python has."""
    out = []
    for start in range(0, len(values), block):
        part = values[start : start + block]
        out.append((fmt * len(part)) % tuple(part.ravel().tolist()))
    return out


def parse_numbers(text: bytes, dtype: type, expected: int | None, what: str, path: Path) -> np.ndarray:
    """Whitespace-separated numbers parsed in C (``np.fromstring``); any token that is not a number,
    or a count other than ``expected``, is a :class:`RightSizeInputError` naming ``what``."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy warns, and stops, at the first token it cannot read
        try:
            values: np.ndarray = np.fromstring(text, dtype=dtype, sep=" ")
        except (ValueError, DeprecationWarning) as err:
            raise RightSizeInputError(f"{path}: {what} holds something that is not a number ({err})") from None
    if expected is not None and values.size != expected:
        raise RightSizeInputError(f"{path}: {what} holds {values.size} numbers where {expected} were expected")
    return values
