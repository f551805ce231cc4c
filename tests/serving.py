"""A real `mlflow models serve` process on a free loopback port, for tests and benchmarks."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, process: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    """Poll `url` until it answers 200; fail with the end of `log` if the process dies or hangs."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"{url} did not come up: {log.read_text()[-3000:]}")
        time.sleep(0.5)


class ModelServer:
    """`mlflow models serve -m MODEL --env-manager ENV_MANAGER` on 127.0.0.1; stop() ends it.

    With "local" it runs in this venv; with "uv" MLflow first builds the model's own environment
    from its requirements.txt (cached in ~/.mlflow/envs), where digitml is not installed."""

    def __init__(
        self,
        model_uri: str,
        env: dict[str, str] | None = None,
        timeout: float = 180,
        env_manager: str = "local",
        cwd: Path | None = None,
        workers: int = 1,
    ):
        # A file, not a pipe: nobody reads the server's log while it runs, and a full pipe blocks it.
        self.log = Path(tempfile.mkstemp(prefix="mlflow-serve-", suffix=".log")[1])
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        venv_bin = str(Path(sys.executable).parent)
        self.process = subprocess.Popen(
            [
                shutil.which("mlflow", path=venv_bin) or "mlflow",
                "models",
                "serve",
                "-m",
                model_uri,
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "--env-manager",
                env_manager,
                "--workers",
                str(workers),
            ],
            env={
                **os.environ,
                **(env or {}),
                "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""),
            },
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("w"),
            cwd=cwd,
        )
        wait_for_http(f"{self.url}/ping", self.process, self.log, timeout)

    def alive(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/ping", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def post(self, body: bytes | str, content_type: str = "application/json") -> tuple[int, str]:
        data = body.encode() if isinstance(body, str) else body
        request = urllib.request.Request(
            f"{self.url}/invocations", data=data, headers={"Content-Type": content_type}
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def stop(self) -> None:
        stop_process(self.process)
        self.log.unlink(missing_ok=True)


def stop_process(process: subprocess.Popen, timeout: float = 30) -> None:
    """Ask a server to stop (SIGTERM); kill it if it is still running after `timeout` s."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
