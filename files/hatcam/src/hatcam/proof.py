"""The device's proof of what it recorded: signed, hash-chained records.

One contract for both wings: the camera daemon makes and signs the records, fetch and
``hatcam verify`` check them. No primitive is ours: Ed25519 is libsodium's (PyNaCl,
python3-nacl on Pi OS: 1.4 MB of memory where the ``cryptography`` wheel takes 9, and
the camera daemon's budget is 80 MB), SHA-256 is hashlib's.

A record is a dict, carried as JSON:

- ``kind: "segment"``, made when the camera closes a segment (and at recovery for one a
  crash cut short, then with ``recovered: true``): ``device``, ``boot``, ``seq``,
  ``name`` (the segment's file name), ``start`` and ``end`` (capture times, ISO UTC),
  ``frames``, ``first_pts``, ``last_pts``, ``size`` (bytes of the file it covers),
  ``sha256`` (of those bytes), ``frames_sha256`` (of the frames' NAL payloads, which
  an MP4 remux keeps: see ``FrameDigest``) and ``prev``: the ``record_hash`` of the
  previous segment record of this device, across boots ("" for its first), so the
  records form one chain and a missing segment is a break in it. A segment with sound
  also carries ``audio_packets`` and ``audio_sha256`` (of its raw AAC access units, equal
  in the MPEG-TS and the MP4: see ``AudioDigest``); records without them have no audio.
- ``kind: "checkpoint"``, made each time the open segment is synced to the card and muxed
  into the segment itself (``id3_priv``: a timed-ID3 PRIV frame, the standard HLS
  metadata stream) at exactly the byte offset ``size`` it covers: the same fields for
  what is written so far, and the ``prev`` the segment's record will have. A segment cut
  short (the device destroyed while recording) verifies up to its last checkpoint.

Each record also carries ``v`` (1), ``key`` (``key_id`` of the signing key) and ``sig``:
base64 Ed25519 over ``SIGNED_PREFIX + canonical(record)``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from pathlib import Path

VERSION = 1
SIGNED_PREFIX = b"hatcam record v1\n"  # a signature over a record is never one over anything else
KEY_TYPE = "hatcam-ed25519"  # first word of a public key line
ID3_OWNER = b"hatcam"
# NAL unit types a frame's digest covers: slices (1-5), SPS (7), PPS (8). Not SEI (6),
# access unit delimiters (9, which the MPEG-TS muxer adds) or filler data (12): tools may
# add or strip those without changing a single picture.
DIGEST_NAL_TYPES = frozenset({1, 2, 3, 4, 5, 7, 8})
_START_CODE = re.compile(b"\x00\x00\x01")


def canonical(record: dict) -> bytes:
    """The bytes signed: the record without its signature, keys sorted, no spaces."""
    fields = {k: v for k, v in record.items() if k != "sig"}
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def record_hash(record: dict) -> str:
    """What the next record's ``prev`` names: SHA-256 of the record, signature included."""
    whole = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(whole.encode()).hexdigest()


