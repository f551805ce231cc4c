"""`digitml tune` for real: Keras Tuner trials on sklearn digits, nested runs in a real store."""

import io
import json
import shutil
import signal
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pandas as pd
import pytest

from conftest import (
    CliProcess,
    all_runs,
    invoke_cli,
    new_store,
    tracking_at,
)

SMALL_SEARCH = """\
base_config: fast
tuner: random
max_trials: {max_trials}
epochs: 2
best_epochs: 1
dataset: digits
limit: 300
experiment: tune-test
search_space:
  model_params.dense_units: {{type: int, min: 16, max: 128, step: 8}}
  learning_rate: {{type: choice, values: {rates}}}
  optimizer: {{type: choice, values: {optimizers}}}
"""


# best_overrides: the winner (a strided `small` net, as every trial trains it) is retrained beside
# a partner network, and that pair is what is registered and served.
PARTNER = "best_overrides: {other_members: [{model: stem, model_params: {stem_filters: 8}}]}\n"


def write_search(tmp_path, max_trials=3, rates="[0.003, 0.01]", optimizers="[adam]"):
    path = tmp_path / "search.yaml"
    path.write_text(SMALL_SEARCH.format(max_trials=max_trials, rates=rates, optimizers=optimizers))
    return path


def runs_by_kind(kind):
    return [run for run in all_runs("tune-test") if run.data.tags.get("digitml.kind") == kind]


@pytest.fixture(scope="module")
def search(empty_store, tmp_path_factory):
    """A random search of 4 trials of 2 epochs, whose winner is retrained beside a partner
    network: `digitml tune` as a real process, SIGKILLed in the middle of the second trial (its
    first epoch logged), then the same command again (in-process) to finish it: `uri`, `folder`,
    `killed_lines` (stdout up to the kill),
    `finished_before` (trial runs FINISHED at the kill), `interrupted` (the second trial's run id),
    `result` (the second command's CliRunner result)."""
    folder = tmp_path_factory.mktemp("search")
    uri = new_store(empty_store, folder)
    path = write_search(folder, max_trials=4)
    path.write_text(path.read_text() + PARTNER)
    with tracking_at(uri, folder):
        process = CliProcess("tune", "--config", str(path), cwd=folder)
        killed_lines = process.read_until("trial 1/4")
        interrupted = process.kill_when(lambda: trial_with_an_epoch("1"), "trial 2's first epoch")
        finished_before = {
            run.info.run_id for run in runs_by_kind("trial") if run.info.status == "FINISHED"
        }
        result = invoke_cli("tune", "--config", str(path))
    assert result.exit_code == 0, result.output[-3000:]
    return SimpleNamespace(
        uri=uri,
        folder=folder,
        killed_lines=killed_lines,
        finished_before=finished_before,
        interrupted=interrupted,
        result=result,
    )


def trial_with_an_epoch(trial_id: str) -> str | None:
    """The run id of trial `trial_id` once its run holds an epoch."""
    for run in runs_by_kind("trial"):
        if run.data.tags[
            "digitml.trial_id"
        ] == trial_id and mlflow.MlflowClient().get_metric_history(run.info.run_id, "val_accuracy"):
            return run.info.run_id
    return None


@pytest.fixture
def searched(search):
    """The search's store, current for one test."""
    with tracking_at(search.uri, search.folder):
        yield search


def test_search_nests_one_child_run_per_trial_and_registers_the_best(searched):
    (parent,) = runs_by_kind("tune")
    trials = runs_by_kind("trial")
    (best,) = runs_by_kind("best")
    assert len(trials) == 4
    assert {run.data.tags["mlflow.parentRunId"] for run in trials + [best]} == {parent.info.run_id}
    # Named as the terminal counts them (trial 1/4 ... 4/4), and source-tagged like any run.
    assert sorted(run.info.run_name for run in trials) == [f"trial-0{n}" for n in range(1, 5)]
    assert all("mlflow.source.name" in run.data.tags for run in trials)
    assert best.info.run_name.startswith("best-trial-0")
    client = mlflow.MlflowClient()
    for trial in trials:
        assert {"model_params.dense_units", "learning_rate"} <= set(trial.data.params)
        history = client.get_metric_history(trial.info.run_id, "val_accuracy")
        assert sorted(m.step for m in history) == [0, 1]
        assert {"loss", "accuracy", "val_loss", "epoch_learning_rate"} <= set(trial.data.metrics)
    assert parent.data.params["tuner"] == "random" and parent.data.params["max_trials"] == "4"
    # A trial scores its best epoch; the best configuration is one of the top-scoring trials.
    scores = {
        trial.info.run_id: max(
            m.value for m in client.get_metric_history(trial.info.run_id, "val_accuracy")
        )
        for trial in trials
    }
    top = max(scores.values())
    assert parent.data.metrics["best_val_accuracy"] == pytest.approx(top)
    searched = ("model_params.dense_units", "learning_rate")
    chosen = {name: parent.data.params[f"best_{name}"] for name in searched}
    assert any(
        scores[trial.info.run_id] == pytest.approx(top)
        and all(trial.data.params[name] == value for name, value in chosen.items())
        for trial in trials
    )
    assert best.data.params["model_params.dense_units"] == chosen["model_params.dense_units"]
    assert best.data.params["learning_rate"] == chosen["learning_rate"]
    assert "test_accuracy" in best.data.metrics
    version = client.get_model_version_by_alias("digit-classifier", "challenger")
    assert version.run_id == best.info.run_id


