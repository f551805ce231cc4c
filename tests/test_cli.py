"""`digitml train` as a user runs it: real processes, a real MLflow store in a temp dir; option
checks in-process through click's CliRunner."""

import gzip
import os
import shutil
import signal
from types import SimpleNamespace

import mlflow
import pytest

from conftest import (
    all_runs,
    invoke_cli,
    require_mnist,
    run_cli_in_new_store,
    start_digits_training,
)


@pytest.fixture(scope="module")
def digits_training(empty_store, tmp_path_factory) -> SimpleNamespace:
    """`digitml train` on sklearn's digits (fast recipe, 2 epochs), once, in a store of its own."""
    return run_cli_in_new_store(
        empty_store,
        tmp_path_factory.mktemp("digits-training"),
        "train",
        "--dataset",
        "digits",
        "--config",
        "fast",
        "--epochs",
        "2",
        "--experiment",
        "cli-test",
    )


def test_train_on_digits_prints_run_id_and_accuracy(digits_training):
    printed = dict(
        line.split(": ", 1) for line in digits_training.result.stdout.splitlines() if ": " in line
    )
    run = mlflow.MlflowClient(digits_training.uri).get_run(printed["run_id"])
    assert run.info.status == "FINISHED"
    assert float(printed["test_accuracy"]) == pytest.approx(
        run.data.metrics["test_accuracy"], abs=1e-4
    )
    assert run.data.params["dataset"] == "digits"
    assert float(printed["train_seconds"]) == pytest.approx(
        run.data.metrics["train_seconds"], abs=0.1
    )


def test_without_a_terminal_each_epoch_is_one_line(digits_training):
    stdout = digits_training.result.stdout
    epoch_lines = [line for line in stdout.splitlines() if line.startswith("epoch ")]
    assert [line.split(" - ")[0] for line in epoch_lines] == ["epoch 1/2", "epoch 2/2"]
    assert "val_accuracy" in epoch_lines[0]
    assert "\r" not in stdout and "\x08" not in stdout


@pytest.mark.parametrize(
    "args, named",
    [
        (["--epochs", "-1"], "--epochs"),
        (["--epochs", "0"], "--epochs"),
        (["--epochs", "ten"], "--epochs"),
        (["--batch-size", "0"], "--batch-size"),
        (["--learning-rate", "-0.1"], "--learning-rate"),
        (["--model", "transformer"], "transformer"),
        (["--optimizer", "adagrad"], "--optimizer"),
        (["--precision", "float16"], "--precision"),
        (["--dataset", "cifar"], "--dataset"),
        (["--limit", "3"], "--limit"),
        (["--config", "missing.yaml"], "missing.yaml"),
    ],
)
def test_bad_option_is_a_one_line_usage_error_and_leaves_no_run(tracking_uri, args, named):
    result = invoke_cli("train", "--dataset", "digits", *args)
    assert result.exit_code == 2
    assert named in result.stderr and result.stderr.startswith("Usage: digitml train")
    assert all_runs() == []


def test_bad_yaml_key_is_named(tracking_uri, tmp_path):
    config = tmp_path / "typo.yaml"
    config.write_text("model: baseline\nbatchsize: 32\n")
    result = invoke_cli("train", "--config", str(config), "--dataset", "digits")
    assert result.exit_code == 2
    assert "batchsize" in result.stderr
    assert all_runs() == []


def test_corrupted_data_stops_before_training_and_names_the_file(tracking_uri, tmp_path):
    data_dir = tmp_path / "mnist"
    shutil.copytree(require_mnist(), data_dir)
    labels = data_dir / "train-labels-idx1-ubyte.gz"
    os.chmod(labels, 0o644)
    content = bytearray(gzip.decompress(labels.read_bytes()))
    content[100] = (content[100] + 1) % 10
    labels.write_bytes(gzip.compress(bytes(content)))
    result = invoke_cli("train", "--data-dir", str(data_dir), "--limit", "100")
    assert result.exit_code == 1
    assert "train-labels-idx1-ubyte.gz: SHA-256" in result.stderr and "corrupted" in result.stderr
    assert all_runs() == []


def test_sigterm_marks_the_run_killed_and_says_how_to_resume(tracking_uri, tmp_path):
    process = start_digits_training(tmp_path, epochs=50, experiment="cli-test")
    process.kill_at("epoch 1/", signal.SIGTERM)
    assert process.returncode == 130
    (run,) = all_runs("cli-test")
    assert f"digitml train --resume {run.info.run_id}" in process.stderr
    assert "Traceback" not in process.stderr
    assert run.info.status == "KILLED"
