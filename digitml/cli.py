"""The `digitml` command line: parse and validate, then call one function per command."""

from __future__ import annotations

import errno
import os
import signal
import sys
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import click

from digitml import console  # first: it quiets TensorFlow before anything imports it
from digitml.config import (
    BOUNDS,
    CHOICES,
    DEFAULT_APP_MODEL_URI,
    DEFAULT_EXPERIMENT,
    DEFAULT_MODEL_NAME,
    EXPORT_FORMATS,
    WORK_DIR_VARIABLE,
    TrainConfig,
)
from digitml.errors import USAGE_EXIT_CODE, UserError
from digitml.search.distributed import DEFAULT_CHIEF_WAIT_SECONDS, DEFAULT_ORACLE, ROLES

CommandFunction = TypeVar("CommandFunction", bound=Callable[..., Any])
FROM_CONFIG = "from --config"
INTERRUPTED_EXIT_CODE = 130  # a shell's, for a process ended by SIGINT
# (ended_as, first) -> what to do next: how a command that was stopped continues (see Command)
HowToContinue = Callable[[str, str], str]


def run_again(ended_as: str, first: str = "") -> str:
    """How an interrupted command continues when it keeps no state: run again."""
    return f"{first}run the same command again"


def resume_search(ended_as: str, first: str = "") -> str:
    return f"{first}run the same command again to resume the search"


def resume_training(ended_as: str, first: str = "") -> str:
    """The resume of the run this process trained in, marked `ended_as`; or, where none was
    started yet, the same command again."""
    import mlflow

    last = mlflow.last_active_run()
    if last is None:
        return run_again(ended_as, first)
    run_id = last.info.run_id
    return (
        f"run {run_id} is marked {ended_as}; {first}continue with: digitml train --resume {run_id}"
    )