def test_search_prints_one_line_per_trial_and_the_registered_version(searched):
    stdout = "".join(searched.killed_lines) + searched.result.stdout
    lines = [line for line in stdout.splitlines() if line.startswith("trial ")]
    assert [line.split()[1] for line in lines] == ["1/4", "2/4", "3/4", "4/4"]
    assert all("best" in line and "left" in line for line in lines)
    (parent,) = runs_by_kind("tune")
    assert f"search run_id: {parent.info.run_id}" in stdout
    assert "registered: digit-classifier version 1 (alias challenger)" in stdout


def test_killed_search_resumes_without_rerunning_or_duplicating(searched):
    assert searched.finished_before and searched.interrupted not in searched.finished_before
    assert len(runs_by_kind("tune")) == 1
    trials = runs_by_kind("trial")
    assert len(trials) == 4
    assert {run.data.tags["digitml.trial_id"] for run in trials} == {"0", "1", "2", "3"}
    assert searched.finished_before <= {run.info.run_id for run in trials}
    assert [
        line.split()[1] for line in searched.result.stdout.splitlines() if line.startswith("trial ")
    ] == ["2/4", "3/4", "4/4"]


def test_a_trial_killed_between_its_epochs_goes_on_in_its_own_run(searched):
    """Each epoch once, in the run the killed process started, which ends FINISHED."""
    run = mlflow.get_run(searched.interrupted)
    assert run.data.tags["digitml.trial_id"] == "1" and run.info.status == "FINISHED"
    client = mlflow.MlflowClient()
    for key in ("val_accuracy", "epoch_seconds"):
        steps = sorted(metric.step for metric in client.get_metric_history(run.info.run_id, key))
        assert steps == [0, 1], (key, steps)


def test_search_writes_trials_csv_and_figure(searched):
    (parent,) = runs_by_kind("tune")
    table = pd.read_csv(
        io.StringIO(mlflow.artifacts.load_text(f"runs:/{parent.info.run_id}/trials.csv"))
    )
    assert len(table) == 4
    assert {"trial_id", "model_params.dense_units", "learning_rate", "score", "status"} <= set(
        table.columns
    )
    assert "trials.png" in {
        a.path for a in mlflow.MlflowClient().list_artifacts(parent.info.run_id)
    }


def test_hyperband_rounds_continue_from_the_previous_rounds_weights(tracking_uri, tmp_path):
    # max_epochs 2, factor 2: two 1-epoch trials, then the better one goes on for one more epoch
    # from the weights it ended with (`hyperband_continue: false`, which trains both epochs again
    # from a new start, is test_search's).
    # The tuner's state goes where the file's tuning_dir says.
    search = write_search(tmp_path, max_trials=3)
    hyperband = "tuner: hyperband\nhyperband_factor: 2\nhyperband_continue: true"
    state = tmp_path / "state"
    search.write_text(search.read_text().replace("tuner: random", hyperband))
    search.write_text(search.read_text() + f"tuning_dir: {state}\n")
    result = invoke_cli("tune", "--config", str(search))
    assert result.exit_code == 0, result.output[-3000:]
    trials = {run.data.tags["digitml.trial_id"]: run for run in runs_by_kind("trial")}
    (second_round,) = [run for run in trials.values() if "tuner.trial_id" in run.data.params]
    assert second_round.data.params["tuner.initial_epoch"] == "1"
    history = mlflow.MlflowClient().get_metric_history(second_round.info.run_id, "val_accuracy")
    # Only the extra epoch, numbered as the trial's second.
    assert [m.step for m in history] == [1]
    previous = second_round.data.params["tuner.trial_id"]
    assert (state / "search" / f"trial_{previous}" / "weights.weights.h5").is_file()
    assert not (tmp_path / "tuning").exists()


