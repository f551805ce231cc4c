"""Test-set metrics and the figures that explain them."""

from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from sklearn import metrics as skmetrics

DIGITS = list(range(10))
MISCLASSIFIED_SHOWN = 36
MISCLASSIFIED_COLUMNS = 6
TILE_GAP = 4  # pixels between tiles of the misclassified mosaic
TILE_TITLE = 12  # pixels above each tile, for its title


def test_metrics(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """test_accuracy, test_loss, macro/weighted P/R/F1 and per-class P/R/F1 (`test_recall_6`)."""
    predicted = probabilities.argmax(axis=1)
    values = {
        "test_accuracy": float(skmetrics.accuracy_score(labels, predicted)),
        "test_loss": float(
            skmetrics.log_loss(labels, _rows_summing_to_one(probabilities), labels=DIGITS)
        ),
    }
    for average in ("macro", "weighted"):
        precision, recall, f1, _ = skmetrics.precision_recall_fscore_support(
            labels, predicted, labels=DIGITS, average=average, zero_division=0
        )
        values.update(
            {
                f"test_precision_{average}": float(precision),
                f"test_recall_{average}": float(recall),
                f"test_f1_{average}": float(f1),
            }
        )
    precision, recall, f1, _ = skmetrics.precision_recall_fscore_support(
        labels, predicted, labels=DIGITS, zero_division=0
    )
    for digit in DIGITS:
        values[f"test_precision_{digit}"] = float(precision[digit])
        values[f"test_recall_{digit}"] = float(recall[digit])
        values[f"test_f1_{digit}"] = float(f1[digit])
    return values


def _rows_summing_to_one(probabilities: np.ndarray) -> np.ndarray:
    """float32 softmax rows sum to 1 within ~1e-7, short of what scikit-learn's log_loss accepts
    without a warning; the loss is the same."""
    rows = np.asarray(probabilities, dtype=np.float64)
    return rows / rows.sum(axis=1, keepdims=True)


def confusion(labels: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    return skmetrics.confusion_matrix(labels, predicted, labels=DIGITS)


def confusion_csv(matrix: np.ndarray) -> str:
    """Rows are true digits, columns predicted digits, with a header row and column."""
    buffer = io.StringIO()
    buffer.write("true\\predicted," + ",".join(map(str, DIGITS)) + "\n")
    for digit, row in zip(DIGITS, matrix, strict=False):
        buffer.write(f"{digit}," + ",".join(map(str, row)) + "\n")
    return buffer.getvalue()


def confusion_figure(matrix: np.ndarray) -> Figure:
    figure, axes = plt.subplots(figsize=(7, 6))
    image = axes.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axes)
    axes.set(
        xticks=DIGITS,
        yticks=DIGITS,
        xlabel="Predicted digit",
        ylabel="True digit",
        title="Confusion matrix (test set, counts)",
    )
    threshold = matrix.max() / 2
    for true_digit in DIGITS:
        for predicted_digit in DIGITS:
            count = matrix[true_digit, predicted_digit]
            axes.text(
                predicted_digit,
                true_digit,
                str(count),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if count > threshold else "black",
            )
    figure.tight_layout()
    return figure


def classification_report(labels: np.ndarray, predicted: np.ndarray) -> tuple[str, dict]:
    """scikit-learn's report as text and as a dict (for classification_report.json)."""
    names = [str(digit) for digit in DIGITS]
    kwargs = {"labels": DIGITS, "target_names": names, "digits": 4, "zero_division": 0}
    text = skmetrics.classification_report(labels, predicted, **kwargs)
    as_dict = skmetrics.classification_report(labels, predicted, output_dict=True, **kwargs)
    return text, as_dict


def training_curves_figure(history: dict[str, list[float]]) -> Figure:
    """Loss and accuracy per epoch, training against validation."""
    figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(11, 4))
    for axes, metric in ((loss_axes, "loss"), (accuracy_axes, "accuracy")):
        for key, label in ((metric, "training"), (f"val_{metric}", "validation")):
            if history.get(key):
                axes.plot(range(1, len(history[key]) + 1), history[key], marker="o", label=label)
        axes.set(xlabel="Epoch", ylabel=metric, title=metric.capitalize())
        axes.grid(alpha=0.3)
        axes.legend()
    figure.tight_layout()
    return figure


def misclassified_figure(
    images: np.ndarray, labels: np.ndarray, probabilities: np.ndarray
) -> Figure:
    """The most confident wrong predictions, each titled `true → predicted (confidence)`.

    Drawn as one mosaic image with text above each tile: a grid of 36 axes took about 2 s to lay
    out and render, and every training and evaluation draws this figure.
    """
    predicted = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    shown = wrong[np.argsort(-probabilities[wrong, predicted[wrong]])][:MISCLASSIFIED_SHOWN]
    columns = MISCLASSIFIED_COLUMNS
    rows = max(1, math.ceil(len(shown) / columns))
    size = images.shape[1]
    tile_width, tile_height = size + TILE_GAP, size + TILE_TITLE
    mosaic = np.ones((rows * tile_height, columns * tile_width), np.float32)
    figure, axes = plt.subplots(figsize=(columns * 1.6, rows * 1.8))
    for position, index in enumerate(shown):
        top = (position // columns) * tile_height + TILE_TITLE
        left = (position % columns) * tile_width + TILE_GAP // 2
        mosaic[top : top + size, left : left + size] = images[index].squeeze()
        axes.text(
            left + size / 2,
            top - 1,
            f"{labels[index]} → {predicted[index]} ({probabilities[index, predicted[index]]:.2f})",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    axes.imshow(mosaic, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    axes.axis("off")
    axes.set_title(f"Misclassified test images: {len(wrong)} (true → predicted)")
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.94)
    return figure


def close_figures() -> None:
    """Free matplotlib's figures once logged (long searches would otherwise pile them up)."""
    plt.close("all")


def trials_figure(rows: list[dict]) -> Figure:
    """Each trial's score (validation accuracy), failed trials marked, the best highlighted."""
    figure, axes = plt.subplots(figsize=(max(6, len(rows) * 0.5), 4))
    scores = [row["score"] if row["score"] is not None else 0.0 for row in rows]
    best = max(scores) if scores else 0.0
    colours = [
        "tab:red"
        if row["status"] != "COMPLETED"
        else ("tab:green" if score == best else "tab:blue")
        for row, score in zip(rows, scores, strict=True)
    ]
    axes.bar([row["trial_id"] for row in rows], scores, color=colours)
    completed = [
        score for row, score in zip(rows, scores, strict=True) if row["status"] == "COMPLETED"
    ]
    if completed:
        axes.set_ylim(max(0.0, min(completed) - 0.01), 1.0)
    axes.set(xlabel="Trial", ylabel="Best val_accuracy", title="Trials (green: best, red: failed)")
    axes.tick_params(axis="x", rotation=90)
    figure.tight_layout()
    return figure
