"""The README's first-screen commands, read out of the README itself, so that CI runs exactly what
a user reads: `python .ci/readme.py install|run|look|test` prints one.

The first ```bash block holds, one per line, the install, the first run and the command that
shows it (`mlflow ui`); the test command is the code on the line that starts with `Tests:`.
Comments after a command (`# ...`) are not part of it."""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
STEPS = ("install", "run", "look")


def first_screen(readme: Path = README) -> dict[str, str]:
    """install, run, look and test, as the README writes them."""
    text = readme.read_text()
    block = re.search(r"^```bash\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    tests = re.search(r"^Tests: `([^`]+)`", text, re.MULTILINE)
    if block is None or tests is None:
        sys.exit(f"{readme}: no ```bash block or no 'Tests: `...`' line on its first screen")
    lines = [line.split("  #")[0].strip() for line in block[1].splitlines() if line.strip()]
    if len(lines) != len(STEPS):
        sys.exit(f"{readme}: the first ```bash block should hold {', '.join(STEPS)}: {lines}")
    return {**dict(zip(STEPS, lines, strict=True)), "test": tests[1]}


if __name__ == "__main__":
    print(first_screen()[sys.argv[1]])
