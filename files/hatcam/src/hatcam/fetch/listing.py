"""Which blobs ``hatcam fetch`` wants: a device's segments in a time range.

Segments live at ``<device>/<YYYY-MM-DD>/<stamp>-<boot>-<seq>.ts`` (UTC date),
so a range is listed one date prefix at a time, never the whole container.
The original hat cam wrote raw ``YYYY-MM-DD HH:MM:SS.h264`` blobs (local time)
at the container root; they appear here as the pseudo-device ``legacy``.

A segment comes in one of three forms. A BLOCK blob with metadata: uploaded whole
when it closed (older devices, a SAS without the append right). An APPEND blob
with its closing record ``<blob>.end`` (a small block blob whose metadata is the
record plus ``length`` and ``md5``): sent live, then finished; only its first
``length`` bytes are the device's, anything after was appended by someone else.
An APPEND blob with no closing record: unfinished (the device was destroyed,
killed, or is still recording); nothing can verify it.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from pathlib import Path

from azure.storage.blob import BlobPrefix

from ..segment import (
    CLOSING_SUFFIX,
    ClosingRecord,
    Contents,
    SegmentName,
    SegmentRecord,
    blob_end,
    proof_of,
    segment_blob_of,
)

END_SUFFIX = CLOSING_SUFFIX  # the closing record of a live segment: <segment blob>.end
TS_PACKET = 188
TS_HEADER = 4  # of a TS packet cut off at the end: says whether it continued a frame
WHOLE, LIVE, UNFINISHED = "whole", "live", "unfinished"

LEGACY_DEVICE = "legacy"
LEGACY_RE = re.compile(r"^(\d{4}-\d{2}-\d{2}) (\d{2}):(\d{2}):(\d{2})\.h264$")
# A segment that opened before --since may still run into it (segments are at most 600 s).
SLACK = timedelta(minutes=10)
# Past this many days, one walk of the date folders is cheaper than a listing per day.
MAX_DAYS_BY_PREFIX = 62


@dataclass(frozen=True)
class Remote:
    """One blob to fetch, with what its name and listing say about it."""

    name: str
    device: str
    start: datetime  # UTC, from the name
    size: int  # bytes to download: the blob's, the record's length, or whole TS packets+
    md5: bytes | None  # what they must hash to (Content-MD5 or the record's); None: unknown
    etag: str
    end: datetime | None = None  # from the metadata, when the device set it
    boot: str | None = None
    seq: int | None = None
    # What the device recorded about the segment, from its metadata; None when incomplete
    # or marked damaged: then the file itself is inspected.
    record: SegmentRecord | None = field(default=None, compare=False)
    kind: str = WHOLE  # WHOLE, LIVE (append blob + closing record) or UNFINISHED
    stored: int | None = None  # the blob's own size, when it differs from ``size``
    # The device's signed record of the segment (hatcam.proof), read from the metadata
    # even when the rest of it is incomplete; None when there is none.
    proof: dict | None = field(default=None, compare=False)
    # A copy already on this computer (a segment on a mounted SD card): not downloaded.
    local: Path | None = field(default=None, compare=False)

    @property
    def append(self) -> bool:
        return self.kind != WHOLE

    @property
    def added(self) -> int:
        """Bytes appended after the device finished the segment (a finished live blob past
        its closing record's length, or any blob past its signed record's size)."""
        return max(0, (self.stored or 0) - self.size) if self.kind != UNFINISHED else 0

    @property
    def filename(self) -> str:
        """The segment's own file name: the same on the card and in the cloud."""
        return self.name.rpartition("/")[2]

    @property
    def legacy(self) -> bool:
        return self.device == LEGACY_DEVICE

    @property
    def contents(self) -> Contents | None:
        """What the file holds by the device's account (checked while stitching)."""
        return self.record.contents if self.record else None

    @property
    def md5_b64(self) -> str | None:
        return base64.b64encode(self.md5).decode() if self.md5 else None

    @property
    def cache_name(self) -> str:
        """Path under the cache: the blob's own name, without spaces or colons for legacy."""
        if self.legacy:
            return f"{LEGACY_DEVICE}/{self.start:%Y%m%dT%H%M%SZ}.h264"
        return self.name


def parse_when(text: str, *, end: bool, now: datetime | None = None) -> datetime:
    """``today``, ``yesterday``, ``now``, a date or an ISO 8601 time, as an aware UTC time.

    Times without an offset are this computer's local time. A bare date (or
    today/yesterday) means its first moment, or with ``end`` its last (the
    next midnight), so ``--since yesterday --until yesterday`` is all of it.
    """
    now = now or datetime.now(UTC)
    word = text.strip().lower()
    if word == "now":
        return now
    if word in ("today", "yesterday"):
        day = now.astimezone().date() - timedelta(days=word == "yesterday")
        return _day_edge(day, end)
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", word):
            return _day_edge(date.fromisoformat(word), end)
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: use today, yesterday, now, 2026-11-21, "
            "2026-11-21T08:30 or 2026-11-21T08:30+01:00"
        ) from None
    return moment.astimezone(UTC)  # naive means local time


