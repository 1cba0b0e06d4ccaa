"""A day of segments in a container, fast: thousands of blobs with the metadata (and,
with a key, the signed records) a device uploads, and small bodies.

For measuring what reads only the listing (``hatcam view``'s timeline): the bodies are
not video, so nothing here may be downloaded and decoded. Two forms: whole block blobs
(as a device without the append right uploads), or live (``live=True``): an append blob
and its closing record ``<blob>.end`` per segment, and the day's index of closing records
(``<device>/<day>/index.jsonl``), as the uploader sends them.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

from hatcam import proof
from hatcam.segment import (
    ClosingRecord,
    Contents,
    SegmentName,
    SegmentRecord,
    closing_record_name,
    day_index_of,
    index_line,
    iso,
    open_blob_metadata,
)

DAY_OF_10S = 8640  # 24 h of 10 s segments
BODY = b"\x47\x1f\xff\x10" + b"\xff" * 184  # one null TS packet
APPEND_MAX = 4 * 1024 * 1024  # the most one Append Block takes


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
    live: bool = False,
    unindexed: frozenset[int] = frozenset(),
    unfinished: int = 0,
) -> list[str]:
    """``count`` segments of one camera daemon lifetime from ``day`` (UTC midnight on),
    ``seconds`` each, back to back; signed and chained with ``key`` when given. Returns
    the blob names, in order.

    ``live``: append blobs with their closing records and the day index (its lines in
    segment order, sent in appends of up to 4 MiB), leaving out of the index the segments
    numbered in ``unindexed``; the last ``unfinished`` segments are still open (an append
    blob with no closing record, in no index)."""
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
        made.append((name.blob_name(device), record))

    def upload(item):
        blob, record = item
        client.upload_blob(blob, BODY, metadata=record.to_blob_metadata(), overwrite=True)

    def upload_live(item):
        (blob, record), finished = item
        c = record.contents
        meta = open_blob_metadata(device, record.start, True, c.width, c.height)
        handle = client.get_blob_client(blob)
        handle.create_append_blob(metadata=meta)
        handle.append_block(BODY)
        if finished:
            closing = ClosingRecord(record, len(BODY), hashlib.md5(BODY).hexdigest())
            client.upload_blob(
                closing_record_name(blob),
                closing.to_json(),
                metadata=closing.to_metadata(),
                overwrite=True,
            )

    with ThreadPoolExecutor(jobs) as pool:
        if not live:
            list(pool.map(upload, made))
            return [blob for blob, _ in made]
        done = len(made) - unfinished
        list(pool.map(upload_live, [(item, k < done) for k, item in enumerate(made)]))
    lines: dict[str, list[bytes]] = {}  # by day index: each day folder has its own
    for k, (blob, record) in enumerate(made[:done]):
        if k not in unindexed:
            closing = ClosingRecord(record, len(BODY), hashlib.md5(BODY).hexdigest())
            lines.setdefault(day_index_of(blob), []).append(index_line(blob, closing))
    for index, found in lines.items():
        append_index(client, index, found)
    return [blob for blob, _ in made]


def append_index(client, index: str, lines: list[bytes]) -> None:
    """``lines`` appended to the day index ``index`` (created if missing), in as few
    appends as fit."""
    handle = client.get_blob_client(index)
    if not handle.exists():
        handle.create_append_blob()
    batch: list[bytes] = []
    size = 0
    for line in lines:
        if batch and size + len(line) > APPEND_MAX:
            handle.append_block(b"".join(batch))
            batch, size = [], 0
        batch.append(line)
        size += len(line)
    if batch:
        handle.append_block(b"".join(batch))