class Command(click.Command):
    """A digitml command. The errors a user can cause end every command the same way, here: one
    line and an exit code (2 for a setting, 1 for the rest; `digitml.errors`), MLflow's refusals
    by their first line, a full disk by what to do; SIGTERM and Ctrl-C by `how_to_continue`, 130."""

    def __init__(
        self, *args: Any, how_to_continue: HowToContinue = run_again, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.how_to_continue = how_to_continue

    def invoke(self, ctx: click.Context) -> Any:
        previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            click.echo(f"Interrupted; {self.how_to_continue('KILLED', '')}", err=True)
            sys.exit(INTERRUPTED_EXIT_CODE)
        except Exception as error:
            line = self.user_facing(error, ctx)
            if line is None:
                raise
            raise line from error
        finally:
            signal.signal(signal.SIGTERM, previous)

    def user_facing(self, error: Exception, ctx: click.Context) -> click.ClickException | None:
        """The one line `error` ends the command with, or None for a bug (its traceback shows)."""
        if isinstance(error, UserError):
            if error.exit_code == USAGE_EXIT_CODE:
                return click.UsageError(str(error), ctx)
            return click.ClickException(str(error))
        mlflow_errors = sys.modules.get("mlflow.exceptions")  # none raised where not imported
        if mlflow_errors and isinstance(error, mlflow_errors.MlflowException):
            return click.ClickException(error.message.splitlines()[0])
        if isinstance(error, OSError) and _out_of_space(error):
            written = error.filename2 or error.filename  # a failed copy names source, then target
            where = f" writing {written}" if written else ""
            then = self.how_to_continue("FAILED", "free some space, then ")
            return click.ClickException(f"no space left on the device{where}; {then}")
        return None


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _out_of_space(error: OSError) -> bool:
    """The disk or the user's quota is full. HDF5 (Keras' weight files) says so in its message only."""
    return error.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(error)


class EmptyIsUnset(click.Option):
    """An option given as '' counts as not given, so its default applies: MLproject passes ''
    for the parameters a user leaves unset. The option keeps its own click type, whose choices
    and range shell completion and --help show."""

    def consume_value(self, ctx: click.Context, opts: Mapping[str, Any]) -> tuple[Any, Any]:
        if opts.get(self.name) == "":
            opts = {name: value for name, value in opts.items() if name != self.name}
        return super().consume_value(ctx, opts)


def option(*param_decls: str, **attrs: Any) -> Callable[[CommandFunction], CommandFunction]:
    """click.option, where '' means not given."""
    return click.option(*param_decls, cls=EmptyIsUnset, **attrs)


def from_config(*param_decls: str, **attrs: Any) -> Callable[[CommandFunction], CommandFunction]:
    """An override of a --config file's value; not given, the file's value applies. A setting
    with a type and range in `config` (BOUNDS, CHOICES) gets them as its option type."""
    key = param_decls[0].lstrip("-").replace("-", "_")
    if key in BOUNDS or key in CHOICES:
        attrs.setdefault("type", setting_type(key))
    return option(*param_decls, show_default=FROM_CONFIG, **attrs)


def chain(
    *decorators: Callable[[CommandFunction], CommandFunction],
) -> Callable[[CommandFunction], CommandFunction]:
    """The decorators as one, applied in the order they would be stacked in."""

    def decorate(command: CommandFunction) -> CommandFunction:
        for decorator in reversed(decorators):
            command = decorator(command)
        return command

    return decorate


def config_file_option(
    kind: str, examples: str, **attrs: Any
) -> Callable[[CommandFunction], CommandFunction]:
    """--config: a YAML file of `kind`, or the name of one in experiments/."""
    help_text = f"{kind}: a YAML file, or the name of one in experiments/ ({examples})."
    return option("--config", "config_file", help=help_text, **attrs)


def setting_type(key: str) -> click.ParamType:
    """The option type of a config setting, from the same table `config.validate` checks."""
    if key in CHOICES:
        return click.Choice(CHOICES[key])
    bound = BOUNDS[key]
    if bound.kind is int:
        return click.IntRange(min=bound.minimum, min_open=bound.exclusive)
    return click.FloatRange(min=bound.minimum, min_open=bound.exclusive)


SETTING_HELP = {
    "model": "Architecture name (see `digitml models`).",
    "epochs": "Passes over the training images; in a search, the most one trial makes.",
    "batch_size": "Images per training step.",
    "learning_rate": "The optimizer's learning rate (the peak of a onecycle schedule).",
    "optimizer": "Gradient-descent optimizer.",
    "precision": "auto: bfloat16 compute where the CPU has it natively (AMX, AVX512-BF16).",
    "limit": "Train on N training images (seeded, class-balanced); the test set stays whole.",
    "seed": "Seed of the validation split, the initial weights and the batch order.",
    "tuner": "How the next trial is chosen.",
    "max_trials": "Trials the search runs in all.",
    "best_epochs": "Epochs the best configuration is retrained for (none in the file: the base "
    "recipe's).",
    "register_as": "Registered model name for the best trial's retrained model.",
}


def overrides(*keys: str) -> Callable[[CommandFunction], CommandFunction]:
    """An option per config setting in `keys` that overrides the --config file's value, with
    its help from SETTING_HELP: one text per setting, whichever command takes it."""
    return chain(
        *(from_config("--" + key.replace("_", "-"), help=SETTING_HELP[key]) for key in keys)
    )


def data_options(of_a_model: bool = False) -> Callable[[CommandFunction], CommandFunction]:
    """--dataset, --data-dir and --experiment, alike on every command that reads data. Not given:
    the --config file's values, or for a command on a model (`of_a_model`) the dataset its own run
    was trained on and the experiment the environment names."""
    unset = option if of_a_model else from_config
    dataset_default = {"show_default": "the model's run's, else mnist"} if of_a_model else {}
    experiment_default = (
        {"show_default": f"MLFLOW_EXPERIMENT_NAME or _ID, else {DEFAULT_EXPERIMENT}"}
        if of_a_model
        else {}
    )
    return chain(
        unset(
            "--dataset",
            type=setting_type("dataset"),
            help="MNIST, or scikit-learn's 8x8 digits (bundled: no files, no download).",
            **dataset_default,
        ),
        option(
            "--data-dir",
            type=click.Path(exists=True, file_okay=False),
            envvar="DIGITML_DATA_DIR",
            show_envvar=True,
            show_default="download MNIST through Keras",
            help="Folder with the four MNIST IDX files or mnist.npz.",
        ),
        unset(
            "--experiment",
            help="MLflow experiment to record the run in; not given, MLFLOW_EXPERIMENT_NAME or "
            "MLFLOW_EXPERIMENT_ID (`mlflow run --experiment-name` sets it) comes before the "
            "config's.",
            **experiment_default,
        ),
    )


def _use_work_dir(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value:  # read where it is needed, through config.work_dir
        os.environ[WORK_DIR_VARIABLE] = value


WORK_DIR = option(
    "--work-dir",
    type=click.Path(file_okay=False),
    envvar=WORK_DIR_VARIABLE,
    show_envvar=True,
    show_default="~/.cache/digitml",
    help="Folder of working files: checkpoints to resume from, the tuner's state.",
    callback=_use_work_dir,
    expose_value=False,
)


def chosen_experiment(given: str | None, fallback: str) -> str:
    """--experiment, else the experiment the environment names, else `fallback`."""
    from digitml.tracking import chosen_experiment as named_by_environment

    return given or named_by_environment() or fallback


class Group(click.Group):
    command_class = Command


@click.group(
    cls=Group, context_settings={"help_option_names": ["-h", "--help"], "show_default": True}
)
@click.version_option(package_name="digitml", prog_name="digitml", message="%(prog)s %(version)s")
def cli() -> None:
    """digitml: handwritten-digit classifiers, every run tracked in MLflow."""


@cli.command(how_to_continue=resume_training)
@config_file_option("Recipe", "fast, baseline, ...", show_default="default.yaml")
@overrides("model", "epochs", "batch_size", "learning_rate", "optimizer", "precision")
@data_options()
@overrides("limit", "seed")
@WORK_DIR
@option(
    "--resume",
    "resume_run_id",
    metavar="RUN_ID",
    show_default="a new run",
    help="Continue an interrupted run, with its own config.",
)
def train(config_file: str | None, resume_run_id: str | None, **overrides: Any) -> None:
    """Train a model and record the run in MLflow."""
    from digitml.config import load_config

    if resume_run_id:
        config = _resumed_config(resume_run_id, config_file, overrides)
    else:
        config = load_config(config_file, overrides)
        config.experiment = chosen_experiment(overrides["experiment"], config.experiment)
    # Imported once the options are checked (TensorFlow takes seconds): a typo answers at once.
    from digitml.training_run import run_training

    outcome = run_training(
        config, resume_run_id=resume_run_id, progress="bar" if sys.stdout.isatty() else "lines"
    )
    click.echo(f"run_id: {outcome.run_id}")
    click.echo(f"test_accuracy: {outcome.metrics['test_accuracy']:.4f}")
    click.echo(f"train_seconds: {outcome.train_seconds:.1f}")


def _resumed_config(run_id: str, config_file: str | None, overrides: dict[str, Any]) -> TrainConfig:
    """The run's own config, to resume it with; --data-dir is the only other option it takes."""
    data_dir = overrides.pop("data_dir")
    given = [name for name, value in overrides.items() if value is not None]
    if given or config_file:
        dropped = (given or ["config"])[0].replace("_", "-")
        raise click.UsageError(f"--resume continues with the run's own config; drop --{dropped}")
    console.load_tensorflow()  # digitml.training_run imports Keras
    from digitml.training_run import resumable_config

    return resumable_config(run_id, data_dir=data_dir)


@cli.command(how_to_continue=resume_search)
@config_file_option("Search", "tune, tune-reference", default="tune")
@overrides("tuner", "max_trials", "epochs", "best_epochs")
@data_options()
@overrides("limit", "register_as")
@from_config(
    "--tuning-dir",
    type=click.Path(file_okay=False),
    help="Folder of the tuner's state, for resuming (none in the file: <work dir>/tuning/"
    "<experiment>).",
)
@WORK_DIR
@overrides("seed")
@option(
    "--role",
    type=click.Choice(ROLES),
    show_default="a search in this process alone",
    help="Distributed search: the oracle (chief) or a trial runner (worker).",
)
@option(
    "--oracle",
    "oracle_address",
    metavar="HOST:PORT",
    show_default=DEFAULT_ORACLE,
    help="Address of the chief's oracle, with --role; no authentication.",
)
@option(
    "--worker-id",
    show_default="worker-<host>-<pid>",
    help="Unique name of this worker, with --role worker.",
)
@option(
    "--chief-wait",
    "chief_wait_seconds",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    show_default=f"{DEFAULT_CHIEF_WAIT_SECONDS:g}",
    help="With --role worker: how long to wait for the chief's search to start (workers a "
    "scheduler starts before the chief).",
)
def tune(
    config_file: str | None,
    role: str | None,
    oracle_address: str | None,
    worker_id: str | None,
    chief_wait_seconds: float | None,
    **overrides: Any,
) -> None:
    """Search hyperparameters with Keras Tuner; re-run the same command to resume."""
    from digitml.config import load_tune_config

    config = load_tune_config(config_file, overrides)
    console.load_tensorflow()  # the experiment lookup (digitml.tracking) and the search use Keras
    config.experiment = chosen_experiment(overrides["experiment"], config.experiment)
    from digitml.search.distributed import search_role
    from digitml.search.tuner import SearchEnded
    from digitml.search.workflow import run_search

    search = search_role(role, oracle_address, worker_id, chief_wait_seconds)
    try:
        outcome = run_search(config, search)
    except SearchEnded as ended:
        click.echo(f"{search.tuner_id}: {ended}")
        return
    if search.is_worker:
        click.echo(f"{search.tuner_id}: the search is complete")
        return
    click.echo(f"search run_id: {outcome.parent_run_id}")
    if outcome.best_run_id:
        click.echo(f"best_val_accuracy: {outcome.best_val_accuracy:.4f}")
        click.echo(f"best run_id: {outcome.best_run_id}")
        click.echo(
            f"registered: {config.register_as} version {outcome.model_version} (alias challenger)"
        )


@cli.command()
@option(
    "--model-uri", required=True, help="runs:/RUN_ID/model, models:/NAME@ALIAS or models:/NAME/N."
)
@data_options(of_a_model=True)
def evaluate(
    model_uri: str, dataset: str | None, data_dir: str | None, experiment: str | None
) -> None:
    """Score a logged or registered model on the full test set, as a new MLflow run."""
    console.load_tensorflow()
    from digitml.evaluate import evaluate_model

    experiment = chosen_experiment(experiment, DEFAULT_EXPERIMENT)
    evaluation = evaluate_model(model_uri, dataset, data_dir, experiment)
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
@option("--model-uri", required=True, help="The candidate: runs:/RUN_ID/model or models:/NAME/N.")
@option("--name", default=DEFAULT_MODEL_NAME, help="Registered model name.")
@option("--alias", default="champion", help="The alias the better model holds.")
@option(
    "--min-delta",
    type=click.FloatRange(min=0),
    default=0.0,
    help="Accuracy margin the candidate must add.",
)
@option("--force", is_flag=True, help="Move the alias whatever the comparison says.")
@data_options(of_a_model=True)
def promote(model_uri: str, experiment: str | None, **options: Any) -> None:
    """Register a candidate and move the alias to it only if it is at least as accurate."""
    console.load_tensorflow()
    from digitml.registry import promote as promote_candidate

    experiment = chosen_experiment(experiment, DEFAULT_EXPERIMENT)
    decision = promote_candidate(model_uri, experiment=experiment, **options)
    click.echo(decision.message)


@cli.command()
@option(
    "--model-uri", required=True, help="runs:/RUN_ID/model, models:/NAME@ALIAS or models:/NAME/N."
)
@option("--json", "as_json", is_flag=True, help="One JSON object per line instead of a table.")
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False))
def predict(model_uri: str, as_json: bool, images: tuple[str, ...]) -> None:
    """Classify image files: prints `file  digit  confidence` per file."""
    import json

    import mlflow

    console.load_tensorflow()
    from digitml.predict import predict_files

    model = mlflow.pyfunc.load_model(model_uri)
    predictions = predict_files(model, images)
    for prediction in predictions:
        if prediction.error is not None:
            click.echo(f"{prediction.path}: {prediction.error}", err=True)
        elif as_json:
            fields = ("digit", "confidence", "probabilities")
            record = {"file": prediction.path, **{key: getattr(prediction, key) for key in fields}}
            click.echo(json.dumps(record))
        else:
            click.echo(f"{prediction.path}  {prediction.digit}  {prediction.confidence:.4f}")
    if any(prediction.error is not None for prediction in predictions):
        sys.exit(1)


