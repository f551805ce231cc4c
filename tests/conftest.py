"""Shared fixtures: a real MLflow store in a temp dir, real data, one real training run."""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import json
import os
import queue
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, NoReturn

import mlflow
import pytest
import yaml
from click.testing import CliRunner, Result

from digitml.data import KERAS_NPZ_STEMS, DataError, idx_bytes, keras_arrays, load_dataset

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR_VARIABLE = "DIGITML_DATA_DIR"
if os.environ.get(DATA_DIR_VARIABLE):  # absolute: tests change directory and start processes
    os.environ[DATA_DIR_VARIABLE] = str(Path(os.environ[DATA_DIR_VARIABLE]).resolve())
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# On a user's machine a test that needs a missing part (Chromium, PostgreSQL, ...) is skipped,
# saying what to install. Where DIGITML_CI is set (.ci/run sets it), it fails instead, unless the
# part is named in DIGITML_ABSENT_ON_PURPOSE (comma-separated, with the reason in .ci/run).
ABSENT_ON_PURPOSE = set(filter(None, os.environ.get("DIGITML_ABSENT_ON_PURPOSE", "").split(",")))


# The modules that take longest (real processes, searches, full test-set evaluations), slowest
# first: xdist hands out whole modules in collection order, so these start at once and the
# workers finish together. Only the run time depends on this list.
LONGEST_MODULES = (
    "test_docs.py",
    "test_tune.py",
    "test_tune_distributed.py",
    "test_mlproject.py",
    "test_shipped.py",
    "test_train.py",
    "test_cli.py",
    "test_tracking.py",
    "test_deploy.py",
    "test_app.py",
    "test_registry.py",
    "test_disk_full.py",
    "test_app_browser.py",
    "test_wheel.py",
)


WORKER_MEMORY = 3 * 2**30  # a worker holding TensorFlow, a model and a store peaks near 2.6 GB


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """`-n auto`: one worker per core and one more, as far as memory allows. The tests spend
    much of their time waiting on the processes and servers they start: with three workers on
    two cores, 1.76 cores were busy. PYTEST_XDIST_AUTO_NUM_WORKERS still decides where set."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None  # xdist's own hook reads it
    cores = len(os.sched_getaffinity(0))
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return max(1, min(cores + 1, memory // WORKER_MEMORY))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: position for position, name in enumerate(LONGEST_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def shipped_files(searches: bool) -> list[str]:
    """The names of experiments/' training recipes, or of its searches (the files with a
    search_space), as found there: a new file is covered without editing a test."""
    files = sorted((REPO_ROOT / "experiments").glob("*.yaml"))
    return [
        path.stem
        for path in files
        if ("search_space" in (yaml.safe_load(path.read_text()) or {})) == searches
    ]


def mlproject_search() -> str:
    """The search `mlflow run . -e tune` runs when given no `config`: test_docs.py runs it as the
    README shows it."""
    entry_points = yaml.safe_load((REPO_ROOT / "MLproject").read_text())["entry_points"]
    return entry_points["tune"]["parameters"]["config"]["default"]


def missing(part: str, how_to_get: str) -> NoReturn:
    """Skip the test for want of `part`, saying how to get it; in CI, fail (see ABSENT_ON_PURPOSE)."""
    if os.environ.get("DIGITML_CI") and part not in ABSENT_ON_PURPOSE:
        pytest.fail(
            f"{part} is missing in CI ({how_to_get}): install it in .ci/run, or name it in "
            "DIGITML_ABSENT_ON_PURPOSE there, with the reason"
        )
    pytest.skip(f"needs {part}: {how_to_get}")


def require_mnist() -> Path:
    """A folder of the four genuine MNIST IDX files (.gz): the one DIGITML_DATA_DIR names (CI's),
    else one written once per machine, by one test process while the others wait, from Keras'
    cache, which digitml downloads first where it is missing (as `digitml train` would)."""
    given = os.environ.get(DATA_DIR_VARIABLE)
    if given:
        first = f"{KERAS_NPZ_STEMS['x_train']}.gz"
        if not (Path(given) / first).is_file():
            pytest.fail(f"{DATA_DIR_VARIABLE}={given} holds no {first}")
        return Path(given)
    folder = Path(tempfile.gettempdir()) / f"digitml-tests-mnist-{os.getuid()}"
    folder.mkdir(exist_ok=True)
    with exclusive(folder):
        if not all((folder / f"{name}.gz").is_file() for name in KERAS_NPZ_STEMS.values()):
            _write_idx_files(folder)
    return folder


def _write_idx_files(folder: Path) -> None:
    """MNIST from Keras' cache written as the four official IDX files (their content, which
    digitml checks against the official digests, is the same)."""
    try:
        arrays = keras_arrays(load_dataset("mnist"))
    except DataError as error:
        missing("MNIST", f"{error}")
    for key, name in KERAS_NPZ_STEMS.items():
        partial = folder / f"{name}.gz.partial"
        partial.write_bytes(gzip.compress(idx_bytes(arrays[key]), compresslevel=1))
        partial.replace(folder / f"{name}.gz")


def copy_project(folder: Path) -> Path:
    """`folder` holding a copy of the project as a user's checkout has it for `mlflow run .` and
    the documented commands (MLproject, conda.yaml, the package, the recipes, the example
    images), without the checkout's stores, caches or virtual environment."""
    for name in ("MLproject", "conda.yaml"):
        shutil.copy(REPO_ROOT / name, folder)
    for name in ("digitml", "experiments", "examples"):
        shutil.copytree(
            REPO_ROOT / name, folder / name, ignore=shutil.ignore_patterns("__pycache__")
        )
    return folder


