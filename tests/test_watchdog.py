"""The camera never stops silently: a stalled camera ends the daemon with one line (so
systemd restarts it), systemd hears from it only while frames flow, and `hatcam status`
shows the restarts. systemd itself is played by a real unix datagram socket the test
binds as $NOTIFY_SOCKET; the unit's real watchdog runs in tests/faults/test_10_camera_stall.py."""

from __future__ import annotations

import io
import json
import re
import signal
import socket
import threading
import time
import uuid
from pathlib import Path

import av
import pytest

from tests.support.footage import hatcam, start_hatcam

STALL_LINE = re.compile(
    r"camera stalled: no frame for (\d+\.\d) s; exiting so systemd restarts it$", re.M
)


class FakeSystemd:
    """$NOTIFY_SOCKET in the abstract namespace, and every message sent to it, timed."""

    def __init__(self):
        self.address = f"@hatcam-test-{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.address[1:])
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._listen, daemon=True)
        self.thread.start()

    def _listen(self):
        while not self.done.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            now = time.monotonic()
            self.messages += [(now, line) for line in data.decode().splitlines()]

    def times(self, message: str) -> list[float]:
        return [t for t, m in self.messages if m == message]

    def wait_for(self, message: str, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.times(message):
                return self.times(message)[0]
            time.sleep(0.05)
        raise AssertionError(f"no {message} within {timeout} s; got {self.messages}")

    def close(self):
        self.done.set()
        self.thread.join(2)
        self.sock.close()


@pytest.fixture
def systemd():
    fake = FakeSystemd()
    yield fake
    fake.close()


def settings_for(tmp_path: Path, notify: str | None = None) -> dict:
    settings = {
        "HATCAM_CAMERA": "synthetic",
        "HATCAM_SPOOL_DIR": tmp_path / "spool",
        "HATCAM_RESOLUTION": "320x240",
        "HATCAM_FPS": "10",
        "HATCAM_SEGMENT_SECONDS": "2",
        "HATCAM_MIN_FREE_MB": "1",
        "HATCAM_DEVICE": "hat1",
    }
    if notify:
        settings["NOTIFY_SOCKET"] = notify
    return settings


def status(settings: dict) -> tuple[dict, str]:
    as_json = hatcam("status", "--json", settings=settings)
    assert as_json.returncode == 0, as_json.stderr
    return json.loads(as_json.stdout), hatcam("status", settings=settings).stdout


def video_pts(spool: Path) -> list[int]:
    """PTS of every frame decoded from the segments on the card, in order."""
    pts = []
    for path in sorted((spool / "ready").glob("*.ts")):
        with av.open(io.BytesIO(path.read_bytes()), format="mpegts") as ts:
            pts += [f.pts for f in ts.decode(video=0)]
    return pts


def test_a_stalled_camera_exits_with_one_line_and_the_next_start_shows_the_restart(
    tmp_path, systemd
):
    settings = settings_for(tmp_path, systemd.address)
    log = tmp_path / "camera.log"
    camera = start_hatcam("camera", settings=settings, log=log)
    try:
        ready = systemd.wait_for("READY=1", 60)
        time.sleep(5)  # frames flowing: systemd hears WATCHDOG=1 about once a second
        stalled = time.monotonic()
        camera.send_signal(signal.SIGUSR1)  # the synthetic camera's frames stop, no error
        code = camera.wait(60)
        exited = time.monotonic()
    finally:
        camera.kill()
    text = log.read_text()
    pings = systemd.times("WATCHDOG=1")
    flowing = [t for t in pings if ready < t <= stalled]
    assert len(flowing) >= 3, f"WATCHDOG=1 while frames flowed: {len(flowing)} in 5 s"
    steps = [b - a for a, b in zip(pings, pings[1:], strict=False)]
    assert min(steps) >= 0.9, f"WATCHDOG=1 sent more than once a second: {steps}"
    # The frame in flight when the signal came may still ping; nothing after it.
    assert len([t for t in pings if t > stalled]) <= 1, f"pings after the stall: {pings}"
    stopping = systemd.wait_for("STOPPING=1", 1)
    assert not [t for t in pings if t > stopping]

    assert code == 1, text[-2000:]
    assert len(STALL_LINE.findall(text)) == 1, text[-2000:]
    assert float(STALL_LINE.search(text)[1]) >= 5.0
    assert exited - stalled >= 5.0, "it exited before the stall was 5 s old"
    # The last segment was closed properly though the camera's thread hangs.
    spool = tmp_path / "spool"
    assert not list((spool / "recording").glob("*.ts"))
    pts = video_pts(spool)
    steps = {b - a for a, b in zip(pts, pts[1:], strict=False)}
    assert len(pts) >= 40 and steps == {9000}, f"{len(pts)} frames, steps {steps}"

    info, human = status(settings)
    assert info["camera"]["state"] == "failed"
    assert info["camera_restarts"]["count"] == 0  # counted when it starts again

    again = start_hatcam("camera", settings=settings, log=log)
    try:
        systemd.messages.clear()
        systemd.wait_for("READY=1", 60)
        info, human = status(settings)
        again.send_signal(signal.SIGTERM)
        assert again.wait(30) == 0
    finally:
        again.kill()
    restarts = info["camera_restarts"]
    assert restarts["count"] == 1
    assert restarts["events"][-1]["after"].startswith("camera stalled: no frame for ")
    # What records is named too (picamera2's hardware encoder, or a fallback).
    assert f"encoder:       {info['camera']['camera']['encoder']}, synthetic camera" in human
    line = human.splitlines()[0]
    assert re.match(
        r"camera: +(starting|recording) \(restarted 1 time, last at \d\d:\d\d:\d\d, .*"
        r"after: camera stalled: no frame for \d+\.\d s\)",
        line,
    ), line

    # A clean stop is not a restart.
    third = start_hatcam("camera", settings=settings, log=log)
    try:
        systemd.messages.clear()
        systemd.wait_for("READY=1", 60)
        third.send_signal(signal.SIGTERM)
        assert third.wait(30) == 0
    finally:
        third.kill()
    info, human = status(settings)
    assert info["camera"]["state"] == "stopped" and info["camera_restarts"]["count"] == 1


def test_a_killed_camera_counts_as_a_restart_with_why_it_is_unknown(tmp_path):
    """SIGKILL: what a power cut, or systemd's watchdog outside systemd, leaves behind."""
    settings = settings_for(tmp_path)
    log = tmp_path / "camera.log"
    for _ in range(2):
        camera = start_hatcam("camera", settings=settings, log=log)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                info, _ = status(settings) if (tmp_path / "spool").is_dir() else ({}, "")
                if (info.get("camera") or {}).get("state") == "recording":
                    break
                time.sleep(0.5)
            else:
                raise AssertionError(f"never recording: {log.read_text()[-2000:]}")
        finally:
            camera.kill()
            camera.wait(10)
    info, human = status(settings)
    assert info["camera_restarts"]["count"] == 1
    assert info["camera_restarts"]["events"][-1]["after"] == (
        "ended while recording (power cut, or killed)"
    )
    assert "restarted 1 time, last at" in human.splitlines()[0]
