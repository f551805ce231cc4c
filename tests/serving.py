"""A real `mlflow models serve` process on a free loopback port, for tests and benchmarks."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ModelServer:
    """`mlflow models serve -m MODEL --env-manager local` on 127.0.0.1; stop() ends it."""

    def __init__(self, model_uri: str, env: dict[str, str] | None = None, timeout: float = 180):
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
                "local",
                "--workers",
                "1",
            ],
            env={
                **os.environ,
                **(env or {}),
                "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""),
            },
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + timeout
        while not self.alive():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"mlflow models serve did not start: {self.process.stderr.read()[-3000:]}"
                )
            time.sleep(0.5)

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
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
