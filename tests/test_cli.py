"""`digitml train` as a user runs it: real processes, a real MLflow store in a temp dir."""

import gzip
import os
import shutil
import signal

import mlflow
import pytest

from conftest import all_runs, kill_at, require_mnist, run_cli, start_slow_training

DIGITS_SMOKE = [
    "--dataset",
    "digits",
    "--config",
    "fast",
    "--epochs",
    "2",
    "--experiment",
    "cli-test",
]


def test_train_on_digits_prints_run_id_and_accuracy(tracking_uri, tmp_path):
    result = run_cli("train", *DIGITS_SMOKE, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(": ", 1) for line in result.stdout.splitlines() if ": " in line)
    run = mlflow.get_run(lines["run_id"])
    assert run.info.status == "FINISHED"
    assert float(lines["test_accuracy"]) == pytest.approx(
        run.data.metrics["test_accuracy"], abs=1e-4
    )
    assert run.data.params["dataset"] == "digits"


def test_without_a_terminal_each_epoch_is_one_line(tracking_uri, tmp_path):
    result = run_cli("train", *DIGITS_SMOKE, cwd=tmp_path)
    epoch_lines = [line for line in result.stdout.splitlines() if line.startswith("epoch ")]
    assert [line.split(" - ")[0] for line in epoch_lines] == ["epoch 1/2", "epoch 2/2"]
    assert "val_accuracy" in epoch_lines[0]
    assert "\r" not in result.stdout and "\x08" not in result.stdout


@pytest.mark.parametrize(
    "args, named",
    [
        (["--epochs", "-1"], "--epochs"),
        (["--epochs", "0"], "--epochs"),
        (["--epochs", "ten"], "--epochs"),
        (["--batch-size", "0"], "--batch-size"),
        (["--learning-rate", "-0.1"], "--learning-rate"),
        (["--model", "transformer"], "model"),
        (["--optimizer", "adagrad"], "--optimizer"),
        (["--precision", "float16"], "--precision"),
        (["--dataset", "cifar"], "--dataset"),
        (["--limit", "3"], "--limit"),
        (["--config", "missing.yaml"], "missing.yaml"),
    ],
)
def test_bad_option_is_a_one_line_usage_error_and_leaves_no_run(
    tracking_uri, tmp_path, args, named
):
    result = run_cli("train", "--dataset", "digits", *args, cwd=tmp_path)
    assert result.returncode == 2
    assert named in result.stderr
    assert "Traceback" not in result.stderr
    assert all_runs() == []


def test_bad_yaml_key_is_named(tracking_uri, tmp_path):
    config = tmp_path / "typo.yaml"
    config.write_text("model: baseline\nbatchsize: 32\n")
    result = run_cli("train", "--config", str(config), "--dataset", "digits", cwd=tmp_path)
    assert result.returncode == 2
    assert "batchsize" in result.stderr and "Traceback" not in result.stderr
    assert all_runs() == []


def test_corrupted_data_stops_before_training_and_names_the_file(tracking_uri, tmp_path):
    data_dir = tmp_path / "mnist"
    shutil.copytree(require_mnist(), data_dir)
    labels = data_dir / "train-labels-idx1-ubyte.gz"
    os.chmod(labels, 0o644)
    content = bytearray(gzip.decompress(labels.read_bytes()))
    content[100] = (content[100] + 1) % 10
    labels.write_bytes(gzip.compress(bytes(content)))
    result = run_cli("train", "--data-dir", str(data_dir), "--limit", "100", cwd=tmp_path)
    assert result.returncode == 1
    assert "train-labels-idx1-ubyte.gz" in result.stderr and "Traceback" not in result.stderr
    assert all_runs() == []


def test_sigterm_marks_the_run_killed_and_says_how_to_resume(tracking_uri, tmp_path):
    process = start_slow_training(tmp_path, epochs=50, experiment="cli-test")
    kill_at(process, "epoch 1/", signal.SIGTERM)
    assert process.returncode == 130
    assert "digitml train --resume" in process.stderr.read()
    (run,) = all_runs("cli-test")
    assert run.info.status == "KILLED"
