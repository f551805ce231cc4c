"""`digitml promote` against a real registry: better, worse, equal, first champion, re-runs.

The promotion cases are the steps of one history on one registered name, so no case is set up
twice; each test checks one step. The models are trained and tested on sklearn's digits, where
a full test-set evaluation takes a second rather than the ten MNIST's 10,000 images take."""

from types import SimpleNamespace

import mlflow
import pytest

from conftest import all_runs, invoke_cli, new_store, tracking_at
from digitml.config import load_config
from digitml.registry import RegistryError
from digitml.registry import promote as promote_on
from digitml.training_run import run_training

NAME = "ladder"


@pytest.fixture(scope="module")
def store(empty_store, tmp_path_factory):
    """A store with a strong model (digits, 6 epochs) and a deliberately weak one (100 images,
    one epoch), both from the fast recipe."""
    folder = tmp_path_factory.mktemp("registry")
    with tracking_at(new_store(empty_store, folder), folder) as uri:
        runs = {
            strength: run_training(
                load_config("fast", {"dataset": "digits", "experiment": "model", **overrides}),
                checkpoint_root=folder / "checkpoints",
            ).run_id
            for strength, overrides in (("strong", {"epochs": 6}), ("weak", {"limit": 100}))
        }
        yield SimpleNamespace(
            uri=uri,
            dir=folder,
            strong=f"runs:/{runs['strong']}/model",
            weak=f"runs:/{runs['weak']}/model",
        )


def in_store(store, *args: str):
    """`digitml ARGS --dataset digits` against the test store (in-process: what the command
    prints and decides, not how a process starts, which test_cli checks)."""
    return invoke_cli(*args, "--dataset", "digits", env={"MLFLOW_TRACKING_URI": store.uri})


def promote(model_uri, **options):
    return promote_on(model_uri, name=NAME, dataset="digits", **options)


def registry_state() -> SimpleNamespace:
    """The champion's version and every version's tags, as the registry holds them now."""
    client = mlflow.MlflowClient()
    champion = client.get_model_version_by_alias(NAME, "champion")
    versions = client.search_model_versions(f"name = '{NAME}'")
    return SimpleNamespace(
        champion=str(champion.version),
        tags={str(version.version): dict(version.tags) for version in versions},
    )


@pytest.fixture(scope="module")
def history(store):
    """Each step's decision (`cli` output for the first) and the registry state right after it.

    v1 = the weak model, v2 = the strong one, v3 = the strong one registered a second time."""
    steps = {}
    first = in_store(store, "promote", "--model-uri", store.weak, "--name", NAME)
    steps["first"] = SimpleNamespace(cli=first, state=registry_state())
    plan = [
        ("same again", store.weak, {}),
        ("better", store.strong, {}),
        ("worse", store.weak, {}),
        ("rejected again", store.weak, {}),
        ("equal within margin", None, {"min_delta": 0.001}),
        ("equal", None, {}),
        ("forced", store.weak, {"force": True}),
    ]
    for step, model_uri, options in plan:
        if model_uri is None:  # the strong model's files again, as a new version
            if "3" not in registry_state().tags:
                source = mlflow.MlflowClient().get_model_version(NAME, "2").source
                mlflow.register_model(source, NAME)
            model_uri = f"models:/{NAME}/3"
        decision = promote(model_uri, **options)
        steps[step] = SimpleNamespace(decision=decision, state=registry_state())
    return steps


def test_promote_command_makes_the_first_candidate_champion(history):
    first = history["first"]
    assert first.cli.exit_code == 0, first.cli.output[-2000:]
    assert "version 1" in first.cli.stdout and "is the first 'champion'" in first.cli.stdout
    assert first.state.champion == "1"
    assert first.state.tags["1"]["promotion_decision"] == "promoted"
    assert "champion_version" not in first.state.tags["1"]  # compared with none: no empty tags
    client = mlflow.MlflowClient()
    assert "`image`" in client.get_registered_model(NAME).description  # what it takes
    described = client.get_model_version(NAME, "1").description
    assert (
        "Recipe 'fast': small, " in described and "trained on digits; test accuracy 0." in described
    )


def test_rerunning_the_same_promotion_changes_nothing(history):
    again = history["same again"]
    assert not again.decision.promoted and "nothing changed" in again.decision.message
    assert again.state == history["first"].state


def test_better_candidate_takes_over_and_says_by_how_much(history):
    better = history["better"].decision
    assert better.promoted and better.candidate_version == "2"
    assert better.candidate_accuracy > better.holder_accuracy
    assert "points" in better.message and "moves to version 2" in better.message
    assert history["better"].state.champion == "2"


def test_worse_candidate_never_becomes_champion(history):
    worse = history["worse"]
    assert not worse.decision.promoted and worse.decision.candidate_version == "1"
    assert worse.state.champion == "2"
    rejected = worse.state.tags["1"]
    assert rejected["promotion_decision"] == "rejected"
    assert float(rejected["candidate_test_accuracy"]) < float(rejected["champion_test_accuracy"])
    assert rejected["champion_version"] == "2"
    assert rejected["promotion_date"]


def test_rejected_candidate_rerun_changes_nothing(history):
    again = history["rejected again"]
    assert not again.decision.promoted and "already rejected" in again.decision.message
    assert again.state == history["worse"].state


def test_equal_candidate_wins_without_margin_but_not_with_one(history):
    within_margin, equal = history["equal within margin"], history["equal"]
    assert within_margin.decision.candidate_accuracy == within_margin.decision.holder_accuracy
    assert not within_margin.decision.promoted and within_margin.state.champion == "2"
    assert equal.decision.promoted and equal.state.champion == "3"


def test_force_moves_the_alias_to_a_worse_model(history):
    forced = history["forced"]
    assert forced.decision.promoted and "(forced)" in forced.decision.message
    assert forced.decision.candidate_accuracy < forced.decision.holder_accuracy
    assert forced.state.champion == "1"
    assert forced.state.tags["1"]["promotion_forced"] == "true"


def test_each_version_is_scored_once_and_its_score_kept_on_the_version(history):
    evaluations = [
        run.data.tags["source_model_uri"]
        for run in all_runs()
        if run.data.tags["source_model_uri"].startswith(f"models:/{NAME}/")
    ]
    assert sorted(evaluations) == [f"models:/{NAME}/{n}" for n in (1, 2, 3)]
    tags = history["forced"].state.tags
    for version in ("1", "2", "3"):
        run = mlflow.get_run(tags[version]["evaluation_run.digits"])
        assert float(tags[version]["test_accuracy.digits"]) == run.data.metrics["test_accuracy"]
    assert tags["1"]["candidate_test_accuracy"] == f"{float(tags['1']['test_accuracy.digits']):.6f}"


def test_uri_of_another_model_name_is_refused(store):
    with pytest.raises(RegistryError, match=f"not a version of 'theirs' \\(use --name {NAME}\\)"):
        promote_on(f"models:/{NAME}/1", name="theirs")


def test_promote_scores_on_the_data_the_candidate_was_trained_on(store):
    """No --dataset: the candidate's run says digits, so no MNIST is looked for (`promote` scores
    through `evaluate_model`, whose own default this is)."""
    decision = promote_on(store.weak, name="own-data")
    version = mlflow.MlflowClient().get_model_version("own-data", decision.candidate_version)
    assert "test_accuracy.digits" in version.tags and "test_accuracy.mnist" not in version.tags
    evaluation_run = mlflow.get_run(version.tags["evaluation_run.digits"])
    assert evaluation_run.data.params["dataset"] == "digits"
