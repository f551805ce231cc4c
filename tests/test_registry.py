"""evaluate and promote against a real registry: better, worse, equal, first champion, re-runs."""

import os
from types import SimpleNamespace

import mlflow
import pytest

from conftest import require_mnist, run_cli
from digitml.config import load_config
from digitml.evaluate import evaluate_model
from digitml.experiment import run_training
from digitml.registry import RegistryError
from digitml.registry import promote as promote_on


@pytest.fixture(scope="module")
def store(mnist_model, tmp_path_factory):
    """The session model's store, plus a deliberately weak model trained on 200 images."""
    uri, strong_run, _ = mnist_model
    store_dir = uri.removeprefix("sqlite:///").rsplit("/", 1)[0]
    previous = os.getcwd()
    os.chdir(store_dir)
    mlflow.set_tracking_uri(uri)
    config = load_config(
        "fast", {"limit": 200, "data_dir": str(require_mnist()), "experiment": "model"}
    )
    weak_run = run_training(config, checkpoint_root=tmp_path_factory.mktemp("ckpt")).run_id
    yield {
        "uri": uri,
        "dir": store_dir,
        "strong": f"runs:/{strong_run}/model",
        "weak": f"runs:/{weak_run}/model",
    }
    mlflow.set_tracking_uri(None)
    os.chdir(previous)


def promote(model_uri, **options):
    return promote_on(model_uri, data_dir=str(require_mnist()), **options)


def champion(name):
    """The champion version's (version as text, tags)."""
    version = mlflow.MlflowClient().get_model_version_by_alias(name, "champion")
    return SimpleNamespace(version=str(version.version), tags=version.tags)


def test_evaluate_logs_a_run_with_the_training_metrics_and_artifacts(store):
    evaluation = evaluate_model(
        store["strong"], data_dir=str(require_mnist()), experiment="evaluations"
    )
    run = mlflow.get_run(evaluation.run_id)
    assert run.data.tags["digitml.kind"] == "evaluate"
    assert run.data.tags["source_model_uri"] == store["strong"]
    assert run.data.metrics["test_accuracy"] > 0.95
    assert "test_recall_6" in run.data.metrics and "accuracy_score" in run.data.metrics
    names = {item.path for item in mlflow.MlflowClient().list_artifacts(evaluation.run_id)}
    assert {
        "confusion_matrix.png",
        "confusion_matrix.csv",
        "classification_report.json",
        "classification_report.txt",
        "misclassified.png",
    } <= names
    strong_training = mlflow.get_run(store["strong"].split("/")[1])
    assert run.data.metrics["test_accuracy"] == pytest.approx(
        strong_training.data.metrics["test_accuracy"], abs=1e-4
    )


def test_first_candidate_becomes_champion(store):
    decision = promote(store["weak"], name="first")
    assert decision.promoted and "first 'champion'" in decision.message
    assert champion("first").version == decision.candidate_version
    assert champion("first").tags["promotion_decision"] == "promoted"


def test_better_candidate_takes_over_and_says_by_how_much(store):
    promote(store["weak"], name="better")
    decision = promote(store["strong"], name="better")
    assert decision.promoted
    assert decision.candidate_accuracy > decision.holder_accuracy
    assert "points" in decision.message and "moves to version 2" in decision.message
    assert champion("better").version == "2"


def test_worse_candidate_never_becomes_champion(store):
    promote(store["strong"], name="worse")
    decision = promote(store["weak"], name="worse")
    assert not decision.promoted
    assert champion("worse").version == "1"
    rejected = mlflow.MlflowClient().get_model_version("worse", "2")
    assert rejected.tags["promotion_decision"] == "rejected"
    assert float(rejected.tags["candidate_test_accuracy"]) < float(
        rejected.tags["champion_test_accuracy"]
    )
    assert rejected.tags["promotion_date"]


def test_equal_candidate_wins_without_margin_but_not_with_one(store):
    promote(store["strong"], name="equal")
    client = mlflow.MlflowClient()
    source = client.get_model_version("equal", "1").source
    second = mlflow.register_model(source, "equal").version
    assert not promote(f"models:/equal/{second}", name="equal", min_delta=0.001).promoted
    assert promote(f"models:/equal/{second}", name="equal").promoted
    assert champion("equal").version == str(second)


def test_rerunning_the_same_promotion_changes_nothing(store):
    promote(store["strong"], name="rerun")
    before = champion("rerun")
    decision = promote(store["strong"], name="rerun")
    assert not decision.promoted and "nothing changed" in decision.message
    after = champion("rerun")
    assert (after.version, after.tags) == (before.version, before.tags)


def test_rejected_candidate_rerun_changes_nothing(store):
    promote(store["strong"], name="rejected-rerun")
    promote(store["weak"], name="rejected-rerun")
    tags_before = mlflow.MlflowClient().get_model_version("rejected-rerun", "2").tags
    decision = promote(store["weak"], name="rejected-rerun")
    assert not decision.promoted and "already rejected" in decision.message
    assert mlflow.MlflowClient().get_model_version("rejected-rerun", "2").tags == tags_before


def test_force_moves_the_alias_to_a_worse_model(store):
    promote(store["strong"], name="forced")
    decision = promote(store["weak"], name="forced", force=True)
    assert decision.promoted and "(forced)" in decision.message
    assert champion("forced").tags["promotion_forced"] == "true"


def test_uri_of_another_model_name_is_refused(store):
    promote(store["strong"], name="mine")
    with pytest.raises(RegistryError, match="not a version of 'theirs'"):
        promote("models:/mine/1", name="theirs")


def test_promote_command_prints_the_decision(store):
    result = run_cli(
        "promote",
        "--model-uri",
        store["strong"],
        "--name",
        "cli",
        cwd=store["dir"],
        env={"MLFLOW_TRACKING_URI": store["uri"]},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "first 'champion'" in result.stdout


def test_evaluate_command_prints_a_table(store):
    result = run_cli(
        "evaluate",
        "--model-uri",
        store["strong"],
        cwd=store["dir"],
        env={"MLFLOW_TRACKING_URI": store["uri"]},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "test_accuracy:" in result.stdout and "recall per digit" in result.stdout


def test_evaluate_command_names_a_missing_model(store):
    result = run_cli(
        "evaluate",
        "--model-uri",
        "models:/nope@champion",
        cwd=store["dir"],
        env={"MLFLOW_TRACKING_URI": store["uri"]},
    )
    assert result.returncode == 1
    assert "nope" in result.stderr and "Traceback" not in result.stderr