def test_the_registered_model_is_the_winner_retrained_with_its_partner(searched):
    (best,) = runs_by_kind("best")
    assert best.data.params["ensemble"] == "small+stem"
    assert all("ensemble" not in run.data.params for run in runs_by_kind("trial"))
    model = mlflow.pyfunc.load_model("models:/digit-classifier@challenger")
    network = model.unwrap_python_model().model
    assert [layer.name for layer in network.layers if layer.name.startswith("member_")] == [
        "member_0",
        "member_1",
    ]


def test_a_failing_trial_is_recorded_and_the_search_goes_on(tracking_uri, tmp_path):
    # Plain SGD at a rate of 1e8 diverges to NaN: those trials must fail, the others finish.
    search = write_search(tmp_path, max_trials=3, rates="[100000000.0, 0.01]", optimizers="[sgd]")
    result = invoke_cli("tune", "--config", str(search), "--tuner", "random")
    assert result.exit_code == 0, result.output[-3000:]
    statuses = sorted(run.info.status for run in runs_by_kind("trial"))
    assert len(statuses) == 3
    assert "FAILED" in statuses and "FINISHED" in statuses
    (parent,) = runs_by_kind("tune")
    table = pd.read_csv(
        io.StringIO(mlflow.artifacts.load_text(f"runs:/{parent.info.run_id}/trials.csv"))
    )
    assert (table["status"] != "COMPLETED").sum() == statuses.count("FAILED")


def test_tuning_folder_of_another_store_is_refused(tracking_uri, tmp_path):
    (tmp_path / "tuning" / "tune-test").mkdir(parents=True)
    (tmp_path / "tuning" / "tune-test" / "mlflow_parent_run_id").write_text("0123456789abcdef")
    result = invoke_cli("tune", "--config", str(write_search(tmp_path)))
    assert result.exit_code == 1
    assert "0123456789abcdef" in result.stderr and "--tuning-dir" in result.stderr
    assert all_runs("tune-test") == []


def copied_search(search, folder: Path) -> Path:
    """The finished search's store and tuning folder copied into `folder`: the Keras Tuner
    project folder (oracle.json, trial_0 … trial_3)."""
    for name in ("mlflow.db", "tuning"):
        copy = shutil.copytree if (search.folder / name).is_dir() else shutil.copy
        copy(search.folder / name, folder / name)
    return next((folder / "tuning").rglob("oracle.json")).parent


def test_search_state_cut_short_is_named_instead_of_a_traceback(search, tmp_path):
    """A trial file left empty by a kill (before state files were written atomically)."""
    (copied_search(search, tmp_path) / "trial_0" / "trial.json").write_text("")
    with tracking_at(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path):
        result = invoke_cli("tune", "--config", str(search.folder / "search.yaml"))
    assert result.exit_code == 1
    assert "holds a search state file that is cut short" in result.stderr
    assert f"delete {tmp_path / 'tuning' / 'tune-test'}" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "change, named",
    [
        (("[0.003, 0.01]", "[0.003, 0.03]"), "another search_space.learning_rate"),
        (("epochs: 2", "epochs: 3"), "another epochs (2, now 3)"),
    ],
)
def test_a_search_resumed_with_other_trials_is_refused_naming_what_changed(
    search, tmp_path, change, named
):
    """The run's params and the oracle's state hold the search it started as: refused, with the
    ways on, rather than resumed as if it were the same search."""
    copied_search(search, tmp_path)
    changed = tmp_path / "search.yaml"
    changed.write_text((search.folder / "search.yaml").read_text().replace(*change))
    with tracking_at(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path):
        before = {run.info.run_id: run.info.status for run in all_runs("tune-test")}
        result = invoke_cli("tune", "--config", str(changed))
        after = {run.info.run_id: run.info.status for run in all_runs("tune-test")}
    assert result.exit_code == 1
    (parent,) = [run_id for run_id in before if run_id in result.stderr]
    assert f"search run {parent}, started with {named}: restore it" in result.stderr
    assert "another --tuning-dir" in result.stderr
    assert after == before


def edit_json(path: Path, change) -> None:
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))


