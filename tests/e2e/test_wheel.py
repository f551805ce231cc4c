"""digitml as a user installs it: a real wheel in a fresh venv, run from an empty folder; and its
declared dependencies, which are what its code imports and what conda.yaml installs."""

import ast
import importlib.metadata
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from conftest import REPO_ROOT, all_runs

PROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
WHEEL_SOURCES = ("pyproject.toml", "README.md", "digitml", "experiments")


def run(*command: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def must_run(*command: str | Path, cwd: Path | None = None) -> str:
    """Run a command that must succeed; its stdout."""
    result = run(*command, cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> SimpleNamespace:
    """digitml installed from its wheel into a fresh venv: `bin` and `site_packages`. The
    dependencies are .venv's, through a .pth file holding the path of .venv's site-packages: a
    plain path, so .venv's own .pth files (the editable digitml's among them) are not read."""
    root = tmp_path_factory.mktemp("wheel")
    source = (
        root / "source"
    )  # pip builds in the source tree: a copy keeps build/ out of the checkout
    source.mkdir()
    for name in WHEEL_SOURCES:
        if (REPO_ROOT / name).is_dir():
            ignore = shutil.ignore_patterns("__pycache__")
            shutil.copytree(REPO_ROOT / name, source / name, ignore=ignore)
        else:
            shutil.copy(REPO_ROOT / name, source)
    pip = (sys.executable, "-m", "pip", "--disable-pip-version-check")
    must_run(*pip, "wheel", "--no-deps", "--wheel-dir", root / "dist", source)
    (wheel,) = (root / "dist").glob("digitml-*.whl")
    venv = root / "venv"
    must_run(sys.executable, "-m", "venv", "--without-pip", venv)
    must_run(*pip, "--python", venv / "bin" / "python", "install", "--no-deps", wheel)
    site_packages = Path(
        must_run(
            venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"
        ).strip()
    )
    (site_packages / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return SimpleNamespace(bin=venv / "bin", site_packages=site_packages)


def test_the_venv_runs_the_wheel_with_every_recipe_inside(installed, tmp_path):
    printed = must_run(
        installed.bin / "python",
        "-c",
        "import digitml.config as config; print(config.__file__); print(config.EXPERIMENTS_DIR);"
        "print(config.config_path(config.load_tune_config('tune').base_config))",
        cwd=tmp_path,  # `python -c` looks in its working folder first: not the checkout
    )
    module, recipes, searched_recipe = map(Path, printed.split())
    assert module.is_relative_to(installed.site_packages)
    assert recipes == installed.site_packages / "digitml" / "experiments"
    assert searched_recipe.parent == recipes  # the shipped search loads, and finds its recipe
    shipped = sorted(path.name for path in recipes.glob("*.yaml"))
    assert shipped == sorted(path.name for path in (REPO_ROOT / "experiments").glob("*.yaml"))


def digitml(installed: SimpleNamespace, arguments: str, cwd: Path) -> subprocess.CompletedProcess:
    """`digitml ARGUMENTS`, the wheel venv's script."""
    return run(installed.bin / "digitml", *arguments.split(), cwd=cwd)


@pytest.fixture
def empty_folder(tracking_uri, tmp_path) -> Path:
    """An empty working folder; the store is beside it."""
    folder = tmp_path / "work"
    folder.mkdir()
    return folder


def test_train_with_a_shipped_recipe_from_an_empty_folder(installed, empty_folder):
    result = digitml(installed, "train --config fast --dataset digits", empty_folder)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_record,) = all_runs("digitml")
    assert f"run_id: {run_record.info.run_id}" in result.stdout
    assert run_record.info.status == "FINISHED"
    assert run_record.data.tags["config"] == "fast"
    assert run_record.data.params["dataset"] == "digits"


def test_unknown_recipe_is_a_usage_error_naming_it(installed, empty_folder):
    result = digitml(installed, "train --config nosuch", empty_folder)
    assert result.returncode == 2
    assert "config file not found: nosuch" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_default_recipe_is_a_usage_error_naming_it(installed, empty_folder):
    default = installed.site_packages / "digitml" / "experiments" / "default.yaml"
    default.rename(default.with_suffix(".moved"))
    try:
        result = digitml(installed, "train --dataset digits", empty_folder)
    finally:
        default.with_suffix(".moved").rename(default)
    assert result.returncode == 2
    assert "config file not found" in result.stderr and "default.yaml" in result.stderr
    assert "Traceback" not in result.stderr


def distribution_name(requirement: str) -> str:
    """`Pillow>=10.0` → `pillow`: the name as package indexes compare it."""
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", requirement)[0]).lower()


def imported_modules() -> set[str]:
    """The top-level modules digitml's code imports, other than the standard library's."""
    modules = set()
    for source in (REPO_ROOT / "digitml").rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules.add(node.module.split(".")[0])
    return modules - set(sys.stdlib_module_names) - {"digitml"}


# Declared for what a dependency imports on digitml's behalf: Keras' Model.export(format="onnx")
# converts with tf2onnx, which Keras does not require.
IMPORTED_FOR_DIGITML = {"tf2onnx"}


def test_the_declared_dependencies_are_what_the_code_imports():
    """Dependencies and the `app` extra (the Streamlit page's): each provides an imported module
    (or one a dependency imports for digitml), and each imported module comes from one of them."""
    declared = {
        distribution_name(requirement)
        for requirement in PROJECT["dependencies"] + PROJECT["optional-dependencies"]["app"]
    }
    providers = importlib.metadata.packages_distributions()
    provided_by = {
        module: {distribution_name(name) for name in providers.get(module, [])}
        for module in imported_modules()
    }
    assert sorted(module for module, names in provided_by.items() if not names & declared) == []
    assert sorted(declared - set().union(*provided_by.values())) == sorted(IMPORTED_FOR_DIGITML)


def test_conda_environment_installs_exactly_the_declared_dependencies():
    conda = yaml.safe_load((REPO_ROOT / "conda.yaml").read_text())
    (pip_list,) = [entry["pip"] for entry in conda["dependencies"] if isinstance(entry, dict)]
    assert pip_list == PROJECT["dependencies"]