@cli.command()
@option(
    "--model-uri", required=True, help="runs:/RUN_ID/model, models:/NAME@ALIAS or models:/NAME/N."
)
@option(
    "--format",
    "formats",
    type=click.Choice(EXPORT_FORMATS),
    multiple=True,
    show_default="all three",
    help="Repeat for several: ONNX, LiteRT (.tflite) or TensorFlow SavedModel.",
)
def export(model_uri: str, formats: tuple[str, ...]) -> None:
    """Export a model's network to ONNX, LiteRT and SavedModel, each checked against Keras on the
    same images, and store the files with the model (its `exports/` artifacts)."""
    import tempfile
    from pathlib import Path

    console.load_tensorflow()
    from digitml.export import EXPORT_TOLERANCE, ONNX_OPSET, export_model

    with tempfile.TemporaryDirectory(prefix="digitml-export-") as folder:
        exported = export_model(model_uri, Path(folder), formats or EXPORT_FORMATS)
    click.echo(f"model: {model_uri}")
    for result in exported:
        name = f"onnx (opset {ONNX_OPSET})" if result.format == "onnx" else result.format
        click.echo(
            f"{name:<16} {result.uri}  max |Δp| {result.max_difference:.1e} "
            f"(≤ {EXPORT_TOLERANCE:g})  {result.seconds:.1f} s"
        )


@cli.command()
@option(
    "--model-uri", show_default=DEFAULT_APP_MODEL_URI, help="Model to load in the page's process."
)
@option(
    "--endpoint",
    show_default="none: load --model-uri",
    help="Ask a running `mlflow models serve` instead: its /invocations URL.",
)
@option("--port", type=click.IntRange(1, 65535), default=8501, help="Port the page listens on.")
@option("--host", default="127.0.0.1", help="Address the page listens on.")
def app(model_uri: str | None, endpoint: str | None, port: int, host: str) -> None:
    """Start the upload page (Streamlit; install the `app` extra)."""
    import importlib.util

    if model_uri and endpoint:
        raise click.UsageError("give --model-uri or --endpoint, not both")
    if importlib.util.find_spec("streamlit") is None:
        raise click.ClickException(
            'Streamlit is not installed: install digitml with its app extra (in a checkout: pip install -e ".[app]")'
        )
    from digitml.app_launch import AppSettings, start_page

    start_page(AppSettings(model_uri or DEFAULT_APP_MODEL_URI, endpoint), host, port)


@cli.command()
def models() -> None:
    """List the architectures with their parameter counts."""
    console.load_tensorflow()
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
