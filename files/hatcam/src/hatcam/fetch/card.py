"""Footage straight off a mounted SD card: the camera's spool, read in place.

    ready/      closed segments, each with its sidecar ``<name>.json`` (record + proof)
    kept/       segments whose cloud copy someone else appended to, kept for good
    recording/  the segment that was open: after a crash or a power cut, the bytes that
                reached the card, with no sidecar; it verifies up to its last checkpoint

Each becomes a ``listing.Remote`` with ``local`` set, so fetch stitches and verifies it
exactly as it would the cloud's copy, and nothing is downloaded.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from ..segment import SegmentName, SegmentRecord
from .listing import UNFINISHED, WHOLE, Remote, proof_of

FOLDERS = ("ready", "kept", "recording")


def spool_root(path: Path) -> Path | None:
    """The spool on a card: ``path`` itself, or the camera's default place under it."""
    for candidate in (path, path / "var/lib/hatcam/spool", path / "spool"):
        if any((candidate / folder).is_dir() for folder in FOLDERS):
            return candidate
    return None


def _sidecar(path: Path) -> dict | None:
    try:
        data = json.loads(path.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _device(sidecar: dict | None, proof: dict | None, fallback: str | None) -> str | None:
    for source in (sidecar, proof):
        if source and isinstance(source.get("device"), str):
            return source["device"]
    return fallback


def _record(sidecar: dict | None) -> SegmentRecord | None:
    if sidecar is None:
        return None
    try:
        record = SegmentRecord.from_sidecar(sidecar)
    except (KeyError, ValueError, TypeError):
        return None
    return None if record.contents.width is None or record.damaged else record


def list_card(
    root: Path, devices: list[str] | None, since: datetime | None, until: datetime
) -> dict[str, list[Remote]]:
    """The card's segments in range, per device, oldest first."""
    from ..proof import checkpoints

    found: dict[str, list[Remote]] = {}
    named = list(devices or [])
    # A segment a crash left in recording/ has no sidecar: it is the card's camera's.
    owners = {
        data["device"]
        for path in (root / "ready").glob("*.json")
        if (data := _sidecar(path)) and isinstance(data.get("device"), str)
    }
    fallback = named[0] if len(named) == 1 else (next(iter(owners)) if len(owners) == 1 else None)
    for folder in FOLDERS:
        for path in sorted((root / folder).glob("*.ts")):
            name = SegmentName.parse(path.name)
            size = path.stat().st_size
            if name is None or size == 0:
                continue
            sidecar = _sidecar(path) if folder != "recording" else None
            proof = proof_of(sidecar) if sidecar else None
            if folder == "recording":
                marks = checkpoints(path)
                proof = marks[-1][1] if marks else None
            device = _device(sidecar, proof, fallback)
            if not device or (named and device not in named):
                continue
            record = _record(sidecar)
            end = record.end if record else None
            if name.start >= until or (since is not None and (end or name.start) < since):
                continue
            remote = Remote(
                f"{device}/{name.start:%Y-%m-%d}/{path.name}",
                device,
                name.start,
                size,
                None,
                "",
                end,
                name.boot,
                name.seq,
                record=record,
                kind=UNFINISHED if folder == "recording" else WHOLE,
                proof=None if folder == "recording" else proof,
                local=path,
            )
            found.setdefault(device, []).append(remote)
    for remotes in found.values():
        remotes.sort(key=lambda r: (r.start, r.boot or "", r.seq or 0))
    return found
