"""Model registry: register runs' models, and move aliases (champion, challenger) on evidence."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

import mlflow
from mlflow.entities.model_registry import ModelVersion

from digitml.config import DEFAULT_EXPERIMENT, DEFAULT_MODEL_NAME
from digitml.errors import UserError
from digitml.evaluate import evaluate_model, scoring_data
from digitml.imaging import MAX_IMAGE_BYTES
from digitml.tracking import PYFUNC_MODEL_NAME

CHALLENGER = "challenger"
CHAMPION = "champion"
# A version's measured test accuracy on one dataset, and the evaluation run that measured it.
ACCURACY_TAG = "test_accuracy.{dataset}"
RUN_TAG = "evaluation_run.{dataset}"
_VERSION_URI = re.compile(r"^models:/(?P<name>[^/@]+)(/(?P<version>\d+)|@(?P<alias>[\w-]+))$")
_RUN_URI = re.compile(r"^runs:/(?P<run_id>[^/]+)/(?P<path>.+)$")


class RegistryError(UserError, ValueError):
    """A model URI or registry state that promotion cannot work with; the message says why."""


def register_run_model(
    run_id: str, name: str, artifact_path: str = PYFUNC_MODEL_NAME
) -> ModelVersion:
    """The version of `name` holding this run's model, registering it on first use."""
    client = mlflow.MlflowClient()
    for version in client.search_model_versions(f"name = '{name}'"):
        if version.run_id == run_id and _model_name(version) == artifact_path:
            return version
    registered = mlflow.register_model(logged_model_uri(run_id, artifact_path), name)
    describe(name, registered.version, run_id)
    return client.get_model_version(name, registered.version)


MODEL_DESCRIPTION = f"""Handwritten-digit classifier logged by digitml (served with `mlflow models serve`).

Input: a DataFrame, one row per image, with either
- `image`: the bytes of a PNG, JPEG, BMP, GIF or WebP file (base64 text in JSON), any size up to
  {MAX_IMAGE_BYTES // 2**20} MiB; or
- `pixels`: a 28x28 array, 0-255 or 0-1, white digit on black (MNIST's convention), or base64 of
  its 784 bytes.

Output, one row per input: `digit` (0-9), `confidence` (its probability) and `probabilities`
(10 floats). Bad input gets HTTP 400 with a message naming the row and the problem.
Example request: `{{"dataframe_records": [{{"image": "<base64 of a PNG>"}}]}}`."""


def describe(name: str, version: str, run_id: str) -> None:
    """What the registered model takes and gives (once), and what this version is: its recipe,
    network, data and test accuracy, from its run."""
    client = mlflow.MlflowClient()
    if not client.get_registered_model(name).description:
        client.update_registered_model(name, description=MODEL_DESCRIPTION)
    run = client.get_run(run_id)
    params, metrics = run.data.params, run.data.metrics
    accuracy = metrics.get("test_accuracy")
    networks = params.get("ensemble", params.get("model", "?"))  # older runs: no ensemble param
    client.update_model_version(
        name,
        version,
        description=(
            f"Recipe '{run.data.tags.get('config', '?')}': {networks}, "
            f"{params.get('epochs', '?')} epochs, seed {params.get('seed', '?')}, trained on "
            f"{params.get('dataset', '?')}"
            + (f"; test accuracy {accuracy:.4f}" if accuracy is not None else "")
            + f". Run {run.info.run_name} ({run_id})."
        ),
    )


def logged_model_uri(run_id: str, name: str) -> str:
    """`models:/m-…` of the model the run logged as `name`: what MLflow 3 registers (given
    runs:/…, it looks for run artifacts first and warns that it found none)."""
    experiment_id = mlflow.get_run(run_id).info.experiment_id
    found = mlflow.search_logged_models(
        experiment_ids=[experiment_id],
        filter_string=f"source_run_id = '{run_id}' AND name = '{name}'",
        output_format="list",
    )
    return f"models:/{found[0].model_id}" if found else f"runs:/{run_id}/{name}"


