"""Uploads closed segments from the spool to Azure Blob Storage, oldest first.

One Put Blob per segment, with Content-MD5 so the service rejects a body
damaged on the way. The local file goes only after the service confirmed the
blob; ``BlobAlreadyExists`` means an earlier attempt landed but its reply was
lost, which is success. The outer loop never gives up: exponential backoff with
full jitter, capped, under the SDK's own short retries.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from datetime import UTC, datetime
from pathlib import Path

from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import ContentSettings

from ..blob import container_client, describe, error_code, explain, sas_permissions
from ..retry import backoff
from ..segment import SegmentName, iso
from .spool import Spool
from .status import StateFile

log = logging.getLogger("hatcam.uploader")

POLL_SECONDS = 0.2  # how often an idle uploader looks for a new segment


class Uploader:
    def __init__(self, settings, spool: Spool, client=None):
        self.settings = settings
        self.spool = spool
        self.client = client or container_client(settings)
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

    def run(self) -> None:
        log.info("uploading from %s to %s", self.spool.ready, self.where)
        self.spool.remove_orphans()
        self._write_state()
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
        self.state.write(
            {
                "uploaded": self.uploaded,
                "already_there": self.already_there,
                "last_upload": self.last_upload,
                "last_error": self.last_error,
                "failing": self.failures > 0,
                "destination": self.where,
            }
        )

    def stop(self) -> None:
        self.stop_event.set()
