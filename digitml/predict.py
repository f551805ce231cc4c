"""Image files scored by a digit model loaded in this process: `digitml predict` and the app.

The model is the logged pyfunc (`pyfunc.py`), so files are prepared by the model's own copy of
the preprocessing, exactly as `mlflow models serve` would prepare them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd

FILES_PER_CALL = 64  # well inside a request's pixel budget, even for phone photos


@dataclass
class FilePrediction:
    """A file's digit, confidence and 10 probabilities, or the reason it has none."""

    path: str
    digit: int | None = None
    confidence: float | None = None
    probabilities: list[float] | None = None
    error: str | None = None


def one_image_message(message: str) -> str:
    """The model's message about a single image, without MLflow's prefix (`Failed to predict
    data '…'. Error: `) and without the row it names (`row 0: image: `)."""
    return message.splitlines()[-1].split("Error: ")[-1].removeprefix("row 0: image: ")


def predict_files(model: mlflow.pyfunc.PyFuncModel, paths: Sequence[str]) -> list[FilePrediction]:
    """One model call per `FILES_PER_CALL` readable files; where the model refuses a call (a file
    that is no digit image), its files are scored one by one, so each bad file gets its own
    message and the others their digits."""
    predictions: list[FilePrediction] = []
    for start in range(0, len(paths), FILES_PER_CALL):
        predictions += _predict_chunk(model, paths[start : start + FILES_PER_CALL])
    return predictions


def _predict_chunk(model: mlflow.pyfunc.PyFuncModel, paths: Sequence[str]) -> list[FilePrediction]:
    results: dict[int, FilePrediction] = {}
    images: dict[int, bytes] = {}
    for index, path in enumerate(paths):
        try:
            images[index] = Path(path).read_bytes()
        except OSError as error:
            results[index] = FilePrediction(path, error=error.strerror or str(error))
    try:
        batch = predicted(model, [paths[index] for index in images], list(images.values()))
        results.update(zip(images, batch, strict=True))
    except mlflow.exceptions.MlflowException:
        for index, data in images.items():
            try:
                results[index] = predicted(model, [paths[index]], [data])[0]
            except mlflow.exceptions.MlflowException as error:
                results[index] = FilePrediction(
                    paths[index], error=one_image_message(error.message)
                )
    return [results[index] for index in range(len(paths))]


def predicted(
    model: mlflow.pyfunc.PyFuncModel, paths: Sequence[str], images: Sequence[bytes]
) -> list[FilePrediction]:
    """The model's answers for `images` (file bytes), in one call."""
    if not images:
        return []
    frame = model.predict(pd.DataFrame({"image": list(images)}))
    return [
        FilePrediction(path, int(row.digit), float(row.confidence), list(row.probabilities))
        for path, row in zip(paths, frame.itertuples(index=False), strict=True)
    ]