@pytest.fixture(autouse=True)
def no_inherited_experiment():
    """mlflow.set_experiment() exports MLFLOW_EXPERIMENT_ID; a test must not pass it on to the
    processes it starts (`mlflow run` refuses it beside --experiment-name), nor leave it to the
    next module's fixtures, which run before this one (a command would record there). Removed
    before and after each test: monkeypatch would restore a value set after it looked."""
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
    yield
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)


RUN_OUTPUTS = ("mlflow.db", "mlruns", "checkpoints", "tuning")  # what digitml writes in its cwd


@pytest.fixture(autouse=True)
def checkout_stays_clean():
    """Each test leaves the checkout as it found it: stores, artifacts, checkpoints and tuning
    state belong in temp dirs."""
    before = {name for name in RUN_OUTPUTS if (REPO_ROOT / name).exists()}
    yield
    added = {name for name in RUN_OUTPUTS if (REPO_ROOT / name).exists()} - before
    assert not added, f"the test wrote {sorted(added)} into {REPO_ROOT}"


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory) -> Path:
    """An SQLite tracking database migrated once per session (a new one runs ~70 migrations,
    about 3 s): the schema only, no experiment, so each copy makes its own Default experiment
    with its artifacts beside it, as a new store does."""
    folder = tmp_path_factory.mktemp("empty-store")
    with tracking_at(f"sqlite:///{folder / 'mlflow.db'}", folder):
        mlflow.search_experiments()
    with sqlite3.connect(folder / "mlflow.db") as database:
        database.execute("DELETE FROM experiments")
    return folder / "mlflow.db"


def new_store(empty_store: Path, folder: Path) -> str:
    """A real SQLite store at `folder`/mlflow.db, copied from the migrated empty one; its URI."""
    shutil.copy(empty_store, folder / "mlflow.db")
    return f"sqlite:///{folder / 'mlflow.db'}"


@contextlib.contextmanager
def tracking_at(uri: str, folder: Path) -> Iterator[str]:
    """Track to `uri` from `folder` (artifacts go to its ./mlruns, digitml's working files to its
    checkpoints/ and tuning/), in this process and in the processes it starts meanwhile."""
    settings = {"MLFLOW_TRACKING_URI": uri, "DIGITML_WORK_DIR": str(folder)}
    previous_dir = os.getcwd()
    previous = {name: os.environ.get(name) for name in settings}
    os.chdir(folder)
    os.environ.update(settings)
    mlflow.set_tracking_uri(uri)
    try:
        yield uri
    finally:
        mlflow.set_tracking_uri(None)
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        os.chdir(previous_dir)


@pytest.fixture(scope="session", autouse=True)
def work_dir(tmp_path_factory):
    """digitml's working files, outside a store's folder, in a temp dir: not the user's cache."""
    os.environ["DIGITML_WORK_DIR"] = str(tmp_path_factory.mktemp("work"))


