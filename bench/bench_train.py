"""Training benchmark on full MNIST: fit seconds and test accuracy of each recipe, per seed.

    DIGITML_DATA_DIR=../shared/data/mnist python bench/bench_train.py [CONFIG ...] [--curve]
        [--write-docs]

Each run is a real `digitml train` process (for the `tune` row, a whole `digitml tune`: search,
retraining of the best, test and registration, timed from start to end) logging into a throw-away
MLflow store. The table (markdown) gives every seed's seconds and accuracy, their medians, the
spread of the accuracies (best - worst seed) and whether the recipe meets its target. `--curve`:
what `fast` reaches with fewer training images (its time-to-accuracy curve). `--write-docs`:
the tables replace the `bench:train` and `bench:fast-curve` sections of docs/recipes.md, with the
date and the CPU they ran on.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

import mlflow

from digitml.config import TuneConfig

RECIPES_PAGE = Path(__file__).resolve().parent.parent / "docs" / "recipes.md"


@dataclass(frozen=True)
class Outcome:
    """One seed's run: its seconds (`train`: the fit; `tune`: the whole command), the test accuracy
    of its (registered) model, and for a search the best trial's validation accuracy."""

    seconds: float
    accuracy: float
    best_val: float | None = None

    def cell(self, seed: int) -> str:
        val = f" (best val {self.best_val:.2%})" if self.best_val is not None else ""
        return f"{seed}: {self.seconds:.1f} s / {self.accuracy:.2%}{val}"


@dataclass(frozen=True)
class Recipe:
    seeds: tuple[int, ...]
    target: str  # as docs/recipes.md states it
    # the seeds' outcomes -> whether the target is met; None for a reference without one
    met: Callable[[list[Outcome]], bool] | None = None
    command: str = "train"  # or "tune": the row times the whole search


RECIPES = {
    "fast": Recipe(
        (42, 1, 2),
        "every seed ≥ 99.0 %, median fit ≤ 5.0 s",
        lambda runs: (
            min(run.accuracy for run in runs) >= 0.99
            and statistics.median(run.seconds for run in runs) <= 5.0
        ),
    ),
    "baseline": Recipe((42,), "reference stage 1 (no target)"),
    "default": Recipe(
        (42, 1, 2),
        "median ≥ 99.70 %, every seed ≥ 99.65 %, each ≤ 15 min",
        lambda runs: (
            statistics.median(run.accuracy for run in runs) >= 0.997
            and min(run.accuracy for run in runs) >= 0.9965
            and max(run.seconds for run in runs) <= 900
        ),
    ),
    "tune": Recipe(
        (42, 1, 2),
        "whole command ≤ 20 min, best val ≥ 99.6 %, registered test ≥ 99.7 %",
        lambda runs: all(
            run.seconds <= 1200 and run.best_val >= 0.996 and run.accuracy >= 0.997 for run in runs
        ),
        command="tune",
    ),
    "record": Recipe(
        (42, 1),
        "median ≥ 99.75 %, each ≤ 60 min",
        lambda runs: (
            statistics.median(run.accuracy for run in runs) >= 0.9975
            and max(run.seconds for run in runs) <= 3600
        ),
    ),
}
CURVE_LIMITS = (10_000, 20_000, 30_000, 40_000, None)  # None: every training image


