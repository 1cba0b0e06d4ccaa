"""Each segment checked against the device's signed record, and the records' chain.

A segment is stitched when its record is signed by its device's key, names this
segment, and the bytes hash to it (``verified``); when it is a live segment the device
never finished and its last checkpoint inside the file verifies the bytes up to it
(``checkpoint``: only that prefix is stitched); or when nothing could sign it: a device
without a registered key, footage from before its key (older than its first record),
legacy blobs (``unverified``). Left out of the MP4: bytes that differ from their record
(``altered``), a record whose signature does not hold (``bad_signature``) and, under a
device with a key, a segment with no valid record at all (``no_valid_record``: someone
else wrote it; stitched only with --include-unverified, and always reported).

The records of a device, in sequence order, each name the hash of the one before; a
record whose ``prev`` is not the hash of its predecessor is a break: segments are
missing, from the predecessor's end to this one's start.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from .. import proof
from ..segment import parse_iso

VERIFIED = "verified"
CHECKPOINT = "checkpoint"
UNVERIFIED = "unverified"
ALTERED = "altered"
BAD_SIGNATURE = "bad_signature"
NO_RECORD = "no_valid_record"
STITCHED = (VERIFIED, CHECKPOINT, UNVERIFIED)
# When the card and the cloud both hold a segment, the copy that proves more is used.
RANK = {VERIFIED: 3, CHECKPOINT: 2, UNVERIFIED: 1}
READ_SIZE = 1 << 20


@dataclass
class Verdict:
    status: str
    record: dict | None = None  # the signed record (or checkpoint) that vouches for it
    problem: str | None = None  # what is wrong, for the report
    size: int | None = None  # bytes of the file that record covers (a prefix: checkpoint)
    appended: int = 0  # bytes after the device's, cut off

    @property
    def stitched(self) -> bool:
        return self.status in STITCHED


@dataclass
class Missing:
    """A break in the chain: the segments recorded between two records are not here."""

    device: str
    after: str  # segment names either side
    before: str
    start: datetime  # the previous segment's end
    end: datetime  # this one's start
    after_record: dict = field(repr=False, default_factory=dict)
    before_record: dict = field(repr=False, default_factory=dict)

    @property
    def seconds(self) -> float:
        return max(0.0, (self.end - self.start).total_seconds())


def sha256_of(path: Path, length: int) -> str | None:
    """SHA-256 of the first ``length`` bytes of ``path``; None when it is shorter."""
    digest = hashlib.sha256()
    left = length
    with open(path, "rb") as fh:
        while left > 0:
            chunk = fh.read(min(READ_SIZE, left))
            if not chunk:
                return None
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def record_problem(
    ring: proof.KeyRing,
    record: dict,
    device: str,
    filename: str,
    kind: str = "segment",
    signature: bool = True,
) -> tuple[str, str] | None:
    """None when ``record`` is a valid signed record of this segment; else (status, why).
    Without ``signature`` its signature is not checked (its key still is): for a record
    a valid record's ``prev`` names (see ``signed_records``)."""
    if record.get("kind") != kind:
        return NO_RECORD, f"its record is not a {kind} record"
    problem = ring.problem(record) if signature else _key_problem(ring, record)
    if problem is not None:
        return BAD_SIGNATURE, f"record {problem}"
    if record.get("device") != device:
        return NO_RECORD, f"its record is {record.get('device')}'s, not {device}'s"
    if record.get("name") != filename:
        return NO_RECORD, f"its record is that of {record.get('name')}"
    return None


def _key_problem(ring: proof.KeyRing, record: dict) -> str | None:
    """``KeyRing.problem`` but for the signature itself: the key is known and its device's."""
    known = ring.keys.get(str(record.get("key")))
    if known is None:
        return f"signed by an unknown key ({record.get('key')})"
    if record.get("device") != known[0]:
        return f"signed by {known[0]}'s key, but names device {record.get('device')}"
    return None


def signed_records(
    ring: proof.KeyRing,
    device: str,
    records: list[tuple[str, str, dict]],
    vouched: set[str] | None = None,
    hashes: dict[int, str] | None = None,
) -> dict[str, bool]:
    """Which of (name, filename, record) are valid signed records of their segments, as
    ``record_problem`` says, with one Ed25519 verification per chain instead of one per
    record: a record's ``prev`` is the hash of the one before it (signature included), so
    a valid record vouches for the whole record it names; that one is checked for all but
    its signature. Newest first, so a day of one unbroken chain costs one verification
    and a hash per record. ``vouched``: the ``prev`` of records already found valid;
    ``hashes`` gets each record's hash by ``id(record)`` (``chain`` reuses them)."""
    vouched = set(vouched or ())
    hashes = {} if hashes is None else hashes
    found: dict[str, bool] = {}
    for name, filename, record in sorted(records, key=lambda item: _order(item[2]), reverse=True):
        named = False
        if vouched:
            hashes[id(record)] = hashes.get(id(record)) or proof.record_hash(record)
            named = hashes[id(record)] in vouched
        found[name] = record_problem(ring, record, device, filename, signature=not named) is None
        if found[name]:
            vouched.add(str(record.get("prev")))
    return found