@pytest.fixture
def tracking_uri(empty_store, tmp_path) -> Iterator[str]:
    """A new SQLite tracking store (artifacts beside it) for one test, also seen by subprocesses."""
    with tracking_at(new_store(empty_store, tmp_path), tmp_path) as uri:
        yield uri


def run_cli(
    *args: str,
    cwd: Path,
    env: dict[str, str] | None = None,
    timeout: int = 300,
    within: Sequence[str] = (),
):
    """Run `digitml ...` as a user would (`within` a command, such as nsenter's, if given),
    returning the CompletedProcess (never raising)."""
    return subprocess.run(
        [*within, sys.executable, "-m", "digitml.cli", *args],
        check=False,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def invoke_cli(*args: str, env: dict[str, str] | None = None) -> Result:
    """`digitml ...` inside this process, through click's CliRunner: for checks of options and
    messages that need no fresh interpreter. An unexpected exception fails the test with its
    traceback; the SIGTERM handler and the environment variables a command sets are undone."""
    from digitml.cli import cli

    handler, environment = signal.getsignal(signal.SIGTERM), dict(os.environ)
    try:
        return CliRunner().invoke(
            cli, list(args), env=env, catch_exceptions=False, prog_name="digitml"
        )
    finally:
        signal.signal(signal.SIGTERM, handler)
        os.environ.clear()
        os.environ.update(environment)


def all_runs(experiment: str = "digitml"):
    """Every run of an experiment in the current store (empty when the experiment does not exist)."""
    found = mlflow.get_experiment_by_name(experiment)
    if found is None:
        return []
    return mlflow.search_runs([found.experiment_id], output_format="list")


def shared_folder(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """A folder that every xdist worker of this test run sees (without xdist, the run's own)."""
    root = tmp_path_factory.getbasetemp()
    folder = (root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root) / name
    folder.mkdir(exist_ok=True)
    return folder


@contextlib.contextmanager
def exclusive(folder: Path) -> Iterator[None]:
    """Hold `folder`'s lock: one worker at a time, the others wait."""
    with (folder / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def mnist_model(empty_store, tmp_path_factory):
    """One real model trained on 20,000 MNIST images (fast recipe), logged in its own store;
    trained once per test run, by the first worker that needs it.

    Yields (tracking_uri, run_id, local path of the pyfunc `model`).
    """
    from digitml.config import load_config
    from digitml.training_run import run_training

    folder = shared_folder(tmp_path_factory, "model-store")
    record = folder / "model.json"
    with exclusive(folder):
        if not record.exists():
            with tracking_at(new_store(empty_store, folder), folder) as uri:
                config = load_config(
                    "fast",
                    {"limit": 20_000, "data_dir": str(require_mnist()), "experiment": "model"},
                )
                run_id = run_training(config, checkpoint_root=folder / "checkpoints").run_id
                (folder / "downloaded").mkdir()
                model_path = mlflow.artifacts.download_artifacts(
                    f"runs:/{run_id}/model", dst_path=folder / "downloaded"
                )
            record.write_text(json.dumps([uri, run_id, model_path]))
    return tuple(json.loads(record.read_text()))


@pytest.fixture(scope="session")
def registered_model(mnist_model):
    """The session model registered as `digit-classifier`, alias `champion`; yields tracking URI."""
    uri, run_id, _ = mnist_model
    client = mlflow.MlflowClient(tracking_uri=uri)
    with exclusive(Path(uri.removeprefix("sqlite:///")).parent):
        if not client.search_model_versions("name = 'digit-classifier'"):
            mlflow.set_tracking_uri(uri)
            try:
                version = mlflow.register_model(f"runs:/{run_id}/model", "digit-classifier").version
            finally:
                mlflow.set_tracking_uri(None)
            client.set_registered_model_alias("digit-classifier", "champion", version)
    return uri


READ_TIMEOUT = 300  # seconds a test waits for an awaited line before it fails


class CliProcess:
    """`digitml ...` running in the background. Threads read its stdout and stderr as they come,
    so a full pipe never blocks it, and every wait has a deadline, so a stuck child fails one
    test instead of hanging the suite."""

    def __init__(self, *args: str, cwd: Path, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "digitml.cli", *args],
            cwd=cwd,
            env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._stdout: queue.Queue[str | None] = queue.Queue()
        self._stderr: list[str] = []
        self._readers = [
            threading.Thread(target=_pump, args=(self.process.stdout, self._stdout.put)),
            threading.Thread(target=_pump, args=(self.process.stderr, self._stderr.append)),
        ]
        for reader in self._readers:
            reader.daemon = True
            reader.start()

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    @property
    def stderr(self) -> str:
        """What the process wrote to stderr so far."""
        return "".join(line for line in self._stderr if line is not None)

    def read_until(self, prefix: str, timeout: float = READ_TIMEOUT) -> list[str]:
        """The stdout lines up to and including the first that starts with `prefix`."""
        deadline = time.monotonic() + timeout
        lines: list[str] = []
        while True:
            try:
                line = self._stdout.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.process.kill()
                raise AssertionError(
                    f"no line starting with {prefix!r} within {timeout:.0f} s: "
                    f"{''.join(lines)[-1000:]}{self.stderr[-2000:]}"
                ) from None
            if line is None:
                self.finish()
                raise AssertionError(
                    f"the process ended before printing {prefix!r}: {self.stderr[-2000:]}"
                )
            lines.append(line)
            if line.startswith(prefix):
                return lines

    def finish(self, timeout: float = READ_TIMEOUT) -> str:
        """Wait for the end (killing the process after `timeout`); the stdout not read yet."""
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(
                f"still running after {timeout:.0f} s: {self.stderr[-2000:]}"
            ) from None
        finally:
            for reader in self._readers:
                reader.join(timeout=10)
        rest = []
        while not self._stdout.empty():
            rest.append(self._stdout.get_nowait() or "")
        return "".join(rest)

    def kill_at(self, prefix: str, signum: int = signal.SIGKILL) -> list[str]:
        """Send `signum` once a stdout line starts with `prefix`; wait for the end; the lines."""
        try:
            lines = self.read_until(prefix)
            self.process.send_signal(signum)
            self.finish(timeout=60)
        finally:
            self.process.kill()
        return lines

    def wait_for(
        self,
        found: Callable[[], Any],
        what: str,
        timeout: float = READ_TIMEOUT,
        interval: float = 0.02,
    ) -> Any:
        """What `found()` returns once it returns something, called every `interval` s (a query
        of the store, say: the longer the wait, the longer the interval, as each query costs the
        store and this process CPU). Fails if the process ends first, or after `timeout`."""
        deadline = time.monotonic() + timeout
        while not (result := found()):
            assert self.process.poll() is None, f"ended before {what}: {self.stderr[-2000:]}"
            assert time.monotonic() < deadline, f"no {what} within {timeout:.0f} s"
            time.sleep(interval)
        return result

    def kill_when(self, found: Callable[[], Any], what: str, timeout: float = READ_TIMEOUT) -> Any:
        """SIGKILL the process as soon as `found()` returns something (`wait_for`, polling every
        20 ms); wait for the end; that something."""
        result = self.wait_for(found, what, timeout)
        self.process.kill()
        self.finish(timeout=60)
        return result


def logged_models(run_id: str) -> dict[str, str]:
    """The run's logged models in the current store: name -> status."""
    found = mlflow.search_logged_models(
        experiment_ids=[mlflow.get_run(run_id).info.experiment_id],
        filter_string=f"source_run_id = '{run_id}'",
        output_format="list",
    )
    return {model.name: str(model.status) for model in found}


def _pump(pipe: IO[str], keep: Callable[[str | None], None]) -> None:
    """Hand each line of `pipe` to `keep`, then None at its end."""
    for line in pipe:
        keep(line)
    keep(None)


def start_digits_training(cwd: Path, epochs: int, experiment: str) -> CliProcess:
    """`digitml train` of the fast recipe's network on sklearn's digits, to interrupt on purpose:
    about 0.6 s per epoch, and exactly `epochs` epochs (no early stopping) when left alone."""
    return CliProcess(
        "train",
        "--config",
        "fast",
        "--dataset",
        "digits",
        "--epochs",
        str(epochs),
        "--experiment",
        experiment,
        cwd=cwd,
    )