def run_digitml(command: str, config: str, store_dir: str, seed: int, *options: str) -> str:
    """The stdout of one `digitml COMMAND --config CONFIG` process logging into the store."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store_dir}/mlflow.db"}
    argv = [sys.executable, "-m", "digitml.cli", command, "--config", config, "--seed", str(seed)]
    argv += ["--experiment", f"bench-{config}-{seed}", *options]
    result = subprocess.run(
        argv, cwd=store_dir, env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        sys.exit(f"{command} --config {config} failed:\n{result.stderr[-2000:]}")
    return result.stdout


def train_once(config: str, store_dir: str, seed: int, limit: int | None = None) -> Outcome:
    options = ("--limit", str(limit)) if limit else ()
    stdout = run_digitml("train", config, store_dir, seed, *options)
    values = dict(line.split(": ", 1) for line in stdout.splitlines() if ": " in line)
    return Outcome(float(values["train_seconds"]), float(values["test_accuracy"]))


def tune_once(config: str, store_dir: str, seed: int) -> Outcome:
    """The whole `digitml tune` (search, retraining of the best, test, registration), timed from
    the command's start to its end; accuracies from the search's runs in the store."""
    started = time.monotonic()
    run_digitml("tune", config, store_dir, seed, "--work-dir", f"{store_dir}/work")
    seconds = time.monotonic() - started
    mlflow.set_tracking_uri(f"sqlite:///{store_dir}/mlflow.db")
    experiment = mlflow.get_experiment_by_name(f"bench-{config}-{seed}")
    runs = mlflow.search_runs([experiment.experiment_id], output_format="list")
    search, best = (
        next(run for run in runs if run.data.tags.get("digitml.kind") == kind)
        for kind in ("tune", "best")
    )
    trials = [run for run in runs if run.data.tags.get("digitml.kind") == "trial"]
    settings = {setting.name for setting in fields(TuneConfig)}  # best_epochs, ...
    hyperparameters = ", ".join(
        f"{key[5:]}={value}"
        for key, value in sorted(search.data.params.items())
        if key.startswith("best_") and key not in settings
    )
    print(
        f"tune seed {seed}: {len(trials)} trials "
        f"({sum(run.info.status == 'FAILED' for run in trials)} failed), search "
        f"{(best.info.start_time - search.info.start_time) / 60_000:.1f} min, best retrained in "
        f"{best.data.metrics['train_seconds'] / 60:.1f} min; best: {hyperparameters}",
        flush=True,
    )
    return Outcome(
        seconds, best.data.metrics["test_accuracy"], search.data.metrics["best_val_accuracy"]
    )


def recipe_row(config: str, store_dir: str) -> str:
    recipe = RECIPES[config]
    run_once = tune_once if recipe.command == "tune" else train_once
    runs = [run_once(config, store_dir, seed) for seed in recipe.seeds]
    accuracies = [run.accuracy for run in runs]
    target = recipe.target
    if recipe.met is not None:
        target += ": met" if recipe.met(runs) else ": **missed**"
    per_seed = ", ".join(run.cell(seed) for seed, run in zip(recipe.seeds, runs, strict=True))
    return (
        f"| {config} | {per_seed} | {statistics.median(run.seconds for run in runs):.1f} | "
        f"{statistics.median(accuracies):.2%} | {(max(accuracies) - min(accuracies)) * 100:.2f} | "
        f"{target} | {measured_where()} |"
    )


TRAIN_HEADER = [
    "| config | per seed: fit seconds / test accuracy | seconds (median) | accuracy (median) "
    "| spread (points) | target | measured |",
    "|---|---|---|---|---|---|---|",
]


def recipe_rows(configs: list[str], store_dir: str) -> list[str]:
    rows = []
    for config in configs:
        rows.append(recipe_row(config, store_dir))
        print(rows[-1], flush=True)
    return rows


def curve_table(store_dir: str) -> list[str]:
    """`fast` (seed 42) on fewer training images: what each second of fit buys."""
    lines = ["| training images | fit seconds | test accuracy |", "|---|---|---|"]
    for limit in CURVE_LIMITS:
        run = train_once("fast", store_dir, 42, limit)
        images = f"{limit:,}" if limit else "all (54,000)"
        lines.append(f"| {images} | {run.seconds:.1f} | {run.accuracy:.2%} |")
        print(lines[-1], flush=True)
    return [*lines, "", f"Seed 42, {measured_where()}."]


def cpu_name() -> str:
    """The CPU's model name, and whether it has AMX (native bfloat16: `precision: auto`)."""
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    amx = any(line.startswith("flags") and "amx_bf16" in line for line in lines)
    return (names[0] if names else platform.processor() or "unknown CPU") + (
        " with AMX" if amx else ""
    )


def measured_where() -> str:
    return f"{datetime.date.today()}, {os.cpu_count()} cores of an {cpu_name()}"


def docs_section(name: str) -> re.Match:
    """docs/recipes.md's `<!-- bench:NAME -->` section: group 2 is its body."""
    pattern = rf"(<!-- bench:{name} -->\n)(.*?)(\n<!-- /bench:{name} -->)"
    found = re.search(pattern, RECIPES_PAGE.read_text(), re.S)
    if found is None:
        sys.exit(f"docs/recipes.md has no <!-- bench:{name} --> section")
    return found


def write_docs_section(name: str, body: str) -> None:
    section = docs_section(name)
    text = RECIPES_PAGE.read_text()
    RECIPES_PAGE.write_text(text[: section.start(2)] + body + text[section.end(2) :])


def merged_train_table(rows: list[str]) -> str:
    """docs/recipes.md's recipe table with `rows` in place of the same configs' earlier rows: a run
    of some recipes keeps the others' rows (each row says when and where it was measured)."""
    earlier = [
        line
        for line in docs_section("train")[2].splitlines()
        if line.startswith("| ") and not line.startswith(TRAIN_HEADER[0][:8])
    ]
    fresh = {row.split(" | ")[0]: row for row in rows}
    kept = {line.split(" | ")[0]: line for line in earlier if line.count(" | ") == 6}
    order = [f"| {config}" for config in RECIPES]
    table = [fresh.get(key) or kept.get(key) for key in order]
    return "\n".join(TRAIN_HEADER + [row for row in table if row])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="*", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--curve", action="store_true", help="fast's time-to-accuracy curve too")
    parser.add_argument(
        "--write-docs", action="store_true", help="write the tables into docs/recipes.md"
    )
    args = parser.parse_args()
    if not os.environ.get("DIGITML_DATA_DIR"):
        sys.exit("set DIGITML_DATA_DIR to the folder with the MNIST IDX files")
    # The runs work in a temporary folder: a relative path would not be found from there.
    os.environ["DIGITML_DATA_DIR"] = str(Path(os.environ["DIGITML_DATA_DIR"]).resolve())
    with tempfile.TemporaryDirectory() as store_dir:
        rows = recipe_rows(args.configs, store_dir)
        curve = curve_table(store_dir) if args.curve else None
    if args.write_docs:
        write_docs_section("train", merged_train_table(rows))
        if curve:
            write_docs_section("fast-curve", "\n".join(curve))


if __name__ == "__main__":
    main()
