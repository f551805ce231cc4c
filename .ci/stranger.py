"""CI's stranger step: the README's first run, copied out of the README, as a new user meets it:
in a copy of the repository in a temp folder (no ../shared beside it), with a clean HOME and no
DIGITML_* or MLFLOW_* variable; then the README's `mlflow ui` on the store it left. CI has no
internet, so the clean HOME's Keras cache holds an mnist.npz made from the genuine files (where a
user's first run downloads it). The project is the one CI installed (a second install would
only repeat it). Exit 0 when the run finished and the UI lists it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from readme import first_screen

from digitml.data import keras_arrays, load_mnist_dir

REPO = Path(__file__).resolve().parent.parent
UI = "http://127.0.0.1:5000"


def copy_of_the_repository(target: Path) -> None:
    """The files git tracks, and the new ones it does not ignore, as they are in the work tree."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        if (REPO / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, target / name)


def keras_cache_from_genuine_files(home: Path, genuine: Path) -> None:
    cache = home / ".keras" / "datasets"
    cache.mkdir(parents=True)
    np.savez(cache / "mnist.npz", **keras_arrays(load_mnist_dir(genuine)))


def a_strangers_environment(home: Path) -> dict[str, str]:
    kept = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("DIGITML_", "MLFLOW_", "KERAS_", "XDG_"))
    }
    return {**kept, "HOME": str(home)}


def ui_runs(deadline: float) -> list[dict]:
    """The runs of experiment `digitml` as the UI's server lists them, once it answers."""
    while True:
        try:
            with urllib.request.urlopen(
                f"{UI}/api/2.0/mlflow/experiments/get-by-name?experiment_name=digitml"
            ) as answer:
                experiment = json.load(answer)["experiment"]["experiment_id"]
            request = urllib.request.Request(
                f"{UI}/api/2.0/mlflow/runs/search",
                data=json.dumps({"experiment_ids": [experiment]}).encode(),
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request) as answer:
                return json.load(answer).get("runs", [])
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def main() -> None:
    commands = first_screen()
    genuine = Path(os.environ["DIGITML_DATA_DIR"])
    with tempfile.TemporaryDirectory(prefix="digitml-stranger-") as scratch:
        project, home = Path(scratch) / "digitml", Path(scratch) / "home"
        copy_of_the_repository(project)
        keras_cache_from_genuine_files(home, genuine)
        environment = a_strangers_environment(home)
        print(f"stranger step, in {project} with HOME={home}: {commands['run']}", flush=True)
        started = time.monotonic()
        run = subprocess.run(
            ["bash", "-c", commands["run"]], cwd=project, env=environment, timeout=900, check=False
        )
        print(f"first run: exit {run.returncode} in {time.monotonic() - started:.1f} s", flush=True)
        if run.returncode != 0:
            sys.exit("stranger step: the README's first run failed")
        ui = subprocess.Popen(
            ["bash", "-c", commands["look"]],
            cwd=project,
            env=environment,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            runs = ui_runs(time.monotonic() + 120)
        finally:
            os.killpg(ui.pid, signal.SIGTERM)
            ui.wait(timeout=30)
        finished = [run for run in runs if run["info"]["status"] == "FINISHED"]
        print(
            f"{commands['look']}: lists {len(finished)} finished run(s) in experiment digitml",
            flush=True,
        )
        if not finished:
            sys.exit("stranger step: the UI shows no finished run")


if __name__ == "__main__":
    main()
