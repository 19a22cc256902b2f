"""The reference the server's answers are checked against."""

from __future__ import annotations

import pandas as pd


def prediction_records(frame: pd.DataFrame) -> list[dict]:
    """One record per row of the pyfunc's prediction frame, as `mlflow models serve` writes it
    (missing values null): what `Served.records` must equal, made without the frame."""
    names = [str(c) for c in frame.columns]
    cols = [frame[c].to_numpy(dtype=object, na_value=None) for c in frame.columns]
    return [dict(zip(names, row, strict=True)) for row in zip(*cols, strict=True)]
