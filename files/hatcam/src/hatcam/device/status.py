"""Small JSON state files the daemons write, and ``hatcam status`` reads."""

from __future__ import annotations

import contextlib
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

from ..files import write_atomic
from ..segment import iso, parse_iso


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


def report(spool) -> dict:
    """Everything ``hatcam status`` shows, as a dict (also printed as JSON with --json)."""
    queued, queued_bytes, oldest = spool.queue_summary()
    return {
        "queue_segments": queued,
        "queue_mb": round(queued_bytes / 1e6, 1),
        "oldest_queued": oldest,
        "free_disk_mb": round(spool.free_mb(), 1),
        "camera": StateFile(spool.state / "camera.json").read(),
        "uploader": StateFile(spool.state / "uploader.json").read(),
    }


def render(info: dict) -> str:
    camera = info["camera"] or {}
    uploader = info["uploader"] or {}
    stills = camera.get("stills") or {}
    lines = [
        f"camera:        {camera.get('state', 'no state file (daemon never ran?)')}"
        + (f", updated {age(camera.get('updated'))}" if camera else ""),
        f"queue:         {info['queue_segments']} segment(s), {info['queue_mb']} MB,"
        f" oldest {age(info['oldest_queued'])}",
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
    return "\n".join(lines)
