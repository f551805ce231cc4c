"""`digitml train` as a user runs it: real processes (a training stopped with SIGTERM, its resume
SIGKILLed while logging the model, resumed again), a real MLflow store in a temp dir; option checks, help and shell
completion in-process through click's CliRunner."""

import gzip
import importlib.metadata
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import click
import mlflow
import pytest

from conftest import (
    CliProcess,
    all_runs,
    invoke_cli,
    logged_models,
    require_mnist,
    run_cli,
    start_digits_training,
    tracking_at,
)
from digitml.cli import ROLES, cli
from digitml.config import DATASETS, OPTIMIZERS, PRECISIONS, TUNERS

EPOCHS = 6
KILL_AFTER = 3


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """A training stopped with SIGTERM once epoch 3 of 6 is logged; `digitml train --resume RUN_ID`
    SIGKILLed while it logs the trained model; `--resume` again, to the end. All real processes,
    as a user's shell starts them (no TensorFlow log level set), the first creating the store
    (MLflow's first migration): `uri`, `folder`, `stopped` (the first process), `killed_lines`
    (its stdout), `logging_lines` (the first resume's stdout), `models_at_kill` (the run's logged
    models and their status after the SIGKILL), `result` (the last resume's CompletedProcess),
    `run_id`, `status_after_stop`, `status_after_kill`."""
    folder = tmp_path_factory.mktemp("resume")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    log_level = os.environ.pop("TF_CPP_MIN_LOG_LEVEL", None)
    try:
        with tracking_at(uri, folder):
            return resume_story(uri, folder)
    finally:
        if log_level is not None:
            os.environ["TF_CPP_MIN_LOG_LEVEL"] = log_level


def resume_story(uri: str, folder: Path) -> SimpleNamespace:
    """What `resumed` describes, in the store at `uri`, which must be the current one."""
    stopped = start_digits_training(folder, epochs=EPOCHS, experiment="resume-test")
    killed_lines = stopped.kill_at(f"epoch {KILL_AFTER}/", signal.SIGTERM)
    (announce,) = [line for line in killed_lines if line.startswith("MLflow run ")]
    run_id = announce.split()[2]
    status_after_stop = mlflow.get_run(run_id).info.status
    logging = CliProcess("train", "--resume", run_id, cwd=folder)
    logging_lines = logging.read_until(f"epoch {EPOCHS}/")
    logging.kill_when(lambda: logged_models(run_id), "a model logged")
    models_at_kill = logged_models(run_id)
    status_after_kill = mlflow.get_run(run_id).info.status
    result = run_cli("train", "--resume", run_id, cwd=folder)
    assert result.returncode == 0, result.stderr[-3000:]
    return SimpleNamespace(
        uri=uri,
        folder=folder,
        stopped=stopped,
        killed_lines=killed_lines,
        logging_lines=logging_lines,
        models_at_kill=models_at_kill,
        result=result,
        run_id=run_id,
        status_after_stop=status_after_stop,
        status_after_kill=status_after_kill,
    )


@pytest.fixture
def in_resume_store(resumed):
    with tracking_at(resumed.uri, resumed.folder):
        yield resumed


def test_train_prints_run_id_and_accuracy(in_resume_store):
    stdout = in_resume_store.result.stdout
    printed = dict(line.split(": ", 1) for line in stdout.splitlines() if ": " in line)
    assert printed["run_id"] == in_resume_store.run_id
    run = mlflow.get_run(printed["run_id"])
    assert float(printed["test_accuracy"]) == pytest.approx(
        run.data.metrics["test_accuracy"], abs=1e-4
    )
    assert float(printed["train_seconds"]) == pytest.approx(
        run.data.metrics["train_seconds"], abs=0.1
    )
    assert run.data.params["dataset"] == "digits"


def test_without_a_terminal_each_epoch_is_one_line(resumed):
    stdout = "".join(resumed.killed_lines + resumed.logging_lines) + resumed.result.stdout
    epoch_lines = [line for line in stdout.splitlines() if line.startswith("epoch ")]
    assert [line.split(" - ")[0] for line in epoch_lines] == [
        f"epoch {n}/{EPOCHS}" for n in range(1, EPOCHS + 1)
    ]
    assert all("val_accuracy" in line for line in epoch_lines)
    assert "\r" not in stdout and "\x08" not in stdout


