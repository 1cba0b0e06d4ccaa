"""A device's day from the blob listing alone: its segments, runs, gaps and proof ranges.

Built on fetch's listing (names, metadata, closing records: no blob body is read) and
fetch's record checks (a signed record names its device and segment, its signature
holds, the chain of records has no break). A record's bytes are not hashed here: that
needs the bytes, and ``hatcam fetch`` (or the export) does it.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

from azure.core.exceptions import AzureError, HttpResponseError, ResourceNotFoundError

from ..blob import explain
from ..fetch import listing, verify
from ..segment import (
    CLOSING_SUFFIX,
    DAY_INDEX,
    ClosingRecord,
    blob_end,
    day_index_name,
    iso,
    read_day_index,
)

VERIFIED, UNVERIFIED, MISSING = "verified", "unverified", "missing"
# An unfinished segment's end when nothing else tells it: bytes at the camera's default rate.
DEFAULT_BYTES_PER_SECOND = 4_000_000 / 8
AROUND = timedelta(hours=1)  # a moment's playlist: its run, at most this far either side


@dataclass
class Seg:
    """One segment as the view uses it: what to serve and where it sits in time."""

    blob: str
    start: datetime
    end: datetime
    frames: int | None
    live: bool  # still open: an append blob with no closing record yet (it may grow)
    size: int  # the bytes to serve (the device's: a closing record's length, whole packets)
    boot: str | None
    seq: int | None
    proof: str = UNVERIFIED

    @property
    def seconds(self) -> float:
        return max(0.001, (self.end - self.start).total_seconds())

    def to_dict(self) -> dict:
        return {
            "blob": self.blob,
            "start": iso(self.start),
            "end": iso(self.end),
            "frames": self.frames,
            "live": self.live,
        }


@dataclass
class Run:
    segments: list[Seg]

    @property
    def start(self) -> datetime:
        return self.segments[0].start

    @property
    def end(self) -> datetime:
        return self.segments[-1].end

    def to_dict(self) -> dict:
        return {"start": iso(self.start), "end": iso(self.end), "segments": len(self.segments)}


def day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time(), tzinfo=UTC)
    return start, start + timedelta(days=1)


def segs_of(remotes: list[listing.Remote]) -> list[Seg]:
    """The view's segments of fetch's remotes (one device, in time order). An unfinished
    segment's end is estimated from its size at the rate of the one before it."""
    found: list[Seg] = []
    rate = DEFAULT_BYTES_PER_SECOND
    for remote in remotes:
        if remote.legacy:
            continue
        record = remote.record
        frames = record.contents.frames if record else None
        end = remote.end
        if end is None or end <= remote.start:
            end = remote.start + timedelta(seconds=max(0.04, remote.size / rate))
        elif remote.size:
            rate = remote.size / max(0.04, (end - remote.start).total_seconds())
        found.append(
            Seg(
                remote.name,
                remote.start,
                end,
                frames,
                remote.kind == listing.UNFINISHED,
                remote.size,
                remote.boot,
                remote.seq,
            )
        )
    return found


def max_gap(segs: list[Seg]) -> float:
    """About two segment lengths, as fetch's stitch splits files."""
    return 2 * statistics.median(s.seconds for s in segs) + 0.5 if segs else 0.0


def runs_of(segs: list[Seg]) -> list[Run]:
    """Continuous runs: one camera daemon lifetime (same boot, rising sequence, so the
    capture clock runs on across segments) with no gap longer than ``max_gap``."""
    limit = max_gap(segs)
    runs: list[Run] = []
    for seg in segs:
        prev = runs[-1].segments[-1] if runs else None
        continued = (
            prev is not None
            and seg.boot is not None
            and seg.boot == prev.boot
            and (seg.seq or 0) > (prev.seq or 0)
            and (seg.start - prev.end).total_seconds() <= limit
        )
        if continued:
            runs[-1].segments.append(seg)
        else:
            runs.append(Run([seg]))
    return runs


def gaps_of(runs: list[Run]) -> list[dict]:
    return [
        {
            "start": iso(a.end),
            "end": iso(b.start),
            "seconds": round(max(0.0, (b.start - a.end).total_seconds()), 3),
        }
        for a, b in zip(runs, runs[1:], strict=False)
    ]