@pytest.mark.parametrize("killed_after", ["a new trial's file", "an ended trial's file"])
def test_a_kill_between_keras_tuners_two_writes_neither_loses_nor_repeats_a_trial(
    search, tmp_path, killed_after
):
    """Keras Tuner writes a trial's file, then the oracle's state; the kill lands in between."""
    project = copied_search(search, tmp_path)
    if killed_after == "a new trial's file":  # trial 3 just created: it must still run
        for item in (project / "trial_3").iterdir():
            if item.name != "trial.json":
                shutil.rmtree(item) if item.is_dir() else item.unlink()
        edit_json(project / "trial_3" / "trial.json", lambda trial: trial.update(status="RUNNING"))
        edit_json(project / "oracle.json", lambda oracle: oracle["start_order"].remove("3"))
        expected = ["4/4"]
    else:  # trial 3 just ended, the state still lists it as running: it must not run again
        edit_json(
            project / "oracle.json", lambda oracle: oracle.update(ongoing_trials={"tuner0": "3"})
        )
        expected = []
    with tracking_at(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path):
        result = invoke_cli("tune", "--config", str(search.folder / "search.yaml"))
        trials = runs_by_kind("trial")
    assert result.exit_code == 0, result.output[-3000:]
    ran = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("trial ")]
    assert ran == expected
    statuses = [
        json.loads(path.read_text())["status"] for path in project.glob("trial_*/trial.json")
    ]
    assert statuses == ["COMPLETED"] * 4
    assert len(trials) == 4 and all(run.info.status == "FINISHED" for run in trials)


def test_a_tie_for_best_goes_to_the_same_trial_after_a_restart(search, tmp_path):
    """Trial 3 ties the best earlier trial: re-running the finished search keeps the best params
    MLflow already holds (it refuses to change a logged param) instead of following the order
    Keras Tuner happened to reload the trial folders in."""
    project = copied_search(search, tmp_path)
    scores = {
        path.parent.name: json.loads(path.read_text())["score"]
        for path in project.glob("trial_*/trial.json")
    }
    best = max(("trial_0", "trial_1", "trial_2"), key=scores.get)
    edit_json(project / "trial_3" / "trial.json", lambda trial: trial.update(score=scores[best]))
    with tracking_at(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path):
        result = invoke_cli("tune", "--config", str(search.folder / "search.yaml"))
        (parent,) = runs_by_kind("tune")
    assert result.exit_code == 0, result.output[-3000:]
    assert parent.data.metrics["best_val_accuracy"] == pytest.approx(scores[best])


def best_epochs_logged() -> int:
    best = runs_by_kind("best")
    if not best:
        return 0
    return len(mlflow.MlflowClient().get_metric_history(best[0].info.run_id, "val_accuracy"))


def test_kills_during_the_best_retraining_and_its_registration_leave_one_version(
    tracking_uri, tmp_path
):
    """Killed once the best configuration's retraining has logged an epoch (of three), then as
    the finished run's registration begins, then run to the end: one retraining run, each epoch
    once, and one registered version holding `challenger`."""
    search = write_search(tmp_path, max_trials=1)
    search.write_text(search.read_text().replace("best_epochs: 1", "best_epochs: 3"))
    command = ("tune", "--config", str(search))
    # The store is polled only from the retraining's announcement on.
    first = CliProcess(*command, cwd=tmp_path)
    first.read_until("MLflow run ")
    first.kill_when(best_epochs_logged, "a retraining epoch")
    second = CliProcess(*command, cwd=tmp_path)
    # Killed on the line printed just before registering: the ~0.1 s registration and the exit
    # after it leave a window a poll of the store can miss, not a reader of stdout.
    second.kill_at("registering run ")
    assert second.returncode == -signal.SIGKILL, "the process ended before the kill"
    assert [run.info.status for run in runs_by_kind("best")] == ["FINISHED"]
    result = invoke_cli(*command)
    assert result.exit_code == 0, result.output[-3000:]
    (best,) = runs_by_kind("best")
    assert best.info.status == "FINISHED" and len(runs_by_kind("trial")) == 1
    history = mlflow.MlflowClient().get_metric_history(best.info.run_id, "val_accuracy")
    assert sorted(metric.step for metric in history) == [0, 1, 2]
    versions = mlflow.MlflowClient().search_model_versions("name = 'digit-classifier'")
    assert [version.run_id for version in versions] == [best.info.run_id]
    challenger = mlflow.MlflowClient().get_model_version_by_alias("digit-classifier", "challenger")
    assert challenger.version == versions[0].version
