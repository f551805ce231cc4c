"""Test-set metrics and the figures that explain them, on predictions made up to known answers."""

import numpy as np
import pytest
from matplotlib.colors import to_rgba

from digitml import reports

# Ten images of each digit; every 3 is read as an 8, one 5 as a 6.
LABELS = np.repeat(np.arange(10), 10)
PREDICTED = LABELS.copy()
PREDICTED[LABELS == 3] = 8
PREDICTED[np.flatnonzero(LABELS == 5)[0]] = 6


def probabilities_for(predicted: np.ndarray, confidence: float = 0.91) -> np.ndarray:
    """Rows with `confidence` on the predicted digit and the rest spread evenly."""
    rows = np.full((len(predicted), 10), (1 - confidence) / 9)
    rows[np.arange(len(predicted)), predicted] = confidence
    return rows


def test_metrics_count_each_digit_apart_and_average_them():
    metrics = reports.test_metrics(LABELS, probabilities_for(PREDICTED))
    assert metrics["test_accuracy"] == pytest.approx(89 / 100)
    assert metrics["test_loss"] == pytest.approx(-(89 * np.log(0.91) + 11 * np.log(0.01)) / 100)
    assert metrics["test_recall_3"] == 0 and metrics["test_precision_3"] == 0
    assert metrics["test_recall_5"] == pytest.approx(0.9)
    assert metrics["test_precision_8"] == pytest.approx(10 / 20)
    assert metrics["test_precision_6"] == pytest.approx(10 / 11)
    recalls = [metrics[f"test_recall_{digit}"] for digit in range(10)]
    assert metrics["test_recall_macro"] == pytest.approx(np.mean(recalls))


def test_confusion_csv_has_true_digits_down_and_predictions_across():
    lines = reports.confusion_csv(reports.confusion(LABELS, PREDICTED)).splitlines()
    assert lines[0] == "true\\predicted,0,1,2,3,4,5,6,7,8,9"
    assert lines[1 + 3] == "3,0,0,0,0,0,0,0,0,10,0"
    assert lines[1 + 5] == "5,0,0,0,0,0,9,1,0,0,0"
    assert len(lines) == 11


def test_classification_report_lists_every_digit_even_one_never_predicted():
    text, as_dict = reports.classification_report(LABELS, PREDICTED)
    assert as_dict["3"]["recall"] == 0 and as_dict["3"]["support"] == 10
    assert as_dict["accuracy"] == pytest.approx(0.89)
    assert all(f"{digit} " in text for digit in range(10))


def test_misclassified_figure_titles_the_most_confident_mistakes_first():
    confidence = np.linspace(0.5, 0.99, len(LABELS))
    probabilities = probabilities_for(PREDICTED)
    probabilities[np.arange(len(LABELS)), PREDICTED] = confidence
    images = np.random.default_rng(0).random((len(LABELS), 28, 28, 1))
    figure = reports.misclassified_figure(images, LABELS, probabilities)
    (axes,) = figure.axes
    titles = [text.get_text() for text in axes.texts]
    assert axes.get_title() == "Misclassified test images: 11 (true → predicted)"
    assert titles[0].startswith("5 → 6 (0.75)")  # the 3s were read as 8s with less confidence
    assert len(titles) == 11 and all(title.startswith("3 → 8") for title in titles[1:])
    shown = [float(title.split("(")[1].rstrip(")")) for title in titles]
    assert shown == sorted(shown, reverse=True)
    reports.close_figures()


def test_trials_figure_marks_the_best_trial_and_the_failed_ones():
    rows = [
        {"trial_id": "0", "score": 0.97, "status": "COMPLETED"},
        {"trial_id": "1", "score": 0.99, "status": "COMPLETED"},
        {"trial_id": "2", "score": None, "status": "FAILED"},
    ]
    figure = reports.trials_figure(rows)
    bars = figure.axes[0].patches
    assert [bar.get_height() for bar in bars] == [0.97, 0.99, 0.0]
    assert [bar.get_facecolor() for bar in bars] == [
        to_rgba(colour) for colour in ("tab:blue", "tab:green", "tab:red")
    ]
    reports.close_figures()