def judge(
    ring, device: str, remotes: list[listing.Remote], segs: list[Seg], checked: dict | None = None
) -> list[dict]:
    """Proof ranges: verified (a valid signed record of this segment), unverified (no key
    for the device, no valid record, or unfinished: its checkpoints are inside the file),
    missing (a break in the chain of records: segments that never reached the cloud).
    ``checked`` remembers each blob's signature check across calls (by name and etag)."""
    checked = {} if checked is None else checked
    if len(checked) > 200_000:  # a few weeks of 10 s segments: start again
        checked.clear()
    by_name = {seg.blob: seg for seg in segs}
    records = []
    hashes: dict[int, str] = {}  # the records' hashes, by id: for the chain check too
    if device in ring.devices():
        signed = [
            r
            for r in remotes
            if r.name in by_name and r.proof is not None and r.kind != listing.UNFINISHED
        ]
        # A blob's etag changes with its metadata; a record found valid vouches for the
        # one its prev names (one signature checked per chain: verify.signed_records).
        vouched = {str(r.proof.get("prev")) for r in signed if checked.get((r.name, r.etag))}
        todo = [(r.name, r.filename, r.proof) for r in signed if (r.name, r.etag) not in checked]
        found = verify.signed_records(ring, device, todo, vouched, hashes) if todo else {}
        for remote in signed:
            known = (remote.name, remote.etag)
            if known not in checked:
                checked[known] = found[remote.name]
            if checked[known]:
                by_name[remote.name].proof = VERIFIED
                records.append((remote.name, remote.proof))
    ranges: list[dict] = []
    for seg in segs:
        last = ranges[-1] if ranges else None
        if last is not None and last["state"] == seg.proof and last["_end"] >= seg.start:
            last["_end"] = max(last["_end"], seg.end)
            continue
        ranges.append({"_start": seg.start, "_end": seg.end, "state": seg.proof})
    for gap in verify.chain(device, records, hashes) if records else []:
        ranges.append({"_start": gap.start, "_end": gap.end, "state": MISSING})
    ranges.sort(key=lambda r: r["_start"])
    return [{"start": iso(r["_start"]), "end": iso(r["_end"]), "state": r["state"]} for r in ranges]


def answer_of(
    device: str, on: date, remotes: list[listing.Remote], ring, checked_sigs, checked: bool
) -> dict:
    """The ``/api/timeline`` answer of a day's remotes; ``checked``: they are the full
    listing's (else a quick answer from the day index, to be checked)."""
    segs = segs_of(remotes)
    proof = judge(ring, device, remotes, segs, checked_sigs)
    runs = runs_of(segs)
    return {
        "device": device,
        "day": on.isoformat(),
        "segments": [s.to_dict() for s in segs],
        "runs": [r.to_dict() for r in runs],
        "gaps": gaps_of(runs),
        "proof": proof,
        "checked": checked,
    }


def listed_day(client, device: str, on: date, notes: list[str] | None) -> list[listing.Remote]:
    """The device's segments of one UTC day, from the full listing (the truth)."""
    since, until = day_bounds(on)
    return listing.list_device(Window(client, since, until), device, since, until, notes)


def day(client, device: str, on: date, ring, notes: list[str] | None = None, checked=None) -> dict:
    """The ``/api/timeline`` answer for one device and UTC day, from the full listing."""
    return answer_of(device, on, listed_day(client, device, on, notes), ring, checked, True)


# --- the quick answer: the day index, then the full listing to check it ----------------

INDEX_LIMIT = 64 * 1024 * 1024  # a day of 10 s segments is ~10 MB; past this, list instead


@dataclass
class Fixes:
    """What the last check of a day found its index got wrong, for the next quick answer
    of that day (today's is asked for again and again): blobs it names that are not
    there, finished segments it lacks, and those findings in words."""

    absent: set[str] = field(default_factory=set)
    lacked: list[listing.Remote] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


@dataclass
class Quick:
    """What a quick answer was made of, to check it against the day's full listing."""

    device: str
    on: date
    indexed: dict[str, listing.Remote]  # every segment the day index named
    listed: set[str]  # the segments the quick answer's own listings found (the tail's)
    garbage: int  # lines of the index that are not this day's segments

    @property
    def index(self) -> str:
        return f"{DAY_INDEX} of {self.device} for {self.on.isoformat()}"


def _download_index(client, device: str, on: date, notes: list[str]) -> bytes | None:
    """The day index's bytes; None when there is none (or it cannot be read: noted,
    unless it is simply not there)."""
    name = day_index_name(device, on)
    try:
        down = client.get_blob_client(name).download_blob()
        if down.size > INDEX_LIMIT:
            notes.append(f"{name}: {down.size} bytes, too big to be a day index; listed instead")
            return None
        return down.readall()
    except ResourceNotFoundError:
        return None
    except HttpResponseError as exc:
        notes.append(f"{name}: not read ({explain(exc, 'download', 'r')}); listed instead")
        return None
    except AzureError:
        return None


def _index_etag(closing: ClosingRecord) -> str:
    """An index line's stand-in for an etag (the signature cache's key): what it says."""
    sig = (closing.record.proof or {}).get("sig", "")
    return f"index:{closing.md5}:{sig}"


