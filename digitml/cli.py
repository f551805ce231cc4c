"""The `digitml` command line: parse and validate, then call one function per command."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import click

from digitml.config import DATASETS, OPTIMIZERS, PRECISIONS, TUNERS, ConfigError

# TensorFlow's C++ start-up chatter hides the lines users need; errors still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class OrUnset(click.ParamType):
    """A click type where an empty string means "not given": MLproject passes '' for unset params."""

    def __init__(self, inner: click.ParamType) -> None:
        self.inner = inner
        self.name = inner.name

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value == "":
            return None
        return self.inner.convert(value, param, ctx)

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str | None:
        return self.inner.get_metavar(param, ctx) if ctx else self.inner.get_metavar(param)


DEFAULT_ORACLE = "127.0.0.1:8000"
POSITIVE_INT = OrUnset(click.IntRange(min=1))
POSITIVE_FLOAT = OrUnset(click.FloatRange(min=0, min_open=True))


def data_options(command: Any) -> Any:
    """--dataset, --data-dir and --experiment, alike on every command that reads data."""
    options = [
        click.option(
            "--dataset", type=OrUnset(click.Choice(DATASETS)), help="mnist (default) or digits."
        ),
        click.option(
            "--data-dir",
            type=OrUnset(click.STRING),
            help="Folder with the MNIST IDX files or mnist.npz [env DIGITML_DATA_DIR].",
        ),
        click.option("--experiment", type=OrUnset(click.STRING), help="MLflow experiment name."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _data_dir(given: str | None) -> str | None:
    """--data-dir, else DIGITML_DATA_DIR. Read here, not through click's envvar: MLproject passes
    '' for an unset --data-dir."""
    return given or os.environ.get("DIGITML_DATA_DIR") or None


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """digitml: handwritten-digit classifiers, every run tracked in MLflow."""


@cli.command()
@click.option(
    "--config",
    "config_file",
    type=OrUnset(click.STRING),
    help="YAML file or name in experiments/ (default: default).",
)
@click.option(
    "--model", type=OrUnset(click.STRING), help="Architecture name (see `digitml models`)."
)
@click.option("--epochs", type=POSITIVE_INT)
@click.option("--batch-size", type=POSITIVE_INT)
@click.option("--learning-rate", type=POSITIVE_FLOAT)
@click.option("--optimizer", type=OrUnset(click.Choice(OPTIMIZERS)))
@click.option(
    "--precision",
    type=OrUnset(click.Choice(PRECISIONS)),
    help="auto: bfloat16 compute where the CPU has it natively (AMX, AVX512-BF16).",
)
@data_options
@click.option(
    "--limit",
    type=OrUnset(click.IntRange(min=20)),
    help="Train on N training images (seeded, class-balanced).",
)
@click.option("--seed", type=OrUnset(click.IntRange(min=0)))
@click.option(
    "--resume",
    "resume_run_id",
    type=OrUnset(click.STRING),
    help="Continue an interrupted run (its own config).",
)
def train(config_file: str | None, resume_run_id: str | None, **overrides: Any) -> None:
    """Train a model and record the run in MLflow."""
    from digitml.config import load_config
    from digitml.data import DataError
    from digitml.experiment import ResumeError, resumable_config, run_training

    overrides["data_dir"] = _data_dir(overrides["data_dir"])
    try:
        if resume_run_id:
            data_dir = overrides.pop("data_dir")
            given = [name for name, value in overrides.items() if value is not None]
            if given or config_file:
                option = (given or ["config"])[0].replace("_", "-")
                raise click.UsageError(
                    f"--resume continues with the run's own config; drop --{option}"
                )
            config = resumable_config(resume_run_id, data_dir=data_dir)
        else:
            config = load_config(config_file, overrides)
    except ConfigError as error:
        raise click.UsageError(str(error)) from error
    except ResumeError as error:
        raise click.ClickException(str(error)) from error

    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        outcome = run_training(
            config, resume_run_id=resume_run_id, progress="bar" if sys.stdout.isatty() else "lines"
        )
    except DataError as error:
        raise click.ClickException(str(error)) from error
    except KeyboardInterrupt:
        import mlflow

        last = mlflow.last_active_run()
        hint = f"; continue with: digitml train --resume {last.info.run_id}" if last else ""
        click.echo(f"Interrupted{hint}", err=True)
        sys.exit(130)
    click.echo(f"run_id: {outcome.run_id}")
    click.echo(f"test_accuracy: {outcome.metrics['test_accuracy']:.4f}")
    click.echo(f"train_seconds: {outcome.train_seconds:.1f}")


@cli.command()
@click.option(
    "--config",
    "config_file",
    default="tune",
    type=OrUnset(click.STRING),
    help="Search YAML or name in experiments/ (default: tune).",
)
@click.option("--tuner", type=OrUnset(click.Choice(TUNERS)))
@click.option("--max-trials", type=POSITIVE_INT)
@click.option("--epochs", type=POSITIVE_INT, help="Most epochs one trial trains.")
@data_options
@click.option("--limit", type=OrUnset(click.IntRange(min=20)))
@click.option(
    "--register-as",
    type=OrUnset(click.STRING),
    help="Registered model name (default: digit-classifier).",
)
@click.option(
    "--tuning-dir",
    type=OrUnset(click.STRING),
    help="Tuner state, for resuming (default: tuning/<experiment>).",
)
@click.option("--seed", type=OrUnset(click.IntRange(min=0)))
@click.option(
    "--role",
    type=OrUnset(click.Choice(["chief", "worker"])),
    help="Distributed search: the oracle (chief) or a trial runner (worker).",
)
@click.option(
    "--oracle",
    "oracle_address",
    type=OrUnset(click.STRING),
    help=f"HOST:PORT of the chief's oracle (default {DEFAULT_ORACLE}); no authentication.",
)
@click.option(
    "--worker-id",
    type=OrUnset(click.STRING),
    help="Unique name of this worker (default: worker-<host>-<pid>).",
)
def tune(
    config_file: str | None,
    tuning_dir: str | None,
    role: str | None,
    oracle_address: str | None,
    worker_id: str | None,
    **overrides: Any,
) -> None:
    """Search hyperparameters with Keras Tuner; re-run the same command to resume."""
    from digitml.config import load_tune_config
    from digitml.data import DataError
    from digitml.tune import SearchEnded, TuningStateError, run_search

    overrides["data_dir"] = _data_dir(overrides["data_dir"])
    try:
        config = load_tune_config(config_file or "tune", overrides)
    except ConfigError as error:
        raise click.UsageError(str(error)) from error
    if not role and (oracle_address or worker_id):
        raise click.UsageError("--oracle and --worker-id need --role chief or --role worker")
    tuner_id = None
    if role:
        oracle_address = oracle_address or DEFAULT_ORACLE
        tuner_id = "chief" if role == "chief" else worker_id or _default_worker_id()
        _set_keras_tuner_distribution(tuner_id, oracle_address)
    # Workers keep their own trial folders (BackupAndRestore) beside the chief's state.
    default_dir = Path("tuning") / "-".join(
        filter(None, [config.experiment, worker_id and tuner_id])
    )
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        outcome = run_search(config, Path(tuning_dir or default_dir), role, oracle_address)
    except (DataError, TuningStateError) as error:
        raise click.ClickException(str(error)) from error
    except SearchEnded as ended:
        click.echo(f"{tuner_id}: {ended}")
        return
    except KeyboardInterrupt:
        click.echo("Interrupted; run the same command again to resume the search", err=True)
        sys.exit(130)
    if role == "worker":
        click.echo(f"{tuner_id}: the search is complete")
        return
    click.echo(f"search run_id: {outcome.parent_run_id}")
    if outcome.best_run_id:
        click.echo(f"best_val_accuracy: {outcome.best_val_accuracy:.4f}")
        click.echo(f"best run_id: {outcome.best_run_id}")
        click.echo(
            f"registered: {config.register_as} version {outcome.model_version} (alias challenger)"
        )


def _default_worker_id() -> str:
    return f"worker-{socket.gethostname()}-{os.getpid()}"


def _set_keras_tuner_distribution(tuner_id: str, oracle_address: str) -> None:
    """Keras Tuner's distributed mode is configured through these environment variables only."""
    host, _, port = oracle_address.rpartition(":")
    if not host or not port.isdigit():
        raise click.BadParameter(
            f"expected HOST:PORT, got {oracle_address!r}", param_hint="--oracle"
        )
    os.environ.update(
        KERASTUNER_TUNER_ID=tuner_id, KERASTUNER_ORACLE_IP=host, KERASTUNER_ORACLE_PORT=port
    )


