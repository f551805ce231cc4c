"""Starting the upload page (digitml/app.py) as Streamlit's server, and the settings it gets.

Kept apart from the page so that `digitml app` starts Streamlit without first importing what the
page needs (Streamlit, MLflow, pandas: seconds), which the page's own process imports anyway."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from digitml.config import DEFAULT_APP_MODEL_URI
from digitml.imaging import MAX_IMAGE_BYTES

PAGE = Path(__file__).with_name("app.py")


@dataclass
class AppSettings:
    """What the page talks to: a model URI (loaded in-process) or a REST endpoint."""

    model_uri: str = DEFAULT_APP_MODEL_URI
    endpoint: str | None = None

    @classmethod
    def from_env(cls) -> AppSettings:
        """`digitml app` passes its options to the Streamlit process through the environment."""
        return cls(
            model_uri=os.environ.get("DIGITML_APP_MODEL_URI") or DEFAULT_APP_MODEL_URI,
            endpoint=os.environ.get("DIGITML_APP_ENDPOINT") or None,
        )


def start_page(settings: AppSettings, host: str, port: int) -> None:
    """Replace this process with Streamlit serving this page, so SIGTERM and Ctrl-C reach the
    page's server itself."""
    env = {
        **os.environ,
        "DIGITML_APP_MODEL_URI": settings.model_uri,
        "DIGITML_APP_ENDPOINT": settings.endpoint or "",
    }
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(PAGE),
        "--server.port",
        str(port),
        "--server.address",
        host,
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--server.maxUploadSize",  # in MB: the upload widget then states the limit images have
        str(MAX_IMAGE_BYTES // 2**20),
    ]
    os.execve(sys.executable, command, env)
