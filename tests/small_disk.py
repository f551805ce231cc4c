"""A small disk for tests, made without root: a tmpfs of a given size mounted in a new user and
mount namespace (util-linux's `unshare -rm`), which only the processes started in it see. Its
size can be changed while it is mounted, to give the space back."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

UNSHARE, NSENTER = shutil.which("unshare"), shutil.which("nsenter")


def unavailable() -> str | None:
    """Why no small disk can be made here, or None."""
    if not (UNSHARE and NSENTER):
        return "util-linux's unshare and nsenter not found"
    probe = subprocess.run(
        [UNSHARE, "-rm", "true"], capture_output=True, text=True, timeout=30, check=False
    )
    if probe.returncode != 0:
        return f"no user namespaces for an unprivileged tmpfs: {probe.stderr.strip()}"
    return None


class SmallDisk:
    """A tmpfs of `size` (tmpfs' syntax: 512k, 1m) at `mountpoint`, seen by `within` commands."""

    def __init__(self, holder: subprocess.Popen, mountpoint: Path) -> None:
        self._holder = holder  # a process that keeps the namespace alive
        self.mountpoint = mountpoint

    def within(self, cwd: Path | None = None) -> list[str]:
        """The prefix that runs a command in the namespace, as the same user, in `cwd` (entering
        a mount namespace starts at its root)."""
        return [
            *(NSENTER, "-t", str(self._holder.pid), "-U", "-m", "--preserve-credentials"),
            *([f"--wd={cwd}"] if cwd else []),
        ]

    def resize(self, size: str) -> None:
        remount = ["mount", "-o", f"remount,size={size}", str(self.mountpoint)]
        subprocess.run([*self.within(), *remount], check=True, timeout=30)

    def outside_path(self, path: str | Path) -> Path:
        """Where a process outside the namespace reads `path` as the namespace sees it."""
        return Path(f"/proc/{self._holder.pid}/root") / Path(path).relative_to("/")


@contextlib.contextmanager
def small_disk(mountpoint: Path, size: str) -> Iterator[SmallDisk]:
    """A new SmallDisk at `mountpoint` (an existing folder), unmounted with its namespace at exit."""
    mount = f"mount -t tmpfs -o size={size} tmpfs '{mountpoint}' && echo mounted && exec cat"
    holder = subprocess.Popen(
        [UNSHARE, "-rm", "sh", "-c", mount],
        stdin=subprocess.PIPE,  # `cat` holds the namespace until its stdin closes
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready = holder.stdout.readline()
        assert ready == "mounted\n", f"tmpfs not mounted: {holder.stderr.read()}"
        yield SmallDisk(holder, mountpoint)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
