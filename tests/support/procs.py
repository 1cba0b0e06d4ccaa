"""Processes the rig starts and stops by PID: is one alive, stop one, wait for its port."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path


def alive(pid: int | None) -> bool:
    """True for a running process; a zombie (exited, not yet reaped) is not alive."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
            return False
    return True


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def reap(pid: int | None, block: bool = False) -> None:
    """Collect the exit status if it is our child (no zombie left behind)."""
    with contextlib.suppress(ChildProcessError, TypeError):
        os.waitpid(pid, 0 if block else os.WNOHANG)


def terminate(pid: int | None, timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds; reaps it if it is our child."""
    if not alive(pid):
        reap(pid)
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        reap(pid)
        time.sleep(0.05)
    if alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    reap(pid, block=True)


def spawn(cmd: list[str], log: Path, env: dict | None = None, detach: bool = False) -> int:
    """Start ``cmd`` with its stderr appended to ``log``; its PID. ``detach`` puts it in a
    session of its own, so it outlives the process that started it (a CLI's `start`)."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=out,
            start_new_session=detach,
            env=env,
        )
    return proc.pid


def wait_port(host: str, port: int, pid: int, what: str, timeout: float = 30) -> None:
    """Until ``host:port`` accepts a connection; fails at once if ``pid`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), 0.2):
            return
        reap(pid)
        if not alive(pid):
            raise RuntimeError(f"{what} exited while starting")
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {host}:{port} within {timeout:.0f} s")


def serve(cmd: list[str], log: Path, env, detach: bool, host: str, port: int, what: str) -> int:
    """Start a server and wait until it listens on ``host:port``; its PID. A server that
    does not come up is stopped, not left behind."""
    pid = spawn(cmd, log, env, detach)
    try:
        wait_port(host, port, pid, what)
    except BaseException:
        terminate(pid)
        raise
    return pid


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, poll: float = 1.0):
    """Poll until ``predicate()`` returns something true, and return it; TimeoutError
    naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