def _model_name(version: ModelVersion) -> str:
    """The logged model's name (`model`, `keras_model`) behind a registered version."""
    model_id = getattr(version, "model_id", None)
    if not model_id and version.source.startswith("models:/m-"):  # MLflow 3 logged-model source
        model_id = version.source.removeprefix("models:/")
    if model_id:
        return mlflow.get_logged_model(model_id).name
    return version.source.rstrip("/").rsplit("/", 1)[-1]


def register_challenger(run_id: str, name: str) -> str:
    """Register the run's `model` as a version of `name` (once) and alias it `challenger`."""
    version = register_run_model(run_id, name)
    mlflow.MlflowClient().set_registered_model_alias(name, CHALLENGER, version.version)
    return str(version.version)


def registered_name(model_uri: str) -> str | None:
    """The registered model a `models:/NAME/N` or `models:/NAME@ALIAS` URI names, else None."""
    match = _VERSION_URI.match(model_uri)
    return match["name"] if match else None


def registered_version(model_uri: str) -> ModelVersion | None:
    """The version a `models:/NAME/N` or `models:/NAME@ALIAS` URI names (None for any other URI);
    RegistryError if the registry has no such version."""
    match = _VERSION_URI.match(model_uri)
    if not match:
        return None
    try:
        return _version(match["name"], match["alias"], match["version"])
    except mlflow.exceptions.MlflowException as error:
        raise RegistryError(f"{model_uri} does not exist") from error


def _version(name: str, alias: str | None, number: str | None) -> ModelVersion:
    """Version `number` of `name`, or the one holding `alias`; MlflowException if none."""
    client = mlflow.MlflowClient()
    if alias:
        return client.get_model_version_by_alias(name, alias)
    return client.get_model_version(name, number)


def candidate_version(model_uri: str, name: str) -> ModelVersion:
    """Resolve runs:/…, models:/name/N or models:/name@alias to a version of `name`."""
    if match := _RUN_URI.match(model_uri):
        return register_run_model(match["run_id"], name, match["path"])
    registered = registered_name(model_uri)
    if registered is not None and registered != name:
        raise RegistryError(f"{model_uri} is not a version of '{name}' (use --name {registered})")
    if registered is not None:
        return registered_version(model_uri)
    raise RegistryError(
        f"cannot promote {model_uri}: use runs:/RUN_ID/model or models:/{name}/N or @alias"
    )


def alias_holder(name: str, alias: str) -> ModelVersion | None:
    try:
        return _version(name, alias, None)
    except mlflow.exceptions.MlflowException:
        return None


@dataclass
class PromotionDecision:
    promoted: bool
    candidate_version: str
    candidate_accuracy: float | None
    holder_version: str | None
    holder_accuracy: float | None
    message: str

    def __post_init__(self) -> None:  # the registry hands out int or str versions
        self.candidate_version = str(self.candidate_version)
        self.holder_version = None if self.holder_version is None else str(self.holder_version)


