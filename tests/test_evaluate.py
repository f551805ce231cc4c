"""`digitml evaluate`: any logged model scored on a whole test set, as its own MLflow run."""

import mlflow
import numpy as np
import pytest
from PIL import Image

from conftest import invoke_cli, new_store, tracking_at
from digitml.data import load_digits
from digitml.evaluate import model_probabilities
from digitml.train import PREDICT_BATCH

REPORT_ARTIFACTS = {
    "confusion_matrix.png",
    "confusion_matrix.csv",
    "classification_report.json",
    "classification_report.txt",
    "misclassified.png",
}


@pytest.fixture(scope="module")
def evaluation(mnist_model, empty_store, tmp_path_factory):
    """`digitml evaluate` of the session's MNIST model on scikit-learn's digits, in a store of its
    own: (the CLI result, the evaluation run, the model's path)."""
    _, _, model_path = mnist_model
    folder = tmp_path_factory.mktemp("evaluate")
    with tracking_at(new_store(empty_store, folder), folder):
        result = invoke_cli("evaluate", "--model-uri", model_path, "--dataset", "digits")
        assert result.exit_code == 0, result.stderr[-2000:]
        run_id = result.stdout.split("evaluation run: ")[1].split()[0]
        yield result, mlflow.get_run(run_id), model_path


def test_evaluate_command_prints_a_table(evaluation):
    result, run, _ = evaluation
    assert f"model:          {run.data.tags['source_model_uri']}" in result.stdout
    assert f"test_accuracy:  {run.data.metrics['test_accuracy']:.4f}" in result.stdout
    assert "recall per digit: 0:" in result.stdout


def test_evaluation_run_holds_the_models_own_test_metrics_and_reports(evaluation):
    _, run, model_path = evaluation
    assert run.data.tags["digitml.kind"] == "evaluate"
    assert run.data.tags["source_model_uri"] == model_path
    assert run.data.params["dataset"] == "digits" and run.data.params["test_size"] == "360"
    data = load_digits()
    network = mlflow.pyfunc.load_model(model_path).unwrap_python_model().model
    predicted = np.asarray(network.predict_on_batch(data.test_images)).argmax(axis=1)
    expected = (predicted == data.test_labels).mean()
    assert run.data.metrics["test_accuracy"] == pytest.approx(expected, abs=1e-6)
    assert "test_recall_6" in run.data.metrics and "accuracy_score" in run.data.metrics
    names = {item.path for item in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert REPORT_ARTIFACTS <= names
    # Ours (7 x 6 inches, counts), not the normalized one MLflow's evaluation writes first.
    figure = mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/confusion_matrix.png")
    assert Image.open(figure).size == (700, 600)


def test_probabilities_come_back_in_image_order_across_batches(mnist_model):
    _, _, model_path = mnist_model
    model = mlflow.pyfunc.load_model(model_path)
    data = load_digits()
    images = np.concatenate([data.train_images, data.test_images])
    assert len(images) > PREDICT_BATCH
    probabilities = model_probabilities(model, images)
    network = model.unwrap_python_model().model
    np.testing.assert_allclose(probabilities, network.predict_on_batch(images), atol=1e-5)


def test_evaluate_command_names_a_missing_model(evaluation):
    result = invoke_cli("evaluate", "--model-uri", "models:/nope@champion")
    assert result.exit_code == 1
    assert result.stderr == "Error: Registered Model with name=nope not found\n"
