"""Everything shipped runs as shipped: each recipe and each search of experiments/ through the
command a user types, with only options that make it small (sklearn's digits, 300 images, one
epoch, two trials), in this process (click's runner: one TensorFlow start for them all). The
search `mlflow run . -e tune` runs by default is not run again here: test_docs.py runs it as a
real `mlflow run` process, as the README shows it."""

from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest

from conftest import all_runs, invoke_cli, mlproject_search, shipped_files
from digitml.config import EXPORT_FORMATS, load_config, load_tune_config
from digitml.data import load_dataset
from digitml.export import EXPORT_TOLERANCE, EXPORTS_DIR, FORMATS, export_model
from digitml.pyfunc import KERAS_MODEL_FILE

SMALL = ("--dataset", "digits", "--limit", "300", "--epochs", "1")
FEW_TRIALS = ("--max-trials", "2", "--best-epochs", "1")


def test_the_mlproject_searches_with_a_shipped_file_by_default():
    """The search left out here is run there, so each file runs once in all."""
    assert mlproject_search() in shipped_files(searches=True)


# Their networks are exported too: the four-network ensemble and the eight-network one, whose
# erasing members carry a RandomErasing layer (inert at inference).
EXPORTED_ENSEMBLES = ("default", "record")


@pytest.mark.parametrize("recipe", shipped_files(searches=False))
def test_every_shipped_recipe_trains(tracking_uri, tmp_path, recipe):
    result = invoke_cli("train", "--config", recipe, *SMALL)
    assert result.exit_code == 0, result.output[-3000:]
    (run,) = all_runs(load_config(recipe).experiment)
    assert run.info.status == "FINISHED" and run.data.tags["config"] == recipe
    assert run.data.params["ensemble"] == load_config(recipe).ensemble_label
    assert "test_accuracy" in run.data.metrics
    if recipe in EXPORTED_ENSEMBLES:
        assert_exports_answer_as_keras(f"runs:/{run.info.run_id}/model", tmp_path)


def assert_exports_answer_as_keras(model_uri: str, folder: Path) -> None:
    """Every format of `digitml export` gives the Keras network's digit on each of the digits
    test images, each probability within the tolerance."""
    export_model(model_uri, folder, store=False)
    network = keras.models.load_model(
        next(Path(mlflow.artifacts.download_artifacts(model_uri)).rglob(KERAS_MODEL_FILE)),
        compile=False,
    )
    images = load_dataset("digits").test_images
    expected = np.asarray(network.predict_on_batch(images))
    for name in EXPORT_FORMATS:
        got = FORMATS[name].runner(folder / EXPORTS_DIR / FORMATS[name].file)(images)
        assert np.abs(got - expected).max() <= EXPORT_TOLERANCE, name
        assert (got.argmax(1) == expected.argmax(1)).all(), name


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
