"""A day of segments in a container, fast: thousands of blobs with the metadata (and,
with a key, the signed records) a device uploads, and small bodies.

For measuring what reads only the listing (``hatcam view``'s timeline): the bodies are
not video, so nothing here may be downloaded and decoded.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

from hatcam import proof
from hatcam.segment import Contents, SegmentName, SegmentRecord, iso

DAY_OF_10S = 8640  # 24 h of 10 s segments
BODY = b"\x47\x1f\xff\x10" + b"\xff" * 184  # one null TS packet


def day_of_segments(
    client,
    device: str,
    day: datetime,
    count: int = DAY_OF_10S,
    seconds: float = 10.0,
    key: proof.DeviceKey | None = None,
    boot: str = "0badcafe",
    fps: int = 30,
    jobs: int = 16,
) -> list[str]:
    """``count`` segments of one camera daemon lifetime from ``day`` (UTC midnight on),
    ``seconds`` each, back to back; signed and chained with ``key`` when given. Returns
    the blob names, in order."""
    start = day.astimezone(UTC)
    frames = round(seconds * fps)
    ticks = round(90_000 / fps)
    digest = hashlib.sha256(BODY).hexdigest()
    made, prev = [], ""
    for k in range(count):
        begin = start + timedelta(seconds=seconds * k)
        name = SegmentName(begin, boot, k)
        first = 90_000 + round(k * seconds * 90_000)
        contents = Contents(frames, first, first + (frames - 1) * ticks, 320, 240)
        signed = None
        if key is not None:
            signed = key.sign(
                {
                    "kind": "segment",
                    "device": device,
                    "boot": boot,
                    "seq": k,
                    "name": name.filename,
                    "start": iso(begin),
                    "end": iso(begin + timedelta(seconds=seconds)),
                    "frames": frames,
                    "first_pts": contents.first_pts,
                    "last_pts": contents.last_pts,
                    "size": len(BODY),
                    "sha256": digest,
                    "frames_sha256": digest,
                    "prev": prev,
                }
            )
            prev = proof.record_hash(signed)
        record = SegmentRecord(
            device,
            begin,
            begin + timedelta(seconds=seconds),
            contents,
            clock_synced=True,
            md5=hashlib.md5(BODY).hexdigest(),
            proof=signed,
        )
        made.append((name.blob_name(device), record.to_blob_metadata()))

    def upload(item):
        blob, meta = item
        client.upload_blob(blob, BODY, metadata=meta, overwrite=True)

    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(upload, made))
    return [blob for blob, _ in made]