def _day_edge(day: date, end: bool) -> datetime:
    day = day + timedelta(days=1) if end else day
    return datetime.combine(day, time()).astimezone(UTC)


def _md5(props) -> bytes | None:
    md5 = props.content_settings.content_md5 if props.content_settings else None
    return bytes(md5) if md5 else None


def _recorded(meta: dict) -> SegmentRecord | None:
    """The device's own account of a segment, if it gave a complete and sane one."""
    record = SegmentRecord.from_blob_metadata(meta)
    return None if record is None or record.damaged else record


def _signed_size(proof: dict | None, stored: int) -> int | None:
    """The bytes a signed record covers when the blob holds more (appended after)."""
    size = proof.get("size") if proof else None
    return size if isinstance(size, int) and 0 < size < stored else None


def _is_append(props) -> bool:
    kind = getattr(props, "blob_type", None)
    return str(getattr(kind, "value", kind)) == "AppendBlob"


@dataclass(frozen=True)
class Closing:
    """A live segment's closing record, read from the ``.end`` blob's metadata."""

    length: int
    md5: bytes
    record: SegmentRecord | None  # None when incomplete: then the file is inspected
    end: datetime | None
    proof: dict | None = None  # the device's signed record, when the closing record has one

    @classmethod
    def of(cls, full: ClosingRecord) -> Closing:
        """A complete closing record (its signed record was read with it)."""
        record = None if full.record.damaged else full.record
        return cls(full.length, bytes.fromhex(full.md5), record, full.record.end, full.record.proof)

    @classmethod
    def parse(cls, meta: dict[str, str]) -> Closing | None:
        """None when the record gives no usable length and MD5. A record that is otherwise
        incomplete (a recovered segment has no picture size) still verifies the bytes."""
        full = ClosingRecord.from_metadata(meta)
        if full is not None:
            return cls.of(full)
        try:
            length, md5 = int(meta["length"]), bytes.fromhex(meta["md5"])
        except (KeyError, ValueError, TypeError):
            return None
        if length < 0 or len(md5) != 16:
            return None
        return cls(length, md5, _recorded(meta), blob_end(meta), proof_of(meta))


def _segment(props, closing: Closing | None = None) -> Remote | None:
    device, _, rest = props.name.partition("/")
    name = SegmentName.parse(rest.rpartition("/")[2])
    if name is None:
        return None
    meta = props.metadata or {}
    common = {"boot": name.boot, "seq": name.seq}
    if not _is_append(props):
        proof = proof_of(meta)
        signed = _signed_size(proof, props.size)
        return Remote(
            props.name,
            device,
            name.start,
            signed or props.size,
            None if signed else _md5(props),  # the whole blob's MD5 no longer applies
            props.etag,
            blob_end(meta),
            record=_recorded(meta),
            stored=props.size if signed else None,
            proof=proof,
            **common,
        )
    if closing is not None:  # finished live: only the device's bytes, checked by its MD5
        return Remote(
            props.name,
            device,
            name.start,
            closing.length,
            closing.md5,
            props.etag,
            closing.end,
            record=closing.record,
            kind=LIVE,
            stored=props.size,
            proof=closing.proof,
            **common,
        )
    # Unfinished: every whole TS packet there is, and the header of a packet cut off
    # after them (it tells whether the last frame was cut: see stitch.whole_frames).
    whole = props.size - props.size % TS_PACKET
    if whole == 0:
        return None  # just opened: nothing to fetch yet
    return Remote(
        props.name,
        device,
        name.start,
        min(props.size, whole + TS_HEADER),
        None,
        props.etag,
        kind=UNFINISHED,
        stored=props.size,
        **common,
    )


@dataclass(frozen=True)
class _Indexed:
    """What ``_segment`` reads of a listed blob, for a segment known from elsewhere."""

    name: str
    etag: str
    size: int
    blob_type: str = "AppendBlob"
    metadata: dict = field(default_factory=dict)


def finished_live(blob: str, closing: ClosingRecord, etag: str) -> Remote | None:
    """The Remote the listing gives for a finished live segment (its append blob and its
    closing record ``<blob>.end``), from the closing record alone, as a day index line
    gives it (segment.read_day_index); the blob's own size is not known: taken as the
    closing record's length. None if ``blob`` is not a segment's name."""
    return _segment(_Indexed(blob, etag, closing.length), Closing.of(closing))


def _orphan_in_range(end_name: str, since, until) -> bool:
    name = SegmentName.parse(end_name[: -len(END_SUFFIX)].rpartition("/")[2])
    return name is not None and name.start < until and (since is None or name.start >= since)