@cli.command()
@click.option(
    "--model-uri", required=True, help="runs:/RUN_ID/model, models:/NAME@ALIAS or models:/NAME/N."
)
@data_options
def evaluate(
    model_uri: str, dataset: str | None, data_dir: str | None, experiment: str | None
) -> None:
    """Score a logged or registered model on the full test set, as a new MLflow run."""
    from digitml.evaluate import evaluate_model

    with _user_errors():
        evaluation = evaluate_model(
            model_uri, dataset or "mnist", _data_dir(data_dir), experiment or "digitml"
        )
    metrics = evaluation.metrics
    click.echo(f"model:          {model_uri}")
    click.echo(f"evaluation run: {evaluation.run_id}")
    for key in ("test_accuracy", "test_loss", "test_f1_macro", "test_f1_weighted"):
        click.echo(f"{key + ':':<16}{metrics[key]:.4f}")
    click.echo(
        "recall per digit: "
        + "  ".join(f"{d}:{metrics[f'test_recall_{d}']:.3f}" for d in range(10))
    )


@cli.command()
@click.option(
    "--model-uri", required=True, help="The candidate: runs:/RUN_ID/model or models:/NAME/N."
)
@click.option(
    "--name", default="digit-classifier", show_default=True, help="Registered model name."
)
@click.option("--alias", default="champion", show_default=True)
@click.option(
    "--min-delta",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Accuracy margin the candidate must add.",
)
@click.option("--force", is_flag=True, help="Move the alias whatever the comparison says.")
@data_options
def promote(
    model_uri: str,
    dataset: str | None,
    data_dir: str | None,
    experiment: str | None,
    **options: Any,
) -> None:
    """Register a candidate and move the alias to it only if it is at least as accurate."""
    from digitml.registry import promote as promote_candidate

    with _user_errors():
        decision = promote_candidate(
            model_uri,
            dataset=dataset or "mnist",
            data_dir=_data_dir(data_dir),
            experiment=experiment or "digitml",
            **options,
        )
    click.echo(decision.message)


