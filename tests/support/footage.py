"""Helpers to make and inspect real footage in tests (no mocks: real H.264, real MPEG-TS)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import av

from hatcam.device.camera.synthetic import SyntheticCamera
from hatcam.device.segmenter import Segmenter
from hatcam.device.spool import Spool
from hatcam.fetch import stitch
from hatcam.segment import CLOSING_SUFFIX, LIVE_KEY, SegmentName, SegmentRecord, probe

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


def planned(spool: Spool, device: str) -> list[stitch.Segment]:
    """The card's segments as fetch plans them from their records (blob metadata = sidecar).
    A recovered segment's record lacks the picture size: fetch reads the file then."""
    found = []
    for path in spool.ready_segments():
        rec = SegmentRecord.from_sidecar(metadata(path))
        contents = rec.contents if rec.contents.width else probe(path)
        name = SegmentName.parse(path.name)
        found.append(
            stitch.Segment.from_contents(
                path.name, path, device, rec.start, contents, boot=name.boot, seq=name.seq
            )
        )
    return found


def wait_until(predicate, timeout, what, poll=0.1):
    """Poll until ``predicate()`` is true; fail the test naming what never happened."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@dataclass
class Landed:
    """A segment the cloud has whole: its blob name, the record that describes it (a whole
    blob's own metadata, or a live append blob's closing record), when the cloud had all
    of it, and how many of the blob's bytes are the device's."""

    name: str
    metadata: dict
    creation_time: datetime
    length: int


def landed_segments(client, prefix: str) -> list[Landed]:
    """The finished segments under ``prefix``, by name; a live blob still open (no closing
    record) is not finished and not listed."""
    listed = list(client.list_blobs(name_starts_with=prefix, include=["metadata"]))
    closing = {b.name[: -len(CLOSING_SUFFIX)]: b for b in listed if b.name.endswith(CLOSING_SUFFIX)}
    found = []
    for blob in sorted(listed, key=lambda b: b.name):
        if not blob.name.endswith(".ts"):
            continue
        if (blob.metadata or {}).get(LIVE_KEY) != "true":
            found.append(Landed(blob.name, blob.metadata, blob.creation_time, blob.size))
        elif blob.name in closing:
            end = closing[blob.name]
            found.append(
                Landed(blob.name, end.metadata, end.creation_time, int(end.metadata["length"]))
            )
    return found
