"""The one owner of a virtual Pi's run directory and its state.json.

Three processes write it (``up``, the supervisor that runs systemd-nspawn, a test that
cuts the power and boots the guest again), so every change is a read-modify-write under
a lock (``update``); nothing else in the rig opens the file. The queries a test needs
(is it running, the guest's PID 1) are answered here too.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import re
from collections.abc import Iterator
from pathlib import Path

from ..procs import alive
from .host import CACHE

RUNS = CACHE / "run"
NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,10}$")  # vpi-NAME must fit in 15 characters


def run_dir(name: str) -> Path:
    return RUNS / name


def load(name: str) -> dict:
    """The state of guest ``name``; {} when it has none (never started, or cleaned up)."""
    path = run_dir(name) / "state.json"
    return json.loads(path.read_text()) if path.exists() else {}


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    with open(run_dir(name) / "state.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _write(name: str, state: dict) -> None:
    path = run_dir(name) / "state.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    tmp.rename(path)


def create(name: str, state: dict) -> None:
    """The first state of a run whose directory ``up`` just made."""
    with _locked(name):
        _write(name, state)


def update(name: str, drop: tuple[str, ...] = (), **fields) -> dict:
    """Set ``fields`` and remove the keys in ``drop``; the state as written."""
    with _locked(name):
        state = load(name)
        state.update(fields)
        for key in drop:
            state.pop(key, None)
        _write(name, state)
        return state


def running(name: str) -> bool:
    """The guest's supervisor is alive (it is booting, up, or rebooting)."""
    return alive(load(name).get("supervisor_pid"))


def nspawn_running(name: str) -> bool:
    """Its systemd-nspawn is alive: the guest's kernel-side container exists."""
    return alive(load(name).get("nspawn_pid"))


def others_running(name: str) -> list[str]:
    """The other guests with a live supervisor on this host."""
    if not RUNS.exists():
        return []
    return [d.name for d in RUNS.glob("*") if d.name != name and running(d.name)]


def guest_init(name: str) -> int:
    """PID (on the host) of the guest's PID 1: the child of nspawn that is PID 1 in its
    own namespace. It changes each time the guest boots."""
    nspawn = load(name).get("nspawn_pid")
    if not alive(nspawn):
        raise RuntimeError(f"{name}: no running systemd-nspawn")
    for task in Path(f"/proc/{nspawn}/task").iterdir():
        for child in (task / "children").read_text().split():
            status = Path(f"/proc/{child}/status").read_text()
            nspid = next(x for x in status.splitlines() if x.startswith("NSpid:")).split()
            if nspid[-1] == "1" and len(nspid) > 2:
                return int(child)
    raise RuntimeError(f"no guest PID 1 under systemd-nspawn {nspawn}")
