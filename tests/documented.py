"""The commands that README.md and docs/ show, as a user copies them out of their ```bash blocks,
and the rule by which tests/e2e/test_docs.py runs them at test size.

The substitution rule, all of it:
1. Size: `digitml train` gets `--dataset digits --limit 300 --epochs 1`, `digitml tune`
   `--dataset digits --epochs 1 --max-trials 2 --best-epochs 1` (digits' 1,797 images), and
   `mlflow run` the same as `-P name=value`; they replace what the command shows.
2. Ports: a server listens on 127.0.0.1 at a free port instead of the one shown (or its default:
   5000 for `mlflow ui`, 8501 for Streamlit), and every `127.0.0.1:PORT` of a later command
   points at that free port.
3. A server (`mlflow ui`, `mlflow models serve`, `digitml app`, `streamlit run`) starts in the
   background, counts as run once its health URL answers, and stops when the module ends;
   `mlflow ui` runs one worker instead of four (the test machines have two cores).
4. `.` is a copy of the project's files in a temp folder, also the working folder: the store
   (./mlflow.db, ./mlruns) lands there, as it does in a user's checkout. No MLflow or digitml
   variable is set; the user's cache folder ($XDG_CACHE_HOME) is a temp folder.
Everything else runs as shown, through bash.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = (
    "README.md",
    *(f"docs/{path.name}" for path in sorted((REPO_ROOT / "docs").glob("*.md"))),
)
_BLOCK = re.compile(r"^```(?P<lang>\w*)\n(?P<body>.*?)^```", re.S | re.M)
TRAINING_SIZE = {"dataset": "digits", "limit": "300", "epochs": "1"}
SEARCH_SIZE = {"dataset": "digits", "epochs": "1", "max_trials": "2", "best_epochs": "1"}
SERVER_DEFAULT_PORTS = {"mlflow ui": 5000, "streamlit run": 8501, "digitml app": 8501}


@dataclass(frozen=True)
class Shown:
    """One command as a document shows it, with the output it shows (its `# ...` lines after it)."""

    where: str  # "docs/serving.md:12"
    command: str
    output: str


def shown_commands() -> list[Shown]:
    """Every command of every ```bash block, in document order, each once (the first place)."""
    found: dict[str, Shown] = {}
    for document in DOCUMENTS:
        for block in bash_blocks(document):
            for shown in block:
                first = found.setdefault(shown.command, shown)
                if shown.output and not first.output:  # shown again, with what it prints
                    found[shown.command] = Shown(first.where, first.command, shown.output)
    return list(found.values())


def bash_blocks(document: str) -> list[list[Shown]]:
    """The commands of each ```bash block of `document` (a path from the repository's root)."""
    text = (REPO_ROOT / document).read_text()
    return [
        _block_commands(block["body"], document, text.count("\n", 0, block.start("body")) + 1)
        for block in _BLOCK.finditer(text)
        if block["lang"] == "bash"
    ]


def _block_commands(body: str, document: str, first_line: int) -> list[Shown]:
    commands: list[Shown] = []
    lines = body.splitlines()
    index = 0
    while index < len(lines):
        line, number = lines[index], first_line + index
        index += 1
        if not line.strip():
            continue
        if line.lstrip().startswith("#"):
            if commands:  # what the command above it prints
                last = commands[-1]
                output = f"{last.output}\n{line.lstrip()[1:].strip()}".strip()
                commands[-1] = Shown(last.where, last.command, output)
            continue
        while line.endswith("\\") and index < len(lines):
            line = line[:-1] + lines[index].strip()
            index += 1
        commands.append(Shown(f"{document}:{number}", without_comment(line).strip(), ""))
    return commands


def without_comment(line: str) -> str:
    """`line` up to its first ` #` outside quotes."""
    quote = None
    for position, character in enumerate(line):
        if quote:
            quote = None if character == quote else quote
        elif character in "'\"":
            quote = character
        elif character == "#" and position and line[position - 1].isspace():
            return line[:position]
    return line


def sized(command: str) -> str:
    """Rule 1: a training or search command made test-sized."""
    words = shlex.split(command)
    if words[:2] in (["digitml", "train"], ["digitml", "tune"]):
        size = SEARCH_SIZE if words[1] == "tune" else TRAINING_SIZE
        options = [f"--{name.replace('_', '-')} {value}" for name, value in size.items()]
        return f"{command} {' '.join(options)}"  # click takes an option's last value
    if words[:2] == ["mlflow", "run"]:
        search = "-e" in words and words[words.index("-e") + 1] == "tune"
        size = SEARCH_SIZE if search else TRAINING_SIZE
        for name in size:  # `mlflow run` refuses a repeated parameter
            command = re.sub(rf" -P {name}=\S+", "", command)
        return f"{command} {' '.join(f'-P {name}={value}' for name, value in size.items())}"
    return command


def server_kind(command: str) -> str | None:
    """The kind of server a command starts (a key of SERVER_DEFAULT_PORTS or `mlflow models
    serve`), or None for a command that ends by itself."""
    for kind in (*SERVER_DEFAULT_PORTS, "mlflow models serve"):
        if command.startswith(kind):
            return kind
    return None


_PORT_OPTION = re.compile(r"(?P<option>(?:-p|--port|--server\.port)[ =])(?P<port>\d+)")


def shown_port(command: str) -> int:
    """The port a server command listens on, as shown (or its default)."""
    option = _PORT_OPTION.search(command)
    return int(option["port"]) if option else SERVER_DEFAULT_PORTS[server_kind(command)]


def pointed_at(command: str, ports: dict[int, int]) -> str:
    """Rule 2 for a client: each `127.0.0.1:PORT` moved to the free port its server was given."""
    for shown, free in ports.items():
        command = re.sub(rf"(?<=127\.0\.0\.1:){shown}\b", str(free), command)
    return command


def on_free_port(command: str, port: int) -> str:
    """Rule 2 for a server: the command listening on 127.0.0.1 at `port`."""
    kind = server_kind(command)
    if _PORT_OPTION.search(command):
        command = _PORT_OPTION.sub(rf"\g<option>{port}", command)
    else:
        command += f" --server.port {port}" if kind == "streamlit run" else f" --port {port}"
    if kind == "mlflow ui":  # one worker (it starts four): the test machine has two cores
        command += " --workers 1" + ("" if "--host" in command else " --host 127.0.0.1")
    if kind == "streamlit run":
        command += " --server.address 127.0.0.1 --server.headless true"
    return command