def promote(
    model_uri: str,
    name: str = DEFAULT_MODEL_NAME,
    alias: str = CHAMPION,
    min_delta: float = 0.0,
    force: bool = False,
    dataset: str | None = None,
    data_dir: str | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
) -> PromotionDecision:
    """Move `alias` to the candidate only if its test accuracy >= the holder's + min_delta (or force).

    Both are scored on the same test set, by default that of the data the candidate was trained
    on (each version once per dataset, see `version_accuracy`); the decision is recorded as tags
    on the candidate.
    """
    dataset, data_dir = scoring_data(model_uri, dataset, data_dir)
    candidate = candidate_version(model_uri, name)
    holder = alias_holder(name, alias)
    if holder is not None and holder.version == candidate.version:
        return PromotionDecision(
            False,
            candidate.version,
            None,
            holder.version,
            None,
            f"version {candidate.version} already is '{alias}': nothing changed",
        )

    if not force and holder is not None and _already_rejected(candidate, holder, alias, min_delta):
        return PromotionDecision(
            False,
            candidate.version,
            float(candidate.tags["candidate_test_accuracy"]),
            holder.version,
            float(candidate.tags["champion_test_accuracy"]),
            f"version {candidate.version} was already rejected against version {holder.version} "
            f"on {candidate.tags['promotion_date']}: nothing changed",
        )

    def accuracy(version: ModelVersion) -> float:
        return version_accuracy(version, dataset, data_dir, experiment)

    candidate_accuracy = accuracy(candidate)
    holder_accuracy = accuracy(holder) if holder is not None else None
    promoted = force or holder_accuracy is None or candidate_accuracy >= holder_accuracy + min_delta
    message = _decision_message(
        alias, candidate, candidate_accuracy, holder, holder_accuracy, promoted, force
    )
    client = mlflow.MlflowClient()
    tags = {
        "promotion_decision": "promoted" if promoted else "rejected",
        "promotion_alias": alias,
        "candidate_test_accuracy": f"{candidate_accuracy:.6f}",
        "promotion_min_delta": str(min_delta),
        "promotion_forced": str(force).lower(),
        "promotion_date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if holder is not None:  # the first champion was compared with none
        tags["champion_test_accuracy"] = f"{holder_accuracy:.6f}"
        tags["champion_version"] = str(holder.version)
    for key, value in tags.items():
        client.set_model_version_tag(name, candidate.version, key, value)
    if promoted:
        client.set_registered_model_alias(name, alias, candidate.version)
    return PromotionDecision(
        promoted,
        candidate.version,
        candidate_accuracy,
        None if holder is None else holder.version,
        holder_accuracy,
        message,
    )


def version_accuracy(
    version: ModelVersion, dataset: str, data_dir: str | None, experiment: str
) -> float:
    """The version's accuracy on `dataset`'s test set: read from the version's tag when an earlier
    promotion scored it, else scored now (an evaluation run in `experiment`) and tagged.

    A registered version's files never change and a test set is checksum-verified, so the number
    cannot go stale; the champion is not re-scored at every promotion (10,000 MNIST images)."""
    tag = ACCURACY_TAG.format(dataset=dataset)
    if tag in version.tags:
        return float(version.tags[tag])
    uri = f"models:/{version.name}/{version.version}"
    evaluation = evaluate_model(uri, dataset, data_dir, experiment)
    accuracy = evaluation.metrics["test_accuracy"]
    client = mlflow.MlflowClient()
    client.set_model_version_tag(version.name, version.version, tag, repr(accuracy))
    client.set_model_version_tag(
        version.name, version.version, RUN_TAG.format(dataset=dataset), evaluation.run_id
    )
    return accuracy


def _already_rejected(
    candidate: ModelVersion, holder: ModelVersion, alias: str, min_delta: float
) -> bool:
    tags = candidate.tags
    return (
        tags.get("promotion_decision") == "rejected"
        and tags.get("promotion_alias") == alias
        and tags.get("champion_version") == str(holder.version)
        and tags.get("promotion_min_delta") == str(min_delta)
    )


def _decision_message(
    alias, candidate, candidate_accuracy, holder, holder_accuracy, promoted, force
) -> str:
    if holder is None:
        return f"version {candidate.version} ({candidate_accuracy:.2%}) is the first '{alias}'"
    delta = (candidate_accuracy - holder_accuracy) * 100
    comparison = (
        f"version {candidate.version} {candidate_accuracy:.2%} vs '{alias}' version {holder.version} "
        f"{holder_accuracy:.2%} ({delta:+.2f} points)"
    )
    if promoted:
        return f"{comparison}: '{alias}' moves to version {candidate.version}" + (
            " (forced)" if force else ""
        )
    return f"{comparison}: version {holder.version} stays '{alias}'"
