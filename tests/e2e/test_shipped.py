"""Everything shipped runs as shipped: each recipe and each search of experiments/ through the
command a user types, with only options that make it small (sklearn's digits, 300 images, one
epoch, two trials), in this process (click's runner: one TensorFlow start for them all). The
search `mlflow run . -e tune` runs by default is not run again here: test_docs.py runs it as a
real `mlflow run` process, as the README shows it."""

import mlflow
import pytest

from conftest import all_runs, invoke_cli, mlproject_search, shipped_files
from digitml.config import load_config, load_tune_config

SMALL = ("--dataset", "digits", "--limit", "300", "--epochs", "1")
FEW_TRIALS = ("--max-trials", "2", "--best-epochs", "1")


def test_the_mlproject_searches_with_a_shipped_file_by_default():
    """The search left out here is run there, so each file runs once in all."""
    assert mlproject_search() in shipped_files(searches=True)


@pytest.mark.parametrize("recipe", shipped_files(searches=False))
def test_every_shipped_recipe_trains(tracking_uri, recipe):
    result = invoke_cli("train", "--config", recipe, *SMALL)
    assert result.exit_code == 0, result.output[-3000:]
    (run,) = all_runs(load_config(recipe).experiment)
    assert run.info.status == "FINISHED" and run.data.tags["config"] == recipe
    assert run.data.params["ensemble"] == load_config(recipe).ensemble_label
    assert "test_accuracy" in run.data.metrics


@pytest.mark.parametrize(
    "search", [name for name in shipped_files(searches=True) if name != mlproject_search()]
)
def test_every_shipped_search_registers_a_challenger(tracking_uri, search):
    result = invoke_cli("tune", "--config", search, *SMALL, *FEW_TRIALS)
    assert result.exit_code == 0, result.output[-3000:]
    config = load_tune_config(search)
    kinds = sorted(run.data.tags["digitml.kind"] for run in all_runs(config.experiment))
    assert kinds == ["best", "trial", "trial", "tune"]
    challenger = mlflow.MlflowClient().get_model_version_by_alias(config.register_as, "challenger")
    (best,) = [
        run for run in all_runs(config.experiment) if run.data.tags["digitml.kind"] == "best"
    ]
    assert challenger.run_id == best.info.run_id
