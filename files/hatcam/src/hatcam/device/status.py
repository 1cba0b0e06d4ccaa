"""Small JSON state files the daemons write, and ``hatcam status`` reads."""

from __future__ import annotations

import contextlib
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

from ..files import write_atomic
from ..segment import SegmentName, iso, parse_iso
from .watchdog import read_restarts


class StateFile:
    def __init__(self, path: Path):
        self.path = Path(path)

    def write(self, state: dict) -> None:
        # Not fsync'd: it is rewritten often and losing it to a power cut costs nothing.
        # Best effort: a full card must not stop a daemon over its status report.
        state = {**state, "pid": os.getpid(), "updated": iso(datetime.now(UTC))}
        with contextlib.suppress(OSError):
            write_atomic(self.path, json.dumps(state, indent=1).encode(), durable=False)

    def read(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None


def age(stamp: str | None) -> str:
    if not stamp:
        return "never"
    try:
        moment = parse_iso(stamp)
    except ValueError:
        return stamp
    seconds = time.time() - moment.timestamp()
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if abs(seconds) >= size:
            return f"{seconds / size:.1f} {unit} ago"
    return f"{seconds:.0f} s ago"


def at_risk_seconds(spool, uploader: dict | None) -> float:
    """Seconds captured but not yet confirmed by the cloud: the unconfirmed part of the
    open segment and of every queued one (bytes not yet appended, as a share of each)."""
    sent = (uploader or {}).get("sent") or {}
    total = 0.0
    for path in sorted(spool.recording.glob("*.ts")):
        name = SegmentName.parse(path.name)
        with contextlib.suppress(OSError):
            st = path.stat()
            span = max(0.0, st.st_mtime - name.start.timestamp()) if name else 0.0
            if st.st_size:
                total += span * max(0, st.st_size - sent.get(path.name, 0)) / st.st_size
    for path in spool.ready_segments():
        with contextlib.suppress(OSError, ValueError, KeyError):
            meta = json.loads(spool.metadata_path(path).read_text())
            span = (parse_iso(meta["end"]) - parse_iso(meta["start"])).total_seconds()
            size = path.stat().st_size
            if size:
                total += span * max(0, size - sent.get(path.name, 0)) / size
    return round(total, 1)


def live_line(uploader: dict | None) -> str:
    if not uploader:
        return "unknown (uploader never ran?)"
    if uploader.get("live") is False:
        return "off (SAS without a: segments go up whole when they close)"
    if uploader.get("stalled_since"):
        return f"stalled since {iso(datetime.fromtimestamp(uploader['stalled_since'], UTC))}"
    if uploader.get("last_append"):
        return f"flowing (last append {time.time() - uploader['last_append']:.0f} s ago)"
    return "waiting (nothing appended yet)"


def report(spool) -> dict:
    """Everything ``hatcam status`` shows, as a dict (also printed as JSON with --json)."""
    queued, queued_bytes, oldest = spool.queue_summary()
    uploader = StateFile(spool.state / "uploader.json").read()
    return {
        "footage_at_risk_s": at_risk_seconds(spool, uploader),
        "live": live_line(uploader),
        "queue_segments": queued,
        "queue_mb": round(queued_bytes / 1e6, 1),
        "oldest_queued": oldest,
        "free_disk_mb": round(spool.free_mb(), 1),
        "camera": StateFile(spool.state / "camera.json").read(),
        "camera_restarts": read_restarts(spool.state),
        "uploader": uploader,
    }


def camera_line(camera: dict, restarts: dict) -> str:
    """``recording (restarted 2 times, last at 14:32:10 after: camera stalled, ...)``"""
    if not camera:
        return "no state file (daemon never ran?)"
    line = camera.get("state", "unknown")
    if camera.get("reason"):
        line += f" ({camera['reason']})"
    count, events = restarts.get("count", 0), restarts.get("events") or []
    if count and events:
        last = events[-1]
        try:
            at = parse_iso(last["at"]).astimezone().strftime("%H:%M:%S")
        except (KeyError, ValueError):
            at = "?"
        line += (
            f" (restarted {count} time{'s' if count != 1 else ''}, last at {at},"
            f" {age(last.get('at'))}, after: {last.get('after', 'unknown')})"
        )
    return line + f", updated {age(camera.get('updated'))}"


def encoder_line(info: dict) -> str | None:
    """What records: backend, encoder, picamera2's version (from the camera's ``info``)."""
    if not info:
        return None
    backend = info.get("backend", "?")
    by = f"{backend} camera"
    if backend == "picamera2":
        by = f"picamera2 {info.get('picamera2', '?')}"
    return f"{info.get('encoder') or 'unknown encoder'}, {by}"


def render(info: dict) -> str:
    camera = info["camera"] or {}
    uploader = info["uploader"] or {}
    stills = camera.get("stills") or {}
    lines = [f"camera:        {camera_line(camera, info.get('camera_restarts') or {})}"]
    camera_info = camera.get("camera") or {}
    if encoder_line(camera_info):
        lines.append(f"encoder:       {encoder_line(camera_info)}")
    if camera_info.get("warning"):
        lines.append(f"WARNING:       {camera_info['warning']}")
    dropped, lost = camera.get("frames_dropped", 0), camera.get("camera_frames_dropped", 0)
    if dropped or lost:
        lines.append(
            f"frames lost:   {dropped + lost} this run ({dropped} not written: disk floor,"
            f" card refusing or too slow; {lost} dropped by the camera)"
        )
    lines += [
        f"queue:         {info['queue_segments']} segment(s), {info['queue_mb']} MB,"
        f" oldest {age(info['oldest_queued'])}",
        f"footage at risk: {info['footage_at_risk_s']:.0f} s (captured, not yet in the cloud)",
        f"live:          {info['live']}",
        f"last upload:   {age(uploader.get('last_upload'))}",
        f"last error:    {uploader.get('last_error') or 'none'}",
        f"free disk:     {info['free_disk_mb']:.0f} MB",
    ]
    if stills:
        lines.append(
            f"stills:        {stills.get('stored', 0)} stored, {stills.get('buffered', 0)}"
            f" waiting, Redis {'up' if stills.get('connected') else 'down'}"
            + (f" ({stills['last_error']})" if stills.get("last_error") else "")
        )
    if audio := camera.get("audio"):
        lines.append(f"sound:         {audio['state']} ({audio['device']}), {audio['gaps']} gap(s)")
    return "\n".join(lines)
