"""One real training run on a slice of genuine MNIST, and everything it must leave in MLflow."""

import ast
import dataclasses
import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest

from conftest import (
    all_runs,
    invoke_cli,
    logged_models,
    missing,
    new_store,
    require_mnist,
    start_digits_training,
    tracking_at,
)
from digitml import tracking
from digitml.config import load_config
from digitml.data import content_digest, load_mnist_dir, make_splits
from digitml.precision import resolve_precision
from digitml.training_run import run_training

EPOCHS = 2
ARTIFACTS = {
    "config.yaml",
    "confusion_matrix.png",
    "confusion_matrix.csv",
    "classification_report.json",
    "classification_report.txt",
    "training_curves.png",
    "misclassified.png",
    "model_summary.txt",
}


@pytest.fixture(scope="module")
def logged(empty_store, tmp_path_factory):
    """(client, run, data, config) of a finished run of the callbacks recipe plus augmentation."""
    folder = tmp_path_factory.mktemp("store")
    data = load_mnist_dir(require_mnist())
    config = load_config(
        "callbacks",
        {
            "epochs": EPOCHS,
            "limit": 600,
            "experiment": "logging-test",
            "precision": "auto",
            "augmentation": {"rotation": 0.03, "translation": 0.1, "zoom": 0.1},
        },
    )
    with tracking_at(new_store(empty_store, folder), folder):
        outcome = run_training(config, data=data, checkpoint_root=folder / "checkpoints")
        client = mlflow.MlflowClient()
        yield client, client.get_run(outcome.run_id), data, config


def test_run_finishes(logged):
    _, run, _, _ = logged
    assert run.info.status == "FINISHED"


def test_every_resolved_hyperparameter_is_a_param(logged):
    _, run, _, _ = logged
    params = run.data.params
    expected = {
        "model": "baseline",
        "members": "1",
        "ensemble": "baseline",
        "epochs": str(EPOCHS),
        "batch_size": "64",
        "optimizer": "adam",
        "learning_rate": "0.001",
        "seed": "42",
        "precision": resolve_precision("auto"),  # what ran, not "auto"
        "dataset": "mnist",
        "train_size": "540",
        "val_size": "60",
        "augmentation": "true",
        "augmentation.rotation": "0.03",
        "early_stopping.patience": "3",
        "early_stopping.monitor": "val_loss",
        "reduce_lr.factor": "0.2",
        "reduce_lr.min_lr": "0.0001",
    }
    assert {key: params.get(key) for key in expected} == expected
    assert "data_dir" not in params and "limit" in params  # unset: no 'None' param


def test_tags_name_the_config_and_commit(logged):
    _, run, _, _ = logged
    assert run.data.tags["config"] == "callbacks"
    assert run.info.run_name == "callbacks-baseline-s42"  # recipe, network, seed
    experiment = mlflow.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # UI: runs
    commit = tracking.git_commit()
    if commit is None:
        missing("a git checkout", "digitml runs from an installed copy here: test a clone")
    assert run.data.tags[tracking.GIT_COMMIT_TAG] == commit and len(commit) == 40


def test_served_model_shows_an_example_request_and_its_outputs(logged, tmp_path):
    """No input schema (the model names bad columns itself), but an example an MLflow user can
    send as it is, and the outputs described."""
    _, run, _, _ = logged
    folder = mlflow.artifacts.download_artifacts(
        f"runs:/{run.info.run_id}/model", dst_path=tmp_path
    )
    described = mlflow.models.Model.load(folder)
    assert described.signature.inputs is None
    assert described.signature.outputs.input_names() == ["digit", "confidence", "probabilities"]
    example = described.load_input_example(folder)
    answer = mlflow.pyfunc.load_model(folder).predict(example)
    assert list(example.columns) == ["image"] and 0 <= answer["digit"][0] <= 9


def test_config_artifact_reproduces_the_run(logged):
    _, run, _, config = logged
    resolved = dataclasses.replace(config, precision=resolve_precision(config.precision))
    assert tracking.read_run_config(run.info.run_id) == resolved.to_yaml()


def test_per_epoch_metrics_use_the_epoch_as_step(logged):
    client, run, _, _ = logged
    for key in (
        "loss",
        "accuracy",
        "val_loss",
        "val_accuracy",
        "epoch_learning_rate",
        "epoch_seconds",
    ):
        steps = [metric.step for metric in client.get_metric_history(run.info.run_id, key)]
        assert sorted(steps) == list(range(EPOCHS)), key
    assert run.data.metrics["train_seconds"] > 0


