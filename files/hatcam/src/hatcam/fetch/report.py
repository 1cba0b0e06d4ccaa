"""The proof report fetch writes beside each MP4: ``<mp4>.proof.json``.

It is what ``hatcam verify`` reads, and it trusts nothing in it that is not signed: the
records are embedded whole, so a third party with the device's public key can check
each one, and the MP4's frames against them. Schema (version 1, keys stable)::

    {
      "version": 1,
      "mp4": "dev1_20261121T080000Z.mp4",       # the file beside it
      "device": "dev1",
      "keys": ["hatcam-ed25519 <base64> dev1 <key id>", ...],  # public key lines of the
                                                # keys whose records are below ([] if none)
      "segments": [                            # in MP4 order, then those left out
        {
          "name": "dev1/2026-11-21/20261121T080000.000Z-1a2b3c4d-000001.ts",
          "source": "cloud" | "card",
          "status": "verified" | "checkpoint" | "unverified" | "altered"
                    | "bad_signature" | "no_valid_record",
          "record": {...} | null,              # the signed segment record, or for
                                               # "checkpoint" the signed checkpoint, whole
          "problem": "..." | null,             # why it is not verified, in words
          "appended_bytes": 0,                 # bytes after the device's, cut off
          "mp4": {                             # null when left out of the MP4
            "first_sample": 0,                 # index of its first frame among the MP4's
                                               # video samples (decode order)
            "samples": 60,                     # its frames in the MP4 (for "checkpoint":
                                               # the checkpoint's "frames")
            "pts_shift": -1234,                # 90 kHz ticks added to its PTS in the MP4
            "first_audio_sample": 0,           # only for a segment with sound: its first
            "audio_samples": 94                # AAC sample among the MP4's audio samples,
                                               # and how many (its record's audio_packets)
          }
        }
      ],
      "gaps": [                                # breaks in the chain (segments missing)
        {"after": "<segment name>", "before": "<segment name>",
         "after_record_hash": "<record_hash of after's record>",
         "before_prev": "<before's record's prev>",
         "from": "2026-11-21T08:00:10.000Z", "to": "2026-11-21T08:00:12.000Z",
         "seconds": 2.0}
      ],
      "audio_gaps": [                          # picture without sound in this MP4
        {"from": "2026-11-21T08:00:03.000Z", "offset": 3.0, "seconds": 2.0}
      ]
    }

A segment's frames in the MP4 hash (``proof.FrameDigest.add_length_prefixed`` over
samples ``first_sample`` .. ``first_sample + samples``) to its record's ``frames_sha256``,
its audio samples (``proof.AudioDigest.add``) to its ``audio_sha256``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .. import proof
from ..files import write_atomic
from ..segment import iso
from .verify import Missing, Verdict, public_line

VERSION = 1
SUFFIX = ".proof.json"


@dataclass
class Entry:
    name: str
    source: str
    verdict: Verdict
    # first sample, samples, pts shift (and with sound: first audio sample, audio samples)
    placement: tuple[int, ...] | None = None


def path_for(mp4: Path) -> Path:
    return mp4.with_name(mp4.name + SUFFIX)


_PLACEMENT = ("first_sample", "samples", "pts_shift", "first_audio_sample", "audio_samples")


def build(
    mp4: Path, device: str, ring: proof.KeyRing, entries, gaps: list[Missing], audio_gaps=()
) -> dict:
    keys = []
    for entry in entries:
        key = (entry.verdict.record or {}).get("key")
        line = public_line(ring, key) if key else None
        if line and line not in keys:
            keys.append(line)
    return {
        "version": VERSION,
        "mp4": mp4.name,
        "device": device,
        "keys": keys,
        "segments": [
            {
                "name": e.name,
                "source": e.source,
                "status": e.verdict.status,
                "record": e.verdict.record,
                "problem": e.verdict.problem,
                "appended_bytes": e.verdict.appended,
                "mp4": None
                if e.placement is None
                else dict(zip(_PLACEMENT, e.placement, strict=False)),
            }
            for e in entries
        ],
        "gaps": [
            {
                "after": g.after,
                "before": g.before,
                "after_record_hash": proof.record_hash(g.after_record),
                "before_prev": g.before_record.get("prev"),
                "from": iso(g.start),
                "to": iso(g.end),
                "seconds": round(g.seconds, 3),
            }
            for g in gaps
        ],
        "audio_gaps": list(audio_gaps),
    }


def write(mp4: Path, report: dict) -> Path:
    path = path_for(mp4)
    write_atomic(path, (json.dumps(report, indent=1) + "\n").encode(), durable=False)
    return path