def check_bytes(record: dict, path: Path) -> Verdict:
    """A verified segment's file against its record: size and SHA-256 of the device's bytes."""
    size = record.get("size")
    have = path.stat().st_size
    if not isinstance(size, int) or size <= 0:
        return Verdict(ALTERED, record, "its record gives no size")
    digest = sha256_of(path, size)
    if digest is None:
        return Verdict(ALTERED, record, f"holds {have} bytes, its record {size}", size)
    if digest != record.get("sha256"):
        return Verdict(ALTERED, record, "its bytes do not match its record's SHA-256", size)
    return Verdict(VERIFIED, record, size=size)


def last_checkpoint(ring: proof.KeyRing, path: Path, device: str, filename: str) -> Verdict | None:
    """The last checkpoint in an unfinished segment that verifies the bytes before it."""
    for offset, record in reversed(proof.checkpoints(path)):
        if record_problem(ring, record, device, filename, "checkpoint") is not None:
            continue
        if record.get("size") != offset or sha256_of(path, offset) != record.get("sha256"):
            continue
        return Verdict(CHECKPOINT, record, size=offset)
    return None


def public_line(ring: proof.KeyRing, key: str) -> str | None:
    known = ring.keys.get(key)
    if known is None:
        return None
    device, public = known
    return f"{proof.KEY_TYPE} {base64.b64encode(public).decode()} {device} {key}"


def _order(record: dict) -> tuple:
    seq = record.get("seq")
    return (str(record.get("start")), seq if isinstance(seq, int) else -1)


def chain(
    device: str, records: list[tuple[str, dict]], hashes: dict[int, str] | None = None
) -> list[Missing]:
    """The breaks in a device's chain of valid records, given as (segment name, record).

    The records are put in order by their links (each ``prev`` names the record before
    it), not by names or clocks: pieces of chain that link up are followed, and each
    piece that does not start where the previous one ended is a break, unless it starts
    a new chain (``prev`` "": a new card or a new key). A checkpoint stands for its
    unfinished segment: its ``prev`` is the one the segment's record would have.
    ``hashes``: records' hashes by ``id(record)`` already known (see ``signed_records``).
    """
    known = hashes or {}
    hashes = {id(r): known.get(id(r)) or proof.record_hash(r) for _, r in records}
    by_hash = {hashes[id(record)]: (name, record) for name, record in records}
    following: dict[str, list[tuple[str, dict]]] = {}
    for name, record in records:
        following.setdefault(str(record.get("prev")), []).append((name, record))
    heads = [item for item in records if str(item[1].get("prev")) not in by_hash]
    # A record no head leads to (a fork: two records naming one prev) starts a piece too.
    rest = sorted(records, key=lambda item: _order(item[1]))
    pieces = []
    seen: set[str] = set()
    for head in sorted(heads, key=lambda item: _order(item[1])) + rest:
        if head[0] in seen:
            continue
        piece, item = [], head
        while item is not None and item[0] not in seen:
            seen.add(item[0])
            piece.append(item)
            after = following.get(hashes[id(item[1])], [])
            item = min(after, key=lambda i: _order(i[1])) if after else None
        pieces.append(piece)
    pieces.sort(key=lambda piece: _order(piece[0][1]))
    found = []
    for before_piece, piece in zip(pieces, pieces[1:], strict=False):
        (name_a, a), (name_b, b) = before_piece[-1], piece[0]
        if b.get("prev") == "":
            continue  # a new chain: nothing says what came before it
        try:
            start, end = parse_iso(a["end"]), parse_iso(b["start"])
        except (KeyError, ValueError, TypeError):
            continue
        found.append(Missing(device, name_a, name_b, start, end, a, b))
    return found


def genesis(records: list[dict]) -> datetime | None:
    """When the device's first record was made (its chain starts with prev ""), if known:
    footage from before it predates the key."""
    starts = [r.get("start") for r in records if r.get("prev") == "" and r.get("start")]
    try:
        return min(parse_iso(s) for s in starts) if starts else None
    except ValueError:
        return None