def test_an_interrupted_run_resumes_in_the_same_run_from_its_last_epoch(in_resume_store):
    resumed = in_resume_store
    assert resumed.status_after_kill == "RUNNING"
    resumed_epochs = [
        line.split(" - ")[0] for line in resumed.logging_lines if line.startswith("epoch ")
    ]
    assert resumed_epochs == [f"epoch {n}/{EPOCHS}" for n in range(KILL_AFTER + 1, EPOCHS + 1)]
    assert len(all_runs("resume-test")) == 1
    run = mlflow.get_run(resumed.run_id)
    assert run.info.status == "FINISHED"
    history = mlflow.MlflowClient().get_metric_history(resumed.run_id, "val_accuracy")
    assert sorted(m.step for m in history) == list(range(EPOCHS))
    assert "test_accuracy" in run.data.metrics
    assert not (resumed.folder / "checkpoints" / resumed.run_id).exists()


def test_a_run_killed_while_logging_its_model_is_finished_by_resume_without_training(
    in_resume_store,
):
    """The second kill lands while the trained model is logged: the last resume trains nothing,
    keeps what was logged in full, logs the rest once, and replaces the half-logged model."""
    resumed = in_resume_store
    assert "PENDING" in resumed.models_at_kill.values()
    assert not [line for line in resumed.result.stdout.splitlines() if line.startswith("epoch ")]
    assert logged_models(resumed.run_id) == {"keras_model": "READY", "model": "READY"}
    client = mlflow.MlflowClient()
    for key in mlflow.get_run(resumed.run_id).data.metrics:
        steps = [metric.step for metric in client.get_metric_history(resumed.run_id, key)]
        assert sorted(steps) == sorted(set(steps)), f"{key} logged twice: steps {steps}"
    digits = mlflow.pyfunc.load_model(f"runs:/{resumed.run_id}/model").predict(
        {"pixels": [[[0] * 28] * 28]}
    )
    assert len(digits) == 1


def test_finished_run_cannot_be_resumed(resumed):
    result = invoke_cli(
        "train", "--resume", resumed.run_id, env={"MLFLOW_TRACKING_URI": resumed.uri}
    )
    assert result.exit_code == 1
    assert f"run {resumed.run_id} already finished" in result.stderr


def test_resume_of_an_unknown_run_names_it(tracking_uri):
    result = invoke_cli("train", "--resume", "0123456789abcdef")
    assert result.exit_code == 1
    assert "run 0123456789abcdef not found" in result.stderr


def test_resume_refuses_other_options():
    result = invoke_cli("train", "--resume", "abc123", "--epochs", "3")
    assert result.exit_code == 2
    assert "drop --epochs" in result.stderr


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
        (["--data-dir", "/nonexistent/mnist"], "/nonexistent/mnist"),
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


@pytest.mark.parametrize("command", ["train", "tune"])
def test_a_config_typo_is_answered_before_tensorflow_loads(command, tmp_path):
    """TensorFlow takes seconds to import: a misspelt recipe must not wait for it."""
    check = (
        "import sys\n"
        "from digitml.cli import cli\n"
        "try:\n"
        f"    cli(['{command}', '--config', 'nosuch'])\n"
        "except SystemExit as done:\n"
        "    print(done.code, 'tensorflow' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", check], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert result.stdout.split() == ["2", "False"], result.stderr[-2000:]
    assert "config file not found: nosuch" in result.stderr


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


@pytest.mark.parametrize(
    "command",
    [
        ("train", "--dataset", "digits"),
        ("tune", "--dataset", "digits"),
        ("evaluate", "--model-uri", "runs:/0123456789abcdef/model"),
        ("promote", "--model-uri", "runs:/0123456789abcdef/model"),
    ],
)
def test_the_same_setting_error_ends_every_command_alike(tracking_uri, command):
    """A setting error is a usage error (exit 2) whichever command meets it: here the experiment
    the environment names, which every command that records a run reads first."""
    result = invoke_cli(*command, env={"MLFLOW_EXPERIMENT_ID": "424242"})
    assert result.exit_code == 2
    assert result.stderr.splitlines()[-1] == (
        f"Error: MLFLOW_EXPERIMENT_ID=424242: no such experiment in {tracking_uri}"
    )
    assert result.stderr.startswith(f"Usage: digitml {command[0]} ")