@cli.command()
@click.option(
    "--model-uri", required=True, help="runs:/RUN_ID/model, models:/NAME@ALIAS or models:/NAME/N."
)
@click.option(
    "--json", "as_json", is_flag=True, help="One JSON object per line instead of a table."
)
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False))
def predict(model_uri: str, as_json: bool, images: tuple[str, ...]) -> None:
    """Classify image files: prints `file  digit  confidence` per file."""
    import json

    import mlflow
    import pandas as pd

    with _user_errors():
        model = mlflow.pyfunc.load_model(model_uri)
    failures = 0
    for path in images:
        try:
            data = Path(path).read_bytes()
            prediction = model.predict(pd.DataFrame({"image": [data]})).iloc[0]
        except (OSError, mlflow.exceptions.MlflowException) as error:
            failures += 1
            message = getattr(error, "message", None) or error.strerror or str(error)
            click.echo(f"{path}: {message.replace('row 0: image: ', '')}", err=True)
            continue
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "file": path,
                        "digit": int(prediction["digit"]),
                        "confidence": float(prediction["confidence"]),
                        "probabilities": list(prediction["probabilities"]),
                    }
                )
            )
        else:
            click.echo(f"{path}  {int(prediction['digit'])}  {float(prediction['confidence']):.4f}")
    if failures:
        sys.exit(1)


@contextlib.contextmanager
def _user_errors():
    """Turn the errors a user can cause (bad URI, bad data) into one line and exit code 1."""
    import mlflow

    from digitml.data import DataError
    from digitml.registry import RegistryError

    try:
        yield
    except (DataError, RegistryError) as error:
        raise click.ClickException(str(error)) from error
    except mlflow.exceptions.MlflowException as error:
        raise click.ClickException(error.message.splitlines()[0]) from error


@cli.command()
@click.option(
    "--model-uri", help="Model to load in-process (default models:/digit-classifier@champion)."
)
@click.option("--endpoint", help="A running `mlflow models serve` invocations URL to ask instead.")
@click.option("--port", type=click.IntRange(1, 65535), default=8501, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address the page listens on.")
def app(model_uri: str | None, endpoint: str | None, port: int, host: str) -> None:
    """Start the upload page (Streamlit; install the `app` extra)."""
    import importlib.util
    import subprocess

    if model_uri and endpoint:
        raise click.UsageError("give --model-uri or --endpoint, not both")
    if importlib.util.find_spec("streamlit") is None:
        raise click.ClickException('Streamlit is not installed: pip install -e ".[app]"')
    page = Path(__file__).with_name("app.py")
    env = {
        **os.environ,
        "DIGITML_APP_MODEL_URI": model_uri or "",
        "DIGITML_APP_ENDPOINT": endpoint or "",
    }
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(page),
        "--server.port",
        str(port),
        "--server.address",
        host,
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
    ]
    sys.exit(subprocess.call(command, env=env))


@cli.command()
def models() -> None:
    """List the architectures with their parameter counts."""
    from digitml.models import parameter_counts

    rows = parameter_counts()
    width = max(len(name) for name, _, _ in rows)
    click.echo(f"{'model':<{width}}  {'parameters':>10}  description")
    for name, count, description in rows:
        click.echo(f"{name:<{width}}  {count:>10,}  {description}")


def main() -> None:
    cli(prog_name="digitml")


if __name__ == "__main__":
    main()
