"""``hatcam fetch``: download a device's footage and stitch it into MP4 files.

    hatcam fetch --device hatcam1 --since today --out footage

Lists only the blobs in range (listing.py), downloads them in parallel into
``<out>/.cache`` with MD5 verification and resume (download.py), remuxes each
continuous run into ``<out>/<device>_<UTC start>.mp4`` (stitch.py), prints a
report, and with ``--delete-after`` deletes the blobs whose MP4 was written
and checked. Exit status: 0 all well, 1 something was not downloaded,
verified, stitched or deleted, or a live segment was tampered with (the report
says which), 2 bad options.

Live segments (append blobs, see listing.py): a finished one is used up to its
closing record's length and checked against its MD5; bytes appended after it
are reported and left out. An unfinished one (no closing record) is stitched
with what it holds in whole frames and reported as unfinished: nothing can
verify it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from .. import config
from ..blob import connection_string_sas, container_client, describe, explain, sas_permissions
from ..files import write_atomic
from ..segment import Contents, probe
from . import listing, stitch
from .download import Batch, Cache, Downloader, Outcome, md5_of
from .progress import make_progress

log = logging.getLogger("hatcam.fetch")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
DEFAULT_JOBS = 8


class _NotDownloaded(Exception):
    """A segment planned into a file did not arrive: plan again from what did."""


def add_arguments(parser) -> None:
    parser.add_argument(
        "--device",
        action="append",
        metavar="NAME",
        help="camera to fetch (repeatable; default: every device in the container). "
        f"'{listing.LEGACY_DEVICE}' selects the original hat cam's raw .h264 blobs",
    )
    parser.add_argument(
        "--since",
        metavar="WHEN",
        help="start of the range: today, yesterday, now, a date (2026-11-21) or an ISO "
        "time (2026-11-21T08:30, local time unless it has an offset); default: the beginning",
    )
    parser.add_argument(
        "--until",
        metavar="WHEN",
        default="now",
        help="end of the range, same forms; a date means the end of that day (default: now)",
    )
    parser.add_argument(
        "--out", default="footage", type=Path, help="output directory (default: ./footage)"
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=DEFAULT_JOBS,
        help=f"parallel downloads (default: {DEFAULT_JOBS})",
    )
    parser.add_argument(
        "--delete-after",
        action="store_true",
        help="delete each blob from the cloud once the MP4 holding it is written and checked "
        "(needs delete rights: a SAS with sp=rld)",
    )
    parser.add_argument(
        "--max-gap",
        type=float,
        metavar="SECONDS",
        help="a longer gap starts a new file (default: about two segment lengths)",
    )
    parser.add_argument(
        "--legacy-fps",
        type=float,
        default=30.0,
        metavar="FPS",
        help="frame rate of legacy raw .h264 footage, which does not record it (default: 30)",
    )
    parser.add_argument(
        "--legacy-tz",
        metavar="ZONE",
        help="time zone of the legacy blob names, e.g. Europe/London (default: this computer's)",
    )


def build_args(argv: list[str]):
    """The fetch options alone, parsed (for scripts and tests that skip the CLI)."""
    parser = argparse.ArgumentParser(prog="hatcam fetch")
    add_arguments(parser)
    return parser.parse_args(argv)


# --- report helpers ---------------------------------------------------------------


def _local(moment: datetime, with_date: bool = True) -> str:
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z" if with_date else "%H:%M:%S")


def _span(seconds: float) -> str:
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{int(hours)}h {int(minutes):02d}m {secs:04.1f}s"
    if minutes:
        return f"{int(minutes)}m {secs:04.1f}s"
    return f"{secs:.2f}s"


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _gap_text(gap: stitch.Gap) -> str:
    missing = f", {gap.missing} segment(s) missing" if gap.missing else ""
    return f"{_local(gap.at, with_date=False)} for {_span(gap.seconds)}{missing}"


# --- the steps ----------------------------------------------------------------------


class Fetch:
    def __init__(self, settings, args, out=None, err=None):
        self.settings = settings
        self.args = args
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.problems: list[str] = []
        self.root = Path(args.out)
        self.cache = Cache(self.root / ".cache")
        self.stitched_path = self.root / ".cache" / "stitched.json"
        self.client = None

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def problem(self, text: str) -> None:
        self.problems.append(text)

    def options(self):
        """Validated range, zone and devices; raises ValueError with a message."""
        args = self.args
        now = datetime.now(UTC)
        since = listing.parse_when(args.since, end=False, now=now) if args.since else None
        until = listing.parse_when(args.until, end=True, now=now)
        if since is not None and since >= until:
            raise ValueError(f"--since {args.since} is not before --until {args.until}")
        zone = None
        if args.legacy_tz:
            try:
                zone = ZoneInfo(args.legacy_tz)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"--legacy-tz: unknown time zone {args.legacy_tz!r}") from None
        for device in args.device or []:
            if device != listing.LEGACY_DEVICE and not config.valid_device(device):
                raise ValueError(f"--device: {device!r} is not a device name")
        if args.jobs < 1 or args.jobs > 64:
            raise ValueError("--jobs must be from 1 to 64")
        if not 1 <= args.legacy_fps <= 240:
            raise ValueError("--legacy-fps must be from 1 to 240")
        if args.max_gap is not None and args.max_gap < 0:
            raise ValueError("--max-gap must not be negative")
        return since, until, zone

    def delete_right_missing(self) -> str | None:
        """A SAS inside a connection string that lacks 'd' (config checks SAS URLs)."""
        token = connection_string_sas(self.settings.blob_connection_string)
        if token is None:
            return None
        granted = sas_permissions(token)
        if "d" in granted:
            return None
        return (
            f"--delete-after needs delete rights, but the SAS in BLOB_CONNECTION_STRING grants "
            f"sp={granted or '(none)'}; nothing was downloaded or deleted. Use a SAS with "
            "sp=rld, or run without --delete-after"
        )

    def inspect(self, remote: listing.Remote, path: Path) -> Contents:
        """What stitching needs to know of a verified file: the device's own account
        (its metadata) when it gave one, else what demuxing the file shows."""
        if remote.kind == listing.UNFINISHED:
            return stitch.whole_frames(path)
        return remote.contents or probe(path, legacy=remote.legacy)

    def segment(self, remote: listing.Remote, path: Path, contents: Contents) -> stitch.Segment:
        return stitch.Segment.from_contents(
            remote.name,
            path,
            remote.device,
            remote.start,
            contents,
            boot=remote.boot,
            seq=remote.seq,
            legacy_fps=self.args.legacy_fps if remote.legacy else None,
            cut=remote.kind == listing.UNFINISHED,
        )

    def segments(self, outcomes: list[Outcome]) -> list[stitch.Segment]:
        """The verified segments, each described by demuxing its file (the careful path:
        this device could not be stitched from its metadata)."""
        found = []
        for outcome in outcomes:
            if not outcome.ok:
                self.problem(f"{outcome.remote.name}: {outcome.error}; not stitched")
                continue
            contents = outcome.contents
            if contents.from_metadata:
                try:
                    contents = probe(outcome.path, legacy=outcome.remote.legacy)
                except ValueError as exc:
                    self.problem(f"{outcome.remote.name}: {exc}; not stitched")
                    continue
                self.cache.record(outcome.remote, contents)
            found.append(self.segment(outcome.remote, outcome.path, contents))
        return found

    def plan(self, segments: list[stitch.Segment]):
        max_gap = self.args.max_gap
        if max_gap is None:
            max_gap = stitch.default_max_gap(segments)
        return stitch.plan(segments, max_gap)

    def load_stitched(self) -> dict:
        try:
            return json.loads(self.stitched_path.read_text())
        except (OSError, ValueError):
            return {}

    def save_stitched(self, record: dict) -> None:
        text = json.dumps(record, indent=0, sort_keys=True)
        write_atomic(self.stitched_path, text.encode(), durable=False)

    def stitch_run(self, run: stitch.Run, record: dict, ready=None) -> str:
        """Write (or keep) one MP4: "written" or "unchanged"; raises if it cannot be written.

        An MP4 from an earlier run is kept when it holds the same segments and
        still has its size; before its blobs are deleted its hash must match too,
        else it is stitched again from the cache. ``ready`` as in stitch.write.
        """
        path = self.root / run.filename
        want = {"segments": run.names, "frames": run.frames, "ticks": run.duration_ticks}
        old = record.get(run.filename)
        same = old and {k: old.get(k) for k in want} == want
        kept = same and path.is_file() and path.stat().st_size == old.get("size")
        if kept and (not self.args.delete_after or md5_of(path).hexdigest() == old.get("md5")):
            return "unchanged"
        stitch.write(run, path, reread=self.args.delete_after, ready=ready)
        # The hash only matters before deleting blobs; hashing a day of video costs time.
        md5 = md5_of(path).hexdigest() if self.args.delete_after else None
        record[run.filename] = {**want, "size": path.stat().st_size, "md5": md5}
        return "written"

    def stitch_runs(self, runs: list[stitch.Run], record: dict) -> list[str | None]:
        """Each run's state, None for one that failed (recorded as a problem)."""
        states = []
        for run in runs:
            try:
                states.append(self.stitch_run(run, record))
            except (ValueError, OSError, stitch.av.error.FFmpegError) as exc:
                self.problem(f"{run.filename}: could not be written ({exc})")
                states.append(None)
        return states

    def stitch_ahead(self, remotes: list[listing.Remote], batch: Batch, record: dict):
        """Stitch a device's footage while it downloads, planned from the blobs' metadata.

        Returns (runs, splits, states), or None to stitch after the downloads instead:
        when a blob lacks the metadata, fails to download, or holds other than it says.
        """
        if not all(r.contents and not r.legacy for r in remotes):
            return None
        runs, splits = self.plan([self.segment(r, self.cache.path(r), r.contents) for r in remotes])

        def ready(segment: stitch.Segment) -> None:
            if not batch.outcome(segment.name).ok:
                raise _NotDownloaded(segment.name)

        try:
            states = [self.stitch_run(run, record, ready) for run in runs]
        except _NotDownloaded:
            return None
        except (ValueError, OSError, stitch.av.error.FFmpegError) as exc:
            log.warning("stitching from the blobs' metadata failed (%s); demuxing them", exc)
            return None
        return runs, splits, states

    def report_device(self, device, remotes, outcomes, runs, splits, states) -> None:
        fetched = sum(o.fetched for o in outcomes)
        cached = sum(o.status == "cached" for o in outcomes)
        resumed = sum(o.status == "resumed" for o in outcomes)
        failed = sum(not o.ok for o in outcomes)
        self.say(
            f"{device}: {len(remotes)} segment(s) in range, {len(runs)} file(s); downloaded "
            f"{len(outcomes) - cached - failed} ({resumed} resumed, {_mb(fetched)}), "
            f"{cached} already here" + (f", {failed} FAILED" if failed else "")
        )
        unhashed = sum(r.md5 is None and r.kind == listing.WHOLE for r in remotes)
        if unhashed:
            self.say(f"  {unhashed} blob(s) have no stored MD5: checked by size only")
        live = sum(r.kind == listing.LIVE for r in remotes)
        if live:
            self.say(f"  {live} sent live and finished: checked against their closing records")
        kept = {o.remote.name: o.contents for o in outcomes if o.ok}
        for remote in remotes:
            if remote.kind == listing.UNFINISHED:
                contents = kept.get(remote.name)
                held = f"{contents.frames} whole frames kept" if contents else "nothing usable"
                self.say(
                    f"  unfinished (no closing record): {remote.name}: {held}; "
                    "its bytes cannot be verified"
                )
        for index, run in enumerate(runs):
            path = self.root / run.filename
            size = path.stat().st_size if path.is_file() else 0
            state = states[index] or "NOT WRITTEN"
            self.say(f"  {path}  [{state}]")
            self.say(
                f"    {_local(run.start)} to {_local(run.end, with_date=False)}, "
                f"{_span(run.duration)} ({run.duration:.3f} s), {run.frames} frames, "
                f"{len(run.items)} segment(s), {_mb(size)}"
            )
            for gap in run.gaps:
                self.say(f"    gap kept in the file: {_gap_text(gap)}")
            if index < len(splits):
                self.say(f"  gap, new file: {_gap_text(splits[index])}")

    def delete(self, names: list[str]) -> int:
        """Delete blobs; the first alone, so missing rights delete nothing at all."""
        if not names:
            return 0

        def one(name: str) -> None:
            with contextlib.suppress(ResourceNotFoundError):  # already gone: fine
                self.client.delete_blob(name)

        try:
            one(names[0])
        except HttpResponseError as exc:
            self.problem(
                f"--delete-after: {explain(exc, 'delete', 'd', 'rld')}; nothing was deleted"
            )
            return 0
        deleted = 1
        with ThreadPoolExecutor(max_workers=self.args.jobs) as pool:
            futures = {pool.submit(one, name): name for name in names[1:]}
            for future, name in futures.items():
                try:
                    future.result()
                    deleted += 1
                except HttpResponseError as exc:
                    self.problem(f"--delete-after: {name}: {explain(exc, 'delete', 'd', 'rld')}")
        return deleted

    def run(self) -> int:
        try:
            since, until, zone = self.options()
        except ValueError as exc:
            print(f"hatcam fetch: {exc}", file=self.err)
            return EXIT_USAGE
        if self.args.delete_after and (message := self.delete_right_missing()):
            print(f"hatcam fetch: {message}", file=self.err)
            return EXIT_USAGE
        self.client = container_client(self.settings, retries=4, read_timeout=120)
        where = describe(self.client)
        span = f"{_local(since) if since else 'the beginning'} to {_local(until)}"
        self.say(f"fetching from {where}, {span}")
        notes: list[str] = []
        try:
            chosen = listing.select(self.client, self.args.device, since, until, zone, notes)
        except HttpResponseError as exc:
            print(f"hatcam fetch: listing {where} failed: {explain(exc, 'listing', 'l', 'rl')}")
            return EXIT_FAILED
        for note in notes:
            self.problem(note)
        remotes = [r for device in chosen.values() for r in device]
        if not remotes and not notes:
            self.say(f"no footage in range for {', '.join(chosen) or 'any device'}")
            return EXIT_OK
        self.root.mkdir(parents=True, exist_ok=True)
        downloader = Downloader(
            self.client, self.cache, self.inspect, make_progress(self.out), self.args.jobs
        )
        record = self.load_stitched()
        stitched = {}
        batch = downloader.start(remotes)
        try:
            # Stitching overlaps the downloads: segments are fetched in time order.
            for device, in_range in chosen.items():
                if in_range:
                    stitched[device] = self.stitch_ahead(in_range, batch, record)
            outcomes = batch.finish()
        except KeyboardInterrupt:
            print(
                "hatcam fetch: interrupted; run it again to resume where it stopped",
                file=self.err,
            )
            return EXIT_INTERRUPTED
        finally:
            batch.close()
            self.save_stitched(record)
        by_device: dict[str, list[Outcome]] = {}
        for outcome in outcomes:
            by_device.setdefault(outcome.remote.device, []).append(outcome)
        deletable: list[str] = []
        for device, in_range in chosen.items():
            if not in_range:
                self.say(f"{device}: no footage in range")
                continue
            results = by_device[device]
            for remote in in_range:
                if remote.added:
                    self.problem(
                        f"{remote.name}: {remote.added} bytes added after the device "
                        "finished it; left out"
                    )
            done = stitched.get(device)
            if done is None:
                runs, splits = self.plan(self.segments(results))
                states = self.stitch_runs(runs, record)
                self.save_stitched(record)
            else:
                runs, splits, states = done
            self.report_device(device, in_range, results, runs, splits, states)
            if self.args.delete_after:
                for run, state in zip(runs, states, strict=True):
                    if state is None:
                        continue
                    # An unfinished segment stays: it may still grow, and its closing
                    # record may yet come. A finished one goes with its closing record.
                    kind = {r.name: r.kind for r in in_range}
                    for blob in run.names:
                        if kind[blob] == listing.UNFINISHED:
                            continue
                        deletable.append(blob)
                        if kind[blob] == listing.LIVE:
                            deletable.append(blob + listing.END_SUFFIX)
        self.cache.save()
        if self.args.delete_after:
            deleted = self.delete(deletable)
            # Blobs in range: each finished live segment has its closing record too.
            total = len(remotes) + sum(r.kind == listing.LIVE for r in remotes)
            self.say(f"deleted {deleted} of {total} blob(s) from {where}")
            unfinished = sum(r.kind == listing.UNFINISHED for r in remotes)
            if unfinished:
                self.say(f"kept {unfinished} unfinished segment(s): they may still grow")
        if self.problems:
            self.say("problems:")
            for line in self.problems:
                self.say(f"  {line}")
            print(
                f"hatcam fetch: {len(self.problems)} problem(s); see the report above",
                file=self.err,
            )
            return EXIT_FAILED
        return EXIT_OK


def run_fetch(settings, args) -> int:
    return Fetch(settings, args).run()
