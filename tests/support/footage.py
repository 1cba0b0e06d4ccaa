"""Helpers to make and inspect real footage in tests (no mocks: real H.264, real MPEG-TS)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import av

from hatcam.device.camera.synthetic import SyntheticCamera
from hatcam.device.segmenter import Segmenter
from hatcam.device.spool import Spool

SMALL = {"width": 320, "height": 240, "fps": 30}


def record(spool_dir: Path, frames: int, segment_seconds=1.0, device="cam1", **kw) -> Spool:
    """Run the synthetic camera as fast as possible through the real segmenter."""
    spool = Spool(spool_dir).ensure()
    segmenter = Segmenter(
        spool, device, SMALL["width"], SMALL["height"], SMALL["fps"], segment_seconds, **kw
    )
    camera = SyntheticCamera(
        SMALL["width"], SMALL["height"], SMALL["fps"], 300_000, realtime=False, frames=frames
    )
    camera.start(segmenter)
    assert camera.wait(120), "synthetic camera did not finish"
    segmenter.close()
    assert camera.failed is None
    return spool


def packets(path: Path) -> list[tuple[int, bool]]:
    """(pts, keyframe) of every video packet in a file."""
    with av.open(str(path)) as container:
        return [(p.pts, p.is_keyframe) for p in container.demux(video=0) if p.pts is not None]


def decoded_frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def env(**settings) -> dict[str, str]:
    """A process environment with only the given hatcam settings (no ambient HATCAM_*)."""
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("HATCAM_") and k not in ("BLOB_CONNECTION_STRING", "REDIS_URL")
    }
    base.update({k: str(v) for k, v in settings.items()})
    return base


def hatcam(*args, settings: dict, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hatcam.cli", "--env-file", os.devnull, *args],
        env=env(**settings),
        capture_output=True,
        text=True,
        timeout=120,
        **kw,
    )


def start_hatcam(*args, settings: dict, log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "hatcam.cli", "--env-file", os.devnull, *args],
            env=env(**settings),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def metadata(segment: Path) -> dict:
    return json.loads(segment.with_suffix(".json").read_text())


def wait_until(predicate, timeout, what, poll=0.1):
    """Poll until ``predicate()`` is true; fail the test naming what never happened."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