def test_test_metrics_cover_averages_and_every_class(logged):
    _, run, _, _ = logged
    metrics = run.data.metrics
    assert 0.5 < metrics["test_accuracy"] <= 1.0
    assert metrics["test_loss"] > 0
    for average in ("macro", "weighted"):
        for name in ("precision", "recall", "f1"):
            assert 0 < metrics[f"test_{name}_{average}"] <= 1
    for digit in range(10):
        for name in ("precision", "recall", "f1"):
            assert f"test_{name}_{digit}" in metrics


def test_report_artifacts_are_logged(logged):
    client, run, _, _ = logged
    names = {item.path for item in client.list_artifacts(run.info.run_id)}
    assert ARTIFACTS <= names


def test_confusion_csv_counts_the_full_test_set(logged):
    _, run, _, _ = logged
    text = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/confusion_matrix.csv")
    rows = [line.split(",")[1:] for line in text.strip().splitlines()[1:]]
    assert sum(int(value) for row in rows for value in row) == 10_000


def test_datasets_are_inputs_with_full_content_digests(logged):
    _, run, data, config = logged
    inputs = {item.tags[0].value: item.dataset for item in run.inputs.dataset_inputs}
    assert set(inputs) == {"training", "validation", "test"}
    splits = make_splits(data, config.val_fraction, config.seed, config.limit)
    assert inputs["test"].digest == content_digest(data.test_images, data.test_labels)
    assert inputs["training"].digest == content_digest(splits.train_images, splits.train_labels)


def test_keras_model_loads_and_reproduces_test_accuracy(logged):
    _, run, data, _ = logged
    model = mlflow.keras.load_model(f"runs:/{run.info.run_id}/keras_model")
    predicted = np.asarray(model.predict_on_batch(data.test_images)).argmax(axis=1)
    accuracy = float((predicted == data.test_labels).mean())
    assert accuracy == pytest.approx(run.data.metrics["test_accuracy"], abs=1e-4)


ELSEWHERE = """
import json, sys
from pathlib import Path
import digitml.imaging  # already imported, as in `digitml app`; here a changed version
import keras, mlflow, numpy as np, pandas as pd
model_dir, keras_dir, images_file = sys.argv[1:]
images = np.load(images_file)
rows = pd.DataFrame({"pixels": [image.tolist() for image in images]})
print(json.dumps({
    "pyfunc": np.stack(mlflow.pyfunc.load_model(model_dir).predict(rows)["probabilities"]).tolist(),
    "mlflow.keras": np.asarray(mlflow.keras.load_model(keras_dir).predict_on_batch(images)).tolist(),
    "keras": np.asarray(
        keras.models.load_model(next(Path(keras_dir).rglob("*.keras"))).predict_on_batch(images)
    ).tolist(),
}))
"""

CHANGED_IMAGING = """
class ImageInputError(ValueError):
    pass


def rows_to_batch(rows):
    raise RuntimeError("the installed digitml.imaging ran, not the model's own copy")
"""


def test_both_models_answer_in_a_process_whose_digitml_has_changed(logged, tmp_path):
    """A fresh Python where another digitml (its imaging changed, no training code) is installed
    and already imported: the pyfunc runs its own logged code, the Keras model needs none of ours."""
    _, run, data, _ = logged
    changed = tmp_path / "changed" / "digitml"
    changed.mkdir(parents=True)
    (changed / "__init__.py").write_text("")
    (changed / "imaging.py").write_text(CHANGED_IMAGING)
    images = data.test_images[:16]
    np.save(tmp_path / "images.npy", images)
    paths = [
        mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/{name}", dst_path=tmp_path)
        for name in ("model", "keras_model")
    ]
    result = subprocess.run(
        [sys.executable, "-c", ELSEWHERE, *paths, str(tmp_path / "images.npy")],
        env={**os.environ, "PYTHONPATH": str(changed.parent)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    answers = json.loads(result.stdout.splitlines()[-1])
    here = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model").predict(
        pd.DataFrame({"pixels": [image.tolist() for image in images]})
    )
    for name, probabilities in answers.items():
        np.testing.assert_allclose(
            probabilities, np.stack(here["probabilities"]), atol=1e-5, err_msg=name
        )


def pinned_requirements(model_uri: str) -> dict[str, str]:
    """The logged model's requirements.txt as {distribution: version}; fails on an unpinned line."""
    text = Path(mlflow.pyfunc.get_model_dependencies(model_uri)).read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return dict(line.lower().split("==") for line in lines)


def imported_packages(folder: Path) -> set[str]:
    """Top-level names of the non-stdlib packages the Python files under `folder` import."""
    found: set[str] = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names)


