"""The camera must never stop silently: liveness fed by frames, and a record of restarts.

Two watchdogs, each seeing what the other cannot. The daemon's own (``stall``) runs on
its main thread and looks at the frames: none for ``STALL_SECONDS`` (or a writer or
camera that failed) ends the process with one line saying why, and systemd starts it
again. systemd's (``WatchdogSec=`` in the unit) is fed from the frame path only, so a
whole process that hangs, main thread included, is killed and started again too.

``Restarts`` keeps, in the spool's state directory, how often the daemon started after
a run that did not end cleanly, and why, for ``hatcam status``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from ..files import write_atomic
from ..segment import iso

log = logging.getLogger("hatcam.camera")

# No frame for this long, once frames flowed: the camera stalled. A healthy camera
# delivers one at least every second (the lowest frame rate is 1 fps).
STALL_SECONDS = 5.0
# From camera.start() to the first frame: opening picamera2's encoder, or PyAV's,
# takes a second or two on a Pi Zero; more than this means it never will.
FIRST_FRAME_SECONDS = 15.0
# systemd's watchdog is told at most this often (the unit's WatchdogSec= is 10 s).
PING_EVERY = 1.0
# What systemd wrote when the last run ended (ExecStopPost= in the unit):
# "$SERVICE_RESULT $EXIT_CODE $EXIT_STATUS", e.g. "watchdog killed ABRT".
EXIT_FILE = "camera.exit"
RESTARTS_FILE = "restarts.json"
KEEP_EVENTS = 10


class Notifier:
    """sd_notify(3) over ``$NOTIFY_SOCKET``: one datagram per message, no library
    (python3-systemd is not a dependency). Without the variable (not run by systemd, or
    not Type=notify) every call is a no-op. Never blocks: it is called from the camera's
    frame path, and a message systemd cannot take at once is dropped."""

    def __init__(self, address: str | None = None):
        address = os.environ.get("NOTIFY_SOCKET") if address is None else address
        self.sock: socket.socket | None = None
        self.address = ""
        if address and address[0] in "/@":
            # A leading '@' names a socket in the abstract namespace.
            self.address = "\0" + address[1:] if address[0] == "@" else address
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self.sock.setblocking(False)

    def send(self, *fields: str) -> bool:
        if self.sock is None:
            return False
        try:
            self.sock.sendto("\n".join(fields).encode(), self.address)
        except OSError:
            return False
        return True

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class FrameWatch:
    """Called for every frame from the camera's thread (the segmenter's ``on_frame``).

    The first frame tells systemd the unit is ready (``systemctl start`` returns once the
    camera records); then ``WATCHDOG=1`` about once a second, only while frames come.
    """

    def __init__(self, notifier: Notifier, clock=time.monotonic):
        self.notifier = notifier
        self.clock = clock
        self.ready = threading.Event()
        self.last_ping = 0.0
        self.pings = 0

    def __call__(self) -> None:
        now = self.clock()
        if not self.ready.is_set():
            self.ready.set()
            self.notifier.send("READY=1", "STATUS=recording")
            self.last_ping = now
        elif now - self.last_ping >= PING_EVERY:
            self.last_ping = now
            if self.notifier.send("WATCHDOG=1"):
                self.pings += 1


def stall(
    started: float,
    last_frame_at: float | None,
    segmenter_failed: BaseException | None,
    camera_failed: BaseException | None,
    now: float,
) -> str | None:
    """Why recording has stopped, in words for the journal, or None while it runs."""
    if camera_failed is not None:
        return f"camera failed: {camera_failed!r}"
    if segmenter_failed is not None:
        return f"segment writer failed: {segmenter_failed!r}"
    if last_frame_at is None:
        if now - started > FIRST_FRAME_SECONDS:
            return f"camera stalled: no first frame {now - started:.1f} s after start"
        return None
    if now - last_frame_at > STALL_SECONDS:
        return f"camera stalled: no frame for {now - last_frame_at:.1f} s"
    return None


def bounded(action, seconds: float, what: str) -> bool:
    """Run ``action`` on a daemon thread and wait at most ``seconds``: a hung camera
    must not keep the process from exiting. False (and a line) if it did not finish."""
    errors: list[BaseException] = []

    def run():
        try:
            action()
        except BaseException as exc:  # reported below, on the caller's thread
            errors.append(exc)

    thread = threading.Thread(target=run, name=what, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        log.error("%s did not finish within %.0f s; leaving it behind", what, seconds)
        return False
    if errors:
        log.error("%s failed: %r", what, errors[0])
    return True


def _exit_reason(text: str) -> str | None:
    """systemd's account of how the last run ended (ExecStopPost='s $SERVICE_RESULT)."""
    result, _, rest = text.strip().partition(" ")
    code, _, status = rest.partition(" ")
    if result == "watchdog":
        # The unit's WatchdogSec=, as systemd tells this run (the last one had the same).
        limit = os.environ.get("WATCHDOG_USEC", "")
        within = f" for {int(limit) / 1e6:g} s" if limit.isdigit() else ""
        return f"killed by systemd's watchdog (no frame{within}: the daemon hung)"
    if result == "timeout":
        return "killed by systemd: no first frame before its start timeout"
    if result in ("signal", "core-dump"):
        return f"killed by signal {status or '?'}"
    if result == "exit-code":
        return f"exited with status {status or '?'}"
    return None


class Restarts:
    """Starts after a run that did not end cleanly: how many, and the last few, why and
    when. Written once per start (durably: it is small and rare)."""

    def __init__(self, state_dir: Path):
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / RESTARTS_FILE

    def read(self) -> dict:
        return read_restarts(self.state_dir)

    def note_start(self, previous: dict | None) -> dict | None:
        """Called at start with the previous run's last state file. A run that systemd
        saw fail, or that never said "stopped" (a power cut), is counted, with the best
        reason known: its own words, else systemd's. Returns the event, if any."""
        exit_file = self.state_dir / EXIT_FILE
        try:
            systemd_said = exit_file.read_text()
        except OSError:
            systemd_said = ""
        with contextlib.suppress(OSError):
            exit_file.unlink()
        previous = previous or {}
        systemd_reason = _exit_reason(systemd_said)
        unclean = previous.get("state") not in (None, "stopped")
        if not (systemd_reason or unclean):
            return None
        reason = (
            previous.get("reason")
            or systemd_reason
            or f"ended while {previous['state']} (power cut, or killed)"
        )
        event = {"at": iso(datetime.now(UTC)), "after": reason}
        if previous.get("updated"):
            event["last_seen"] = previous["updated"]
        record = self.read()
        record["count"] = record.get("count", 0) + 1
        record["events"] = [*record.get("events", []), event][-KEEP_EVENTS:]
        with contextlib.suppress(OSError):
            write_atomic(self.path, json.dumps(record, indent=1).encode())
        return event


def read_restarts(state_dir: Path) -> dict:
    try:
        record = json.loads((Path(state_dir) / RESTARTS_FILE).read_text())
    except (OSError, ValueError):
        return {"count": 0, "events": []}
    return record if isinstance(record, dict) else {"count": 0, "events": []}
