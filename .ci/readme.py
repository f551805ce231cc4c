"""The README's first-screen commands, read out of the README itself, so that CI runs exactly what
a user reads: `python .ci/readme.py install|run|look|test` prints one.

The first ```bash block holds, one per line, the install, the first run and the command that
shows it (`mlflow ui`), read as tests/documented.py reads every shown command (comments after a
command are not part of it); the test command is the code on the line that starts with `Tests:`.
Standard library only: CI calls it before the project is installed."""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from documented import bash_blocks  # noqa: E402  (tests/ is not a package)

README = "README.md"
STEPS = ("install", "run", "look")


def first_screen() -> dict[str, str]:
    """install, run, look and test, as the README writes them."""
    blocks = bash_blocks(README)
    tests = re.search(r"^Tests: `([^`]+)`", (REPO / README).read_text(), re.MULTILINE)
    if not blocks or tests is None:
        sys.exit(f"{README}: no ```bash block or no 'Tests: `...`' line on its first screen")
    lines = [shown.command for shown in blocks[0]]
    if len(lines) != len(STEPS):
        sys.exit(f"{README}: the first ```bash block should hold {', '.join(STEPS)}: {lines}")
    return {**dict(zip(STEPS, lines, strict=True)), "test": tests[1]}


if __name__ == "__main__":
    print(first_screen()[sys.argv[1]])
