"""Segment names: UTC, sortable, unique even when the clock jumps back.

A Pi has no real-time clock, so the wall clock can start wrong and be corrected
later. The name therefore carries, besides the start time, the kernel's boot id
and a sequence number persisted in the spool: two segments never share a name.

    local file:  20261121T235109.123Z-1a2b3c4d-000042.ts
    blob:        <device>/2026-11-21/20261121T235109.123Z-1a2b3c4d-000042.ts
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

SEGMENT_RE = re.compile(
    r"^(?P<stamp>\d{8}T\d{6}\.\d{3}Z)-(?P<boot>[0-9a-f]{8})-(?P<seq>\d{6,})\.ts$"
)
STAMP_FORMAT = "%Y%m%dT%H%M%S"


def boot_id() -> str:
    """Eight hex digits that differ on every boot (the kernel's random boot id)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")[:8]
    except OSError:  # not Linux: a random id per process is unique enough
        import secrets

        return secrets.token_hex(4)


def format_stamp(moment: datetime) -> str:
    moment = moment.astimezone(UTC)
    return f"{moment:{STAMP_FORMAT}}.{moment.microsecond // 1000:03d}Z"


def parse_stamp(stamp: str) -> datetime:
    return datetime.strptime(stamp, "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=UTC)


def iso(moment: datetime) -> str:
    """ISO 8601 UTC with milliseconds, the form used in metadata and state files."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class SegmentName:
    start: datetime
    boot: str
    seq: int

    @property
    def filename(self) -> str:
        return f"{format_stamp(self.start)}-{self.boot}-{self.seq:06d}.ts"

    def blob_name(self, device: str) -> str:
        return f"{device}/{self.start:%Y-%m-%d}/{self.filename}"

    @classmethod
    def parse(cls, filename: str) -> SegmentName | None:
        match = SEGMENT_RE.match(Path(filename).name)
        if not match:
            return None
        return cls(parse_stamp(match["stamp"]), match["boot"], int(match["seq"]))
