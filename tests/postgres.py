"""A throw-away PostgreSQL cluster for tests: Debian's initdb and pg_ctl, a temp folder, a port on
loopback, trust authentication. Nothing of it outlives the test."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _server_program(name: str) -> str | None:
    """Debian keeps the server's programs out of PATH, in /usr/lib/postgresql/<version>/bin."""
    installed = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return shutil.which(name) or (installed[-1] if installed else None)


INITDB, PG_CTL = _server_program("initdb"), _server_program("pg_ctl")
HOW_TO_GET = "initdb and pg_ctl; Debian: apt install postgresql"


def _as_server_user(command: list[str | Path]) -> list[str]:
    """PostgreSQL's server refuses to run as root: as root, run it as Debian's `postgres` user."""
    command = [str(part) for part in command]
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def _run(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, f"{' '.join(command)}: {result.stderr[-2000:]}"


@contextlib.contextmanager
def cluster(port: int) -> Iterator[str]:
    """A new cluster on 127.0.0.1:`port` holding an empty database `mlflow`; its SQLAlchemy URI."""
    folder = Path(tempfile.mkdtemp(prefix="digitml-postgres-"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    data = folder / "data"
    _run(_as_server_user([INITDB, "-D", data, "-U", "digitml", "--auth=trust", "--no-sync"]))
    settings = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    start = [PG_CTL, "-D", data, "-l", folder / "server.log", "-w", "-o", settings, "start"]
    _run(_as_server_user(start))
    try:
        createdb = str(Path(PG_CTL).resolve().with_name("createdb"))  # beside it, not in PATH
        _run([createdb, "-h", "127.0.0.1", "-p", str(port), "-U", "digitml", "mlflow"])
        yield f"postgresql://digitml@127.0.0.1:{port}/mlflow"
    finally:
        _run(_as_server_user([PG_CTL, "-D", data, "-m", "immediate", "-w", "stop"]))
        shutil.rmtree(folder, ignore_errors=True)
