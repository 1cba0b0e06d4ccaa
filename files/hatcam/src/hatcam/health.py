"""A camera's health as it publishes it to Redis: the contract between the camera daemon
(device/health.py writes it) and ``hatcam view`` (reads it).

One key per device, ``hatcam:health:<device>``, holding this record as JSON, written
with ``SET ... EX`` so it disappears by itself: a camera whose key has expired is
silent (dead, off the network or without power), with no one having to say so.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

KEY_PREFIX = "hatcam:health:"
TTL_SECONDS = 15  # three missed publications and the camera shows silent
PUBLISH_EVERY = 5.0


def key_of(device: str) -> str:
    return f"{KEY_PREFIX}{device}"


@dataclass(frozen=True)
class Health:
    """What ``hatcam status`` shows, in short: enough to tell whether a camera is well."""

    device: str
    recording: bool
    at_risk_s: float  # seconds captured but not yet in the cloud
    queue: int  # closed segments waiting to upload
    last_upload: str | None  # ISO 8601 UTC
    free_mb: float
    last_error: str | None
    version: str
    published: str  # ISO 8601 UTC, when this record was written

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> Health:
        """Raises ValueError when the text is not a health record."""
        try:
            data = json.loads(text)
            known = {f.name for f in fields(cls)}
            return cls(**{k: v for k, v in data.items() if k in known})
        except (TypeError, AttributeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not a health record ({exc})") from None
