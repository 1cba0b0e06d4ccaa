"""Parallel, verified, resumable downloads into a local cache.

Each blob goes to ``<cache>/<blob name>.part`` first, is hashed while it
arrives, and is renamed to its final name only when its MD5 matches the one
the blob store holds. A ``.part`` left by an interrupted run is resumed from
where it stopped; if the result does not verify it is fetched again from the
start. ``verified.json`` remembers what was verified (size, MD5, mtime) so a
second run neither downloads nor re-reads anything.

A live segment (an append blob) is fetched only over its first ``size`` bytes:
a finished one's are checked against its closing record's MD5, whatever was
appended after them is never downloaded; an unfinished one that grew since the
last run is resumed from the copy in the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from azure.core import MatchConditions
from azure.core.exceptions import AzureError, HttpResponseError, ResourceModifiedError

from ..blob import explain
from ..files import write_atomic
from ..retry import backoff
from ..segment import Contents
from .listing import LIVE, Remote

log = logging.getLogger("hatcam.download")

ATTEMPTS = 3  # per blob: network errors resume, a bad hash starts over
RETRY_CAP = 4.0  # seconds: an operator is waiting
READ_SIZE = 1 << 20


@dataclass
class Outcome:
    remote: Remote
    path: Path
    status: str  # cached, downloaded, resumed, failed, card (read off a mounted card)
    fetched: int = 0  # bytes transferred by this run
    contents: Contents | None = None  # what ``inspect`` said about the file
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status != "failed"


class Cache:
    """The local copy of the blobs, with a record of which ones were verified."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.manifest_path = self.root / "verified.json"
        self.lock = threading.Lock()
        try:
            self.entries: dict[str, dict] = json.loads(self.manifest_path.read_text())
        except (OSError, ValueError):
            self.entries = {}

    def path(self, remote: Remote) -> Path:
        return self.root / remote.cache_name

    def known_good(self, remote: Remote) -> Contents | None:
        """The recorded inspection of a cached file still identical to the blob, else None."""
        entry = self.entries.get(remote.cache_name)
        if not entry or entry.get("md5") != remote.md5_b64 or entry.get("size") != remote.size:
            return None
        try:
            stat = self.path(remote).stat()
        except OSError:
            return None
        if stat.st_size != remote.size or stat.st_mtime_ns != entry.get("mtime_ns"):
            return None
        try:
            return Contents.from_dict(entry["info"])
        except (KeyError, TypeError):
            return None

    def record(self, remote: Remote, contents: Contents) -> None:
        stat = self.path(remote).stat()
        with self.lock:
            self.entries[remote.cache_name] = {
                "size": remote.size,
                "md5": remote.md5_b64,
                "mtime_ns": stat.st_mtime_ns,
                "info": contents.to_dict(origin=True),
            }

    def save(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with self.lock:
            text = json.dumps(self.entries, indent=0, sort_keys=True)
        write_atomic(self.manifest_path, text.encode(), durable=False)


def md5_of(path: Path, length: int | None = None):
    """A running MD5 over the first ``length`` bytes of ``path`` (all when None)."""
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        left = length
        while left is None or left > 0:
            chunk = fh.read(READ_SIZE if left is None else min(READ_SIZE, left))
            if not chunk:
                break
            digest.update(chunk)
            if left is not None:
                left -= len(chunk)
    return digest


class Downloader:
    def __init__(
        self,
        client,
        cache: Cache,
        inspect: Callable[[Remote, Path], Contents],
        progress,
        jobs: int = 8,
    ):
        self.client = client
        self.cache = cache
        self.inspect = inspect  # raises ValueError when a verified file is still unusable
        self.progress = progress
        self.jobs = jobs

    def start(self, remotes: list[Remote]) -> Batch:
        """Start fetching every blob, in the order given, and return at once. Ctrl-C
        (then Batch.close) keeps the .part files for the next run to resume."""
        cached, todo = [], []
        for remote in remotes:
            if remote.local is not None:  # on a mounted card: read where it is
                cached.append(self._local(remote))
                continue
            contents = self.cache.known_good(remote)
            if contents is not None:
                cached.append(Outcome(remote, self.cache.path(remote), "cached", contents=contents))
            else:
                todo.append(remote)
        self.progress.start(sum(r.size for r in todo), len(todo), len(cached))
        return Batch(self, remotes, cached, todo)

    def _local(self, remote: Remote) -> Outcome:
        try:
            contents = self.inspect(remote, remote.local)
        except (ValueError, OSError) as exc:
            return Outcome(remote, remote.local, "failed", error=str(exc))
        return Outcome(remote, remote.local, "card", contents=contents)

    def fetch(self, remote: Remote) -> Outcome:
        final = self.cache.path(remote)
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            reused = self._reuse_unrecorded(remote, final)
            if reused is not None:
                return reused
            return self._download(remote, final)
        except ValueError as exc:  # verified, but not footage we can use
            return Outcome(remote, final, "failed", error=str(exc))
        except Exception as exc:  # one bad blob must not stop the others
            log.debug("%s failed", remote.name, exc_info=True)
            return Outcome(remote, final, "failed", error=explain(exc, "download", "r", "rl"))

    def _reuse_unrecorded(self, remote: Remote, final: Path) -> Outcome | None:
        """A complete file the record does not vouch for: keep it if its hash is right."""
        if not final.exists():
            return None
        if remote.append and final.stat().st_size < remote.size:
            # An append blob only grows: the copy is the start of it, resumed from there.
            os.replace(final, final.with_name(final.name + ".part"))
            return None
        if final.stat().st_size == remote.size and self._matches(remote, md5_of(final)):
            contents = self.inspect(remote, final)
            self.cache.record(remote, contents)
            self.progress.advance(remote.size)
            return Outcome(remote, final, "cached", contents=contents)
        log.warning("%s: cached copy is damaged; downloading it again", remote.name)
        final.unlink()
        return None

    @staticmethod
    def _matches(remote: Remote, digest) -> bool:
        return remote.md5 is None or digest.digest() == remote.md5

    def _download(self, remote: Remote, final: Path) -> Outcome:
        part = final.with_name(final.name + ".part")
        fetched, resumed, from_scratch, restarted, error = 0, False, False, False, None
        for attempt in range(ATTEMPTS):
            have = part.stat().st_size if part.exists() else 0
            if have > remote.size:
                have = 0
                part.unlink()
            if have:
                resumed = resumed or attempt == 0
                digest = md5_of(part, have)
            else:
                from_scratch = True
                digest = hashlib.md5()
            self.progress.advance(have if attempt == 0 else 0)
            try:
                fetched += self._transfer(remote, part, have, digest)
            except ResourceModifiedError:
                part.unlink(missing_ok=True)  # the blob was replaced: start over
                error = "the blob changed while it was being downloaded"
                continue
            except (AzureError, OSError) as exc:
                error = explain(exc, "download", "r", "rl")
                if isinstance(exc, HttpResponseError) and exc.status_code in (403, 404):
                    break
                time.sleep(backoff(attempt, RETRY_CAP))
                continue
            if self._matches(remote, digest):
                os.replace(part, final)
                try:
                    contents = self.inspect(remote, final)
                except ValueError as exc:
                    return Outcome(remote, final, "failed", fetched, error=str(exc))
                self.cache.record(remote, contents)
                status = "resumed" if resumed and not restarted else "downloaded"
                return Outcome(remote, final, status, fetched, contents)
            part.unlink()
            restarted = True
            error = self._mismatch(remote, digest)
            if from_scratch:
                break  # a whole fresh copy was wrong: the blob itself is bad
        return Outcome(remote, final, "failed", fetched, error=error)

    @staticmethod
    def _mismatch(remote: Remote, digest) -> str:
        if remote.kind == LIVE:
            return (
                f"its first {remote.size} bytes do not match the closing record's MD5 "
                f"({digest.hexdigest()} downloaded, {remote.md5.hex()} recorded): altered "
                "after the device wrote it"
            )
        return (
            f"content does not match its stored MD5 ({digest.hexdigest()} "
            f"downloaded, {remote.md5.hex()} stored)"
        )

    def _transfer(self, remote: Remote, part: Path, offset: int, digest) -> int:
        if offset >= remote.size:
            part.touch()
            return 0
        # An append blob grows while it is read (the device is still sending, or someone
        # appended): its first bytes never change, so no ETag condition; the MD5 checks them.
        condition = (
            {}
            if remote.append
            else {"etag": remote.etag, "match_condition": MatchConditions.IfNotModified}
        )
        stream = self.client.download_blob(
            remote.name, offset=offset, length=remote.size - offset, **condition
        )
        done = 0
        with open(part, "ab") as fh:
            for chunk in stream.chunks():
                fh.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                self.progress.advance(len(chunk))
            fh.flush()
            with contextlib.suppress(OSError):
                os.fsync(fh.fileno())
        return done


class Batch:
    """Downloads under way: wait for one blob (to stitch it) or for all of them."""

    def __init__(self, downloader: Downloader, remotes, cached, todo):
        self.downloader = downloader
        self.remotes = remotes
        self.pool = ThreadPoolExecutor(
            max_workers=max(1, downloader.jobs), thread_name_prefix="fetch"
        )
        self.futures: dict[str, Future] = {}
        for outcome in cached:
            self.futures[outcome.remote.name] = done = Future()
            done.set_result(outcome)
        for remote in todo:
            future = self.pool.submit(downloader.fetch, remote)
            future.add_done_callback(self._finished)
            self.futures[remote.name] = future
        self.closed = False

    def _finished(self, future: Future) -> None:
        if not future.cancelled():
            self.downloader.progress.finished(future.result())

    def outcome(self, name: str) -> Outcome:
        """The outcome of one blob, waiting for it if it is still on its way."""
        return self.futures[name].result()

    def finish(self) -> list[Outcome]:
        """Every outcome, in the order given, once all are in."""
        return [self.outcome(remote.name) for remote in self.remotes]

    def close(self) -> None:
        """Stop (cancelling what has not started), record what was verified, end the bar."""
        if self.closed:
            return
        self.closed = True
        try:
            self.pool.shutdown(wait=True, cancel_futures=True)
        finally:
            self.downloader.cache.save()
            self.downloader.progress.stop()
