"""The registered champion where digitml is not installed: `mlflow models serve --env-manager uv`
builds the model's own environment from its requirements (digitml is on no package index), and
`mlflow models generate-dockerfile` makes an image recipe that installs those requirements."""

import base64
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from serving import ModelServer

from conftest import REPO_ROOT, require_mnist
from digitml.data import load_mnist_dir

CHAMPION = "models:/digit-classifier@champion"
SEVEN = REPO_ROOT / "examples" / "seven.png"


@pytest.fixture(scope="module")
def uv_server(registered_model, tmp_path_factory):
    # The first start builds the environment (uv: ~20 s from a warm package cache, minutes from a
    # cold one); later starts reuse it. Started away from the checkout, whose digitml/ folder
    # uvicorn would otherwise find on its path.
    running = ModelServer(
        CHAMPION,
        env={"MLFLOW_TRACKING_URI": registered_model},
        timeout=540,
        env_manager="uv",
        cwd=tmp_path_factory.mktemp("uv-serve"),
    )
    yield running
    running.stop()


@pytest.fixture(scope="module")
def requests():
    """A PNG file and an MNIST test image as a `pixels` row, as the REST API takes them."""
    pixels = np.round(load_mnist_dir(require_mnist()).test_images[0, ..., 0] * 255).astype(int)
    return [
        {"image": base64.b64encode(SEVEN.read_bytes()).decode()},
        {"pixels": pixels.tolist()},
    ]


def test_champion_served_in_its_own_uv_environment_answers_as_in_process(
    uv_server, requests, registered_model, tmp_path
):
    status, body = uv_server.post(json.dumps({"dataframe_records": requests}))
    assert status == 200, body
    served = json.loads(body)["predictions"]
    mlflow.set_tracking_uri(registered_model)
    try:
        model = mlflow.pyfunc.load_model(CHAMPION)
    finally:
        mlflow.set_tracking_uri(None)
    local = model.predict(
        pd.DataFrame([{"image": SEVEN.read_bytes()}, {"pixels": requests[1]["pixels"]}])
    )
    assert [row["digit"] for row in served] == local["digit"].tolist() == [7, 7]
    np.testing.assert_allclose(
        [row["probabilities"] for row in served], np.stack(local["probabilities"]), atol=1e-5
    )
    (environment,) = re.findall(
        r"nvironment (?:in )?(/\S+?)(?: with| already)", uv_server.log.read_text()
    )
    assert not (Path(environment) / "bin").joinpath("digitml").exists()
    probe = subprocess.run(
        [str(Path(environment) / "bin" / "python"), "-c", "import digitml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "No module named 'digitml'" in probe.stderr


def test_generated_dockerfile_installs_the_models_own_requirements(registered_model, tmp_path):
    mlflow_cli = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    result = subprocess.run(
        [mlflow_cli, "models", "generate-dockerfile", "-m", CHAMPION, "-d", str(tmp_path / "ctx")],
        env={**os.environ, "MLFLOW_TRACKING_URI": registered_model},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    dockerfile = (tmp_path / "ctx" / "Dockerfile").read_text()
    model_dir = tmp_path / "ctx" / "model_dir"
    requirements = (model_dir / "requirements.txt").read_text().split()
    assert f"FROM python:{platform.python_version()}" in dockerfile
    assert "COPY model_dir /opt/ml/model" in dockerfile
    assert "_install_pyfunc_deps('/opt/ml/model'" in dockerfile
    assert {line.split("==")[0] for line in requirements} >= {"mlflow", "tensorflow", "keras"}
    assert not any(line.startswith("digitml") for line in requirements)