def test_sigterm_marks_the_run_killed_and_says_how_to_resume(resumed):
    assert resumed.stopped.returncode == 130
    assert f"digitml train --resume {resumed.run_id}" in resumed.stopped.stderr
    assert "Traceback" not in resumed.stopped.stderr
    assert resumed.status_after_stop == "KILLED"


def test_version_is_the_installed_packages():
    result = invoke_cli("--version")
    assert result.exit_code == 0
    assert result.output == f"digitml {importlib.metadata.version('digitml')}\n"


@pytest.mark.parametrize(
    "words, choices",
    [
        ("train --optimizer", OPTIMIZERS),
        ("train --precision", PRECISIONS),
        ("train --dataset", DATASETS),
        ("evaluate --dataset", DATASETS),
        ("tune --tuner", TUNERS),
        ("tune --role", ROLES),
    ],
)
def test_shell_completion_lists_the_choices(words, choices):
    """What bash's completion script asks for `digitml WORDS <TAB>`."""
    completion = {
        "_DIGITML_COMPLETE": "bash_complete",
        "COMP_WORDS": f"digitml {words} ",
        "COMP_CWORD": str(len(words.split()) + 1),
    }
    result = invoke_cli(env=completion)
    assert result.exit_code == 0
    assert result.output.splitlines() == [f"plain,{choice}" for choice in choices]


def help_context(name: str) -> click.Context:
    """The context `digitml NAME --help` renders in, with the group's settings (show_default)."""
    group = click.Context(cli, info_name="digitml", **cli.context_settings)
    return click.Context(cli.commands[name], info_name=name, parent=group)


def test_every_command_and_option_has_help_that_shows_its_default():
    lacking = []
    for name, command in cli.commands.items():
        context = help_context(name)
        lacking += [] if command.help else [name]
        for option in (param for param in command.params if isinstance(param, click.Option)):
            _, shown = option.get_help_record(context)
            has_default = "default:" in shown or option.is_flag or option.required
            lacking += [] if option.help and has_default else [f"{name} {option.opts[0]}"]
    assert lacking == []


@pytest.mark.parametrize(
    "name, option, bound",
    [
        ("train", "--epochs", "x>=1"),
        ("train", "--learning-rate", "x>0"),
        ("train", "--limit", "x>=20"),
        ("tune", "--max-trials", "x>=1"),
        ("promote", "--min-delta", "x>=0"),
        ("app", "--port", "1<=x<=65535"),
    ],
)
def test_help_shows_the_range_of_a_number(name, option, bound):
    (param,) = [param for param in cli.commands[name].params if option in param.opts]
    assert bound in param.get_help_record(help_context(name))[1]


def test_help_page_lists_the_choices():
    result = invoke_cli("tune", "--help")
    assert result.exit_code == 0
    assert "[hyperband|random|bayesian]" in result.output and "[chief|worker]" in result.output


def test_train_records_in_the_experiment_the_environment_names(tracking_uri):
    result = invoke_cli(
        *("train", "--config", "fast", "--dataset", "digits", "--epochs", "1", "--limit", "300"),
        env={"MLFLOW_EXPERIMENT_NAME": "env"},
    )
    assert result.exit_code == 0, result.output[-3000:]
    (run,) = all_runs("env")
    assert f"MLflow run {run.info.run_id} (fast-small-s42) in experiment 'env'" in result.stdout
    assert run.data.params["experiment"] == "env"


def test_a_command_writes_no_third_party_chatter(resumed):
    """TensorFlow's start-up lines (CUDA probes, absl's notice), MLflow's notes on creating its
    store and validating the model's input example, and the warnings MLflow and scikit-learn
    raise about a run are silenced or fixed: the training that created the store wrote only its
    own stop message, the resume that logged the model nothing."""
    (stop_message,) = resumed.stopped.stderr.splitlines()
    assert f"digitml train --resume {resumed.run_id}" in stop_message
    assert resumed.result.stderr == ""
