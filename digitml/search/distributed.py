"""A search spread over processes or machines: one chief serves Keras Tuner's oracle, workers ask
it for trials and run them.

Keras Tuner's distributed mode is configured through environment variables only
(KERASTUNER_TUNER_ID, KERASTUNER_ORACLE_IP, KERASTUNER_ORACLE_PORT); its gRPC has no
authentication, so the default address is the loopback.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from digitml.config import ConfigError, work_dir

DEFAULT_ORACLE = "127.0.0.1:8000"
ROLES = ("chief", "worker")
CHIEF_TIMEOUT_SECONDS = 20
DEFAULT_CHIEF_WAIT_SECONDS = 15.0


@dataclass(frozen=True)
class Role:
    """This process's part in a search: `name` None for a search in this process alone."""

    name: str | None = None
    oracle_address: str | None = None
    tuner_id: str | None = None
    named_worker: bool = False  # a worker given --worker-id, which can resume its trials
    chief_wait_seconds: float = DEFAULT_CHIEF_WAIT_SECONDS  # a worker's, for the search to start

    @property
    def is_worker(self) -> bool:
        return self.name == "worker"

    @property
    def is_chief(self) -> bool:
        return self.name == "chief"


def search_role(
    name: str | None,
    oracle_address: str | None = None,
    worker_id: str | None = None,
    chief_wait_seconds: float | None = None,
) -> Role:
    """The role the options ask for, checked; ConfigError names a bad combination or address."""
    if not name:
        if oracle_address or worker_id:
            raise ConfigError("--oracle and --worker-id need --role chief or --role worker")
        return Role()
    if name not in ROLES:
        raise ConfigError(f"role must be one of {', '.join(ROLES)}; got {name!r}")
    if chief_wait_seconds is not None and name != "worker":
        raise ConfigError("--chief-wait is a worker's: it needs --role worker")
    address = oracle_address or DEFAULT_ORACLE
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--oracle: expected HOST:PORT, got {address!r}")
    tuner_id = "chief" if name == "chief" else worker_id or default_worker_id()
    return Role(
        name,
        address,
        tuner_id,
        named_worker=name == "worker" and bool(worker_id),
        chief_wait_seconds=DEFAULT_CHIEF_WAIT_SECONDS
        if chief_wait_seconds is None
        else chief_wait_seconds,
    )


def default_worker_id() -> str:
    return f"worker-{socket.gethostname()}-{os.getpid()}"


def join_search(role: Role) -> None:
    """Tell Keras Tuner this process's role: it reads these variables when the search starts."""
    if role.name is None:
        return
    host, _, port = role.oracle_address.rpartition(":")
    os.environ.update(
        KERASTUNER_TUNER_ID=role.tuner_id, KERASTUNER_ORACLE_IP=host, KERASTUNER_ORACLE_PORT=port
    )


def tuning_folder(experiment: str, role: Role, given: str | Path | None = None) -> Path:
    """The tuner's state folder: `given`, else tuning/<experiment> in the work folder
    (`config.work_dir`); a worker given an id keeps its own trial folders (checkpoints, to resume
    from) beside the chief's, in tuning/<experiment>-<worker id>."""
    if given:
        return Path(given)
    root = work_dir() / "tuning"
    if role.named_worker:
        return root / f"{experiment}-{role.tuner_id}"
    return root / experiment


def chief_reachable(address: str, timeout: float = CHIEF_TIMEOUT_SECONDS) -> bool:
    import grpc

    channel = grpc.insecure_channel(address)
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
        return True
    except grpc.FutureTimeoutError:
        return False
    finally:
        channel.close()


def serve_oracle(tuner: Any, address: str) -> None:
    """The chief's part of a distributed search: serve the oracle to the workers on `address`
    until every trial has been handed out and every worker has left.

    Keras Tuner's chief (`tuner.search()` with KERASTUNER_TUNER_ID=chief) serves the oracle and
    checks only every 20 s whether the search has ended once the last trial is handed out. It runs
    here in a background thread while this one checks every second (`search_done`), so the chief
    outlives its search by a second, not by up to 20 s; its server goes with the process."""
    failures: list[BaseException] = []

    def serve() -> None:
        try:
            tuner.search(verbose=0)
        except BaseException as error:  # raised again in the calling thread
            failures.append(error)

    server = threading.Thread(target=serve, name="oracle-server", daemon=True)
    server.start()
    listening = False
    while server.is_alive() and not tuner.oracle.search_done():
        if not listening and chief_reachable(address, timeout=1):
            print(f"oracle listening on {address}; start workers with --role worker", flush=True)
            listening = True
        time.sleep(1)
    if failures:
        raise failures[0]