def legacy_start(blob_name: str, zone: tzinfo | None) -> datetime | None:
    """The UTC start of a legacy blob, its name read as local time in ``zone``."""
    match = LEGACY_RE.match(blob_name)
    if not match:
        return None
    try:
        naive = datetime.fromisoformat(f"{match[1]}T{match[2]}:{match[3]}:{match[4]}")
    except ValueError:
        return None
    local = naive.replace(tzinfo=zone) if zone is not None else naive.astimezone()
    return local.astimezone(UTC)


def _legacy(props, zone: tzinfo | None) -> Remote | None:
    start = legacy_start(props.name, zone)
    if start is None:
        return None
    return Remote(props.name, LEGACY_DEVICE, start, props.size, _md5(props), props.etag)


def discover(client) -> tuple[list[str], bool]:
    """Device folders at the top of the container, and whether legacy blobs sit there."""
    devices, legacy = [], False
    for item in client.walk_blobs(delimiter="/"):
        if isinstance(item, BlobPrefix):
            devices.append(item.name.rstrip("/"))
        elif LEGACY_RE.match(item.name):
            legacy = True
    return sorted(devices), legacy


def _days(first: date, last: date) -> list[date]:
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


def _device_prefixes(client, device: str, since: datetime | None, until: datetime) -> list[str]:
    first = (since - SLACK).date() if since else None
    last = until.date()
    if first is not None and (last - first).days <= MAX_DAYS_BY_PREFIX:
        return [f"{device}/{day:%Y-%m-%d}/" for day in _days(first, last)]
    prefixes = []
    for item in client.walk_blobs(name_starts_with=f"{device}/", delimiter="/"):
        if not isinstance(item, BlobPrefix):
            continue
        try:
            day = date.fromisoformat(item.name.rstrip("/").rpartition("/")[2])
        except ValueError:
            continue
        if (first is None or day >= first) and day <= last:
            prefixes.append(item.name)
    return prefixes


def _overlaps(remote: Remote, since: datetime | None, until: datetime) -> bool:
    end = remote.end or remote.start
    return remote.start < until and (since is None or end >= since)


def list_device(
    client,
    device: str,
    since: datetime | None,
    until: datetime,
    notes: list[str] | None = None,
) -> list[Remote]:
    """A device's segments in range; ``notes`` gets a line per closing record that is
    unreadable or has no segment."""
    notes = notes if notes is not None else []
    found = []
    for prefix in _device_prefixes(client, device, since, until):
        blobs, ends = [], {}
        for props in client.list_blobs(name_starts_with=prefix, include=["metadata"]):
            segment = segment_blob_of(props.name)
            if segment is not None:
                ends[segment] = props
            else:
                blobs.append(props)
        names = {props.name for props in blobs}
        for props in blobs:
            closing = None
            end = ends.get(props.name)
            if end is not None and _is_append(props):
                closing = Closing.parse(end.metadata or {})
                if closing is None:
                    notes.append(
                        f"{end.name}: closing record without a length and MD5; "
                        f"{props.name} treated as unfinished"
                    )
            remote = _segment(props, closing)
            if remote is not None and _overlaps(remote, since, until):
                found.append(remote)
        for end_name in sorted(set(ends) - names):
            if _orphan_in_range(end_name + END_SUFFIX, since, until):
                notes.append(f"{end_name}{END_SUFFIX}: closing record without its segment")
    return sorted(found, key=lambda r: (r.start, r.boot or "", r.seq or 0))


def list_legacy(
    client, since: datetime | None, until: datetime, zone: tzinfo | None
) -> list[Remote]:
    """Legacy blobs starting in the range (their length is unknown until downloaded)."""
    if since is None or (until - since).days > MAX_DAYS_BY_PREFIX:
        listings = [client.walk_blobs(delimiter="/")]
    else:
        local = (since - SLACK).astimezone(zone), until.astimezone(zone)
        days = _days(local[0].date(), local[1].date())
        listings = [client.list_blobs(name_starts_with=f"{day:%Y-%m-%d} ") for day in days]
    found = []
    for listing in listings:
        for props in listing:
            if isinstance(props, BlobPrefix):
                continue
            remote = _legacy(props, zone)
            if remote is None or remote.start >= until:
                continue
            if since is None or remote.start >= since:
                found.append(remote)
    return sorted(found, key=lambda r: r.start)


def select(
    client,
    devices: list[str] | None,
    since: datetime | None,
    until: datetime,
    zone: tzinfo | None,
    notes: list[str] | None = None,
) -> dict[str, list[Remote]]:
    """Blobs in range per device (every device, legacy included, when none is named);
    ``notes`` as in ``list_device``."""
    if not devices:
        names, has_legacy = discover(client)
        devices = names + ([LEGACY_DEVICE] if has_legacy else [])
    chosen = {}
    for device in dict.fromkeys(devices):
        if device == LEGACY_DEVICE:
            chosen[device] = list_legacy(client, since, until, zone)
        else:
            chosen[device] = list_device(client, device, since, until, notes)
    return chosen
