"""`make demo` in a short mode: every figure of its summary checked against what the test
sees for itself (the Pi's card, the blob store and its blobs decoded, the MP4 decoded,
Redis), never against another figure of the same summary."""

from __future__ import annotations

import io
import json
import statistics
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import av
import pytest
import redis

from tests.support import ROOT, hostsvc
from tests.support.footage import landed_segments
from tests.support.vpi import state as vpi_state
from tests.support.vpi.guest import ssh_base

STATE = ROOT / ".cache" / "demo" / "hostsvc.json"
SPOOL = "/var/lib/hatcam/spool"
SECONDS = 30  # recorded; the network is cut for the middle third

pytestmark = pytest.mark.root("the virtual Pi needs root")


def demo(*args: str, timeout=1200) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tests.support.demo", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def kept_demo(tmp_path_factory):
    """A 30 s demo left running (--keep), so the test can look at what it reported on."""
    out = tmp_path_factory.mktemp("demo")
    summary = out / "summary.json"
    run = demo(
        "--seconds",
        str(SECONDS),
        "--out",
        str(out / "footage"),
        "--summary-json",
        str(summary),
        "--keep",
    )
    try:
        assert run.returncode == 0, run.stdout + run.stderr
        yield run.stdout, json.loads(summary.read_text()), out / "footage"
    finally:
        cleaned = demo("--clean", "--out", str(out / "footage"), timeout=300)
        assert cleaned.returncode == 0, cleaned.stderr


@pytest.fixture(scope="module")
def store(kept_demo):
    """The blob store's own listing of the demo's device, oldest first, each blob with
    the (pts, keyframe) of its video packets and its decoded frame count."""
    _, summary, _ = kept_demo
    state = hostsvc.load(STATE)
    client = hostsvc.container(state)
    blobs = landed_segments(client, f"{summary['device']}/")
    decoded = []
    for blob in blobs:
        data = client.download_blob(blob.name, offset=0, length=blob.length).readall()
        with av.open(io.BytesIO(data), format="mpegts") as container:
            frames = sum(1 for _ in container.decode(video=0))
        decoded.append(frames)
    return blobs, decoded, redis.Redis.from_url(state["redis_url"])


def on_the_card(command: str) -> str:
    """A command run on the kept virtual Pi, over its ssh."""
    done = subprocess.run(
        [*ssh_base(vpi_state.load("demo")), command],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


def recorded_at(blob) -> tuple[float, float]:
    """When a segment's recording started and ended (the device's clock: the host's)."""
    meta = blob.metadata
    return tuple(
        datetime.fromisoformat(meta[key].replace("Z", "+00:00")).timestamp()
        for key in ("start", "end")
    )


def mp4_pts(path: Path) -> tuple[list[int], float, int]:
    """The MP4's video pts in order, its time base in seconds, and its decoded frames."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        pts = sorted(p.pts for p in container.demux(stream) if p.pts is not None)
        seconds = float(stream.time_base)
    with av.open(str(path)) as container:
        frames = sum(1 for _ in container.decode(video=0))
    return pts, seconds, frames


def test_every_segment_the_pi_recorded_is_in_the_blob_store_once(kept_demo, store):
    _, summary, _ = kept_demo
    blobs, decoded, _ = store
    # The card's sequence counter: every segment the Pi ever started, across restarts.
    started = int(on_the_card(f"sudo cat {SPOOL}/state/seq"))
    sequence = sorted(int(Path(b.name).stem.rsplit("-", 1)[1]) for b in blobs)
    assert sequence == list(range(1, started + 1)), "each segment once, none missing"
    left = on_the_card(f"sudo ls -A {SPOOL}/ready {SPOOL}/recording").split()
    assert not [name for name in left if name.endswith((".ts", ".json"))], left
    assert summary["segments_recorded"] == started
    assert summary["segments_uploaded"] == len(blobs)
    assert summary["queue_left_on_pi"] == 0
    assert summary["frames_in_segments"] == sum(decoded), "frames decoded from the blobs"


def test_segments_recorded_during_the_outage_reached_the_cloud_after_it(kept_demo, store):
    _, summary, _ = kept_demo
    blobs, _, _ = store
    # The outage as the blob store saw it: its longest wait between two new blobs.
    created = sorted(b.creation_time.timestamp() for b in blobs)
    quiet, since = max((b - a, a) for a, b in zip(created, created[1:], strict=False))
    assert quiet >= SECONDS / 3 - 1, f"a {SECONDS // 3} s cut shows in the store ({quiet:.1f} s)"
    # The summary's outage (seconds into the video from the first segment's start),
    # which must lie inside what the store saw.
    first = min(recorded_at(b)[0] for b in blobs)
    cut, restored = (first + s for s in summary["outage_in_file_s"])
    # (Creation times are whole seconds, rounded down.)
    assert since - 0.5 <= cut and restored <= since + quiet + 1, (since, quiet, cut, restored)
    during = [b for b in blobs if cut <= recorded_at(b)[0] < restored]
    assert during, "segments were recorded while the network was down"
    assert all(b.creation_time.timestamp() + 1 > restored for b in during)
    assert summary["segments_recorded_during_outage"] == len(during)
    assert summary["of_which_uploaded_after_it"] == len(during)


def test_the_mp4_holds_every_frame_with_no_hole_across_the_outage(kept_demo, store):
    stdout, summary, footage = kept_demo
    blobs, decoded, _ = store
    [mp4] = sorted(footage.glob("*.mp4"))
    pts, seconds, frames = mp4_pts(mp4)
    assert frames == sum(decoded), "every frame of every blob, once"
    assert summary["mp4"][0]["frames"] == frames
    interval = statistics.median(b - a for a, b in zip(pts, pts[1:], strict=False))
    # The frames of the segments that waited out the outage, by their place in the file
    # (the MP4 holds the blobs' frames in order), one segment either side.
    first = min(recorded_at(b)[0] for b in blobs)
    cut, restored = (first + s for s in summary["outage_in_file_s"])
    index = [i for i, b in enumerate(blobs) if cut <= recorded_at(b)[0] < restored]
    lo, hi = max(index[0] - 1, 0), min(index[-1] + 1, len(blobs) - 1)
    window = pts[sum(decoded[:lo]) : sum(decoded[: hi + 1])]
    holes = [
        round((a - pts[0]) * seconds, 2)
        for a, b in zip(window, window[1:], strict=False)
        if b - a > 1.5 * interval
    ]
    assert not holes, f"hole(s) across the outage at {holes} s into the video"
    assert not summary["holes_across_outage"]
    assert "across the outage:             continuous" in stdout
    duration = (pts[-1] - pts[0] + interval) * seconds
    assert abs(duration - summary["mp4"][0]["duration_s"]) < interval * seconds


def test_the_stills_are_the_jpegs_in_redis(kept_demo, store):
    _, summary, footage = kept_demo
    _, _, client = store
    keys = sorted(client.keys("image:*"))
    assert summary["stills_stored"] == len(keys) > 0
    exported = sorted((footage / "stills").glob("*.jpg"))
    assert [p.name for p in exported] == [
        k.decode().replace(":", "-") + ".jpg" for k in keys[-len(exported) :]
    ], "the newest stills"
    for path, key in zip(exported, keys[-len(exported) :], strict=True):
        assert path.read_bytes() == client.hget(key, "image_data")
        with av.open(io.BytesIO(path.read_bytes()), format="mjpeg") as jpeg:
            assert next(jpeg.decode(video=0)).width == 640