def quick_day(
    client,
    device: str,
    on: date,
    ring,
    notes: list[str] | None = None,
    checked=None,
    fixes: Fixes | None = None,
) -> tuple[dict, Quick | None]:
    """The day's answer from its day index (one download), with the tail after its newest
    segment listed (the segments still open, or not indexed yet): ``"checked": false``,
    and what to check it with (``checked_day``); ``fixes``: what the last check of this
    day found. With no day index (or nothing in it), the full listing's answer and None."""
    notes = notes if notes is not None else []
    fixes = fixes or Fixes()
    since, until = day_bounds(on)
    body = _download_index(client, device, on, notes)
    if body is None:
        return day(client, device, on, ring, notes, checked), None
    found, garbage = read_day_index(body, f"{device}/{on:%Y-%m-%d}/")
    indexed = {}
    for blob, closing in found.items():
        remote = listing.finished_live(blob, closing, _index_etag(closing))
        if remote is not None and remote.device == device and remote.start < until:
            indexed[blob] = remote
    if not indexed:
        notes.extend(garbage_note(device, on, garbage))
        return day(client, device, on, ring, notes, checked), None
    # The tail: what started since the index's newest segment (a segment is at most SLACK
    # long), and a segment of the day before running into this one.
    newest = max(r.start for r in indexed.values())
    tail = max(since, newest - listing.SLACK)
    listed = listing.list_device(Window(client, newest, until), device, tail, until, notes)
    edge = since + timedelta(microseconds=1)
    listed += listing.list_device(Window(client, since, edge), device, since, edge, notes)
    merged = {name: r for name, r in indexed.items() if name not in fixes.absent}
    merged.update({r.name: r for r in fixes.lacked})
    merged.update({r.name: r for r in listed})  # the listing's word wins
    remotes = sorted(merged.values(), key=lambda r: (r.start, r.boot or "", r.seq or 0))
    notes.extend(fixes.problems or garbage_note(device, on, garbage))
    quick = Quick(device, on, indexed, {r.name for r in listed}, garbage)
    return answer_of(device, on, remotes, ring, checked, False), quick


def garbage_note(device: str, on: date, garbage: int) -> list[str]:
    if not garbage:
        return []
    return [
        f"{DAY_INDEX} of {device} for {on.isoformat()}: {garbage} garbage line(s) skipped "
        "(not this day's segments)"
    ]


def checked_day(
    client, device: str, on: date, ring, quick: Quick, notes: list[str] | None = None, checked=None
) -> tuple[dict, Fixes]:
    """The day's answer from the full listing (``"checked": true``), with a line in
    ``notes`` for each way the quick answer's day index differed from it; and those
    differences, for the next quick answer of the day."""
    notes = notes if notes is not None else []
    remotes = listed_day(client, device, on, notes)
    listed = {r.name: r for r in remotes}
    fixes = Fixes()
    fixes.absent = {name for name in quick.indexed if name not in listed}
    if fixes.absent:
        fixes.problems.append(
            f"{quick.index} names {len(fixes.absent)} segment(s) that are not in the "
            f"container (left out), e.g. {min(fixes.absent)}"
        )
    differ = [
        name
        for name, mine in quick.indexed.items()
        if name in listed
        and (listed[name].kind, listed[name].size, listed[name].md5, listed[name].proof)
        != (mine.kind, mine.size, mine.md5, mine.proof)
    ]
    if differ:
        fixes.problems.append(
            f"{quick.index}: {len(differ)} line(s) differ from the segments' closing records "
            f"(the closing records kept), e.g. {differ[0]}"
        )
    fixes.lacked = [
        r
        for r in remotes
        if r.kind == listing.LIVE and r.name not in quick.indexed and r.name not in quick.listed
    ]
    if fixes.lacked:
        fixes.problems.append(
            f"{quick.index} lacks {len(fixes.lacked)} finished segment(s) that are in the "
            f"container (shown now), e.g. {fixes.lacked[0].name}"
        )
    fixes.problems.extend(garbage_note(device, on, quick.garbage))
    notes.extend(fixes.problems)
    return answer_of(device, on, remotes, ring, checked, True), fixes