@pytest.mark.parametrize("model", ["model", "keras_model"])
def test_models_pin_the_installed_version_of_exactly_what_they_import(logged, model, tmp_path):
    """MLflow infers nothing (it would pin digitml, which no index has); what the model's own
    code imports counts (the Keras model's loader imports keras), and so does Keras' backend."""
    _, run, _, _ = logged
    pinned = pinned_requirements(f"runs:/{run.info.run_id}/{model}")
    installed = {name: importlib.metadata.version(name).lower() for name in pinned}
    assert pinned == installed
    code = Path(
        mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/{model}", dst_path=tmp_path)
    )
    imports = imported_packages(code) | {"mlflow", "keras"}
    providers = {
        name: {dist.lower() for dist in dists}
        for name, dists in importlib.metadata.packages_distributions().items()
    }
    needed = imports | {keras.config.backend()}
    assert {name for name in needed if not providers[name] & set(pinned)} == set()
    assert {dist for dist in pinned if not any(dist in providers[n] for n in needed)} == set()


def test_failure_inside_a_run_marks_it_failed(logged):
    with pytest.raises(RuntimeError), tracking.tracked_run("status-test") as run:
        raise RuntimeError("boom")
    assert mlflow.get_run(run.info.run_id).info.status == "FAILED"


def test_interrupt_inside_a_run_marks_it_killed(logged):
    with pytest.raises(KeyboardInterrupt), tracking.tracked_run("status-test") as run:
        raise KeyboardInterrupt
    assert mlflow.get_run(run.info.run_id).info.status == "KILLED"


@pytest.mark.parametrize(
    "environment, expected",
    [
        ({}, None),
        ({"MLFLOW_EXPERIMENT_NAME": "named"}, "named"),
        ({"MLFLOW_EXPERIMENT_ID": "{id}"}, "by-id"),
        ({"MLFLOW_EXPERIMENT_ID": "{id}", "MLFLOW_RUN_ID": "launcher"}, "by-id"),
        # `mlflow run` without --experiment-name: its Default is no choice
        ({"MLFLOW_EXPERIMENT_ID": "0", "MLFLOW_RUN_ID": "launcher"}, None),
        ({"MLFLOW_EXPERIMENT_ID": "0"}, "Default"),
    ],
)
def test_the_experiment_the_environment_names(tracking_uri, monkeypatch, environment, expected):
    mlflow.set_experiment("Default")
    experiment_id = mlflow.create_experiment("by-id")
    for name in ("MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value.format(id=experiment_id))
    assert tracking.chosen_experiment() == expected


def test_two_trainings_writing_to_one_sqlite_store_at_once_both_keep_everything(
    tracking_uri, tmp_path
):
    """SQLite allows one writer at a time: two trainings logging every epoch and their models
    into one store at once (a real `digitml train` process, and once it has logged an epoch, the
    same command in this process) must both finish, losing no metric."""
    epochs = 4
    process = start_digits_training(tmp_path, epochs, experiment="together")
    process.read_until("epoch 1/")
    result = invoke_cli(
        *("train", "--config", "fast", "--dataset", "digits", "--epochs", str(epochs)),
        *("--experiment", "together"),
    )
    process.finish()
    assert process.returncode == 0, process.stderr[-3000:]
    assert result.exit_code == 0, result.output[-3000:]
    runs = all_runs("together")
    assert len(runs) == 2 and {run.info.status for run in runs} == {"FINISHED"}
    first, second = sorted(runs, key=lambda run: run.info.start_time)
    assert second.info.start_time < first.info.end_time  # they did run at once
    client = mlflow.MlflowClient()
    for run in runs:
        for key in ("val_accuracy", "loss", "epoch_seconds"):
            steps = sorted(
                metric.step for metric in client.get_metric_history(run.info.run_id, key)
            )
            assert steps == list(range(epochs)), (run.info.run_id, key, steps)
        assert "test_accuracy" in run.data.metrics and "train_seconds" in run.data.metrics
        assert logged_models(run.info.run_id) == {"keras_model": "READY", "model": "READY"}