def key_id(public_key: bytes) -> str:
    """Short, stable name of a public key: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(public_key).hexdigest()[:16]


class DeviceKey:
    """The device's Ed25519 signing key: a file holding the base64 of its 32-byte seed,
    made on the device and never leaving it."""

    def __init__(self, seed: bytes):
        from nacl.signing import SigningKey  # imported only where records are signed

        self._key = SigningKey(seed)
        self.public = bytes(self._key.verify_key)
        self.id = key_id(self.public)

    @classmethod
    def generate(cls, path: Path) -> DeviceKey:
        """A new key in ``path`` (mode 0400, created: an existing key is never replaced)."""
        seed = os.urandom(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
        with os.fdopen(fd, "w") as fh:
            fh.write(base64.b64encode(seed).decode() + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        return cls(seed)

    @classmethod
    def load(cls, path: Path) -> DeviceKey:
        seed = base64.b64decode(Path(path).read_text().strip(), validate=True)
        if len(seed) != 32:
            raise ValueError(f"{path}: not an Ed25519 seed (32 bytes in base64)")
        return cls(seed)

    def sign(self, fields: dict) -> dict:
        """``fields`` as a signed record (``v``, ``key`` and ``sig`` added)."""
        record = {**fields, "v": VERSION, "key": self.id}
        signature = self._key.sign(SIGNED_PREFIX + canonical(record)).signature
        return {**record, "sig": base64.b64encode(signature).decode()}

    def public_line(self, device: str) -> str:
        """The public key as one line, kept with the inventory: ``hatcam-ed25519 <base64>
        <device> <key id>``."""
        return f"{KEY_TYPE} {base64.b64encode(self.public).decode()} {device} {self.id}"


class KeyRing:
    """The public keys fetch and verify trust, by key id, each for one device. Old keys
    stay in the ring after a rotation, so old footage keeps verifying."""

    def __init__(self):
        self.keys: dict[str, tuple[str, bytes]] = {}  # key id -> (device, public key)

    def add_line(self, line: str) -> str:
        """Add one public key line; its key id."""
        parts = line.split()
        if len(parts) < 3 or parts[0] != KEY_TYPE:
            raise ValueError(f"not a {KEY_TYPE} public key line: {line[:60]!r}")
        public = base64.b64decode(parts[1], validate=True)
        if len(public) != 32:
            raise ValueError(f"not an Ed25519 public key (32 bytes): {parts[1][:20]}...")
        kid = key_id(public)
        self.keys[kid] = (parts[2], public)
        return kid

    @classmethod
    def load(cls, *paths: Path) -> KeyRing:
        """Every ``*.pub`` file in the given directories (or the given files)."""
        ring = cls()
        for path in paths:
            path = Path(path)
            files = sorted(path.glob("*.pub")) if path.is_dir() else [path]
            for file in files:
                for line in file.read_text().splitlines():
                    if line.strip() and not line.startswith("#"):
                        ring.add_line(line)
        return ring

    def devices(self) -> set[str]:
        return {device for device, _ in self.keys.values()}

    def problem(self, record: dict) -> str | None:
        """None when ``record`` is signed by a key of its own device; else what is wrong."""
        from nacl.exceptions import BadSignatureError
        from nacl.signing import VerifyKey

        known = self.keys.get(str(record.get("key")))
        if known is None:
            return f"signed by an unknown key ({record.get('key')})"
        device, public = known
        if record.get("device") != device:
            return f"signed by {device}'s key, but names device {record.get('device')}"
        try:
            signature = base64.b64decode(str(record.get("sig")), validate=True)
            VerifyKey(public).verify(SIGNED_PREFIX + canonical(record), signature)
        except (BadSignatureError, ValueError):
            return "bad signature"
        return None


class FrameDigest:
    """SHA-256 over frames' NAL unit payloads: for each NAL of the types in
    ``DIGEST_NAL_TYPES``, its length (4 bytes, big-endian) and its bytes (header included,
    trailing zero bytes dropped). Equal whether read from the encoder's Annex B output,
    the MPEG-TS segment or the MP4 fetch writes (which keeps each payload byte for byte
    but frames it with length prefixes)."""

    def __init__(self, sha=None):
        self.sha = sha or hashlib.sha256()

    def add_annexb(self, data: bytes) -> None:
        """One access unit with start codes (the encoder's, or a TS packet's)."""
        starts = [m.end() for m in _START_CODE.finditer(data)]
        for begin, end in zip(starts, [*starts[1:], len(data) + 3], strict=True):
            self._nal(data[begin : end - 3])

    def add_length_prefixed(self, data: bytes, size: int = 4) -> None:
        """One MP4 sample: NAL units each preceded by its length."""
        at = 0
        while at + size <= len(data):
            length = int.from_bytes(data[at : at + size], "big")
            self._nal(data[at + size : at + size + length])
            at += size + length

    def _nal(self, nal: bytes) -> None:
        nal = nal.rstrip(b"\x00")
        if nal and nal[0] & 0x1F in DIGEST_NAL_TYPES:
            self.sha.update(len(nal).to_bytes(4, "big"))
            self.sha.update(nal)

    def copy(self) -> FrameDigest:
        return FrameDigest(self.sha.copy())

    def hexdigest(self) -> str:
        return self.sha.hexdigest()


class AudioDigest:
    """SHA-256 over raw AAC access units: for each, its length (4 bytes, big-endian) and
    its bytes. The MPEG-TS frames each unit in an ADTS header, the MP4 keeps it bare:
    ``add_adts`` strips the header, so the digest is the same from either."""

    def __init__(self):
        self.sha = hashlib.sha256()

    def add(self, unit: bytes) -> None:
        self.sha.update(len(unit).to_bytes(4, "big"))
        self.sha.update(unit)

    def add_adts(self, data: bytes) -> None:
        """One ADTS frame (as demuxed from the MPEG-TS); raw when it has no header."""
        if len(data) >= 7 and data[0] == 0xFF and data[1] & 0xF0 == 0xF0:
            data = data[7 if data[1] & 1 else 9 :]  # protection_absent=0: a 2-byte CRC
        self.add(data)

    def hexdigest(self) -> str:
        return self.sha.hexdigest()


# --- checkpoints inside the segment: a timed-ID3 PRIV frame --------------------------------


def _syncsafe(n: int) -> bytes:
    return bytes([(n >> 21) & 0x7F, (n >> 14) & 0x7F, (n >> 7) & 0x7F, n & 0x7F])


def _unsyncsafe(b: bytes) -> int:
    return (b[0] << 21) | (b[1] << 14) | (b[2] << 7) | b[3]


def id3_priv(record: dict) -> bytes:
    """A signed record as an ID3v2.4 tag with one PRIV frame (owner ``hatcam``)."""
    body = ID3_OWNER + b"\0" + json.dumps(record, separators=(",", ":")).encode()
    frame = b"PRIV" + _syncsafe(len(body)) + b"\0\0" + body
    return b"ID3\x04\x00\x00" + _syncsafe(len(frame)) + frame


def id3_record(tag: bytes) -> dict | None:
    """The record in a tag ``id3_priv`` made; None for anything else or a torn tag."""
    if len(tag) < 20 or tag[:3] != b"ID3" or tag[10:14] != b"PRIV":
        return None
    body = tag[20 : 20 + _unsyncsafe(tag[14:18])]
    owner, _, data = body.partition(b"\0")
    if owner != ID3_OWNER:
        return None
    try:
        record = json.loads(data)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def checkpoints(path: Path) -> list[tuple[int, dict]]:
    """The checkpoints a segment file holds, as (byte offset where each begins, record),
    in file order; torn ones (a file cut inside one) are left out."""
    import av

    found = []
    try:
        with av.open(str(path), format="mpegts") as container:
            data = [s for s in container.streams if s.type == "data"]
            if not data:
                return []
            try:
                for packet in container.demux(data[0]):
                    if packet.size and packet.pos is not None and packet.pos >= 0:
                        record = id3_record(bytes(packet))
                        if record is not None:
                            found.append((packet.pos, record))
            except av.error.FFmpegError:
                pass  # a torn end: keep what was read before it
    except av.error.FFmpegError:
        return []
    return found