class Window:
    """A client whose listing of a device's day folder covers only the ten-minute buckets
    that can hold segments overlapping [since, until): a segment's name begins with its
    start (``YYYYMMDDTHHM...``), and fetch's listing allows segments up to SLACK long.
    A day of 10 s segments is 8,640 blobs; following live needs the last few of them."""

    BUCKET = timedelta(minutes=10)

    def __init__(self, client, since: datetime, until: datetime):
        self.client, self.since, self.until = client, since, until

    def __getattr__(self, name):
        return getattr(self.client, name)

    def list_blobs(self, name_starts_with: str | None = None, include=None, **kw):
        prefix = name_starts_with or ""
        folder = prefix.rstrip("/").rpartition("/")[2]
        try:
            first = datetime.combine(date.fromisoformat(folder), time(), tzinfo=UTC)
        except ValueError:
            first = None
        if first is None or not prefix.endswith("/"):
            yield from self.client.list_blobs(name_starts_with=prefix, include=include, **kw)
            return
        lo = max(first, self.since - listing.SLACK)
        hi = min(first + timedelta(days=1), self.until)
        if lo <= first and hi >= first + timedelta(days=1):  # the whole day: one listing
            yield from self.client.list_blobs(name_starts_with=prefix, include=include, **kw)
            return
        for bucket in buckets(first, lo, hi):
            yield from self.client.list_blobs(
                name_starts_with=prefix + bucket, include=include, **kw
            )


def buckets(first: datetime, lo: datetime, hi: datetime) -> list[str]:
    """The fewest name prefixes (``YYYYMMDDTHHM``: ten minutes, ``YYYYMMDDTHH``: an hour,
    ``YYYYMMDDTH``: ten hours) that cover the ten-minute buckets from ``lo``'s to the one
    holding ``hi`` (exclusive) of the day that begins at ``first``: the rest of a day is a
    few listings, not one per ten minutes."""
    at = lo.replace(minute=lo.minute - lo.minute % 10, second=0, microsecond=0)
    end = min(first + timedelta(days=1), hi)
    if end.minute % 10 or end.second or end.microsecond:  # up to the bucket's end
        end = end.replace(minute=end.minute - end.minute % 10, second=0, microsecond=0)
        end += Window.BUCKET
    found = []
    while at < end:
        hours = timedelta(hours=min(10, 24 - at.hour))
        if at.minute == 0 and at.hour % 10 == 0 and at + hours <= end:
            found.append(f"{at:%Y%m%dT}{at.hour // 10}")
            at += hours
        elif at.minute == 0 and at + timedelta(hours=1) <= end:
            found.append(f"{at:%Y%m%dT%H}")
            at += timedelta(hours=1)
        else:
            found.append(f"{at:%Y%m%dT%H}{at.minute // 10}")
            at += Window.BUCKET
    return found


def recent(client, device: str, now: datetime, notes: list[str] | None = None) -> list[Seg]:
    """The device's segments of the last two minutes, or, when it has been quiet since,
    of the two minutes before its newest blob ended: enough for the newest run's edge."""
    for edge in (now, None):
        if edge is None:
            edge = newest(client, device, now)
            if edge is None:
                return []
        since, until = edge - timedelta(minutes=2), edge + timedelta(minutes=1)
        found = listing.list_device(Window(client, since, until), device, since, until, notes)
        if found:
            return segs_of(found)
    return []


def around(client, device: str, at: datetime, notes: list[str] | None = None) -> Run | None:
    """The continuous run that holds ``at``, within an hour either side of it (a day's
    run is thousands of segments; a player needs the ones near where it plays); None:
    nothing was recorded then."""
    since, until = at - AROUND, at + AROUND
    found = listing.list_device(Window(client, since, until), device, since, until, notes)
    for run in runs_of(segs_of(found)):
        if run.start <= at < run.end:
            return run
    return None


def _newest_end(props_list) -> datetime | None:
    """The latest end among listed blobs: a live blob's from its closing record when it
    has one, else when it was last appended to (it may be growing now)."""
    listed = list(props_list)
    cut = len(CLOSING_SUFFIX)
    closing = {p.name[:-cut]: p for p in listed if p.name.endswith(CLOSING_SUFFIX)}
    ends = [
        blob_end(closing.get(p.name, p).metadata or {}) or p.last_modified
        for p in listed
        if not p.name.endswith(CLOSING_SUFFIX)
    ]
    ends = [e.astimezone(UTC) for e in ends if e is not None]
    return max(ends) if ends else None


def newest(client, device: str, now: datetime) -> datetime | None:
    """When the device's newest blob ends (its record's end, else when it was last
    appended to): the newest day folder, then its hours from the last, one listing each,
    so a day of 8,640 blobs is not listed whole for one time."""
    days = []
    for item in client.walk_blobs(name_starts_with=f"{device}/", delimiter="/"):
        try:
            days.append(date.fromisoformat(item.name.rstrip("/").rpartition("/")[2]))
        except ValueError:
            continue
    for on in sorted(days, reverse=True)[:2]:
        last = now.hour if on == now.date() else 23
        for hour in range(min(23, max(0, last + 1)), -1, -1):
            prefix = f"{device}/{on:%Y-%m-%d}/{on:%Y%m%d}T{hour:02d}"
            found = _newest_end(client.list_blobs(name_starts_with=prefix, include=["metadata"]))
            if found is not None:
                return found
    return None
