"""Uploads segments from the spool to Azure Blob Storage: live, or whole when they close.

Live (a connection string, or a SAS granting ``ca``): the open segment goes up while
it records, into an append blob, only as far as the camera has synced it to the card
(``recording/<name>.synced``). Each Append Block carries its transactional MD5 and
the append-position condition; before each one the intent ``{name, offset, length}``
(with what earlier appends confirmed) is written durably to ``state/live.json``, so
after a lost reply or a crash exactly that block is sent again at that offset: 2xx,
it landed now; 412, it landed before.
Block boundaries are never re-cut, so a 412 can never skip bytes. Each round sends
the live edge first, then one chunk of the oldest closed segment (half a second at the
link's measured rate, 256 KiB to 4 MiB);
a closed segment whose bytes are all up gets its create-only closing record
``<blob>.end`` (length, MD5 and the rest of the record), and only then leaves the card.
Its closing record also goes, as one line, into its day's index ``index.jsonl`` (an
append blob a reader downloads instead of listing 17,280 blobs a day); lines wait on
the card in ``state/live.json`` and go up together at most every INDEX_SECONDS.

Whole (a SAS with ``c`` only: older devices): one Put Blob per closed segment,
with Content-MD5 so the service rejects a body damaged on the way. The local file
goes only after the service confirmed the blob; ``BlobAlreadyExists`` means an
earlier attempt landed but its reply was lost, which is success. The outer loop
never gives up: exponential backoff with full jitter, capped, under the SDK's own
short retries.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from azure.core.exceptions import (
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
    ServiceResponseError,
)
from azure.storage.blob import ContentSettings

from ..blob import (
    container_client,
    describe,
    error_code,
    explain,
    sas_permissions,
    settings_allow_live,
)
from ..files import write_atomic
from ..retry import backoff
from ..segment import (
    ClosingRecord,
    SegmentName,
    closing_record_name,
    day_index_of,
    index_line,
    iso,
    open_blob_metadata,
)
from .spool import Spool
from .status import StateFile

log = logging.getLogger("hatcam.uploader")

POLL_SECONDS = 0.2  # how often an idle uploader looks for a new segment
LIVE_POLL_SECONDS = 0.1  # how often a live uploader looks for newly synced bytes
LIVE_CHUNK = 4 * 1024 * 1024  # the most one live append carries (the service's limit)
# A catch-up append carries about BACKLOG_SECONDS of the link's measured rate: the live
# edge waits at most that long behind it, and a fast link drains in few, large requests.
BACKLOG_SECONDS = 0.5
BACKLOG_CHUNK = (256 * 1024, LIVE_CHUNK)  # the least and the most one catch-up carries
# Day index lines wait this long to go up together: at most one append per day index in
# that time, whatever the segment length (an append blob holds at most 50,000 blocks).
INDEX_SECONDS = 10.0
FALLBACK = (
    "live upload off: the SAS grants sp={sp} without a (append); segments go up whole "
    "when they close. Provision again to mint sp=ac (create and append)."
)


class ForeignAppend(Exception):
    """The blob is not where this device left it: someone else appended to it."""


class Uploader:
    def __init__(self, settings, spool: Spool, client=None):
        self.settings = settings
        self.spool = spool
        self.live = settings_allow_live(settings)
        # Live: no SDK retries, so a 412 on a first attempt is never our own lost reply
        # retried behind our back (the outer loop resends the recorded intent instead).
        self.client = client or container_client(settings, retries=0 if self.live else 2)
        self.where = describe(self.client)
        self.stop_event = threading.Event()
        self.state = StateFile(spool.state / "uploader.json")
        self.uploaded = 0
        self.already_there = 0
        self.failures = 0
        self.last_upload: str | None = None
        self.last_error: str | None = None
        self.container_checked = False
        self.create_only = bool(settings.blob_sas_url) and "w" not in sas_permissions(
            settings.blob_sas_url
        )
        self.live_state = self.spool.state / "live.json"
        self.sent: dict[str, int] = {}  # segment file name -> bytes confirmed in the cloud
        self.intent: dict | None = None  # the append sent but not yet confirmed
        self.foreign: set[str] = set()  # segments someone else appended to
        self.last_append: float | None = None  # wall time of the last confirmed append
        self.live_since: float | None = None  # when the live edge last failed (stalled)
        self.state_written = 0.0
        self.unsaved = False  # confirmed appends not yet in live.json
        self.link_rate = 2e6  # bytes/s the last appends went at (first guess: 16 Mbit/s)
        self.index_lines: list[str] = []  # finished segments' day index lines not yet up
        self.index_sent = 0.0  # when index lines last went up (monotonic)
        self.index_refused: set[str] = set()  # day indexes the service refused for good

    def run(self) -> None:
        log.info(
            "uploading from %s to %s (%s)",
            self.spool.root,
            self.where,
            "live" if self.live else "whole segments",
        )
        if not self.live and self.settings.blob_sas_url:
            log.warning(FALLBACK.format(sp=sas_permissions(self.settings.blob_sas_url)))
        self.spool.remove_orphans()
        self._write_state()
        if self.live:
            self._run_live()
            return
        while not self.stop_event.is_set():
            segments = self.spool.ready_segments()
            if not segments:
                self.stop_event.wait(POLL_SECONDS)
                continue
            for segment in segments:
                if self.stop_event.is_set():
                    break
                try:
                    self.upload(segment)
                except Exception as exc:
                    self._back_off(exc)
                    break  # list again: the queue may have changed meanwhile
            self._write_state()

    def upload(self, segment: Path) -> bool:
        """Upload one segment and delete it locally; False if the disk policy dropped it."""
        with self.spool.claim(segment) as fh:
            if fh is None:
                return False
            return self._upload(segment, fh.read())

    def _upload(self, segment: Path, data: bytes) -> bool:
        record = self.spool.read_record(segment)
        blob = SegmentName.parse(segment.name).blob_name(record.device)
        # The MD5 taken while recording: the service refuses a body that differs from
        # what the camera wrote, whether it changed on the card or on the way.
        recorded = bytes.fromhex(record.md5) if record.md5 else hashlib.md5(data).digest()
        try:
            self._put(blob, data, recorded, record.to_blob_metadata())
        except HttpResponseError as exc:
            actual = hashlib.md5(data).digest()
            if exc.status_code != 400 or actual == recorded:
                raise
            # Damaged on the card since it was recorded: keep what is left, say so.
            log.error(
                "%s changed on the card since it was recorded (MD5 mismatch): "
                "uploading it as it is, marked damaged",
                segment.name,
            )
            self._put(blob, data, actual, record.marked_damaged().to_blob_metadata())
        self.spool.remove(segment)
        self.uploaded += 1
        self.failures = 0
        self.last_upload = iso(datetime.now(UTC))
        log.info("uploaded %s (%.1f MB)", blob, len(data) / 1e6)
        return True

    def _put(self, blob: str, data: bytes, md5: bytes, metadata: dict) -> None:
        try:
            self.client.upload_blob(
                blob,
                data,
                length=len(data),
                overwrite=False,
                # Stored with the blob (fetch verifies against it) and sent as the
                # request's Content-MD5, which the service checks.
                content_settings=ContentSettings(content_type="video/mp2t", content_md5=md5),
                transactional_content_md5=md5,
                metadata=metadata,
            )
        except ResourceExistsError:
            # An earlier attempt landed but its reply was lost: the cloud has it.
            self._already_there(blob)
        except ResourceNotFoundError as exc:
            if self.settings.blob_sas_url or self.container_checked:
                raise
            self._create_container(exc)
            self._put(blob, data, md5, metadata)
        except HttpResponseError as exc:
            # A create-only SAS (sp=c, checked at start) may add a blob but not replace
            # one: refused for permission means this name is already in the store.
            if not (self.create_only and error_code(exc) == "AuthorizationPermissionMismatch"):
                raise
            self._already_there(blob)

    # --- live: append blobs ------------------------------------------------------------

    def _run_live(self) -> None:
        self._load_live_state()
        resent = False  # the pending append was sent again once without complaint
        while not self.stop_event.is_set():
            try:
                busy = self._live_round()
                self.failures, resent = 0, False
            except Exception as exc:
                if isinstance(exc, ServiceResponseError) and self.intent and not resent:
                    # Sent, but no answer: the block may have landed. Resend it at once
                    # (the answer tells which); an error only if the link is really gone.
                    resent = True
                    continue
                if self.live_since is None:
                    self.live_since = time.time()
                self._back_off(exc)
                continue
            self.live_since = None
            if busy or time.monotonic() - self.state_written >= 1:
                self._write_state()
            if not busy:
                if self.unsaved:
                    self._save_live_state()
                self.stop_event.wait(LIVE_POLL_SECONDS)
        if self.unsaved:
            self._save_live_state()
        # On the way out, if the link worked a moment ago (lines that fail wait on the
        # card for the next start).
        if self.index_lines and not self.failures:
            with contextlib.suppress(Exception):
                self._send_index()

    def _load_live_state(self) -> None:
        try:
            data = json.loads(self.live_state.read_text())
        except (OSError, ValueError):
            return
        self.sent = {k: int(v) for k, v in data.get("sent", {}).items()}
        self.intent = data.get("intent")
        self.index_lines = [str(line) for line in data.get("index", [])]

    def _save_live_state(self) -> None:
        """Durable: a crash after this line resends exactly this intent."""
        # Segments the disk policy dropped from the card meanwhile are forgotten.
        self.sent = {k: v for k, v in self.sent.items() if self._file_of(k) is not None}
        data = {"intent": self.intent, "sent": self.sent, "index": self.index_lines}
        write_atomic(self.live_state, json.dumps(data).encode())
        self.unsaved = False

    def _live_round(self) -> bool:
        """One round: the pending intent, the live edge, one backlog step, and the day
        index lines when they have waited long enough."""
        if self.intent is not None:
            self._resend_intent()
        busy = self._live_edge()
        busy = self._backlog_step() or busy
        if self.index_lines and time.monotonic() - self.index_sent >= INDEX_SECONDS:
            self._send_index()
        return busy

    def _file_of(self, name: str) -> Path | None:
        for where in (self.spool.recording, self.spool.ready):
            if (where / name).exists():
                return where / name
        return None

    def _blob(self, name: str) -> str:
        """The blob name, by the device the camera recorded it as (its sidecar, once
        closed; this device while it records)."""
        device = self.settings.device
        sidecar = self.spool.metadata_path(self.spool.ready / name)
        with contextlib.suppress(OSError, ValueError, KeyError):
            device = json.loads(sidecar.read_text())["device"]
        return SegmentName.parse(name).blob_name(device)

    def _resend_intent(self) -> None:
        intent = self.intent
        path = self._file_of(intent["name"])
        if path is None:  # dropped from the card meanwhile: nothing left to send
            self.intent = None
            self.sent.pop(intent["name"], None)
            self._save_live_state()
            return
        with open(path, "rb") as fh:
            fh.seek(intent["offset"])
            data = fh.read(intent["length"])
        if len(data) != intent["length"]:
            raise OSError(f"{intent['name']}: shorter on the card than what was sent")
        self._append(intent["name"], intent["offset"], data, retry=True)

    def _live_edge(self) -> bool:
        """The open segment's newly synced bytes."""
        opened = sorted(
            (p for p in self.spool.recording.glob("*.ts") if SegmentName.parse(p.name)),
            key=lambda p: SegmentName.parse(p.name).seq,
        )
        if not opened:
            return False
        path = opened[-1]
        try:
            synced = int(path.with_suffix(".synced").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return False  # nothing synced yet
        name = path.name
        if name in self.foreign:
            return False
        if name not in self.sent:
            self._create(name, live_meta=True)
        offset = self.sent[name]
        if synced <= offset:
            return False
        try:
            with open(path, "rb") as fh:
                fh.seek(offset)
                data = fh.read(min(synced - offset, LIVE_CHUNK))
        except FileNotFoundError:  # committed to ready/ meanwhile: the backlog has it
            return True
        self._append(name, offset, data)
        return True

    def _backlog_step(self) -> bool:
        """One chunk of the oldest closed segment, or its closing record."""
        for segment in self.spool.ready_segments():
            with self.spool.claim(segment) as fh:
                if fh is None:
                    continue
                name = segment.name
                if name not in self.sent:
                    self._create(name, live_meta=False)
                offset = self.sent[name]
                fh.seek(offset)
                least, most = BACKLOG_CHUNK
                data = fh.read(min(most, max(least, int(self.link_rate * BACKLOG_SECONDS))))
                if data and name not in self.foreign:
                    self._append(name, offset, data)
                    return True
                fh.seek(0)
                self._close_segment(segment, fh.read())
            return True
        return False

    def _create(self, name: str, live_meta: bool) -> None:
        """The append blob, create-only, with what is known at open."""
        blob = self._blob(name)
        if live_meta:
            meta = open_blob_metadata(
                self.settings.device,
                SegmentName.parse(name).start,
                False,
                self.settings.width,
                self.settings.height,
            )
        else:
            record = self.spool.read_record(self.spool.ready / name)
            c = record.contents
            meta = open_blob_metadata(
                record.device, record.start, record.clock_synced, c.width, c.height
            )
        try:
            self.client.get_blob_client(blob).create_append_blob(
                content_settings=ContentSettings(content_type="video/mp2t"),
                metadata=meta,
                headers={"If-None-Match": "*"},  # create-only: never truncate our blob
            )
        except ResourceNotFoundError as exc:
            if self.settings.blob_sas_url or self.container_checked:
                raise
            self._create_container(exc)
            return self._create(name, live_meta)
        except HttpResponseError as exc:
            if not self._exists_already(exc):
                raise
        self.sent[name] = 0
        self._save_live_state()
        return None

    def _append(self, name: str, offset: int, data: bytes, retry: bool = False) -> None:
        if not retry:
            self.intent = {"name": name, "offset": offset, "length": len(data)}
            self._save_live_state()
        started = time.monotonic()
        try:
            self.client.get_blob_client(self._blob(name)).append_block(
                data, length=len(data), appendpos_condition=offset, validate_content=True
            )
            if len(data) >= BACKLOG_CHUNK[0]:  # small ones time the round trip, not the link
                rate = len(data) / max(time.monotonic() - started, 1e-3)
                self.link_rate = 0.5 * self.link_rate + 0.5 * rate
        except ResourceNotFoundError as exc:
            if offset or error_code(exc) != "BlobNotFound":
                raise
            # Never created (a state saved by an older version that took an expired
            # SAS's 403 for "already there"): forget it, so the next round creates it.
            self.sent.pop(name, None)
            self.intent = None
            self._save_live_state()
            return
        except HttpResponseError as exc:
            if exc.status_code != 412:
                raise
            if not retry:  # not our own lost reply: someone else wrote to this blob
                log.error(
                    "%s: the blob is not where this device left it (412 %s at %d): someone "
                    "else appended to it; finishing it with its closing record",
                    self._blob(name),
                    error_code(exc),
                    offset,
                )
                self.foreign.add(name)
                self.intent = None
                self._save_live_state()
                return
            self.already_there += 1
            log.info(
                "%s: the append at %d had landed (its answer was lost)", self._blob(name), offset
            )
        self.sent[name] = offset + len(data)
        self.intent = None
        self.last_append = time.time()
        # Saved with the next intent, or when idle: a crash before that resends this block,
        # which the 412 then confirms (one durable write per append, not two).
        self.unsaved = True

    def _close_segment(self, segment: Path, data: bytes) -> None:
        record = self.spool.read_record(segment)
        md5 = hashlib.md5(data).hexdigest()
        if record.md5 and record.md5 != md5:
            log.error(
                "%s changed on the card since it was recorded (MD5 mismatch): "
                "its closing record marks it damaged",
                segment.name,
            )
            record = record.marked_damaged()
        # Someone else appended to the blob: the cloud holds this device's bytes only up
        # to where that happened, so the record names that prefix (fetch keeps it and
        # reports the rest) and the whole segment stays on the card.
        interfered = segment.name in self.foreign
        if interfered:
            data = data[: self.sent.get(segment.name, 0)]
            md5 = hashlib.md5(data).hexdigest()
        closing = ClosingRecord(record, len(data), md5)
        blob = closing_record_name(self._blob(segment.name))
        body = closing.to_json()
        try:
            self.client.get_blob_client(blob).upload_blob(
                body,
                length=len(body),
                metadata=closing.to_metadata(),
                content_settings=ContentSettings(content_type="application/json"),
                overwrite=False,
            )
        except HttpResponseError as exc:
            if not self._exists_already(exc):
                raise
            self._already_there(blob)
        self.index_lines.append(index_line(self._blob(segment.name), closing).decode())
        self._save_live_state()  # the line is on the card before the segment leaves it
        if interfered:
            kept = self.spool.keep(segment)
            log.error(
                "%s: someone else appended to its blob; the cloud holds this device's first "
                "%d bytes; the whole segment stays on the card as %s",
                self._blob(segment.name),
                len(data),
                kept,
            )
        else:
            self.spool.remove(segment)
        self.sent.pop(segment.name, None)
        self.foreign.discard(segment.name)
        self._save_live_state()
        self.uploaded += 1
        self.last_upload = iso(datetime.now(UTC))
        log.info("uploaded %s (%.1f MB, closed)", self._blob(segment.name), len(data) / 1e6)

    def _send_index(self) -> None:
        """The waiting lines, one append per day index and 4 MiB (a lost reply resent
        doubles a line, which readers ignore). A day index the service refuses for good
        (409: a block blob someone else put at its name, or 50,000 blocks) loses its
        lines, with one error line: it is only a shortcut, readers list that day instead."""
        for index, lines in self._index_batches():
            try:
                if index not in self.index_refused:
                    self._append_index(index, "".join(lines).encode())
            except HttpResponseError as exc:
                if exc.status_code != 409:
                    raise
                self.index_refused.add(index)
                log.error(
                    "%s refused (%s): that day's segments are left out of it; readers "
                    "list the day instead",
                    index,
                    explain(exc),
                )
            sent = set(lines)
            self.index_lines = [line for line in self.index_lines if line not in sent]
            self._save_live_state()
        self.index_sent = time.monotonic()

    def _index_batches(self) -> list[tuple[str, list[str]]]:
        """The waiting lines by day index, in bodies of at most 4 MiB, oldest first."""
        batches: list[tuple[str, list[str]]] = []
        open_: dict[str, tuple[list[str], int]] = {}
        for line in self.index_lines:
            index = day_index_of(json.loads(line)["blob"])
            lines, size = open_.get(index, ([], 0))
            if lines and size + len(line) > LIVE_CHUNK:
                batches.append((index, lines))
                lines, size = [], 0
            open_[index] = ([*lines, line], size + len(line))
        return batches + [(index, lines) for index, (lines, _) in open_.items()]

    def _append_index(self, index: str, body: bytes) -> None:
        blob = self.client.get_blob_client(index)
        try:
            blob.append_block(body, length=len(body), validate_content=True)
        except ResourceNotFoundError as exc:
            if error_code(exc) != "BlobNotFound":
                raise
            try:
                blob.create_append_blob(
                    content_settings=ContentSettings(content_type="application/x-ndjson"),
                    headers={"If-None-Match": "*"},
                )
            except HttpResponseError as created:
                if not self._exists_already(created):
                    raise
            blob.append_block(body, length=len(body), validate_content=True)

    def _exists_already(self, exc: HttpResponseError) -> bool:
        """A create-only request refused because the blob is there: an earlier attempt
        landed and its reply was lost. 409 or 412 to the create-only condition; 403 only
        for want of the right to overwrite (a SAS without w). Any other 403 (expired,
        revoked, wrong signature) means nothing was created."""
        if exc.status_code in (409, 412):
            return True
        return exc.status_code == 403 and error_code(exc) == "AuthorizationPermissionMismatch"

    def _already_there(self, blob: str) -> None:
        self.already_there += 1
        log.info("%s was already in the blob store (an earlier attempt landed)", blob)

    def _create_container(self, exc) -> None:
        """With a connection string the uploader may create its container, once."""
        self.container_checked = True
        if error_code(exc) != "ContainerNotFound":
            raise exc
        try:
            self.client.create_container()
            log.info("created container %s", self.settings.blob_container)
        except ResourceExistsError:
            pass

    def _back_off(self, exc: Exception) -> None:
        self.failures += 1
        delay = backoff(self.failures, self.settings.retry_max_seconds)
        self.last_error = explain(exc)
        queued = len(self.spool.ready_segments())
        log.error(
            "%s; keeping %d segment(s) queued, retry in %.1f s", self.last_error, queued, delay
        )
        self._write_state()
        self.stop_event.wait(delay)

    def _write_state(self) -> None:
        self.state_written = time.monotonic()
        self.state.write(
            {
                "uploaded": self.uploaded,
                "already_there": self.already_there,
                "last_upload": self.last_upload,
                "last_error": self.last_error,
                "failing": self.failures > 0,
                "destination": self.where,
                "live": self.live,
                "last_append": self.last_append,
                "stalled_since": self.live_since,
                "sent": dict(self.sent),
            }
        )

    def stop(self) -> None:
        self.stop_event.set()
